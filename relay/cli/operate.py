"""Operator commands on the database and the config: migrate, status, rejected, check-config."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import orjson

from relay.cli.options import add_common_options, settings_from_args
from relay.cli.output import json_text, printable
from relay.errors import OcpiError
from relay.ingest import Ingestor, Push, Source
from relay.log import setup_logging
from relay.ocpi.paths import resolve
from relay.routing.describe import describe
from relay.routing.holder import ConfigHolder
from relay.routing.loader import check_config as _check
from relay.routing.loader import load_config
from relay.settings import Settings, environ
from relay.store import Store, open_store


def _print(data: Any) -> None:
    sys.stdout.write(json_text(data) + "\n")


@asynccontextmanager
async def opened(settings: Settings, *, writer: bool = False) -> AsyncIterator[Store]:
    store = open_store(settings.database_url, timeout=settings.db_timeout, pool_size=2)
    if writer:
        await store.start()
    try:
        yield store
    finally:
        await store.close()


def check_config(args: argparse.Namespace) -> int:
    path = args.path or environ().get("RELAY_CONFIG") or "forwarding.yaml"
    problems = _check(path)
    if problems:
        for line in problems:
            sys.stderr.write(printable(line) + "\n")
        return 1
    cfg = load_config(path)
    for source in cfg.pull:
        if source.default_cpo is None:
            sys.stderr.write(printable(
                f"{path}: warning: pull source {source.name} has no default_cpo: OCPI 2.1.1 objects carry no "
                "country_code/party_id, so those that name no stored location are refused (a pass that refuses "
                "everything it fetched fails)") + "\n")
    if args.json:
        _print(describe(cfg))
    else:
        sys.stdout.write(
            f"{printable(path)}: ok ({len(cfg.subscriptions)} subscriptions, {len(cfg.stream_clients)} stream clients, "
            f"{len(cfg.targets)} targets, {len(cfg.rules)} rules, {len(cfg.pull)} pull sources)\n"
        )
    return 0


async def migrate(settings: Settings) -> int:
    async with opened(settings) as store:
        await store.migrate()
        sys.stdout.write(f"database at revision {await store.schema_revision()}\n")
    return 0


async def status(settings: Settings, *, as_json: bool) -> int:
    async with opened(settings) as store:
        stats = await store.stats()
    if as_json:
        _print(stats)
        return 0
    w = sys.stdout.write
    w(f"events: {stats['events']} (last seq {stats['last_seq']}); by status: {printable(stats['events_by_status'])}\n")
    w(f"unmatched EVSE/connector pushes: {stats['unmatched']}\n")
    w(f"rejected: {stats['rejected']} ({stats['rejected_open']} not replayed)\n")
    for name, t in sorted(stats["targets"].items()):
        w(f"target {printable(name)}: depth {t['depth']}, dead {t['dead']}, done {t['done']}, "
          f"oldest pending {t['oldest_pending_age_s']}s\n")
    for name, c in sorted(stats["consumers"].items()):
        w(f"consumer {printable(name)}: seq {c['seq']}, lag {c['lag']}\n")
    size = stats["database_bytes"]
    w(f"database size: {'unknown' if size is None else f'{size / 1e6:.1f} MB'}; "
      f"oldest event received {stats['oldest_event_at'] or '-'}\n")
    w(f"rejected volume: {stats['rejected_count']} records, {stats['rejected_bytes'] / 1e6:.1f} MB of bodies\n")
    for h in stats["retention_held_by"]:
        w(f"retention held back by {h['kind']} {printable(h['name'])}: needs events from seq {h['seq']} "
          f"(received {h['since'] or '-'})\n")
    return 0


async def rejected_list(settings: Settings, *, as_json: bool, only_open: bool, limit: int) -> int:
    async with opened(settings) as store:
        rows = await store.list_rejected(limit, only_open=only_open)
    if as_json:
        _print([r.summary() for r in rows])
        return 0
    for r in rows:
        replayed = f" replayed {r.replayed_at:%Y-%m-%d %H:%M:%S}" if r.replayed_at else ""
        sys.stdout.write(f"{r.id}\t{r.received_at:%Y-%m-%d %H:%M:%S}\t{printable(r.method)} {printable(r.path)}\t"
                         f"{r.http_status}/{r.status_code}\t{printable(r.reason[:100])}{replayed}\n")
    return 0


async def rejected_show(settings: Settings, rejected_id: int) -> int:
    async with opened(settings) as store:
        r = await store.get_rejected(rejected_id)
    if r is None:
        sys.stderr.write(f"no rejected request {rejected_id}\n")
        return 1
    data: dict[str, Any] = r.summary()
    data["origin"] = r.origin
    data["request_id"] = r.request_id
    try:
        data["body"] = orjson.loads(r.body)
    except orjson.JSONDecodeError:
        data["body_raw"] = r.body.decode("utf-8", "replace")
    _print(data)
    return 0


async def rejected_replay(settings: Settings, ids: list[int], *, replay_all: bool, as_json: bool) -> int:
    holder = ConfigHolder(settings.config)
    results: list[dict[str, Any]] = []
    async with opened(settings, writer=True) as store:
        records = await store.list_rejected(1_000_000, only_open=True) if replay_all else \
            [r for i in ids if (r := await store.get_rejected(i)) is not None]
        missing = set(ids) - {r.id for r in records}
        ingestor = Ingestor.from_settings(store, holder, settings)
        total = len(records)
        for n, rec in enumerate(records, 1):
            outcome = await _replay_one(store, ingestor, holder, rec)
            results.append({"id": rec.id, "ok": outcome[0], "status_code": outcome[1], "message": outcome[2]})
            if not as_json:
                sys.stderr.write(f"\r[{n}/{total}] replayed")
        if total and not as_json:
            sys.stderr.write("\n")
    for i in sorted(missing):
        results.append({"id": i, "ok": False, "status_code": None, "message": "no such rejected request"})
    if as_json:
        _print(results)
    else:
        for res in results:
            sys.stdout.write(f"{res['id']}\t{'ok' if res['ok'] else 'refused'}\t{res['status_code']}\t"
                             f"{printable(res['message'])}\n")
    return 0 if all(res["ok"] for res in results) else 1


async def _replay_one(store: Store, ingestor: Ingestor, holder: ConfigHolder, rec: Any) -> tuple[bool, int, str]:
    if rec.origin == "pull":
        return await _replay_pulled(store, ingestor, holder, rec)
    sub = next((s for s in holder().subscriptions if s.name == rec.subscription), None)
    if sub is None:
        reason = f"subscription {rec.subscription!r} no longer exists in the config"
        await store.update_rejected_reason(rec.id, 403, 2000, reason)
        return False, 2000, reason
    try:
        address = resolve(rec.method, rec.path)
    except OcpiError as err:
        await store.update_rejected_reason(rec.id, err.http_status, err.status_code, err.message)
        return False, err.status_code, err.message
    outcome = await ingestor.handle(Push(
        method=rec.method, path=rec.path, address=address, body=rec.body, source=Source.of(sub),
        origin="replay", request_id=rec.request_id, received_at=rec.received_at, replay_of=rec.id,
    ))
    return outcome.ok, outcome.status_code, outcome.message


async def _replay_pulled(store: Store, ingestor: Ingestor, holder: ConfigHolder, rec: Any) -> tuple[bool, int, str]:
    """A refused pulled object goes through the pull's own mapping again (its path is the sender's)."""
    from relay.pull.sync import pulled_push

    source = holder().pull_source(rec.subscription or "")
    if source is None or rec.module is None:
        reason = f"pull source {rec.subscription!r} no longer exists in the config"
        await store.update_rejected_reason(rec.id, 403, 2000, reason)
        return False, 2000, reason
    try:
        obj = orjson.loads(rec.body)
    except orjson.JSONDecodeError:
        return False, 2001, "body is not valid JSON"
    push = dataclasses.replace(pulled_push(source, rec.module, obj, rec.received_at), origin="replay",
                               replay_of=rec.id, request_id=rec.request_id)
    outcome = await ingestor.handle(push)
    return outcome.ok, outcome.status_code, outcome.message


def register(subparsers: Any) -> None:
    """`relay migrate`, `relay check-config`, `relay status`, `relay rejected list|show|replay`."""
    p = subparsers.add_parser("migrate", help="apply database migrations and exit")
    add_common_options(p)
    p.set_defaults(func=lambda a: _run_async(a, migrate(_settings(a))))

    p = subparsers.add_parser("check-config", help="validate forwarding.yaml (exit 1 with file:line: message)")
    p.add_argument("path", nargs="?", help="file to check (default: RELAY_CONFIG or forwarding.yaml)")
    p.add_argument("--json", action="store_true", help="print the effective config (secrets masked) as JSON")
    p.set_defaults(func=check_config)

    p = subparsers.add_parser("status", help="event count, last seq, outbox per target, consumer lags")
    add_common_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=lambda a: _run_async(a, status(_settings(a), as_json=a.json)))

    rej = subparsers.add_parser("rejected", help="refused requests: list, show, replay")
    rsub = rej.add_subparsers(dest="rejected_command", metavar="ACTION", required=True)
    p = rsub.add_parser("list", help="list refused requests")
    add_common_options(p)
    p.add_argument("--json", action="store_true", help="JSON array of objects")
    p.add_argument("--open", action="store_true", help="only those not replayed yet")
    p.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    p.set_defaults(func=lambda a: _run_async(a, rejected_list(_settings(a), as_json=a.json, only_open=a.open,
                                                               limit=a.limit)))
    p = rsub.add_parser("show", help="one refused request with its body")
    add_common_options(p)
    p.add_argument("id", type=int, help="rejected id")
    p.set_defaults(func=lambda a: _run_async(a, rejected_show(_settings(a), a.id)))
    p = rsub.add_parser("replay", help="run refused pushes through scope and validation again")
    add_common_options(p)
    p.add_argument("ids", nargs="*", type=int, help="rejected ids")
    p.add_argument("--all", action="store_true", help="every refused request not replayed yet")
    p.add_argument("--json", action="store_true", help="JSON array of results")
    p.set_defaults(func=_replay_command)


def _settings(args: argparse.Namespace) -> Settings:
    settings = settings_from_args(args)
    setup_logging(settings.log_level if args.log_level else "WARNING")
    return settings


def _run_async(_args: argparse.Namespace, coro: Coroutine[Any, Any, int]) -> int:
    return asyncio.run(coro)


def _replay_command(args: argparse.Namespace) -> int:
    if not args.ids and not args.all:
        sys.stderr.write("relay rejected replay: give ids or --all\n")
        return 2
    return asyncio.run(rejected_replay(_settings(args), args.ids, replay_all=args.all, as_json=args.json))
