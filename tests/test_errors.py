"""The one mapping from an exception to what a sender gets on the wire (fast path and routes alike)."""

from __future__ import annotations

from relay.errors import INVALID_PARAMS, SERVER_ERROR, OcpiError, RowRefused, StoreError


def test_an_ocpi_error_reaches_the_wire_as_it_is() -> None:
    err = OcpiError.invalid("evses[0].status", "'OCCUPIED' is not a valid Status")
    assert OcpiError.of(err) is err
    assert (err.http_status, err.status_code) == (400, INVALID_PARAMS)


def test_a_store_failure_is_503_3000_and_says_nothing_was_stored() -> None:
    err = OcpiError.of(StoreError("database write failed: OperationalError: disk I/O error at /var/lib/x"))
    assert (err.http_status, err.status_code) == (503, SERVER_ERROR)
    assert "nothing was stored" in err.message and "/var/lib" not in err.message
    assert OcpiError.of(RowRefused("value too long")).http_status == 503  # the ingest layer answers it 2001 first


def test_a_crash_is_500_3000_and_never_echoes_what_it_carried() -> None:
    err = OcpiError.of(KeyError("Token gfx-secret and the pushed body"))
    assert (err.http_status, err.status_code) == (500, SERVER_ERROR)
    assert err.message == "internal server error"
