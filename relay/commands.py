"""What the operator commands do (the CLI only parses and calls these)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson

from relay.errors import ConfigError, OcpiError
from relay.ingest import Ingestor, Push, Source
from relay.ocpi.paths import resolve
from relay.routing.describe import describe
from relay.routing.holder import ConfigHolder
from relay.routing.loader import check_config as _check
from relay.routing.loader import load_config
from relay.settings import Settings
from relay.store import Store, open_store

# Text from the wire (paths, reasons, partner answers, consumer names) reaches the operator's
# terminal escaped: C0 (tab and newline too: they are the tables' separators), DEL, C1 and the
# bidi/line-separator controls, so nothing printed can move the cursor, retitle the window, or
# hide or reorder text. JSON output gets the same as JSON escapes (orjson escapes C0 itself).
_UNSAFE = (*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_TEXT_ESCAPES = {c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" for c in _UNSAFE}
_JSON_ESCAPES = {c: f"\\u{c:04x}" for c in _UNSAFE if c >= 0x20}


def printable(value: object) -> str:
    """``value`` as text that is safe to print on a terminal (unsafe characters as ``\\x1b`` etc.)."""
    text = value if isinstance(value, str) else str(value)
    return text if text.isprintable() else text.translate(_TEXT_ESCAPES)


def json_safe(text: str) -> str:
    """JSON text with the control characters JSON lets through raw (DEL, C1, ...) as ``\\u`` escapes."""
    return text if text.isascii() and "\x7f" not in text else text.translate(_JSON_ESCAPES)


def json_text(data: Any) -> str:
    """Indented JSON for the operator; every control character is a JSON escape."""
    return json_safe(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode())


def _out(data: Any) -> None:
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
    path = args.path or os.environ.get("RELAY_CONFIG") or "forwarding.yaml"
    problems = _check(path)
    if problems:
        for line in problems:
            sys.stderr.write(printable(line) + "\n")
        return 1
    cfg = load_config(path)
    if args.json:
        _out(describe(cfg))
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
        _out(stats)
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
    return 0


async def rejected_list(settings: Settings, *, as_json: bool, only_open: bool, limit: int) -> int:
    async with opened(settings) as store:
        rows = await store.list_rejected(limit, only_open=only_open)
    if as_json:
        _out([r.summary() for r in rows])
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
    _out(data)
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
        _out(results)
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


__all__ = [
    "ConfigError", "check_config", "json_safe", "json_text", "migrate", "printable", "rejected_list", "rejected_replay",
    "rejected_show", "status",
]
