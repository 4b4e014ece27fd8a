"""A fake GreenFlux sender interface (Starlette on port 0, tests/servers.py's ``serve``) and pull fixtures.

The fake serves ``/locations``, ``/sessions``, ``/cdrs`` and ``/tariffs`` as OCPI 2.1.1 lists:
``date_from`` (inclusive) / ``date_to`` (exclusive) on ``last_updated``, ``offset``/``limit``
(capped), ``Link: <absolute next URL with every filter>; rel="next"``, ``X-Total-Count``,
``X-Limit`` and the OCPI envelope. It checks ``Authorization: Token <token>`` and records every
request; a test scripts failures per request number and hooks that change the data between pages.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from relay.ingest import Ingestor
from relay.pull.client import RetryPolicy
from relay.pull.sync import ModuleSummary, pull_source
from relay.routing.model import PullSource
from tests.conftest import RelayHandle, example
from tests.servers import serve

PULL_TOKEN = "pull-test-token-9d3e71"
SOURCE = "gfx-pull"
BASE_TIME = datetime(2024, 6, 1, 10, 0, 0, tzinfo=UTC)
MODULES = ("locations", "sessions", "cdrs", "tariffs")


def ts(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def at(seconds: float) -> str:
    """``last_updated`` ``seconds`` after BASE_TIME."""
    return ts(BASE_TIME + timedelta(seconds=seconds))


# -- objects as GreenFlux serves them ----------------------------------------------------------------


def location(object_id: str, lu: str, **changes: Any) -> dict[str, Any]:
    body = example("location_full.json")
    body.update(id=object_id, last_updated=lu, **changes)
    return body


def session(object_id: str, lu: str, **changes: Any) -> dict[str, Any]:
    """A completed session as the sender interface serves it: aggregated, no charging periods."""
    body = example("session_completed.json")
    body.pop("charging_periods")
    body.update(id=object_id, last_updated=lu, **changes)
    return body


def cdr(object_id: str, lu: str) -> dict[str, Any]:
    body = example("cdr_full.json")
    body.update(id=object_id, last_updated=lu)
    return body


def tariff(object_id: str, lu: str, price: float = 0.45) -> dict[str, Any]:
    return {"id": object_id, "currency": "EUR", "last_updated": lu,
            "elements": [{"price_components": [{"type": "ENERGY", "price": price, "step_size": 1}]}]}


# -- the fake sender -----------------------------------------------------------------------------------


@dataclass
class Received:
    """One request the fake answered (or refused)."""

    module: str
    query: dict[str, str]
    authorization: str | None


@dataclass
class FakeSender:
    token: str
    port: int = 0
    max_limit: int = 1000  # the server caps ``limit`` like a real sender may
    send_link: bool = True
    link_base: str | None = None  # another base URL for Link headers (a misbehaving sender)
    objects: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {m: [] for m in MODULES})
    requests: list[Received] = field(default_factory=list)
    failures: dict[int, tuple[int, int, dict[str, str]]] = field(default_factory=dict)
    # called with each authorised request before it is answered: lets a test change data between pages
    before_page: Callable[[Received], None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ocpi/cpo/2.1.1"

    def put(self, module: str, obj: dict[str, Any]) -> None:
        """Create or replace an object; a replaced one keeps its place (lists are creation-ordered)."""
        items = self.objects[module]
        for i, old in enumerate(items):
            if old.get("id") == obj.get("id"):
                items[i] = copy.deepcopy(obj)
                return
        items.append(copy.deepcopy(obj))

    def fail(self, request_number: int, status: int = 503, headers: dict[str, str] | None = None, *,
             ocpi_code: int = 3000) -> None:
        """Answer the ``request_number``-th request (1-based, over every module) with HTTP ``status``
        and an envelope carrying ``ocpi_code``."""
        self.failures[request_number] = (status, ocpi_code, headers or {})

    def queries(self, module: str) -> list[dict[str, str]]:
        return [r.query for r in self.requests if r.module == module]

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/ocpi/cpo/2.1.1/{module}", self._list, methods=["GET"])])

    async def _list(self, request: Request) -> Response:
        module = request.path_params["module"]
        rec = Received(module, dict(request.query_params), request.headers.get("authorization"))
        self.requests.append(rec)
        if rec.authorization != f"Token {self.token}":
            return _envelope(None, 2000, "Unauthorized: unknown token", status=401)
        scripted = self.failures.get(len(self.requests))
        if scripted is not None:
            return _envelope(None, scripted[1], "scripted failure", status=scripted[0], headers=scripted[2])
        if module not in self.objects:
            return _envelope(None, 2000, f"unknown module {module}", status=404)
        if self.before_page is not None:
            self.before_page(rec)
        q = rec.query
        items = self.objects[module]
        if "date_from" in q:
            lo = _parse(q["date_from"])
            items = [o for o in items if _parse(o["last_updated"]) >= lo]
        if "date_to" in q:
            hi = _parse(q["date_to"])
            items = [o for o in items if _parse(o["last_updated"]) < hi]
        offset = int(q.get("offset", "0"))
        limit = min(int(q.get("limit", str(self.max_limit))), self.max_limit)
        page = items[offset : offset + limit]
        headers = {"X-Total-Count": str(len(items)), "X-Limit": str(limit)}
        if self.send_link and offset + len(page) < len(items):
            nxt = {**q, "offset": str(offset + len(page)), "limit": str(limit)}
            headers["Link"] = f'<{self.link_base or self.url}/{module}?{urlencode(nxt)}>; rel="next"'
        return _envelope(page, 1000, "Success", headers=headers)


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _envelope(data: Any, code: int, message: str, *, status: int = 200,
              headers: dict[str, str] | None = None) -> Response:
    body = {"status_code": code, "status_message": message, "timestamp": ts(datetime.now(UTC))}
    if data is not None:
        body["data"] = data
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


@pytest.fixture
async def sender() -> AsyncIterator[FakeSender]:
    """The fake GreenFlux sender on an ephemeral port, in the test's event loop."""
    fake = FakeSender(PULL_TOKEN)
    async with serve(fake.app()) as port:
        fake.port = port
        yield fake


# -- config and pull helpers ------------------------------------------------------------------------------


@pytest.fixture
def pull_token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TEST_PULL_TOKEN", PULL_TOKEN)
    return PULL_TOKEN


@pytest.fixture
def page_limit() -> int:
    """Override in a test module (or with parametrize) for another page size."""
    return 25


@pytest.fixture
def extra_config(sender: FakeSender, pull_token: str, page_limit: int) -> str:
    return f"""
pull:
  - name: {SOURCE}
    url: {sender.url}
    token_env: TEST_PULL_TOKEN
    modules: [locations, sessions, cdrs, tariffs]
    interval: 1h
    default_cpo: "NL*GFX"
    page_limit: {page_limit}
    timeout: 10
"""


@pytest.fixture
def database_url(database_url: str) -> str:
    """The shared fixture's database, also without pull positions left by an earlier test
    (the shared PostgreSQL truncate does not know the pull_position table)."""
    if database_url.startswith("postgresql"):
        import asyncpg

        async def _go() -> None:
            conn = await asyncpg.connect(database_url, timeout=5)
            try:
                await conn.execute("TRUNCATE pull_position")
            finally:
                await conn.close()

        asyncio.run(_go())
    return database_url


Puller = Callable[..., Any]

FAST_RETRY = RetryPolicy(attempts=4, base=0.01, cap=0.05)


@pytest.fixture
def pull(relay: RelayHandle) -> Puller:
    """``await pull(full=False, source=..., retry=...)``: one pass against the running relay's store,
    returning the summaries by module."""

    async def _pull(*, full: bool = False, source: PullSource | None = None,
                    retry: RetryPolicy | None = FAST_RETRY) -> dict[str, ModuleSummary]:
        holder = relay.info.holder
        assert holder is not None
        src = source or holder().pull_source(SOURCE)
        assert src is not None
        ingestor = Ingestor(relay.store, holder)
        summaries = await pull_source(relay.store, ingestor, src, full=full, retry=retry)
        return {s.module: s for s in summaries}

    return _pull
