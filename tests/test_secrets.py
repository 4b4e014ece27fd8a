"""Secrets never leak: not into logs, /metrics, error answers, forwarded copies or check-config.

A relay runs with every kind of secret the config can name (subscription tokens, a stream client
token, a webhook signing secret, an OCPI partner token, a pseudonymisation key), is fed valid and
hostile traffic, and everything it says afterwards is searched for the secret values (and their
obvious encodings). Token checks are constant-time and refuse at every receiver path.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import inspect
import json
import logging
import string
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from standardwebhooks.webhooks import Webhook

from relay.log import JsonFormatter
from relay.routing.tokens import TokenTable
from relay.settings import Settings
from relay.stream._pb import relay_pb2 as pb
from relay.stream._pb import relay_pb2_grpc as pb_grpc
from tests.commands import relay_cli_async
from tests.conftest import LOC_ID, SESSION_ID, RelayHandle, eventually, example, spawn_relay
from tests.servers import PartnerSink

SUB_TOKEN = "sub-secret-token-a1b2c3d4e5"
LIMITED_SECRET = "limited-secret-token-f6e5d4"
STREAM_TOKEN = "stream-secret-token-99aa88"
HOOK_KEY = b"hook-signing-key-secret-0123456789"
HOOK_SECRET = "whsec_" + base64.b64encode(HOOK_KEY).decode()
PARTNER_SECRET = "partner-secret-token-7c7c7c"
PSEUDO_SECRET = "pseudo-secret-key-3e3e3e"
REPO = Path(__file__).resolve().parents[1]

SECRET_ENV = {
    "TEST_TOKEN_GFX": SUB_TOKEN,
    "TEST_TOKEN_LIMITED": LIMITED_SECRET,
    "TEST_SECRET_STREAM": STREAM_TOKEN,
    "TEST_SECRET_HOOK": HOOK_SECRET,
    "TEST_SECRET_PARTNER": PARTNER_SECRET,
    "TEST_SECRET_PSEUDO": PSEUDO_SECRET,
}


def _forms(secret: str) -> list[str]:
    return [secret, base64.b64encode(secret.encode()).decode()]


# Every secret value, its base64 form, and the webhook key without its prefix and decoded.
SECRETS = [f for s in SECRET_ENV.values() for f in _forms(s)] + [
    HOOK_SECRET.removeprefix("whsec_"), HOOK_KEY.decode()]

CONFIG = """
stream_clients:
  - name: billing
    token_env: TEST_SECRET_STREAM
    cpos: ["*"]
targets:
  - name: hook
    type: webhook
    url: $hook/hook
    secret_env: TEST_SECRET_HOOK
    retry_base: 0.01
    retry_max: 0.05
  - name: partner
    type: ocpi
    url: $partner/ocpi/emsp/2.1.1
    token_env: TEST_SECRET_PARTNER
    retry_base: 0.01
    retry_max: 0.05
rules:
  - name: research
    match: {modules: [sessions, cdrs]}
    to: [hook, partner]
    transform:
      - pseudonymise: {fields: [auth_id], key_env: TEST_SECRET_PSEUDO}
  - name: locations
    match: {modules: [locations, tariffs]}
    to: [hook, partner]
"""


def leaks(text: str | bytes) -> list[str]:
    data = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return [s for s in SECRETS if s in data]


@pytest.fixture
def tokens(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for k, v in SECRET_ENV.items():
        monkeypatch.setenv(k, v)
    return {"greenflux": SUB_TOKEN, "limited": LIMITED_SECRET}


@pytest.fixture
async def hook_sink(sink_factory: Callable[[], Awaitable[PartnerSink]]) -> PartnerSink:
    """The webhook target's partner (``partner_sink``, from tests/conftest.py, is the OCPI target's)."""
    return await sink_factory()


@pytest.fixture
def extra_config(hook_sink: PartnerSink, partner_sink: PartnerSink) -> str:
    return string.Template(CONFIG).substitute(hook=hook_sink.url, partner=partner_sink.url)


@pytest.fixture
def relay_settings(database_url: str, config_path: Path) -> Settings:
    return Settings(database_url=database_url, config=str(config_path), http_port=0, grpc_port=0,
                    grpc=True, workers=True, instance="secrets-relay", log_level="DEBUG")


# -- traffic ---------------------------------------------------------------------------------------


async def mixed_traffic(put: Any, patch: Any, post: Any) -> list[tuple[int, str]]:
    """Valid and hostile pushes; returns (status, raw answer text) of every answer."""
    answers: list[tuple[int, str]] = []
    session = example("session_completed.json")
    session["id"] = SESSION_ID
    cases = [
        put(f"/locations/NL/GFX/{LOC_ID}", example("location_full.json"), SUB_TOKEN),
        put(f"/sessions/NL/GFX/{SESSION_ID}", session, SUB_TOKEN),
        post("/cdrs", example("cdr_full.json"), SUB_TOKEN),
        patch(f"/sessions/NL/GFX/{SESSION_ID}", {"kwh": 3.5, "last_updated": "2025-01-01T00:00:00Z"}, SUB_TOKEN),
        # a wrong token that contains the real one, and one that is its prefix
        put(f"/locations/NL/GFX/{LOC_ID}", example("location_full.json"), SUB_TOKEN + "x"),
        put(f"/locations/NL/GFX/{LOC_ID}", example("location_full.json"), SUB_TOKEN[:-1]),
        # 403: a real token outside its scope
        put(f"/sessions/NL/GFX/{SESSION_ID}", session, LIMITED_SECRET),
        # 400: a broken body with a valid token, the body quoting secrets
        put(f"/sessions/NL/GFX/{SESSION_ID}", {"id": SESSION_ID, "kwh": "lots", "auth_id": "x"}, SUB_TOKEN),
        put(f"/locations/NL/GFX/{LOC_ID}", None, SUB_TOKEN),
    ]
    for case in cases:
        answers.append(await case)
    return answers


async def subscribe_with_wrong_token(port: int) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.RelayStub(channel)
        call = stub.Subscribe(pb.SubscribeRequest(), metadata=(("authorization", f"Bearer {STREAM_TOKEN}x"),))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(call.read(), 10)
        return err.value


def _forwarded_text(sink: PartnerSink, *, except_authorization: bool) -> str:
    parts: list[str] = []
    for r in sink.received:
        parts += [r.method, r.path, r.body.decode("utf-8", "replace")]
        parts += [f"{k}: {v}" for k, v in r.headers.items() if not (except_authorization and k == "authorization")]
    return "\n".join(parts)


async def run_check_config(config_path: Path) -> tuple[int, str, str]:
    res = await relay_cli_async("check-config", str(config_path), "--json", cwd=REPO, timeout=60)
    return res.returncode, res.stdout, res.stderr


# -- tests -----------------------------------------------------------------------------------------


async def test_no_secret_reaches_logs_metrics_errors_forwarded_copies_or_check_config(
    relay: RelayHandle, hook_sink: PartnerSink, partner_sink: PartnerSink, caplog: pytest.LogCaptureFixture,
    config_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("relay", "uvicorn", "uvicorn.error", "uvicorn.access"):
        caplog.set_level(logging.DEBUG, logger=name)

    async def send(method: str, path: str, body: Any, token: str) -> tuple[int, str]:
        hdrs = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
        data = b"{not json " + token.encode() if body is None else json.dumps(body).encode()
        async with relay.http.request(method, relay.base + path, data=data, headers=hdrs) as resp:
            return resp.status, (await resp.read()).decode("utf-8", "replace")

    answers = await mixed_traffic(lambda p, b, t: send("PUT", p, b, t), lambda p, b, t: send("PATCH", p, b, t),
                                  lambda p, b, t: send("POST", p, b, t))
    statuses = [s for s, _ in answers]
    assert statuses == [200, 200, 200, 200, 401, 401, 403, 400, 400], answers
    for _, text in answers:
        assert leaks(text) == [], text

    err = await subscribe_with_wrong_token(relay.info.ports["grpc"])
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert leaks(str(err.details())) == [] and leaks(str(err.trailing_metadata())) == []

    # 4 applied events to 2 targets each
    await eventually(lambda: _done(relay, 8))
    hook_text = _forwarded_text(hook_sink, except_authorization=False)
    assert leaks(hook_text) == [], leaks(hook_text)
    for r in hook_sink.received:  # the signature is derived from the secret and verifies with it
        Webhook(HOOK_SECRET).verify(r.body, r.headers)
    assert "authorization" not in {k for r in hook_sink.received for k in r.headers}
    assert {r.headers["authorization"] for r in partner_sink.received} == {f"Token {PARTNER_SECRET}"}
    partner_text = _forwarded_text(partner_sink, except_authorization=True)
    assert leaks(partner_text) == [], leaks(partner_text)

    async with relay.http.get(relay.url + "/metrics") as resp:
        metrics_text = await resp.text()
    assert resp.status == 200 and "relay_auth_failures" in metrics_text
    assert leaks(metrics_text) == []

    code, out, errtext = await run_check_config(config_path)
    assert code == 0, errtext
    assert json.loads(out)["targets"], out
    assert leaks(out) == [] and leaks(errtext) == []

    fmt = JsonFormatter()
    lines = [fmt.format(rec) for rec in caplog.records] + [rec.getMessage() for rec in caplog.records]
    assert len(caplog.records) > 5, "the log capture saw nothing: it proves nothing"
    leaked = [line for line in lines if leaks(line)]
    assert leaked == [], "\n".join(leaked)


async def _done(relay: RelayHandle, n: int) -> bool:
    stats = await relay.store.stats()
    return sum(t["done"] for t in stats["targets"].values()) >= n


async def test_relay_serve_process_stderr_never_contains_a_secret(
    database_url: str, config_path: Path, hook_sink: PartnerSink, partner_sink: PartnerSink
) -> None:
    env = {"RELAY_DATABASE_URL": database_url, "RELAY_CONFIG": str(config_path), "RELAY_LOG_LEVEL": "DEBUG",
           "RELAY_INSTANCE": "secrets-proc"}
    proc = await spawn_relay(env, want=("http", "grpc"))
    try:
        import aiohttp

        async with aiohttp.ClientSession() as http:
            async def send(method: str, path: str, body: Any, token: str) -> tuple[int, str]:
                hdrs = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
                data = b"{not json " + token.encode() if body is None else json.dumps(body).encode()
                async with http.request(method, proc.url + path, data=data, headers=hdrs) as resp:
                    return resp.status, await resp.text()

            answers = await mixed_traffic(lambda p, b, t: send("PUT", p, b, t), lambda p, b, t: send("PATCH", p, b, t),
                                          lambda p, b, t: send("POST", p, b, t))
            assert [s for s, _ in answers] == [200, 200, 200, 200, 401, 401, 403, 400, 400], answers
            assert all(leaks(text) == [] for _, text in answers)
            err = await subscribe_with_wrong_token(proc.ports["grpc"])
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED and leaks(str(err.details())) == []

            async def delivered() -> bool:
                return len(hook_sink.accepted()) >= 4 and len(partner_sink.accepted()) >= 4

            await eventually(delivered, timeout=30)
            async with http.get(proc.url + "/metrics") as resp:
                assert leaks(await resp.text()) == []
    finally:
        await proc.stop()
    log = "".join(proc.log)
    assert '"http_listening"' in log and len(proc.log) > 5
    leaked = [line for line in proc.log if leaks(line)]
    assert leaked == [], "".join(leaked)
    assert leaks(_forwarded_text(hook_sink, except_authorization=False)) == []
    assert leaks(_forwarded_text(partner_sink, except_authorization=True)) == []


def test_token_lookup_compares_every_token_with_compare_digest_and_never_exits_early() -> None:
    # RoutingConfig.subscription_for_token and stream_client_for_token both look up through TokenTable.find
    method = "TokenTable.find"
    source = textwrap.dedent(inspect.getsource(TokenTable.find))
    assert "hmac.compare_digest" in source
    assert "==" not in source.replace("is None", "")
    func = ast.parse(source).body[0]
    loops = [n for n in ast.walk(func) if isinstance(n, ast.For | ast.While)]
    assert len(loops) == 1
    early = [n for n in ast.walk(loops[0]) if isinstance(n, ast.Return | ast.Break)]
    assert early == [], f"{method} leaves its loop early: the time taken tells which token matched"


# -- every receiver path refuses a missing, wrong or out-of-scope token ---------------------------------

RECEIVER_CALLS: list[tuple[str, str, Any]] = [
    *[(m, f"/locations/NL/GFX/{LOC_ID}", b) for m, b in [("GET", None), ("PUT", example("location_full.json")),
                                                         ("PATCH", {"name": "x"})]],
    *[(m, f"/locations/NL/GFX/{LOC_ID}/EVSE-1", b) for m, b in [("GET", None), ("PUT", {"uid": "EVSE-1"}),
                                                                ("PATCH", {"status": "CHARGING"})]],
    *[(m, f"/locations/NL/GFX/{LOC_ID}/EVSE-1/1", b) for m, b in [("GET", None), ("PUT", example("connector_put.json")),
                                                                  ("PATCH", {"standard": "IEC_62196_T2"})]],
    *[(m, f"/sessions/NL/GFX/{SESSION_ID}", b) for m, b in [("GET", None), ("PUT", example("session_active.json")),
                                                            ("PATCH", {"kwh": 1.0})]],
    *[(m, "/tariffs/NL/GFX/TARIFF-1", b) for m, b in [("GET", None), ("PUT", {"id": "TARIFF-1"}),
                                                       ("PATCH", {"currency": "EUR"}), ("DELETE", None)]],
    ("POST", "/cdrs", example("cdr_full.json")),
    ("GET", "/cdrs/CDR-1", None),
    ("POST", "/notifications", example("chargestationnotification_station_fault.json")),
    ("PUT", "/notifications", example("chargestationnotification_station_fault.json")),
    ("POST", "/notifications/N-1", example("chargestationnotification_station_fault.json")),
    ("PUT", "/notifications/N-1", example("chargestationnotification_station_fault.json")),
    ("POST", "/ChargeStationNotifications/N-1", example("chargestationnotification_statusnotification.json")),
    ("PUT", "/ChargeStationNotifications/N-1", example("chargestationnotification_statusnotification.json")),
]

# (Authorization header or None, expected HTTP status)
TOKEN_CASES = [
    (None, 401),
    (f"Token {SUB_TOKEN}x", 401),
    (f"Token {SUB_TOKEN[:-1]}", 401),
    (f"Bearer {SUB_TOKEN}", 401),
    (f"Token {STREAM_TOKEN}", 401),  # a stream client's token is no subscription token
    (f"Token {LIMITED_SECRET}", 403),  # a real subscription outside its CPOs and modules
]


async def test_every_receiver_path_refuses_missing_wrong_or_out_of_scope_tokens_and_stores_nothing(
    relay: RelayHandle,
) -> None:
    before = await relay.store.stats()
    wrong: list[str] = []
    for method, path, body in RECEIVER_CALLS:
        for header, expected in TOKEN_CASES:
            headers = {} if header is None else {"Authorization": header}
            ans = await relay.request(method, path, body, token=None, headers=headers)
            if ans.status != expected or ans.body.get("status_code") != 2000 or leaks(json.dumps(ans.body)):
                wrong.append(f"{method} {path} [{header}] -> {ans.status} {ans.body}")
    assert wrong == [], "\n".join(wrong)
    after = await relay.store.stats()
    assert (before["events"], after["events"], after["last_seq"]) == (0, 0, 0)
    assert after["targets"] == {}
    for method, path, _ in RECEIVER_CALLS:
        if method == "GET":
            ans = await relay.get(path, token=SUB_TOKEN)
            assert ans.status in (200, 404), (path, ans.status, ans.body)
