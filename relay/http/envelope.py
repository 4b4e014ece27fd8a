"""OCPI response envelope."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.responses import Response

from relay.ocpi.times import format_datetime

_cache: list[Any] = [0, ""]


def timestamp() -> str:
    """Now, UTC, ``YYYY-MM-DDTHH:MM:SSZ`` (cached per second: this runs on every answer)."""
    now = int(time.time())
    if _cache[0] != now:
        _cache[0] = now
        _cache[1] = format_datetime(datetime.fromtimestamp(now, UTC))
    return str(_cache[1])


def envelope_bytes(status_code: int, message: str, data: Any = None) -> bytes:
    body: dict[str, Any] = {"status_code": status_code, "status_message": message, "timestamp": timestamp()}
    if data is not None:
        body["data"] = data
    return orjson.dumps(body)


def envelope(http_status: int, status_code: int, message: str, data: Any = None,
             headers: dict[str, str] | None = None) -> Response:
    return Response(envelope_bytes(status_code, message, data), status_code=http_status, media_type="application/json", headers=headers)
