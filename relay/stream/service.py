"""The Relay gRPC service: Subscribe, Commit, GetObject, ListObjects.

Requests are checked here (token, scope, arguments) and every refusal is a ``RequestError`` that
``_abort`` turns into ``context.abort`` in one place; database failures become UNAVAILABLE so clients
retry from their cursor. Streaming itself (catch-up, live, memory bound) lives in ``fanout.py``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import logging
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeAlias, TypeVar
from urllib.parse import unquote

import grpc
import orjson
from google.protobuf.timestamp_pb2 import Timestamp

from relay import metrics
from relay.errors import StoreError
from relay.ocpi.paths import MODULES
from relay.routing.model import (
    CpoPattern,
    IpAddress,
    RoutingConfig,
    StreamClient,
    address_allowed,
    cpo_matches,
    parse_address,
    parse_cpo,
    parse_subject,
)
from relay.store.base import EventFilter, EventRecord, StateKey, Store, StoredState
from relay.stream._pb import relay_pb2 as pb
from relay.stream._pb import relay_pb2_grpc as pb_grpc
from relay.stream.fanout import CONVERT_ON_LOOP, Hub, follow

logger = logging.getLogger(__name__)

SERVICE_NAME = "ocpi_relay.v1.Relay"
START_METADATA = "relay-after-seq"  # initial metadata of Subscribe: the seq the stream starts after
MAX_SEQ = 2**63 - 1  # event.seq is a signed BIGINT
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_OBJECT_IDS = 1000
MAX_ID_LENGTH = 64  # event.object_id / state.object_id column width
# What a gRPC client accepts by default (grpc.max_receive_message_length); no Event and no
# ListObjects page is built larger, whatever the body and object size settings are.
CLIENT_DEFAULT_LIMIT = 4 * 1024 * 1024
MESSAGE_BUDGET = CLIENT_DEFAULT_LIMIT - 64 * 1024  # room for ids, timestamps and framing
DEFAULT_MAX_STREAMS_PER_CLIENT = 16  # Settings.grpc_max_streams_per_client
_CONSUMER_RE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ALL_MODULES = frozenset(MODULES)

Code = grpc.StatusCode
_R = TypeVar("_R")
_Context: TypeAlias = grpc.aio.ServicerContext


class RequestError(Exception):
    """A request the service refuses: the status code and a message naming the field."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def _abort(context: _Context, exc: Exception) -> NoReturn:
    """The one place where a refusal or a database failure becomes a gRPC status."""
    if isinstance(exc, RequestError):
        if exc.code == Code.UNAUTHENTICATED:
            metrics.AUTH_FAILURES.labels("grpc").inc()
        await context.abort(exc.code, exc.message)
    logger.warning("stream database failure", extra={"error": str(exc)[:200]})
    await context.abort(Code.UNAVAILABLE, "database unavailable; retry from your last seq")
    raise AssertionError("context.abort always raises")


def _unary(
    fn: Callable[[Any, Any, _Context], Awaitable[_R]],
) -> Callable[[Any, Any, _Context], Awaitable[_R]]:
    @functools.wraps(fn)
    async def call(self: Any, request: Any, context: _Context) -> _R:
        try:
            return await fn(self, request, context)
        except (RequestError, StoreError) as exc:
            await _abort(context, exc)

    return call


def _streaming(
    fn: Callable[[Any, Any, _Context], AsyncGenerator[_R, None]],
) -> Callable[[Any, Any, _Context], AsyncGenerator[_R, None]]:
    @functools.wraps(fn)
    async def call(self: Any, request: Any, context: _Context) -> AsyncGenerator[_R, None]:
        # aclosing: when grpc drops this generator (client gone), the inner one ends at once too,
        # not whenever the loop's async-generator finalizer gets to it.
        try:
            async with contextlib.aclosing(fn(self, request, context)) as items:
                async for item in items:
                    yield item
        except (RequestError, StoreError) as exc:
            await _abort(context, exc)

    return call


# -- conversions --------------------------------------------------------------------------------


def _timestamp(dt: datetime) -> dict[str, int]:
    # Integer arithmetic (float seconds lose microseconds); a mapping builds the Timestamp field in C,
    # about a third cheaper per event than Timestamp.FromDatetime on the hot path of Subscribe.
    d = dt - _EPOCH
    return {"seconds": d.days * 86400 + d.seconds, "nanos": d.microseconds * 1000}


def to_event(r: EventRecord) -> pb.Event:
    """The wire form of a stored event; body and object are stored as JSON text, sent as its bytes.

    An event that would not fit in a default client's message limit goes out with ``truncated`` set
    and without body and object: one such event must not stop every subscriber that reaches its seq
    (each resume would fail on it again). The client fetches the object with GetObject.
    """
    body = r.body.encode()
    obj = r.object.encode() if r.object is not None else None
    truncated = len(body) + (len(obj) if obj is not None else 0) > MESSAGE_BUDGET
    if truncated:
        body, obj = b"", None
    return pb.Event(
        seq=r.seq, module=r.module, action=r.action, country_code=r.country_code, party_id=r.party_id,
        object_id=r.object_id, evse_uid=r.evse_uid, connector_id=r.connector_id,
        last_updated=_timestamp(r.last_updated) if r.last_updated is not None else None,
        received_at=_timestamp(r.received_at), body=body, object=obj, origin=r.origin, request_id=r.request_id,
        truncated=truncated, subscription=r.subscription or "",
    )


def _objects_page(states: list[StoredState], size: int) -> list[pb.Object]:
    """The first ``size`` states as messages; a page of large objects ends early, so that it stays
    readable by a default client (MESSAGE_BUDGET)."""
    objects: list[pb.Object] = []
    budget = MESSAGE_BUDGET
    for state in states[:size]:
        obj = to_object(state)
        budget -= len(obj.object) + 256
        if objects and budget < 0:
            break
        objects.append(obj)
    return objects


def to_object(st: StoredState) -> pb.Object:
    """The wire form of a current state."""
    k = st.key
    return pb.Object(
        module=k.module, country_code=k.country_code, party_id=k.party_id, id=k.object_id,
        object=orjson.dumps(st.object), last_seq=st.last_seq,
        last_updated=_timestamp(st.last_updated) if st.last_updated is not None else None,
    )


# -- request checks -----------------------------------------------------------------------------


def _invalid(message: str) -> RequestError:
    return RequestError(Code.INVALID_ARGUMENT, message)


def _denied(message: str) -> RequestError:
    return RequestError(Code.PERMISSION_DENIED, message)


def parse_modules(values: Iterable[str], field: str = "modules") -> frozenset[str]:
    """Requested module names; INVALID_ARGUMENT naming any unknown one."""
    mods = frozenset(values)
    unknown = sorted(mods - _ALL_MODULES)
    if unknown:
        raise _invalid(f"{field}: unknown module {unknown[0]!r} (known: {', '.join(MODULES)})")
    return mods


def parse_cpos(values: Iterable[str], field: str = "cpos") -> tuple[CpoPattern, ...]:
    """Requested CPOs such as ``NL*GFX``; INVALID_ARGUMENT naming a malformed one."""
    out = []
    for value in values:
        try:
            out.append(parse_cpo(value))
        except ValueError as exc:
            raise _invalid(f"{field}: {exc}") from None
    return tuple(dict.fromkeys(out))


def _parse_ids(values: Iterable[str]) -> frozenset[str]:
    ids = frozenset(values)
    if len(ids) > MAX_OBJECT_IDS:
        raise _invalid(f"object_ids: at most {MAX_OBJECT_IDS} ids, got {len(ids)}")
    for value in ids:
        if not value or len(value) > MAX_ID_LENGTH:
            raise _invalid(f"object_ids: {value[:80]!r} is not an object id (1 to {MAX_ID_LENGTH} characters)")
    return ids


def _parse_subscriptions(values: Iterable[str]) -> frozenset[str]:
    names = frozenset(values)
    for value in names:
        if not value or len(value) > 100:
            raise _invalid(f"subscriptions: {value[:120]!r} is not a subscription name (1 to 100 characters)")
    return names


def _covers(scope: CpoPattern, wanted: CpoPattern) -> bool:
    """True when every CPO ``wanted`` can match is also matched by ``scope``."""
    return scope.country_code in ("*", wanted.country_code) and scope.party_id in ("*", wanted.party_id)


def _in_scope_modules(client: StreamClient, wanted: frozenset[str]) -> frozenset[str]:
    outside = sorted(wanted - client.modules)
    if outside:
        raise _denied(f"module {outside[0]!r} is outside the scope of stream client {client.name!r}")
    mods = wanted or client.modules
    if not mods:
        raise _denied(f"stream client {client.name!r} may read no module")
    return mods


def _in_scope_cpos(client: StreamClient, wanted: tuple[CpoPattern, ...]) -> tuple[CpoPattern, ...]:
    for w in wanted:
        if not any(_covers(s, w) for s in client.cpos):
            raise _denied(f"CPO {str(w)!r} is outside the scope of stream client {client.name!r}")
    return wanted or client.cpos


@dataclass(frozen=True, slots=True)
class Selection:
    """What a subscriber asked for, checked for syntax but not yet against its client's scope."""

    modules: frozenset[str]
    cpos: tuple[CpoPattern, ...]
    object_ids: frozenset[str]
    subscriptions: frozenset[str] = frozenset()

    @classmethod
    def of(cls, request: pb.SubscribeRequest) -> Selection:
        return cls(parse_modules(request.modules), parse_cpos(request.cpos), _parse_ids(request.object_ids),
                   _parse_subscriptions(request.subscriptions))

    def scoped(self, client: StreamClient) -> EventFilter:
        """The store filter: the request narrowed to the client's scope (empty = all it may see)."""
        mods = _in_scope_modules(client, self.modules)
        cpos = _in_scope_cpos(client, self.cpos)
        return EventFilter(
            modules=None if mods >= _ALL_MODULES else mods,
            cpos=None if any(p.country_code == p.party_id == "*" for p in cpos)
            else tuple((p.country_code, p.party_id) for p in cpos),
            object_ids=self.object_ids or None,
            subscriptions=self.subscriptions or None,
        )


class _LiveFilter:
    """The subscription's filter, recomputed when forwarding.yaml is reloaded (token and scope again)."""

    def __init__(self, config: Callable[[], RoutingConfig], token: str, selection: Selection,
                 context: _Context) -> None:
        self._config, self._token, self._selection, self._context = config, token, selection, context
        self._seen = config()
        self.client = _client_for(self._seen, token, context)
        self.filter = selection.scoped(self.client)

    def __call__(self) -> EventFilter:
        cfg = self._config()
        if cfg is not self._seen:
            self._seen = cfg
            self.client = _client_for(cfg, self._token, self._context)
            self.filter = self._selection.scoped(self.client)
        return self.filter


def _token(context: _Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            text = value if isinstance(value, str) else value.decode("latin-1")
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise RequestError(Code.UNAUTHENTICATED, "authorization metadata must be 'Bearer <token>'")
            return token.strip()
    raise RequestError(Code.UNAUTHENTICATED, "missing authorization metadata ('Bearer <token>')")


def _client_for(config: RoutingConfig, token: str, context: _Context) -> StreamClient:
    client = config.stream_client_for_token(token)
    if client is None:
        raise RequestError(Code.UNAUTHENTICATED, "unknown stream token")
    peer = context.peer() or ""
    if client.allow_ips and not address_allowed(client.allow_ips, peer_address(peer)):
        # a valid token from a wrong address: the token may have leaked (never log the token)
        logger.warning("valid stream token from an address outside allow_ips (has the token leaked?)",
                       extra={"client": client.name, "address": peer[:100]})
        raise _denied(f"address {peer[:100]!r} is not allowed for stream client {client.name!r}")
    if client.cert_subject and not frozenset(client.cert_subject) <= _peer_subject(context):
        wanted = ",".join(f"{attr}={value}" for attr, value in client.cert_subject)
        raise RequestError(Code.UNAUTHENTICATED, f"stream client {client.name!r} must present a TLS client "
                           f"certificate with subject {wanted} (RELAY_GRPC_TLS_CLIENT_CA signed)")
    return client


def peer_address(peer: str) -> IpAddress | None:
    """The address of ``context.peer()``: ``ipv4:198.51.100.7:5678`` or ``ipv6:[2001:db8::1]:5678``;
    None for anything else (a unix socket)."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    return parse_address(unquote(rest))  # some gRPC versions write ipv6:%5B::1%5D:5678


def _peer_subject(context: _Context) -> frozenset[tuple[str, str]]:
    """The subject of the client's verified TLS certificate as (ATTRIBUTE, value) pairs; empty without one.
    grpc fills ``x509_subject`` only for a certificate the server verified against its client CA."""
    for raw in context.auth_context().get("x509_subject", ()):
        with contextlib.suppress(ValueError):  # UnicodeDecodeError is a ValueError
            return frozenset(parse_subject(raw.decode()))
    return frozenset()


def _consumer_name(client: StreamClient, consumer: str) -> str:
    # Cursors are stored per client ("billing/invoicer"): one client cannot move another's cursor.
    if not _CONSUMER_RE.match(consumer):
        raise _invalid(f"consumer: {consumer[:120]!r} is not a consumer name (1 to 100 of A-Z a-z 0-9 . _ -)")
    return f"{client.name}/{consumer}"


def _since(ts: Timestamp) -> datetime:
    if not 0 <= ts.nanos < 1_000_000_000:
        raise _invalid(f"since: nanos {ts.nanos} is outside 0..999999999")
    try:
        return _EPOCH + timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)
    except OverflowError:
        raise _invalid(f"since: {ts.seconds} seconds is outside the years 1 to 9999") from None


def _seq(value: int, field: str) -> int:
    if value > MAX_SEQ:
        raise _invalid(f"{field}: {value} is larger than any seq ({MAX_SEQ})")
    return value


def _page_token(module: str, after: tuple[str, str, str]) -> str:
    raw = orjson.dumps([module, *after])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse_page_token(token: str, module: str) -> tuple[str, str, str] | None:
    if not token:
        return None
    try:
        if len(token) > 1024:
            raise ValueError("too long")
        data = orjson.loads(base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True))
        if not (isinstance(data, list) and len(data) == 4 and all(isinstance(x, str) for x in data)):
            raise ValueError("wrong shape")
    except (ValueError, binascii.Error):
        raise _invalid("page_token: not a next_page_token this server issued") from None
    if data[0] != module:
        raise _invalid(f"page_token: issued for module {data[0]!r}, not {module!r}")
    return data[1], data[2], data[3]


# -- the service --------------------------------------------------------------------------------


class RelayService(pb_grpc.RelayServicer):
    """ocpi_relay.v1.Relay on a Store; ``config`` returns the current forwarding config."""

    def __init__(self, store: Store, config: Callable[[], RoutingConfig], hub: Hub[pb.Event], *,
                 max_streams_per_client: int = DEFAULT_MAX_STREAMS_PER_CLIENT) -> None:
        self.store = store
        self.config = config
        self.hub = hub
        self.max_streams_per_client = max_streams_per_client
        self._streams: dict[str, int] = {}  # open Subscribe streams per stream client name

    def _authenticate(self, context: _Context) -> StreamClient:
        return _client_for(self.config(), _token(context), context)

    @_streaming
    async def Subscribe(  # noqa: N802
        self, request: pb.SubscribeRequest, context: _Context
    ) -> AsyncGenerator[pb.Event, None]:
        token = _token(context)
        live = _LiveFilter(self.config, token, Selection.of(request), context)
        name = live.client.name
        # Each stream holds a page of events and a database read at times: one client (a reconnect
        # loop that never closes its old calls) must not take the server's memory and pool.
        if self._streams.get(name, 0) >= self.max_streams_per_client:
            raise RequestError(Code.RESOURCE_EXHAUSTED, f"stream client {name!r} already has "
                               f"{self.max_streams_per_client} open Subscribe streams (the most "
                               "RELAY_GRPC_MAX_STREAMS_PER_CLIENT allows); close one first")
        self._streams[name] = self._streams.get(name, 0) + 1
        try:
            after = await self._start(request, live.client)
            # Sent before any event: the client learns where its stream starts (what `latest` or a
            # consumer resolved to) and that the subscription is in place.
            await context.send_initial_metadata(((START_METADATA, str(after)),))
            logger.info("stream_opened", extra={"client": name, "after_seq": after,
                                                "start": request.WhichOneof("start")})
            async with contextlib.aclosing(follow(self.hub, after, live)) as pages:
                async for page in pages:
                    for event in page:
                        yield event
        finally:
            left = self._streams[name] - 1
            if left:
                self._streams[name] = left
            else:
                del self._streams[name]
            logger.info("stream_closed", extra={"client": name})
        # follow only ends when the server shuts down: tell the client to come back
        raise RequestError(Code.UNAVAILABLE, "server shutting down; resubscribe after the last seq you received")

    async def _start(self, request: pb.SubscribeRequest, client: StreamClient) -> int:
        """The seq the stream starts after, from the request's ``start`` oneof."""
        which = request.WhichOneof("start")
        if which == "after_seq":
            after = _seq(request.after_seq, "after_seq")
            head = await self.store.max_seq()
            if after > head:
                # A cursor from another (or a restored) database would silently skip events.
                raise _invalid(f"after_seq: {after} is beyond the newest stored seq {head}")
            return after
        if which == "since":
            return await self.store.first_seq_since(_since(request.since))
        if which == "earliest":
            if not request.earliest:
                raise _invalid("earliest: must be true when given")
            return 0
        if which == "latest":
            if not request.latest:
                raise _invalid("latest: must be true when given")
            return await self.store.max_seq()
        if which == "consumer":
            cursor = await self.store.get_cursor(_consumer_name(client, request.consumer))
            return cursor or 0
        raise _invalid("start: give one of after_seq, since, earliest, latest or consumer")

    @_unary
    async def Commit(self, request: pb.CommitRequest, context: _Context) -> pb.CommitResponse:  # noqa: N802
        client = self._authenticate(context)
        name = _consumer_name(client, request.consumer)
        seq = _seq(request.seq, "seq")
        head = await self.store.max_seq()
        if seq > head:
            raise _invalid(f"seq: {seq} is beyond the newest stored seq {head}")
        await self.store.commit_cursor(name, seq)
        stored = await self.store.get_cursor(name)
        return pb.CommitResponse(seq=stored if stored is not None else seq)

    @_unary
    async def GetObject(self, request: pb.GetObjectRequest, context: _Context) -> pb.Object:  # noqa: N802
        client = self._authenticate(context)
        if not request.module:
            raise _invalid("module: required")
        module = next(iter(parse_modules([request.module], "module")))
        cc, party, object_id = request.country_code, request.party_id, request.id
        if len(cc) != 2 or len(party) != 3:
            raise _invalid(f"country_code/party_id: {cc!r}/{party!r} is not a CPO (2 and 3 characters)")
        if not object_id or len(object_id) > MAX_ID_LENGTH:
            raise _invalid(f"id: {object_id[:80]!r} is not an object id (1 to {MAX_ID_LENGTH} characters)")
        _in_scope_modules(client, frozenset({module}))
        if not cpo_matches(client.cpos, cc, party):
            raise _denied(f"CPO '{cc}*{party}' is outside the scope of stream client {client.name!r}")
        state = await self.store.get_state(StateKey(module, cc, party, object_id))
        if state is None or state.deleted:
            raise RequestError(Code.NOT_FOUND, f"no {module} object {cc}*{party} {object_id!r}")
        return to_object(state)

    @_unary
    async def ListObjects(  # noqa: N802
        self, request: pb.ListObjectsRequest, context: _Context
    ) -> pb.ListObjectsResponse:
        client = self._authenticate(context)
        if not request.module:
            raise _invalid("module: required")
        module = next(iter(parse_modules([request.module], "module")))
        if request.page_size < 0:
            raise _invalid(f"page_size: {request.page_size} is negative")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _parse_page_token(request.page_token, module)
        _in_scope_modules(client, frozenset({module}))
        cpos = _in_scope_cpos(client, parse_cpos(request.cpos))
        patterns = None if any(p.country_code == p.party_id == "*" for p in cpos) else \
            [(p.country_code, p.party_id) for p in cpos]
        # One more than asked tells whether another page exists without a count query.
        states = await self.store.list_states(module, patterns, after, size + 1)
        if len(states) <= CONVERT_ON_LOOP:
            objects = _objects_page(states, size)
        else:  # up to 1,000 objects: converted off the loop that answers pushes
            objects = await asyncio.to_thread(_objects_page, states, size)
        token = ""
        if len(states) > len(objects):
            last = states[len(objects) - 1].key
            token = _page_token(module, (last.country_code, last.party_id, last.object_id))
        return pb.ListObjectsResponse(objects=objects, next_page_token=token)
