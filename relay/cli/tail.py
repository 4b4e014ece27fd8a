"""`relay tail`: subscribe to a running relay over gRPC and print each event as one JSON line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import grpc
import orjson
from google.protobuf.timestamp_pb2 import Timestamp

from relay.cli.output import json_safe, printable
from relay.settings import environ
from relay.stream._pb import relay_pb2 as pb
from relay.stream._pb import relay_pb2_grpc as pb_grpc

COMMIT_INTERVAL = 1.0  # seconds between cursor commits with --commit (and once more at exit)
_USAGE_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED,
                          grpc.StatusCode.PERMISSION_DENIED})


def register(subparsers: Any) -> None:
    """Add `relay tail` to the `relay` parser."""
    p = subparsers.add_parser(
        "tail", help="subscribe over gRPC and print events as JSON lines (Ctrl-C stops)",
        description="Subscribe to a running relay's gRPC stream and print one JSON object per event: "
                    "seq, module, action, country_code, party_id, object_id, evse_uid, connector_id, "
                    "last_updated, received_at, object.",
    )
    p.add_argument("--modules", nargs="+", action="extend", metavar="MODULE",
                   help="only these modules (space or comma separated; default: all the token may read)")
    p.add_argument("--cpos", nargs="+", action="extend", metavar="CPO",
                   help="only these CPOs, e.g. NL*GFX (default: all the token may read)")
    p.add_argument("--object-ids", nargs="+", action="extend", metavar="ID", help="only these object ids")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from-seq", type=int, metavar="N", help="events with seq > N")
    start.add_argument("--since", metavar="TIME", help="events received at or after an ISO 8601 time")
    start.add_argument("--earliest", action="store_true", help="from the first stored event")
    start.add_argument("--latest", action="store_true", help="only new events (the default)")
    start.add_argument("--consumer", metavar="NAME", help="after the durable consumer's committed cursor")
    p.add_argument("--commit", action="store_true",
                   help=f"commit the last printed seq to --consumer's cursor every {COMMIT_INTERVAL:g} s and at exit")
    p.add_argument("--token-env", default="RELAY_STREAM_TOKEN", metavar="VAR",
                   help="env var holding the stream client's bearer token (default: RELAY_STREAM_TOKEN)")
    p.add_argument("--target", metavar="HOST:PORT",
                   help="gRPC address (default: 127.0.0.1:$RELAY_GRPC_PORT, else 127.0.0.1:50051)")
    p.add_argument("--tls-ca", metavar="PEM",
                   help="connect over TLS, verifying the server against this CA bundle (TLS with the system's "
                        "CAs when only --tls-cert/--tls-key are given)")
    p.add_argument("--tls-cert", metavar="PEM", help="client certificate for mTLS (with --tls-key)")
    p.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    p.set_defaults(func=tail_command)


def _split(values: Sequence[str] | None) -> list[str]:
    return [v for item in values or () for v in item.split(",") if v]


def build_request(args: argparse.Namespace) -> pb.SubscribeRequest:
    """The SubscribeRequest the flags describe; ValueError for a malformed --since or --from-seq."""
    req = pb.SubscribeRequest(modules=_split(args.modules), cpos=_split(args.cpos),
                              object_ids=_split(args.object_ids))
    if args.from_seq is not None:
        if args.from_seq < 0:
            raise ValueError(f"--from-seq: {args.from_seq} is negative")
        req.after_seq = args.from_seq
    elif args.since is not None:
        try:
            since = datetime.fromisoformat(args.since.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"--since: {args.since!r} is not an ISO 8601 time") from None
        ts = Timestamp()
        ts.FromDatetime(since if since.tzinfo else since.replace(tzinfo=UTC))
        req.since.CopyFrom(ts)
    elif args.earliest:
        req.earliest = True
    elif args.consumer is not None:
        req.consumer = args.consumer
    else:
        req.latest = True
    return req


def _time(ts: Timestamp) -> str:
    return str(ts.ToDatetime(tzinfo=UTC).isoformat()).replace("+00:00", "Z")


def event_json(event: pb.Event) -> bytes:
    """One output line (without the newline): the event's fields with ``object`` parsed."""
    return orjson.dumps({
        "seq": event.seq, "module": event.module, "action": event.action,
        "country_code": event.country_code, "party_id": event.party_id, "object_id": event.object_id,
        "evse_uid": event.evse_uid or None, "connector_id": event.connector_id or None,
        "last_updated": _time(event.last_updated) if event.HasField("last_updated") else None,
        "received_at": _time(event.received_at),
        "object": orjson.loads(event.object) if event.object else None,
        # body and object left out: too large for one message (fetch the object with GetObject)
        **({"truncated": True} if event.truncated else {}),
    })


def tail_command(args: argparse.Namespace) -> int:
    """Entry point of `relay tail`: exit 0 on Ctrl-C, 1 when the stream fails, 2 on usage errors."""
    token = environ().get(args.token_env, "")
    if not token:
        sys.stderr.write(f"relay tail: set {args.token_env} to a stream client's token (or use --token-env)\n")
        return 2
    if args.commit and args.consumer is None:
        sys.stderr.write("relay tail: --commit needs --consumer NAME\n")
        return 2
    try:
        request = build_request(args)
    except ValueError as exc:
        sys.stderr.write(f"relay tail: {printable(exc)}\n")
        return 2
    try:
        credentials = channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
    except ValueError as exc:
        sys.stderr.write(f"relay tail: {printable(exc)}\n")
        return 2
    target = args.target or f"127.0.0.1:{environ().get('RELAY_GRPC_PORT') or 50051}"
    return asyncio.run(_tail_until_interrupted(target, token, request, args.consumer if args.commit else None,
                                               credentials))


def channel_credentials(ca: str | None, cert: str | None, key: str | None) -> grpc.ChannelCredentials | None:
    """TLS credentials from --tls-ca / --tls-cert / --tls-key (None: plain text); ValueError naming the flag."""
    if bool(cert) != bool(key):
        raise ValueError("--tls-cert and --tls-key go together")
    if not (ca or cert):
        return None

    def read(path: str | None, flag: str) -> bytes | None:
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise ValueError(f"{flag}: cannot read {path!r}: {exc.strerror}") from None

    return grpc.ssl_channel_credentials(root_certificates=read(ca, "--tls-ca"), private_key=read(key, "--tls-key"),
                                        certificate_chain=read(cert, "--tls-cert"))


async def _tail_until_interrupted(target: str, token: str, request: pb.SubscribeRequest, commit_as: str | None,
                                  credentials: grpc.ChannelCredentials | None = None) -> int:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await tail(target, token, request, commit_as=commit_as, credentials=credentials)
    except asyncio.CancelledError:
        return 0  # Ctrl-C: the documented way to stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def tail(target: str, token: str, request: pb.SubscribeRequest, *, commit_as: str | None = None,
               out: TextIO | None = None, credentials: grpc.ChannelCredentials | None = None) -> int:
    """Print every event of the subscription to ``out`` until cancelled; commit to ``commit_as`` if given.
    Over TLS with ``credentials`` (``channel_credentials``), else plain text."""
    stream = out or sys.stdout
    metadata = (("authorization", f"Bearer {token}"),)
    last_seq = committed = 0
    channel = grpc.aio.secure_channel(target, credentials) if credentials else grpc.aio.insecure_channel(target)
    async with channel:
        stub = pb_grpc.RelayStub(channel)  # type: ignore[no-untyped-call]  # generated code

        async def commit() -> None:
            nonlocal committed
            if commit_as is not None and last_seq > committed:
                seq = last_seq
                await stub.Commit(pb.CommitRequest(consumer=commit_as, seq=seq), metadata=metadata, timeout=10)
                committed = seq

        async def commit_periodically() -> None:
            while True:
                await asyncio.sleep(COMMIT_INTERVAL)
                await commit()

        committer = asyncio.create_task(commit_periodically()) if commit_as else None
        try:
            async for event in stub.Subscribe(request, metadata=metadata):
                stream.write(json_safe(event_json(event).decode()) + "\n")
                stream.flush()
                last_seq = event.seq
        except grpc.aio.AioRpcError as err:
            sys.stderr.write(f"relay tail: {err.code().name}: {printable(err.details())}\n")
            return 2 if err.code() in _USAGE_CODES else 1
        finally:
            if committer is not None:
                committer.cancel()
                with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                    await committer
                # the final commit runs even when Ctrl-C cancelled the stream
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await asyncio.shield(commit())
    sys.stderr.write("relay tail: the server ended the stream\n")
    return 1
