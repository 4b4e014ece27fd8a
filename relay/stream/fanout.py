"""Live fan-out: one hub wakes subscribers when new events may exist; the store stays the truth.

There is no per-subscriber queue. A woken subscriber reads the next page after its own cursor from the
store, so a slow subscriber holds at most one page whatever the ingest rate, and catch-up and live
are the same loop: there is no seam where an event could be missed or sent twice (DESIGN, gRPC: "a
slow subscriber never grows server memory without bound: it falls back to reading from the store").

Subscribers that stand at the same position with the same filter (several services catching up
together, or everyone at the head after a commit) share one read: the hub keeps a small, bounded
cache of recently read pages, already converted to wire messages. It is only a cache of immutable
reads; dropping any entry costs a database query, never an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from relay import metrics
from relay.errors import StoreError
from relay.store.base import EventFilter, EventRecord, Store

logger = logging.getLogger(__name__)

PAGE_SIZE = 500
CACHED_EVENTS = 2000  # events kept in shared pages (about 3 KB each as messages)
CACHED_PAGES = 64  # pages kept, however small (a filtered subscriber at the head reads many short ones)
CONVERT_ON_LOOP = 32  # events of a page converted on the event loop; more on a worker thread
POLL_INTERVAL = 1.0  # how often the hub asks the database when no commit woke it (other processes)
MAX_IDLE_WAIT = 5.0  # a subscriber re-checks its filter (config reloads) at least this often

T = TypeVar("T")
_HUBS: weakref.WeakSet[Hub[Any]] = weakref.WeakSet()


def live_hubs() -> list[Hub[Any]]:
    """Hubs of the running gRPC servers in this process (a debug hook for tests and benchmarks)."""
    return list(_HUBS)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One read: ``items`` (converted events) and ``through``, the seq the reader may move its cursor to.

    A full page covers up to its last event; a short one covers up to the head the hub knew before
    the read started, since every event up to that head was committed and visible to the read.
    """

    items: list[T]
    through: int
    full: bool


@dataclass(eq=False, slots=True)
class Cursor:
    """One open subscription as the hub sees it: where it stands and how many events it holds."""

    seq: int
    held: int = 0  # events of the page being sent (at most one page)
    peak_held: int = 0


class Hub(Generic[T]):
    """Tracks the newest committed seq, wakes waiting subscribers, and shares their page reads.

    ``latest`` only ever names a committed seq whose events are all visible to a new read (the store
    reports seqs after their commit), which is what lets a short page skip ahead to it.
    """

    def __init__(self, store: Store, convert: Callable[[EventRecord], T], *, page_size: int = PAGE_SIZE,
                 cached_events: int = CACHED_EVENTS, poll_interval: float = POLL_INTERVAL) -> None:
        self.store = store
        self.convert = convert
        self.page_size = page_size
        self.cached_events = cached_events
        self.poll_interval = poll_interval
        self.latest = 0
        self.closed = False
        self.cursors: set[Cursor] = set()
        self._changed = asyncio.Event()
        self._pages: OrderedDict[tuple[int, EventFilter], asyncio.Task[Page[T]]] = OrderedDict()
        self._cached = 0
        _HUBS.add(self)

    async def start(self) -> None:
        """Learn the current head before the first subscriber arrives."""
        self.latest = await self.store.max_seq()

    async def run(self) -> None:
        """Follow the store's commits until cancelled (one task per server, not one per subscriber)."""
        while not self.closed:
            try:
                latest = await self.store.wait_for_events(self.latest, self.poll_interval)
            except StoreError as exc:
                logger.warning("stream hub cannot reach the database", extra={"error": str(exc)[:200]})
                await asyncio.sleep(self.poll_interval)
                continue
            if latest > self.latest:
                self.latest = latest
                self.poke()
            self._report_lag()

    def poke(self) -> None:
        """Wake every waiting subscriber (new events, a config reload, or shutdown)."""
        self._changed.set()
        self._changed = asyncio.Event()

    def close(self) -> None:
        """Shutdown: every ``follow`` returns at its next wait instead of waiting for events."""
        self.closed = True
        self.poke()

    async def drain(self) -> None:
        """After the server stopped: end page reads nobody waits for any more and drop the cache."""
        pending = [t for t in self._pages.values() if not t.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._pages.clear()
        self._cached = 0

    async def wait(self, after_seq: int, timeout: float = MAX_IDLE_WAIT) -> None:
        """Return once an event with seq > ``after_seq`` may exist, on a poke, or after ``timeout``."""
        if self.latest > after_seq or self.closed:
            return
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout)

    @property
    def cached(self) -> int:
        """Events held in shared pages right now (bounded by ``cached_events`` plus reads in flight)."""
        return self._cached

    async def read(self, after_seq: int, flt: EventFilter) -> Page[T]:
        """The page after ``after_seq`` for ``flt``: shared with any subscriber asking the same."""
        # Shielded: a subscriber that goes away must not cancel a read others are waiting for.
        return await asyncio.shield(self.prefetch(after_seq, flt))

    def prefetch(self, after_seq: int, flt: EventFilter) -> asyncio.Task[Page[T]]:
        """Start (or find) the read of the page after ``after_seq`` without waiting for it."""
        key = (after_seq, flt)
        task = self._pages.get(key)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            # A cached page read, shared by subscribers (so not cancelled with any one of them);
            # the hub owns it: drain() cancels and awaits every read still running at shutdown.
            task = asyncio.create_task(self._read(after_seq, flt), name="grpc-page")
            self._pages[key] = task
            task.add_done_callback(self._account)
        else:
            self._pages.move_to_end(key)
        return task

    async def _read(self, after_seq: int, flt: EventFilter) -> Page[T]:
        head = self.latest  # before the read: see Page
        records = await self.store.read_events(after_seq, self.page_size, flt)
        full = len(records) == self.page_size
        through = records[-1].seq if records else after_seq
        if not full:
            through = max(through, head)
        if len(records) <= CONVERT_ON_LOOP:
            return Page(self._convert_all(records), through, full)
        # a catching-up page (500 events: ~6 ms) is converted on a worker thread, off the loop
        return Page(await asyncio.to_thread(self._convert_all, records), through, full)

    def _convert_all(self, records: list[EventRecord]) -> list[T]:
        convert = self.convert
        return [convert(r) for r in records]

    def _account(self, task: asyncio.Task[Page[T]]) -> None:
        if task.cancelled() or task.exception() is not None:
            for key, t in list(self._pages.items()):
                if t is task:
                    del self._pages[key]
            return
        self._cached += len(task.result().items)
        while self._pages and (self._cached > self.cached_events or len(self._pages) > CACHED_PAGES):
            _, oldest = next(iter(self._pages.items()))
            if not oldest.done():
                break  # reads in flight are never dropped; they are accounted when they finish
            self._pages.popitem(last=False)
            self._cached -= len(oldest.result().items)

    def _report_lag(self) -> None:
        lag = max((self.latest - c.seq for c in self.cursors), default=0)
        metrics.STREAM_LAG.set(max(lag, 0))


async def follow(
    hub: Hub[T], after_seq: int, flt: Callable[[], EventFilter]
) -> AsyncGenerator[list[T], None]:
    """Pages of applied events with seq > ``after_seq`` matching ``flt()``, from history then live.

    Ends when the hub closes. ``flt`` is called before every read so that a config reload can narrow
    (or refuse, by raising) an open subscription. The caller must consume each page before asking
    for the next one: that is the only buffering there is.
    """
    cursor = Cursor(after_seq)
    hub.cursors.add(cursor)
    metrics.STREAM_SUBSCRIBERS.inc()
    try:
        while not hub.closed:
            if hub.latest > cursor.seq:
                current = flt()
                page = await hub.read(cursor.seq, current)
                if page.full:
                    # Catching up: let the database read the next page while this one is sent.
                    hub.prefetch(page.through, current)
                if page.items:
                    cursor.held = len(page.items)
                    cursor.peak_held = max(cursor.peak_held, cursor.held)
                    yield page.items
                    cursor.held = 0
                    metrics.STREAM_EVENTS.inc(len(page.items))
                # A short page also skips the stale, unmatched and filtered-out seqs up to the head,
                # so the next read starts after them instead of scanning them again.
                cursor.seq = page.through
                if page.full:
                    continue  # catching up: read on without waiting
            await hub.wait(cursor.seq)
            flt()  # a reload while idle is noticed here too
    finally:
        hub.cursors.discard(cursor)
        metrics.STREAM_SUBSCRIBERS.dec()
