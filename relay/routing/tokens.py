"""Constant-time token lookup: who presented this token?

Every known token is compared with ``hmac.compare_digest``, with no early exit, so the time a
lookup takes does not tell which token (or how much of one) matched.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Iterable
from typing import Generic, TypeVar

Owner = TypeVar("Owner")


class TokenTable(Generic[Owner]):
    """Tokens and their owners; an owner may also be found by the base64 of its token."""

    __slots__ = ("_entries",)

    def __init__(self, entries: Iterable[tuple[Owner, str, bool]]) -> None:
        """``entries``: (owner, token, whether its base64 form is accepted too)."""
        self._entries = tuple(
            (owner, token.encode(), base64.b64encode(token.encode()) if accept_base64 else None)
            for owner, token, accept_base64 in entries
        )

    def find(self, presented: str) -> Owner | None:
        """The first owner whose token equals ``presented`` (raw, or base64 where accepted), or None."""
        given = presented.encode()
        found: Owner | None = None
        for owner, raw, b64 in self._entries:
            ok = hmac.compare_digest(given, raw)
            if b64 is not None:
                ok = hmac.compare_digest(given, b64) | ok
            if ok and found is None:
                found = owner
        return found
