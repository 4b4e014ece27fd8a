"""Pull positions: where each pull source stands per module, and the small reads a pull pass needs.

A position is the ``date_from`` of the next incremental pull of (source, module). It moves only
after a successful module pass; a failed pass records its status and leaves the position alone.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class PullPosition:
    """One row of ``pull_position``."""

    source: str
    module: str
    position: datetime | None
    last_run_at: datetime | None
    last_status: str | None


class Positions(abc.ABC):
    """The pull client's part of the store (implemented by ``SqlStore``)."""

    @abc.abstractmethod
    async def get_positions(self, source: str) -> dict[str, PullPosition]:
        """Positions of every module of ``source``, keyed by module (modules never pulled are absent)."""

    async def get_position(self, source: str, module: str) -> PullPosition | None:
        """The position of (``source``, ``module``), or None before its first successful pass."""
        return (await self.get_positions(source)).get(module)

    @abc.abstractmethod
    async def set_position(self, source: str, module: str, *, position: datetime | None, run_at: datetime,
                           status: str, keep_position: bool = False) -> None:
        """Record a pass of (``source``, ``module``): its status and time, and (unless ``keep_position``)
        the new position. A failed pass calls this with ``keep_position=True`` so the next pass starts
        where the last good one ended (a first pass that failed leaves no position: the next is full)."""

    @abc.abstractmethod
    async def rejected_hashes(self, source: str, module: str, since: datetime) -> set[str]:
        """SHA-256 of the bodies this pull source had refused for ``module`` since ``since``.

        An incremental pull re-reads the newest objects (``date_from`` is inclusive and moved back by a
        safety overlap), so an invalid object would otherwise land in ``rejected`` again on every pass.
        """

    @abc.abstractmethod
    async def existing_ids(self, module: str, object_ids: Iterable[str]) -> set[str]:
        """Which of ``object_ids`` already have a live state in ``module`` (under any CPO).

        One query per page of a pull, so the pass can tell a new object from a changed one without a
        read per object.
        """
