"""The `relay` command: parse flags, build Settings, run one subcommand.

Exit codes: 0 success, 1 runtime failure, 2 usage or configuration errors.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import orjson

from relay import __version__
from relay.errors import ConfigError, StoreError
from relay.log import setup_logging
from relay.settings import Settings


def add_common_options(p: argparse.ArgumentParser) -> None:
    """--database-url / --config / --log-level, the same on every subcommand that opens the store."""
    p.add_argument("--database-url", help="database URL (env RELAY_DATABASE_URL; default sqlite:///relay.db)")
    p.add_argument("--config", help="forwarding.yaml path (env RELAY_CONFIG; default forwarding.yaml)")
    p.add_argument("--log-level", help="log level (env RELAY_LOG_LEVEL; default INFO)")


def settings_from_args(args: argparse.Namespace, **extra: Any) -> Settings:
    """Settings from RELAY_* env, overridden by the flags of ``add_common_options`` and ``extra``."""
    return Settings.from_env(
        database_url=args.database_url, config=args.config, log_level=getattr(args, "log_level", None), **extra
    )


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay", description="ocpi-relay: receive GreenFlux OCPI 2.1.1 pushes, store, stream and forward them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ocpi-relay {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    p = sub.add_parser("serve", help="run the HTTP receiver, gRPC stream and delivery workers", formatter_class=fmt)
    add_common_options(p)
    p.add_argument("--http-host", help="receiver bind address (env RELAY_HTTP_HOST; default 127.0.0.1)")
    p.add_argument("--http-port", type=int, help="receiver port, 0 = any free (env RELAY_HTTP_PORT; default 8080)")
    p.add_argument("--grpc-host", help="gRPC bind address (env RELAY_GRPC_HOST; default 127.0.0.1)")
    p.add_argument("--grpc-port", type=int, help="gRPC port, 0 = any free (env RELAY_GRPC_PORT; default 50051)")
    p.add_argument("--base-path", help="receiver path prefix, e.g. /ocpi/emsp/2.1.1 (env RELAY_BASE_PATH; default empty)")
    p.add_argument("--max-body-bytes", type=int, help="largest accepted body (env RELAY_MAX_BODY_BYTES; default 1 MiB)")
    p.add_argument("--max-clock-skew", type=int,
                   help="seconds a last_updated may lie in the future before it is refused "
                        "(env RELAY_MAX_CLOCK_SKEW; default 300)")
    p.add_argument("--max-object-bytes", type=int,
                   help="largest merged object in JSON bytes; a PATCH growing an object past it is refused "
                        "(env RELAY_MAX_OBJECT_BYTES; default 2 MiB)")
    p.add_argument("--grpc-max-streams-per-client", type=int,
                   help="open Subscribe streams per stream client (env RELAY_GRPC_MAX_STREAMS_PER_CLIENT; default 16)")
    p.add_argument("--no-http", action="store_true", help="do not run the HTTP receiver")
    p.add_argument("--no-grpc", action="store_true", help="do not run the gRPC stream server")
    p.add_argument("--no-workers", action="store_true", help="do not run delivery workers and pull schedules")
    p.add_argument("--no-migrate", action="store_true", help="do not apply database migrations at start")
    p.add_argument("--event-loop", choices=["auto", "asyncio", "uvloop"],
                   help="event loop implementation (env RELAY_EVENT_LOOP; default auto: uvloop if installed)")
    p.add_argument("--write-queue-max-bytes", type=int,
                   help="bytes of pushes waiting for a group commit at most (env RELAY_WRITE_QUEUE_MAX_BYTES; "
                        "default 64 MiB)")
    p.add_argument("--write-queue-timeout", type=float,
                   help="seconds a push waits for room in a full write queue before 503/3000 "
                        "(env RELAY_WRITE_QUEUE_TIMEOUT; default 5)")
    p.add_argument("--http-header-timeout", type=float,
                   help="seconds a client has to send a request's headers (env RELAY_HTTP_HEADER_TIMEOUT; default 10)")
    p.add_argument("--http-body-timeout", type=float,
                   help="seconds a client has to send a request's body (env RELAY_HTTP_BODY_TIMEOUT; default 30)")
    p.add_argument("--http-keepalive-timeout", type=int,
                   help="seconds an idle kept-alive connection stays open (env RELAY_HTTP_KEEPALIVE_TIMEOUT; default 75)")
    p.add_argument("--http-max-header-bytes", type=int,
                   help="largest request line + headers, 431 beyond (env RELAY_HTTP_MAX_HEADER_BYTES; default 16 KiB)")
    p.add_argument("--http-max-connections", type=int,
                   help="open receiver connections at most; more are closed at once (env RELAY_HTTP_MAX_CONNECTIONS; "
                        "default 1000)")

    p = sub.add_parser("migrate", help="apply database migrations and exit", formatter_class=fmt)
    add_common_options(p)

    p = sub.add_parser("check-config", help="validate forwarding.yaml (errors as file:line: message)", formatter_class=fmt)
    p.add_argument("path", nargs="?", help="file to check (default: RELAY_CONFIG or forwarding.yaml)")
    p.add_argument("--json", action="store_true", help="print the effective config (secrets masked) as JSON")

    p = sub.add_parser("status", help="event count, last seq, outbox per target, consumer lags", formatter_class=fmt)
    add_common_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object")

    rej = sub.add_parser("rejected", help="refused requests: list, show, replay", formatter_class=fmt)
    rsub = rej.add_subparsers(dest="rejected_command", metavar="ACTION", required=True)
    p = rsub.add_parser("list", help="list refused requests", formatter_class=fmt)
    add_common_options(p)
    p.add_argument("--json", action="store_true", help="JSON array of objects")
    p.add_argument("--open", action="store_true", help="only those not replayed yet")
    p.add_argument("--limit", type=int, default=1000, help="at most this many")
    p = rsub.add_parser("show", help="one refused request with its body", formatter_class=fmt)
    add_common_options(p)
    p.add_argument("id", type=int, help="rejected id")
    p = rsub.add_parser("replay", help="run refused pushes through scope and validation again", formatter_class=fmt)
    add_common_options(p)
    p.add_argument("ids", nargs="*", type=int, help="rejected ids")
    p.add_argument("--all", action="store_true", help="every refused request not replayed yet")
    p.add_argument("--json", action="store_true", help="JSON array of results")

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands() -> list[Callable[[Any], None]]:
    """Subcommands contributed by the stream, deliver and pull packages: each ``register`` takes the
    subparsers object and sets a ``func(args) -> exit code`` default on what it adds."""
    from relay.deliver.cli import register as deliver_commands
    from relay.pull.cli import register as pull_commands
    from relay.stream.cli import register as stream_commands

    return [deliver_commands, pull_commands, stream_commands]


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = _dispatch(args)
    except ConfigError as err:
        for line in err.problems:
            sys.stderr.write(line + "\n")
        code = 2
    except StoreError as err:
        sys.stderr.write(f"database error: {err}\n")
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def _run(coro: Coroutine[Any, Any, int]) -> int:
    return asyncio.run(coro)


def _dispatch(args: argparse.Namespace) -> int:
    from relay import commands

    if hasattr(args, "func"):
        return int(args.func(args))
    if args.command == "serve":
        settings = settings_from_args(
            args, http_host=args.http_host, http_port=args.http_port, grpc_host=args.grpc_host,
            grpc_port=args.grpc_port, base_path=args.base_path, max_body_bytes=args.max_body_bytes,
            http=False if args.no_http else None, grpc=False if args.no_grpc else None,
            workers=False if args.no_workers else None, migrate=False if args.no_migrate else None,
            event_loop=args.event_loop, write_queue_max_bytes=args.write_queue_max_bytes,
            write_queue_timeout=args.write_queue_timeout, max_clock_skew=args.max_clock_skew,
            max_object_bytes=args.max_object_bytes,
            grpc_max_streams_per_client=args.grpc_max_streams_per_client, http_header_timeout=args.http_header_timeout,
            http_body_timeout=args.http_body_timeout, http_keepalive_timeout=args.http_keepalive_timeout,
            http_max_header_bytes=args.http_max_header_bytes, http_max_connections=args.http_max_connections,
        )
        setup_logging(settings.log_level)
        from relay.runtime import loop_factory, run, tune_gc

        tune_gc()
        with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
            runner.run(run(settings))
        return 0
    if args.command == "check-config":
        return commands.check_config(args)
    settings = settings_from_args(args)
    setup_logging(settings.log_level if args.log_level else "WARNING")
    if args.command == "migrate":
        return _run(commands.migrate(settings))
    if args.command == "status":
        return _run(commands.status(settings, as_json=args.json))
    if args.command == "rejected":
        if args.rejected_command == "list":
            return _run(commands.rejected_list(settings, as_json=args.json, only_open=args.open, limit=args.limit))
        if args.rejected_command == "show":
            return _run(commands.rejected_show(settings, args.id))
        if not args.ids and not args.all:
            sys.stderr.write("relay rejected replay: give ids or --all\n")
            return 2
        return _run(commands.rejected_replay(settings, args.ids, replay_all=args.all, as_json=args.json))
    return 2


if __name__ == "__main__":
    main()
