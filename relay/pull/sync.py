"""One pull pass of a source: fetch every page of each module, ingest each object like a push
(origin ``pull``), count what changed, and move the module's position after a successful pass.

Position rule: after a successful module pass the next ``date_from`` is
``min(newest last_updated seen, pass start - SAFETY_OVERLAP)``. The newest ``last_updated`` is on
the sender's clock, so a sender clock behind ours cannot make us skip what it changes next; the pass
start minus the overlap covers objects changed on pages already read while the pass ran (their
new ``last_updated`` is later than the start but can be earlier than the newest one seen), plus a
minute of clock skew. A pass that saw nothing keeps the old position; a failed pass never moves it.
Re-reading the overlap is cheap: identical objects create nothing. A pass that refused every object
it fetched (``ALL_REFUSED_MIN`` or more) counts as failed and does not move the position either.

A pass that reaches ``PullLimits.max_pages`` stops there without moving the position (lists are in
creation order, not by ``last_updated``, so what was read says nothing about the rest). With a
``resume`` map (the schedule keeps one per source) the next pass continues from the next page; the
position moves once the whole list was read, from the start of the first of those passes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
from yarl import URL

from relay import metrics
from relay.errors import OcpiError, StoreError
from relay.ingest import Ingestor, Outcome, Push, Source
from relay.ocpi.paths import Address
from relay.ocpi.validate import parse_datetime
from relay.pull.client import Page, PullAuthError, PullError, PullLimits, RetryPolicy, SenderClient, safe_url
from relay.routing.model import CpoPattern, PullSource
from relay.store import Store
from relay.store.positions import PullPosition

logger = logging.getLogger(__name__)

SAFETY_OVERLAP = timedelta(minutes=1)
# How far back refusals of this source are looked up, so that re-reading an unchanged invalid object
# in the overlap does not refuse it again (wide: `date_from` is the sender's clock, `received_at` ours).
REJECTED_LOOKBACK = timedelta(days=1)
# OCPI 2.1.1 makes date_from mandatory on the sessions list; a full pull asks from the epoch.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LEVELS = {"locations": "location", "sessions": "session", "cdrs": "cdr", "tariffs": "tariff"}
# Objects ingested at once: one group commit takes them together (Settings.batch_max defaults to 512).
INGEST_CHUNK = 512
ANY_CPO = (CpoPattern("*", "*"),)
# A module pass that refused every object it fetched, and fetched at least this many, failed: the
# source is misconfigured (e.g. no default_cpo for 2.1.1 objects) or the sender broken. A lone refused
# object is a data problem, kept in `rejected` like a refused push, not a failed pass.
ALL_REFUSED_MIN = 2

Progress = Callable[["ModuleSummary"], None]


@dataclass
class ModuleSummary:
    """What one module pass did; ``error`` is set when it failed (its position did not move)."""

    source: str
    module: str
    full: bool
    date_from: datetime | None = None
    fetched: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    rejected: int = 0
    total: int | None = None  # the sender's latest X-Total-Count
    seconds: float = 0.0
    position: datetime | None = None
    error: str | None = None
    auth_failed: bool = False  # the sender refused the token: later modules are not tried
    capped: bool = False  # stopped at PullLimits.max_pages; the position did not move

    @property
    def ok(self) -> bool:
        return self.error is None

    def line(self) -> str:
        """The one-line summary `relay pull --once` prints."""
        text = (f"{self.source} {self.module}: fetched={self.fetched} new={self.new} changed={self.changed} "
                f"unchanged={self.unchanged} rejected={self.rejected} seconds={self.seconds:.2f} "
                f"({'full' if self.full else 'incremental'})")
        if self.capped:
            text += " STOPPED at the page cap (the next pass continues)"
        return text if self.ok else f"{text} FAILED: {self.error}"


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where a pass cut short by the page cap stopped, for the next pass of the same module."""

    next_url: str
    date_from: datetime | None  # the position the cut pass started from (the chain's date_from)
    started: datetime  # start of the first pass of the chain: the position is computed from it
    newest: datetime | None



def ingest_source(source: PullSource) -> Source:
    """The ingest Source of a pull: pull sources are trusted configuration, so any CPO is allowed;
    objects without party fields fall back to the source's ``default_cpo``."""
    return Source(name=source.name, modules=frozenset(source.modules), cpos=ANY_CPO,
                  default_cpo=source.default_cpo)


def pulled_push(source: PullSource, module: str, obj: Any, received_at: datetime) -> Push:
    """A pulled object as the Push ingest understands.

    Locations, sessions and tariffs are a PUT of the whole object; a CDR is a POST to ``/cdrs``.
    Sessions merge as PATCH: GreenFlux serves them only completed and aggregated, without the
    charging periods that only pushes carry (OCPI-2.1.1-receiver.md §14 #16), so a pull must not
    erase them; an empty or null ``charging_periods`` is left out of the body for the same reason.
    ``path`` (kept only on a refusal) is the receiver path when the body names its party, else the
    sender's own path of the object below the source URL (``/locations/{id}``).
    """
    if module == "sessions" and isinstance(obj, dict) and not obj.get("charging_periods") \
            and "charging_periods" in obj:
        obj = {k: v for k, v in obj.items() if k != "charging_periods"}
    body = orjson.dumps(obj)
    fields = obj if isinstance(obj, dict) else {}
    object_id = fields.get("id") if isinstance(fields.get("id"), str) else None
    cc, party = fields.get("country_code"), fields.get("party_id")
    has_party = isinstance(cc, str) and isinstance(party, str) and len(cc) == 2 and len(party) == 3
    if module == "cdrs":
        address = Address(module, "cdr", object_id=object_id)
        method, path = "POST", "/cdrs"
    elif has_party:
        address = Address(module, LEVELS[module], cc, party, object_id)
        method, path = "PUT", f"/{module}/{cc}/{party}/{object_id or ''}"
    else:
        # Without a party the ids come from the body and ingest attributes the object (2.2 fields,
        # the stored location, else default_cpo). object_id stays None here: ingest checks a path
        # object id together with a path party, which a pulled 2.1.1 object does not have.
        address = Address(module, LEVELS[module])
        method, path = "PUT", f"/{module}/{object_id}" if object_id else f"/{module}"
    return Push(method=method, path=path, address=address, body=body, source=ingest_source(source),
                origin="pull", received_at=received_at, merge_method="PATCH" if module == "sessions" else None)


async def pull_source(
    store: Store, ingestor: Ingestor, source: PullSource, *, full: bool = False,
    progress: Progress | None = None, retry: RetryPolicy | None = None, limits: PullLimits | None = None,
    resume: dict[str, ResumePoint] | None = None,
) -> list[ModuleSummary]:
    """One pass over every module of ``source``; one HTTP session for the whole pass.

    Incremental from each module's stored position unless ``full`` (or never pulled). A module that
    fails is reported and the next one still runs, except after a 401/403: the token is wrong for
    all of them, so the pass stops there instead of hammering the sender. ``resume`` (by module) is
    read and updated for passes cut short by the page cap (module docstring).
    """
    summaries: list[ModuleSummary] = []
    positions = await store.get_positions(source.name)
    connector = aiohttp.TCPConnector(limit=4)
    async with aiohttp.ClientSession(connector=connector, raise_for_status=False) as session:
        client = SenderClient(session, source, retry=retry, limits=limits)
        for module in source.modules:
            prior = positions.get(module)
            if summaries and summaries[-1].auth_failed:
                summaries.append(ModuleSummary(source.name, module, full, error=summaries[-1].error,
                                               auth_failed=True))
                continue
            summaries.append(await _pull_module(store, ingestor, client, module, prior, full, progress,
                                                {} if resume is None else resume))
    record_pass(source.name, all(s.ok for s in summaries))
    return summaries


async def _pull_module(
    store: Store, ingestor: Ingestor, client: SenderClient, module: str, prior: PullPosition | None,
    full: bool, progress: Progress | None, resume: dict[str, ResumePoint],
) -> ModuleSummary:
    source = client.source
    run_at = datetime.now(UTC)
    t0 = time.monotonic()
    date_from = None if full or prior is None else prior.position
    point = resume.pop(module, None)
    if point is not None and point.date_from != date_from:
        point = None  # the position moved meanwhile (another replica, --full): start over
    started = point.started if point is not None else run_at
    summary = ModuleSummary(source.name, module, full=date_from is None, date_from=date_from)
    try:
        run = _Pass(store, ingestor, client, module, summary, progress)
        if point is not None:
            run.newest = point.newest
        newest = await run.run(date_from, point.next_url if point is not None else None)
        summary.seconds = time.monotonic() - t0
        if summary.fetched >= ALL_REFUSED_MIN and summary.rejected == summary.fetched:
            raise PullError(_all_refused(source, summary.fetched), retryable=False)
        if run.cut_at is not None:
            summary.capped = True
            resume[module] = ResumePoint(run.cut_at, date_from, started, newest)
            logger.warning("pull pass stopped at the page cap", extra={
                "source": source.name, "ocpi_module": module, "pages": client.limits.max_pages,
                "next_url": safe_url(URL(run.cut_at))})
            await store.set_position(source.name, module, position=None, run_at=run_at,
                                     status=f"ok: {summary.line()}", keep_position=True)
        else:
            summary.position = _next_position(prior.position if prior else None, newest, started)
            await store.set_position(source.name, module, position=summary.position, run_at=run_at,
                                     status=f"ok: {summary.line()}")
    except (PullError, StoreError) as err:
        summary.seconds = time.monotonic() - t0
        summary.error = str(err)
        summary.auth_failed = isinstance(err, PullAuthError)
        logger.error("pull failed", extra={"source": source.name, "ocpi_module": module, "error": str(err)})
        try:
            await store.set_position(source.name, module, position=None, run_at=run_at,
                                     status=f"failed: {err}", keep_position=True)
        except StoreError:
            logger.exception("could not record the failed pull", extra={"source": source.name})
    logger.info("pull finished", extra={
        "source": source.name, "ocpi_module": module, "full": summary.full, "fetched": summary.fetched,
        "new": summary.new, "changed": summary.changed, "unchanged": summary.unchanged,
        "rejected": summary.rejected, "seconds": round(summary.seconds, 3), "ok": summary.ok})
    return summary


def _all_refused(source: PullSource, count: int) -> str:
    """A pass that stored nothing it fetched fails: the source is misconfigured or the sender broken."""
    hint = (" (objects without country_code/party_id, as OCPI 2.1.1 sends them, need default_cpo on the source)"
            if source.default_cpo is None else "")
    return f"every object fetched ({count}) was refused{hint}; see `relay rejected list`"


def record_pass(source: str, ok: bool) -> None:
    """The pull gauges after one pass of ``source``: last success time, or one more failure in a row."""
    if ok:
        metrics.labelled(metrics.PULL_LAST_SUCCESS, source).set(time.time())
        metrics.labelled(metrics.PULL_FAILURES, source).set(0)
    else:
        metrics.labelled(metrics.PULL_FAILURES, source).inc()


def _next_position(previous: datetime | None, newest: datetime | None, started: datetime) -> datetime | None:
    """See the module docstring: min(newest seen, start - overlap); unchanged when nothing was seen
    (also after ``--full``: an empty answer says nothing about where the sender's changes are)."""
    if newest is None:
        return previous
    return min(newest, started - SAFETY_OVERLAP)


class _Pass:
    """Fetches pages in one task and ingests them in another, so HTTP and commits overlap."""

    def __init__(self, store: Store, ingestor: Ingestor, client: SenderClient, module: str,
                 summary: ModuleSummary, progress: Progress | None) -> None:
        self.store, self.ingestor, self.client, self.module = store, ingestor, client, module
        self.summary, self.progress = summary, progress
        self.newest: datetime | None = None
        self.seen: dict[str, Any] = {}  # id -> last_updated, to skip repeats when pages shift
        self.known_bad: set[str] = set()
        self.cut_at: str | None = None  # next page URL when the page cap ended the pass

    async def run(self, date_from: datetime | None, start_url: str | None = None) -> datetime | None:
        """Ingest every page (from ``start_url`` when resuming, at most ``max_pages``); returns the newest
        ``last_updated`` seen. Raises PullError/StoreError."""
        if date_from is not None:
            self.known_bad = await self.store.rejected_hashes(self.client.source.name, self.module,
                                                              date_from - REJECTED_LOOKBACK)
        ask_from = EPOCH if date_from is None and self.module == "sessions" else date_from
        queue: asyncio.Queue[Page | BaseException | None] = asyncio.Queue(maxsize=2)
        # The page reader runs ahead by at most the queue's two pages; the finally always cancels and awaits it.
        producer = asyncio.create_task(self._produce(self.client.pages(self.module, ask_from, start_url), queue))
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                await self._ingest_page(item)
        finally:
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)
        return self.newest

    async def _ingest_page(self, page: Page) -> None:
        self.summary.total = page.total
        logger.debug("pull page", extra={"source": self.client.source.name, "ocpi_module": self.module,
                                         "url": page.url, "count": len(page.objects), "total": page.total,
                                         "limit": page.limit})
        fresh: list[Any] = []
        for obj in page.objects:
            key = obj.get("id") if isinstance(obj, dict) else None
            lu = obj.get("last_updated") if isinstance(obj, dict) else None
            if isinstance(key, str):
                if key in self.seen and self.seen[key] == lu:
                    continue  # the same version again: the list shifted under the crawl
                self.seen[key] = lu
            fresh.append(obj)
            self._note_newest(lu)
        known = await self.store.existing_ids(self.module,
                                              [o["id"] for o in fresh if isinstance(o, dict) and isinstance(o.get("id"), str)])
        received_at = datetime.now(UTC)
        source = self.client.source
        for i in range(0, len(fresh), INGEST_CHUNK):
            chunk = fresh[i : i + INGEST_CHUNK]
            pushes = [pulled_push(source, self.module, obj, received_at) for obj in chunk]
            outcomes = await asyncio.gather(*(self._ingest(p) for p in pushes))
            for obj, outcome in zip(chunk, outcomes, strict=True):
                existed = isinstance(obj, dict) and obj.get("id") in known
                self._count(outcome, existed)
            self.summary.fetched += len(chunk)
            if self.progress is not None:
                self.progress(self.summary)

    async def _ingest(self, push: Push) -> Outcome | None:
        if self.known_bad and hashlib.sha256(push.body).hexdigest() in self.known_bad:
            return None  # refused before and unchanged since: already in `rejected`
        return await self.ingestor.handle(push)

    def _count(self, outcome: Outcome | None, existed: bool) -> None:
        source, s = self.client.source.name, self.summary
        if outcome is None or outcome.status == "rejected":
            s.rejected += 1
            kind = "rejected"
        elif outcome.status == "applied":
            kind = "changed" if existed else "new"
            if existed:
                s.changed += 1
            else:
                s.new += 1
            # a pull only applies what the stored state lacked: a push that never arrived
            metrics.PULL_ONLY_CHANGES.labels(source, self.module).inc()
        else:  # identical, or not newer than the stored state
            s.unchanged += 1
            kind = "unchanged"
        metrics.PULL_OBJECTS.labels(source, kind).inc()

    def _note_newest(self, lu: Any) -> None:
        if lu is None:
            return
        try:
            when = parse_datetime(lu, "last_updated")
        except OcpiError:  # an unreadable timestamp is ingest's to refuse, not ours to order by
            return
        if self.newest is None or when > self.newest:
            self.newest = when


    async def _produce(self, pages: AsyncIterator[Page], queue: asyncio.Queue[Page | BaseException | None]) -> None:
        """Feed pages to the ingesting side, at most ``max_pages``; hand a failure over instead of
        raising it here."""
        left = self.client.limits.max_pages
        try:
            async for page in pages:
                await queue.put(page)
                left -= 1
                if left <= 0 and page.next_url is not None:
                    self.cut_at = page.next_url
                    break
        except Exception as exc:  # noqa: BLE001 - re-raised by the consumer
            await queue.put(exc)
            return
        await queue.put(None)
