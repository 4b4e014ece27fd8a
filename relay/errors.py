"""Error families of the relay.

    OcpiError            the one error that reaches the HTTP wire (status + OCPI status_code)
    RelayError           internal failures, never shown to a sender as such
     +-- StoreError      database failures, translated inside relay.store
     |    +-- RowRefused the database refused one operation's values (its fault, not the database's)
     +-- ConfigError     forwarding.yaml / settings problems, carry ``file:line``
     +-- DeliveryError   a failed delivery attempt, ``retryable`` says what the worker does next
"""

from __future__ import annotations

# OCPI 2.1.1 status codes (transport_and_format / status_codes).
SUCCESS = 1000
CLIENT_ERROR = 2000
INVALID_PARAMS = 2001
NOT_ENOUGH_INFO = 2002
UNKNOWN_LOCATION = 2003
SERVER_ERROR = 3000


class OcpiError(Exception):
    """An answer the receiver gives instead of 1000: HTTP status, OCPI status_code, message."""

    def __init__(self, http_status: int, status_code: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.status_code = status_code
        self.message = message

    @classmethod
    def invalid(cls, field: str, reason: str) -> OcpiError:
        """400/2001 naming the offending field path (``evses[1].connectors[0].standard``)."""
        return cls(400, INVALID_PARAMS, f"{field}: {reason}" if field else reason)

    @classmethod
    def bad_request(cls, message: str) -> OcpiError:
        return cls(400, INVALID_PARAMS, message)

    @classmethod
    def unauthorized(cls, message: str = "missing or unknown token") -> OcpiError:
        return cls(401, CLIENT_ERROR, message)

    @classmethod
    def forbidden(cls, message: str) -> OcpiError:
        return cls(403, CLIENT_ERROR, message)

    @classmethod
    def not_found(cls, message: str = "unknown object") -> OcpiError:
        return cls(404, UNKNOWN_LOCATION, message)

    @classmethod
    def method_not_allowed(cls, message: str = "method not allowed") -> OcpiError:
        return cls(405, CLIENT_ERROR, message)

    @classmethod
    def too_large(cls, limit: int) -> OcpiError:
        return cls(413, INVALID_PARAMS, f"body larger than {limit} bytes")

    @classmethod
    def server(cls, message: str = "server error, please retry") -> OcpiError:
        return cls(500, SERVER_ERROR, message)

    @classmethod
    def unavailable(cls, message: str = "storage unavailable, nothing was stored; please retry") -> OcpiError:
        return cls(503, SERVER_ERROR, message)

    @classmethod
    def of(cls, exc: BaseException) -> OcpiError:
        """The one mapping from any exception to the answer a sender gets: an OcpiError as it is, a
        store failure 503/3000 (nothing was stored: GreenFlux may push again), anything else 500/3000,
        never echoing the exception's text. Used by the fast path and the Starlette handlers alike."""
        if isinstance(exc, OcpiError):
            return exc
        if isinstance(exc, StoreError):
            return cls.unavailable()
        return cls.server("internal server error")


class RelayError(Exception):
    """Base of the internal error families."""


class StoreError(RelayError):
    """The database failed (unreachable, locked, read-only, constraint)."""


class RowRefused(StoreError):
    """The database refused the values of one operation (too long, out of range, a NUL byte).

    The group commit isolates it from the rest of its batch, which commits; the caller answers it as
    invalid input (400/2001) rather than as a database fault (3000).
    """


class ConfigError(RelayError):
    """A configuration problem; ``problems`` holds ``file:line: message`` strings."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class DeliveryError(RelayError):
    """A delivery attempt failed; ``retryable`` False sends the row to the dead letters."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        http_status: int | None = None,
        ocpi_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.http_status = http_status
        self.ocpi_status = ocpi_status
        self.retry_after = retry_after
