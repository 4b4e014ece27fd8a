"""Times on the wire: the OCPI DateTime text the relay writes, and an HTTP ``Retry-After`` answer.

Parsing a pushed DateTime is validation and lives in relay.ocpi.validate (``parse_datetime``).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def format_datetime(dt: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS[.f]Z`` in UTC, fraction without trailing zeros; naive means UTC."""
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    text = dt.isoformat()
    return f"{text.rstrip('0')}Z" if dt.microsecond else f"{text}Z"


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP-date; None if absent or bad."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)
