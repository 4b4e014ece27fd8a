"""Retry policy, pacing and rendering as pure functions: no database, no network, no clock."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from relay.deliver.backoff import (
    CircuitBreaker,
    Deferred,
    Delivered,
    Permanent,
    Retryable,
    TokenBucket,
    classify,
    limit_retry_after,
    next_delay,
    retry_delay,
    settle,
)
from relay.deliver.senders import ocpi_path, ocpi_request, signature, webhook_body, webhook_request
from relay.ocpi.times import parse_retry_after
from relay.routing.model import Match, Rule, Target, Transform
from relay.settings import Secret
from relay.store.base import EventRecord
from tests.deliver.conftest import HOOK_SECRET

NOW = datetime(2024, 3, 5, 12, 0, 0, tzinfo=UTC)
ENVELOPE = b'{"status_code": %d, "status_message": "m", "timestamp": "2024-03-05T12:00:00Z"}'


@pytest.mark.parametrize(
    ("target_type", "status", "headers", "body", "expected"),
    [
        ("webhook", 200, {}, b"", Delivered(200)),
        ("webhook", 204, {}, b"whatever", Delivered(204)),
        ("ocpi", 200, {}, ENVELOPE % 1000, Delivered(200, 1000)),
        ("ocpi", 200, {}, ENVELOPE % 2001, Permanent),
        ("ocpi", 200, {}, ENVELOPE % 3000, Retryable),
        ("ocpi", 200, {}, b"<html>ok</html>", Permanent),
        ("ocpi", 200, {}, b'{"data": []}', Permanent),
        ("webhook", 301, {"location": "https://elsewhere.example/hook"}, b"", Permanent),
        ("webhook", 400, {}, b"bad", Permanent),
        ("webhook", 401, {}, b"", Permanent),
        ("ocpi", 404, {}, ENVELOPE % 2003, Permanent),
        ("webhook", 408, {}, b"", Retryable),
        ("webhook", 429, {"retry-after": "3"}, b"", Retryable),
        ("webhook", 500, {}, b"", Retryable),
        ("ocpi", 503, {}, ENVELOPE % 3000, Retryable),
    ],
)
def test_classify_follows_the_retry_table(target_type: str, status: int, headers: dict[str, str], body: bytes,
                                          expected: Any) -> None:
    got = classify(target_type, status, headers, body, NOW)
    if isinstance(expected, type):
        assert isinstance(got, expected), got
    else:
        assert got == expected


def test_permanent_reasons_name_what_the_partner_said() -> None:
    redirect = classify("webhook", 302, {"location": "https://x.example/new"}, b"", NOW)
    assert isinstance(redirect, Permanent) and "redirect" in redirect.reason and "x.example/new" in redirect.reason
    refused = classify("ocpi", 200, {}, ENVELOPE % 2001, NOW)
    assert isinstance(refused, Permanent) and "2001" in refused.reason and refused.ocpi_status == 2001
    no_envelope = classify("ocpi", 200, {}, b"fine", NOW)
    assert isinstance(no_envelope, Permanent) and "envelope" in no_envelope.reason


def test_retry_after_in_seconds_and_as_http_date() -> None:
    assert parse_retry_after("7", NOW) == 7.0
    assert parse_retry_after("Tue, 05 Mar 2024 12:00:30 GMT", NOW) == 30.0
    assert parse_retry_after("Tue, 05 Mar 2024 11:00:00 GMT", NOW) == 0.0  # in the past: now
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None
    got = classify("webhook", 429, {"retry-after": "Tue, 05 Mar 2024 12:00:05 GMT"}, b"", NOW)
    assert isinstance(got, Retryable) and got.retry_after == 5.0


def test_full_jitter_is_bounded_by_the_exponential_ceiling() -> None:
    top = lambda lo, hi: hi  # noqa: E731 - the largest value uniform() could return
    assert [retry_delay(n, 1.0, 60.0, top) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert retry_delay(3, 1.0, 60.0, lambda lo, hi: lo) == 0.0
    assert retry_delay(10_000, 1.0, 60.0, top) == 60.0  # no overflow for absurd attempt counts
    assert all(0 <= retry_delay(5, 0.5, 10.0) <= 10.0 for _ in range(200))


def test_retry_after_replaces_the_backoff_and_is_clamped() -> None:
    assert limit_retry_after(0.0, 1.0, 60.0) == 1.0
    assert limit_retry_after(30.0, 1.0, 60.0) == 30.0
    assert limit_retry_after(3600.0, 1.0, 60.0) == 120.0
    assert next_delay(Retryable("429", 429, retry_after=2.0), 0, 0.05, 0.4) == 0.8
    assert next_delay(Retryable("503", 503), 2, 1.0, 60.0, lambda lo, hi: hi) == 4.0


def test_breaker_opens_after_repeated_failures_probes_once_and_closes_on_success() -> None:
    b = CircuitBreaker(base=1.0, cap=60.0, threshold=3)
    assert b.allowance(0.0, 0) is None
    assert not b.failure(0.0) and not b.failure(0.1)
    assert b.failure(0.2)  # third in a row opens it for base * 2 = 2 s
    assert b.allowance(1.0, 0) == 0 and b.wait(1.0) == pytest.approx(1.2)
    assert b.allowance(2.3, 1) == 0  # half-open, but a send from before the trip is still out
    assert b.allowance(2.3, 0) == 1  # one probe
    assert b.failure(2.4)  # the probe failed: open again, twice as long
    assert b.wait(2.4) == pytest.approx(4.0)
    b.success()
    assert b.allowance(2.5, 0) is None and b.failures == 0


def test_breaker_ignores_late_failures_while_open_and_caps_its_interval() -> None:
    b = CircuitBreaker(base=1.0, cap=10.0, threshold=1)
    assert b.failure(0.0)
    until = b.open_until
    assert not b.failure(0.5) and b.open_until == until
    for t in range(1, 12):
        b.failure(1000.0 * t)
    assert b.interval() == 10.0


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=4.0, now=0.0)
    assert bucket.take(10, 0.0) == 4
    assert bucket.take(1, 0.0) == 0 and bucket.wait(0.0) == pytest.approx(0.25)
    assert bucket.take(3, 0.5) == 2
    bucket.give_back(1)
    assert bucket.take(5, 0.5) == 1
    slow = TokenBucket(rate=0.5, now=0.0)
    assert slow.take(3, 0.0) == 1 and slow.wait(0.0) == pytest.approx(2.0)


# -- rendering -----------------------------------------------------------------------------------------

SESSION = {"id": "S1", "auth_id": "NL-EMP-C04817263-K", "kwh": 3.5, "last_updated": "2024-03-05T08:59:02Z",
           "location": {"id": "L1", "evses": [{"uid": "E-1"}]}}


def _event(**kw: Any) -> EventRecord:
    base: dict[str, Any] = dict(
        seq=7, module="sessions", action="patch", country_code="NL", party_id="GFX", object_id="S1",
        evse_uid=None, connector_id=None, last_updated=datetime(2024, 3, 5, 8, 59, 2, tzinfo=UTC),
        received_at=datetime(2024, 3, 5, 8, 59, 3, 250000, tzinfo=UTC), origin="push", subscription="greenflux",
        request_id=None, status="applied", body=json.dumps({"kwh": 3.5, "auth_id": "NL-EMP-C04817263-K"}),
        object=json.dumps(SESSION),
    )
    base.update(kw)
    return EventRecord(**base)


def _target(kind: str = "webhook") -> Target:
    if kind == "webhook":
        return Target("hook", "webhook", "http://127.0.0.1:1/hook", Secret(HOOK_SECRET), None)
    return Target("partner", "ocpi", "http://127.0.0.1:1/ocpi/2.1.1", None, Secret("tok"))


def _rule(*transforms: Transform) -> Rule:
    return Rule("r", Match(None, None, None, ()), ("hook", "partner"), tuple(transforms))


def test_webhook_request_verifies_with_the_standard_webhooks_library() -> None:
    req = webhook_request(42, _event(), _rule(), _target())
    assert req.method == "POST" and req.headers["webhook-id"] == "msg_42"
    payload = Webhook(HOOK_SECRET).verify(req.body or b"", req.headers)
    assert payload["type"] == "sessions.patch" and payload["timestamp"] == "2024-03-05T08:59:03.25Z"
    assert payload["data"]["seq"] == 7 and payload["data"]["object"] == SESSION
    assert req.headers["webhook-signature"] == signature(Secret(HOOK_SECRET), "msg_42",
                                                         int(req.headers["webhook-timestamp"]), req.body or b"")


def test_webhook_body_is_the_same_bytes_on_every_attempt() -> None:
    assert webhook_body(_event(), _rule(), _target()) == webhook_body(_event(), _rule(), _target())


def test_transformed_webhook_envelope_leaks_nothing_the_transforms_removed() -> None:
    event = _event(module="locations", object_id="L1", evse_uid="E-1", connector_id="2",
                   object=json.dumps({"id": "L1", "name": "x", "evses": [{"uid": "E-1"}]}))
    keep_name = _rule(Transform("keep", ("name",)))
    data = json.loads(webhook_body(event, keep_name, _target()))["data"]
    assert data["object"] == {"name": "x"}
    assert data["id"] is None and data["evse_uid"] is None and data["connector_id"] is None
    assert data["last_updated"] is None
    assert b"E-1" not in webhook_body(event, keep_name, _target())
    plain = json.loads(webhook_body(event, _rule(), _target()))["data"]
    assert (plain["id"], plain["evse_uid"], plain["connector_id"]) == ("L1", "E-1", "2")
    assert plain["last_updated"] == "2024-03-05T08:59:02Z"


def test_ocpi_request_mirrors_method_and_path_with_the_partner_token() -> None:
    req = ocpi_request(_event(), _rule(), _target("ocpi"))
    assert (req.method, req.url) == ("PATCH", "http://127.0.0.1:1/ocpi/2.1.1/sessions/NL/GFX/S1")
    assert req.headers["Authorization"] == "Token tok"
    assert req.body == _event().body.encode()
    dropped = ocpi_request(_event(), _rule(Transform("drop", ("auth_id",))), _target("ocpi"))
    assert json.loads(dropped.body or b"") == {"kwh": 3.5}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (dict(module="locations", object_id="L 1", evse_uid="E-1", connector_id="2"), "/locations/NL/GFX/L%201/E-1/2"),
        (dict(module="locations", object_id="L1", evse_uid="E-1"), "/locations/NL/GFX/L1/E-1"),
        (dict(module="tariffs", object_id="T1", action="delete"), "/tariffs/NL/GFX/T1"),
        (dict(module="cdrs", object_id="C1", action="post"), "/cdrs"),
        (dict(module="chargestationnotifications", object_id="918273", action="put"), "/ChargeStationNotifications/918273"),
        (dict(module="chargestationnotifications", object_id="sha256-abc", action="post"), "/notifications"),
        (dict(module="notifications", object_id="N1", action="post"), "/notifications"),
    ],
)
def test_ocpi_path_per_module(fields: dict[str, Any], expected: str) -> None:
    assert ocpi_path(_event(**fields), _rule(), _target("ocpi")) == expected


def test_ocpi_delete_has_no_body() -> None:
    req = ocpi_request(_event(module="tariffs", action="delete", object_id="T1", body=""), _rule(), _target("ocpi"))
    assert req.method == "DELETE" and req.body is None


def test_settle_maps_each_outcome_to_the_row_s_next_state() -> None:
    top = lambda lo, hi: hi  # noqa: E731
    done = settle(Delivered(200), 2, True, 5, 1.0, 60.0, NOW)
    assert (done.state, done.attempts, done.error) == ("done", 3, None)
    retry = settle(Retryable("HTTP 503", 503), 2, True, 5, 1.0, 60.0, NOW, top)
    assert (retry.state, retry.attempts, retry.http_status) == ("pending", 3, 503)
    assert retry.next_attempt_at == NOW + timedelta(seconds=4)
    gave_up = settle(Retryable("HTTP 503", 503), 4, True, 5, 1.0, 60.0, NOW)
    assert gave_up.state == "dead" and gave_up.error == "HTTP 503 (gave up after 5 attempts)"
    refused = settle(Permanent("HTTP 400: bad", 400), 0, True, 5, 1.0, 60.0, NOW)
    assert (refused.state, refused.attempts, refused.http_status) == ("dead", 1, 400)
    unsent = settle(Permanent("rule r no longer in config"), 3, False, 5, 1.0, 60.0, NOW)
    assert (unsent.state, unsent.attempts) == ("dead", 3)
    deferred = settle(Deferred("target t is no longer in config"), 3, False, 5, 1.0, 60.0, NOW)
    assert (deferred.state, deferred.attempts, deferred.next_attempt_at) == ("pending", 3, NOW)
