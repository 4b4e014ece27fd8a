"""JSON logs: one formatter for relay and uvicorn loggers, a request-id context, secret redaction."""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any

import orjson

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_STD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {"message", "asctime", "taskName"}


class SecretFilter(logging.Filter):
    """Second net behind the masked Secret type: replaces any known secret value in a record."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: tuple[str, ...] = ()

    def set_secrets(self, secrets: Iterable[str]) -> None:
        # longest first so a secret that contains another is masked whole
        self._secrets = tuple(sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True))

    def scrub(self, text: str) -> str:
        for s in self._secrets:
            if s in text:
                text = text.replace(s, "**********")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            record.msg = self.scrub(record.getMessage())
            record.args = ()
            for k, v in list(vars(record).items()):
                if k not in _STD and isinstance(v, str):
                    setattr(record, k, self.scrub(v))
        return True


secret_filter = SecretFilter()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid:
            out["request_id"] = rid
        for k, v in vars(record).items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = secret_filter.scrub(self.formatException(record.exc_info))
        return orjson.dumps(out, default=str).decode()


# Ports chosen at start (`http_listening`, `grpc_listening`) go through this logger, which stays at
# INFO whatever RELAY_LOG_LEVEL is: scripts and tests read the ports from these lines.
ports_logger = logging.getLogger("relay.ports")


def setup_logging(level: str = "INFO") -> None:
    """Route relay, uvicorn and grpc loggers through one JSON handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(secret_filter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    ports_logger.setLevel(logging.INFO)
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)
