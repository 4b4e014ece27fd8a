"""A client of the OCPI 2.1.1 sender interface (GreenFlux): paginated module lists.

    PullError            a page could not be fetched; ``retryable`` after the retries ran out
     +-- PullAuthError   401/403: the token is wrong or lacks the module; never retried

Pagination follows the sender's ``Link: <...>; rel="next"`` (OCPI-2.1.1-receiver.md §8); only a
server that sends no Link but an ``X-Total-Count`` above what was read is continued by offset.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from yarl import URL

from relay.errors import RelayError
from relay.ocpi.times import format_datetime, parse_retry_after
from relay.routing.model import PullSource

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class PullLimits:
    """Bounds of one pull pass, so a misbehaving sender cannot exhaust memory or run a pass forever.

    32 MiB is far above a page of ``page_limit`` (default 100) objects of up to 1 MiB JSON each as a
    push may carry them in practice, and small enough to hold; 10,000 pages are a full history pull of
    a large CPO. A pass that reaches ``max_pages`` stops and the next pass continues where it stopped.
    """

    max_page_bytes: int = 32 * 1024 * 1024
    max_pages: int = 10_000


class PullError(RelayError):
    """A list page could not be fetched. The message names the source, never its token."""

    def __init__(self, message: str, *, retryable: bool, http_status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.http_status = http_status
        self.retry_after = retry_after


class PullAuthError(PullError):
    """The sender refused the token (401) or the module for it (403)."""


@dataclass(frozen=True, slots=True)
class Page:
    """One answer of a module list: its objects and the pagination headers."""

    objects: list[Any]
    url: str  # as fetched, for logs (credentials a user put into the source URL are left out)
    total: int | None  # X-Total-Count
    limit: int | None  # X-Limit
    next_url: str | None  # from Link rel="next", or computed from X-Total-Count when Link is absent


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter for transient failures; ``Retry-After`` wins when given."""

    attempts: int = 6
    base: float = 0.5
    cap: float = 30.0
    retry_after_max: float = 300.0  # a longer Retry-After ends the pass; the next scheduled one retries

    def delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1), or None when
        no further attempt should be made in this pass."""
        if attempt >= self.attempts:
            return None
        if retry_after is not None:
            return max(retry_after, 0.0) if retry_after <= self.retry_after_max else None
        backoff: float = min(self.cap, self.base * 2 ** (attempt - 1))
        return backoff * random.uniform(0.75, 1.25)


def format_date(dt: datetime) -> str:
    """An OCPI 2.1.1 DateTime for ``date_from``: UTC, whole seconds (floored: an earlier bound only
    fetches a little more, a later one could skip an object)."""
    return format_datetime(dt.replace(microsecond=0))


class SenderClient:
    """Fetches module lists of one pull source over a caller-owned aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, source: PullSource, *,
                 retry: RetryPolicy | None = None, limits: PullLimits | None = None) -> None:
        self.session = session
        self.source = source
        self.retry = retry or RetryPolicy()
        self.limits = limits or PullLimits()
        self._base = URL(source.url.rstrip("/"))
        self._timeout = aiohttp.ClientTimeout(total=source.timeout)

    def module_url(self, module: str) -> URL:
        """The list endpoint of ``module`` below the source URL."""
        return self._base / module

    async def pages(self, module: str, date_from: datetime | None, start_url: str | None = None) -> AsyncIterator[Page]:
        """Every page of ``module`` changed since ``date_from`` (all when None), in server order;
        from ``start_url`` (a ``next_url`` of an earlier pass) instead of the first page when given."""
        params = {"offset": "0", "limit": str(self.source.page_limit)}
        if date_from is not None:
            params["date_from"] = format_date(date_from)
        url: URL | None = URL(start_url) if start_url else self.module_url(module).with_query(params)
        seen: set[str] = set()
        while url is not None:
            if str(url) in seen:
                raise PullError(f"pull source {self.source.name}: {module} pagination loops back to "
                                f"{safe_url(url)}", retryable=False)
            seen.add(str(url))
            page = await self.fetch(url)
            yield page
            url = URL(page.next_url) if page.next_url is not None else None

    async def fetch(self, url: URL) -> Page:
        """GET one page, retrying transient failures (network, timeout, 408/429/5xx, OCPI 3xxx)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._fetch_once(url)
            except PullError as err:
                wait = self.retry.delay(attempt, err.retry_after) if err.retryable else None
                if wait is None:
                    raise
                logger.warning("pull request failed, retrying", extra={
                    "source": self.source.name, "url": safe_url(url), "attempt": attempt, "error": str(err),
                    "retry_in_s": round(wait, 3)})
                await asyncio.sleep(wait)

    async def _fetch_once(self, url: URL) -> Page:
        headers = {"Authorization": f"Token {self.source.token.reveal()}", "Accept": "application/json"}
        name = self.source.name
        try:
            async with self.session.get(url, headers=headers, timeout=self._timeout,
                                        allow_redirects=False) as resp:
                body = await self._read_bounded(resp, url)
                status = resp.status
                if status in (401, 403):
                    what = "refused the token" if status == 401 else "does not allow this module for the token"
                    raise PullAuthError(
                        f"pull source {name}: {safe_url(url)} answered HTTP {status}: the sender {what}; "
                        f"check the token env var of pull source {name} and its modules", retryable=False,
                        http_status=status)
                if status in RETRY_STATUSES:
                    raise PullError(f"pull source {name}: {safe_url(url)} answered HTTP {status}", retryable=True,
                                    http_status=status, retry_after=parse_retry_after(resp.headers.get("Retry-After")))
                if status != 200:
                    raise PullError(f"pull source {name}: {safe_url(url)} answered HTTP {status}", retryable=False,
                                    http_status=status)
                data = _envelope(name, url, body)
                return Page(data, safe_url(url), _int_header(resp.headers.get("X-Total-Count")),
                            _int_header(resp.headers.get("X-Limit")), self._next(url, resp, len(data)))
        except (aiohttp.ClientError, TimeoutError) as exc:
            # ClientError covers refused connections, resets and bad HTTP; TimeoutError the total timeout
            raise PullError(f"pull source {name}: {safe_url(url)} failed: {type(exc).__name__}: {exc}"[:500],
                            retryable=True) from exc

    async def _read_bounded(self, resp: aiohttp.ClientResponse, url: URL) -> bytes:
        """The response body, refused (not retried: the next attempt would be as large) above the cap."""
        cap = self.limits.max_page_bytes
        if resp.content_length is not None and resp.content_length > cap:
            raise self._too_large(url, resp.content_length)
        body = bytearray()
        async for chunk in resp.content.iter_chunked(_CHUNK):
            body += chunk
            if len(body) > cap:
                raise self._too_large(url, None)
        return bytes(body)

    def _too_large(self, url: URL, size: int | None) -> PullError:
        got = f"{size} bytes" if size is not None else "more"
        return PullError(f"pull source {self.source.name}: {safe_url(url)} answered {got}, more than the "
                         f"{self.limits.max_page_bytes} bytes a page may have; lower page_limit of the source",
                         retryable=False)

    def _next(self, url: URL, resp: aiohttp.ClientResponse, count: int) -> str | None:
        link = resp.links.get("next")
        if link is not None:
            nxt = url.join(URL(str(link.get("url", ""))))
            if (nxt.scheme, nxt.host, nxt.port) != (self._base.scheme, self._base.host, self._base.port):
                # the token goes with every request: never follow a Link to another server
                raise PullError(f"pull source {self.source.name}: Link rel=next points to another server "
                                f"({nxt.scheme}://{nxt.host}:{nxt.port}); refusing to send the token there",
                                retryable=False)
            return str(nxt)
        total = _int_header(resp.headers.get("X-Total-Count"))
        offset = _int_header(url.query.get("offset")) or 0
        if total is not None and count > 0 and offset + count < total:
            # no Link: continue by offset only because the server says there is more (§8 client rules)
            return str(url.update_query(offset=str(offset + count)))
        return None


def _envelope(name: str, url: URL, body: bytes) -> list[Any]:
    """The ``data`` list of an OCPI envelope; PullError when the answer is not one."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise PullError(f"pull source {name}: {safe_url(url)} answered a body that is not JSON", retryable=False) \
            from None
    if not isinstance(doc, dict) or not isinstance(doc.get("status_code"), int):
        raise PullError(f"pull source {name}: {safe_url(url)} answered JSON that is not an OCPI envelope "
                        "(no integer status_code)", retryable=False)
    code = doc["status_code"]
    if not 1000 <= code < 2000:
        message = str(doc.get("status_message") or "")[:200]
        # 3xxx is a server-side problem a later attempt may not have; 2xxx is our request's fault
        raise PullError(f"pull source {name}: {safe_url(url)} answered OCPI status_code {code}: {message}",
                        retryable=3000 <= code < 4000)
    data = doc.get("data")
    if data is None:
        return []
    if not isinstance(data, list):
        raise PullError(f"pull source {name}: {safe_url(url)} answered data of type {type(data).__name__}, "
                        "expected a list", retryable=False)
    return data


def _int_header(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def safe_url(url: URL) -> str:
    """The URL for messages without any credentials a user may have put into it."""
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}" + (f"?{parts.query}" if parts.query else "")
