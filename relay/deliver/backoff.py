"""Retry policy as small pure functions (svix ``worker.rs`` style), plus the per-target pacing state.

``classify`` turns a partner's answer into one of three named outcomes:

    Delivered   2xx (and, for an ``ocpi`` target, an envelope with a 1xxx status_code)
    Retryable   network error, timeout, 5xx, 429, 408, OCPI 3xxx  -> pending again after a delay
    Permanent   any other 4xx, a redirect, OCPI 2xxx, 2xx without an OCPI envelope  -> dead
    Deferred    not sent at all (the target left the config)  -> pending, waiting for the target

Delays are exponential with full jitter: uniform(0, min(retry_max, retry_base * 2**attempts)); a
``Retry-After`` answer (seconds or HTTP-date) replaces that, clamped like svix ``limit_retry_delay``.
``CircuitBreaker`` pauses a target after repeated retryable failures and lets one probe through;
``TokenBucket`` enforces ``rate_limit``. Both take the time as an argument so tests need no sleeps.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson

from relay.errors import DeliveryError
from relay.ocpi.times import parse_retry_after

# Consecutive retryable failures that open the breaker, and the ceiling of its open interval.
BREAKER_THRESHOLD = 5
BREAKER_MAX_OPEN = 300.0
_SNIPPET = 200


@dataclass(frozen=True, slots=True)
class Delivered:
    """The partner took it."""

    http_status: int
    ocpi_status: int | None = None


@dataclass(frozen=True, slots=True)
class Retryable:
    """Worth trying again later; ``retry_after`` (seconds) when the partner said when."""

    reason: str
    http_status: int | None = None
    ocpi_status: int | None = None
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Permanent:
    """Retrying cannot help: the row goes to the dead letters with ``reason``."""

    reason: str
    http_status: int | None = None
    ocpi_status: int | None = None


@dataclass(frozen=True, slots=True)
class Deferred:
    """Not attempted (its target left the config): pending again, no attempt counted."""

    reason: str


Outcome = Delivered | Retryable | Permanent | Deferred


def classify(target_type: str, status: int, headers: Mapping[str, str], body: bytes,
             now: datetime | None = None) -> Outcome:
    """The outcome of one HTTP answer; ``headers`` keys are lower-case."""
    envelope = _envelope(body)
    code = envelope[0] if envelope else None
    detail = envelope[1] if envelope else _snippet(body)
    if 200 <= status < 300:
        if target_type != "ocpi":
            return Delivered(status)
        return _classify_envelope(status, envelope, body)
    if 300 <= status < 400:
        where = headers.get("location", "")
        return Permanent(f"HTTP {status} redirect to {where[:_SNIPPET]!r} not followed: fix the target url", status, code)
    if status == 429 or status == 408 or status >= 500:
        retry_after = parse_retry_after(headers.get("retry-after"), now)
        return Retryable(_reason(status, code, detail), status, code, retry_after)
    return Permanent(_reason(status, code, detail), status, code)


def _classify_envelope(status: int, envelope: tuple[int, str] | None, body: bytes) -> Outcome:
    if envelope is None:
        return Permanent(f"HTTP {status} without an OCPI envelope (status_code missing): {_snippet(body)!r}", status)
    code, message = envelope
    # OCPI: 1xxx success (2.1.1 defines only 1000), 2xxx client errors, 3xxx server errors.
    if 1000 <= code < 2000:
        return Delivered(status, code)
    if 3000 <= code < 4000:
        return Retryable(f"partner answered OCPI {code}: {message}", status, code)
    if 2000 <= code < 3000:
        return Permanent(f"partner refused with OCPI {code}: {message}", status, code)
    return Permanent(f"partner answered unknown OCPI status_code {code}: {message}", status, code)


def from_error(err: DeliveryError) -> Outcome:
    """A failure without a usable answer (connection refused, reset, timeout, bad response)."""
    if err.retryable:
        return Retryable(str(err), err.http_status, err.ocpi_status, err.retry_after)
    return Permanent(str(err), err.http_status, err.ocpi_status)


def _envelope(body: bytes) -> tuple[int, str] | None:
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    code = data.get("status_code")
    if isinstance(code, bool) or not isinstance(code, int | str):
        return None
    try:
        number = int(code)
    except ValueError:
        return None
    message = data.get("status_message")
    return number, (message[:_SNIPPET] if isinstance(message, str) else "")


def _snippet(body: bytes) -> str:
    return " ".join(body[:_SNIPPET].decode("utf-8", "replace").split())


def _reason(status: int, code: int | None, detail: str) -> str:
    head = f"HTTP {status}" + (f" / OCPI {code}" if code is not None else "")
    return f"{head}: {detail}" if detail else head


# -- delays ----------------------------------------------------------------------------------------


def retry_delay(attempts: int, base: float, cap: float,
                uniform: Callable[[float, float], float] = random.uniform) -> float:
    """Full jitter: uniform(0, min(cap, base * 2**attempts)); ``attempts`` = failures before this one."""
    ceiling = cap if attempts >= 64 else min(cap, base * (2 ** attempts))
    return uniform(0.0, ceiling)


def limit_retry_after(seconds: float, base: float, cap: float) -> float:
    """Honour the partner's wish within [base, 2 * cap] (svix clamps the same way)."""
    return min(max(seconds, base), cap * 2)


def next_delay(outcome: Retryable, attempts: int, base: float, cap: float,
               uniform: Callable[[float, float], float] = random.uniform) -> float:
    """How long a retryable row waits: the clamped Retry-After if given, else full-jitter backoff."""
    if outcome.retry_after is not None:
        return limit_retry_after(outcome.retry_after, base, cap)
    return retry_delay(attempts, base, cap, uniform)


@dataclass(frozen=True, slots=True)
class Settlement:
    """What an outcome means for the outbox row: its next state, attempt count, due time and error."""

    state: str  # done | pending | dead
    attempts: int
    next_attempt_at: datetime
    http_status: int | None
    ocpi_status: int | None
    error: str | None


def settle(outcome: Outcome, attempts: int, sent: bool, max_attempts: int, base: float, cap: float,
           now: datetime, uniform: Callable[[float, float], float] = random.uniform) -> Settlement:
    """The row's next state after ``outcome``; ``attempts`` counts the attempts made before this one.

    A Retryable counts as an attempt even when nothing was sent (an internal error), so a row that
    keeps hitting a bug ends in the dead letters instead of looping forever; a Deferred never counts.
    """
    if isinstance(outcome, Deferred):
        return Settlement("pending", attempts, now, None, None, outcome.reason)
    if isinstance(outcome, Delivered):
        return Settlement("done", attempts + 1, now, outcome.http_status, outcome.ocpi_status, None)
    if isinstance(outcome, Retryable):
        done = attempts + 1
        if done >= max_attempts:
            return Settlement("dead", done, now, outcome.http_status, outcome.ocpi_status,
                              f"{outcome.reason} (gave up after {done} attempts)")
        delay = next_delay(outcome, attempts, base, cap, uniform)
        return Settlement("pending", done, now + timedelta(seconds=delay), outcome.http_status,
                          outcome.ocpi_status, outcome.reason)
    return Settlement("dead", attempts + (1 if sent else 0), now, outcome.http_status, outcome.ocpi_status,
                      outcome.reason)


# -- pacing ----------------------------------------------------------------------------------------


class CircuitBreaker:
    """closed -> (``threshold`` retryable failures in a row) -> open for a growing interval ->
    half-open: one probe at a time -> closed on success, open again (twice as long) on failure.

    Only retryable failures count: a 4xx proves the partner is up, so it closes the breaker too.
    """

    def __init__(self, base: float, cap: float, threshold: int = BREAKER_THRESHOLD) -> None:
        self.base = base
        self.cap = cap
        self.threshold = threshold
        self.failures = 0
        self.trips = 0
        self.open_until: float | None = None

    @property
    def is_open(self) -> bool:
        return self.open_until is not None

    def allowance(self, now: float, in_flight: int) -> int | None:
        """How many sends may start now: None = no limit, 0 = wait, 1 = a single probe."""
        if self.open_until is None:
            return None
        if now < self.open_until:
            return 0
        # half-open: one probe, and only once everything sent before the trip has come back
        return 1 if in_flight == 0 else 0

    def wait(self, now: float) -> float:
        """Seconds until the breaker lets a probe through (0 when closed or due)."""
        return 0.0 if self.open_until is None else max(0.0, self.open_until - now)

    def success(self) -> None:
        self.failures = 0
        self.trips = 0
        self.open_until = None

    def failure(self, now: float) -> bool:
        """Count a retryable failure; True when this failure opened (or re-opened) the breaker."""
        self.failures += 1
        half_open = self.open_until is not None and now >= self.open_until
        if half_open or (self.open_until is None and self.failures >= self.threshold):
            self.trips += 1
            self.open_until = now + self.interval()
            return True
        return False

    def interval(self) -> float:
        """Open time of the current trip: base * 2**trips, at most min(cap, BREAKER_MAX_OPEN)."""
        ceiling = max(self.base, min(self.cap, BREAKER_MAX_OPEN))
        return ceiling if self.trips >= 64 else min(ceiling, self.base * (2 ** self.trips))


class TokenBucket:
    """``rate`` requests per second with a burst of one second's worth (at least one request)."""

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, wanted: int, now: float) -> int:
        """Take up to ``wanted`` whole tokens now; returns how many were taken."""
        self._refill(now)
        n = min(wanted, int(self.tokens))
        self.tokens -= n
        return max(n, 0)

    def give_back(self, n: int) -> None:
        """Return tokens taken for sends that did not happen (the claim found fewer rows)."""
        self.tokens = min(self.capacity, self.tokens + n)

    def wait(self, now: float) -> float:
        """Seconds until one whole token is there."""
        self._refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate


__all__ = [
    "CircuitBreaker", "Deferred", "Delivered", "Outcome", "Permanent", "Retryable", "Settlement", "TokenBucket",
    "classify", "from_error", "limit_retry_after", "next_delay", "retry_delay", "settle",
]
