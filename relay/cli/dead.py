"""`relay dead list|show|retry` and `relay replay`: operator commands on the outbox.

They work on the database directly, so they also run while `relay serve` does: a retried or
replayed row is an ordinary ``pending`` row, and the running workers pick it up within a poll.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import orjson

from relay.cli.operate import opened
from relay.cli.options import add_common_options, settings_from_args
from relay.cli.output import json_text, printable
from relay.log import setup_logging
from relay.routing.loader import load_config
from relay.routing.model import RoutingConfig
from relay.routing.rules import route
from relay.settings import Settings
from relay.store.base import EventRecord, StateKey
from relay.store.outbox import NewOutboxRow

REPLAY_PAGE = 1000


def register(subparsers: Any) -> None:
    """Add `dead` (list, show, retry) and `replay` to the `relay` parser."""
    dead = subparsers.add_parser("dead", help="dead deliveries: list, show, retry")
    dsub = dead.add_subparsers(dest="dead_command", metavar="ACTION", required=True)

    p = dsub.add_parser("list", help="list dead deliveries, oldest first")
    add_common_options(p)
    p.add_argument("--target", help="only this target")
    p.add_argument("--json", action="store_true", help="JSON array of objects")
    p.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    p.set_defaults(func=lambda a: _run(a, dead_list(settings_from_args(a), target=a.target, as_json=a.json, limit=a.limit)))

    p = dsub.add_parser("show", help="one delivery with its event, as a JSON object")
    add_common_options(p)
    p.add_argument("id", type=int, help="delivery id (see `relay dead list`)")
    p.set_defaults(func=lambda a: _run(a, dead_show(settings_from_args(a), a.id)))

    p = dsub.add_parser("retry", help="send dead deliveries again (attempts reset, due now)")
    add_common_options(p)
    p.add_argument("ids", nargs="*", type=int, help="delivery ids")
    p.add_argument("--all", action="store_true", help="every dead delivery (of --target, if given)")
    p.add_argument("--target", help="only this target")
    p.add_argument("--json", action="store_true", help="JSON array of objects")
    p.set_defaults(func=_dead_retry_args)

    p = subparsers.add_parser(
        "replay",
        help="queue applied events again for one target under the current rules (also backfills a new target)",
    )
    add_common_options(p)
    p.add_argument("--target", required=True, help="target name from forwarding.yaml")
    p.add_argument("--from-seq", type=int, default=1, help="first seq to replay (default 1)")
    p.add_argument("--to-seq", type=int, default=None, help="last seq to replay (default: the last one at start)")
    p.add_argument("--json", action="store_true", help="print the summary as a JSON object")
    p.set_defaults(func=lambda a: _run(a, replay(settings_from_args(a), a.target, from_seq=a.from_seq, to_seq=a.to_seq,
                                                 as_json=a.json)))


def _run(args: argparse.Namespace, coro: Any) -> int:
    setup_logging(args.log_level or "WARNING")
    return int(asyncio.run(coro))


def _dead_retry_args(args: argparse.Namespace) -> int:
    if not args.ids and not args.all:
        sys.stderr.write("relay dead retry: give delivery ids or --all\n")
        return 2
    if args.ids and args.all:
        sys.stderr.write("relay dead retry: give delivery ids or --all, not both\n")
        return 2
    settings = settings_from_args(args)
    return _run(args, dead_retry(settings, None if args.all else args.ids, target=args.target, as_json=args.json))


def _out(data: Any, out: TextIO) -> None:
    out.write(json_text(data) + "\n")


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _event_json(ev: EventRecord) -> dict[str, Any]:
    data: dict[str, Any] = {
        "seq": ev.seq, "module": ev.module, "action": ev.action, "country_code": ev.country_code,
        "party_id": ev.party_id, "object_id": ev.object_id, "evse_uid": ev.evse_uid,
        "connector_id": ev.connector_id, "last_updated": _iso(ev.last_updated), "received_at": _iso(ev.received_at),
        "origin": ev.origin, "subscription": ev.subscription, "request_id": ev.request_id, "status": ev.status,
    }
    try:
        data["body"] = orjson.loads(ev.body) if ev.body else None
    except orjson.JSONDecodeError:
        data["body_raw"] = ev.body
    data["object"] = orjson.loads(ev.object) if ev.object else None
    return data


async def dead_list(settings: Settings, *, target: str | None, as_json: bool, limit: int = 1000,
                    out: TextIO = sys.stdout) -> int:
    """`relay dead list`: one line (or JSON object) per dead delivery."""
    async with opened(settings) as store:
        rows = await store.outbox().list_dead(target, limit)
    if as_json:
        _out([r.summary() for r in rows], out)
        return 0
    for r in rows:
        status = "/".join(str(s) for s in (r.last_http_status, r.last_ocpi_status) if s is not None) or "-"
        out.write(f"{r.id}\t{printable(r.target)}\tseq {r.seq}\t{printable(r.object_key)}\t{printable(r.rule)}\t"
                  f"attempts {r.attempts}\t{status}\t{printable((r.last_error or '')[:160])}\n")
    return 0


async def dead_show(settings: Settings, delivery_id: int, *, out: TextIO = sys.stdout) -> int:
    """`relay dead show ID`: the delivery (any state) and its event as one JSON object."""
    async with opened(settings) as store:
        found = await store.outbox().get(delivery_id)
    if found is None:
        sys.stderr.write(f"no delivery {delivery_id}\n")
        return 1
    rec, event = found
    data = rec.summary()
    data.update({"state": rec.state, "claimed_by": rec.claimed_by, "next_attempt_at": _iso(rec.next_attempt_at),
                 "created_at": _iso(rec.created_at), "event": _event_json(event) if event is not None else None})
    _out(data, out)
    return 0


async def dead_retry(settings: Settings, ids: Sequence[int] | None, *, target: str | None = None,
                     as_json: bool = False, out: TextIO = sys.stdout) -> int:
    """`relay dead retry`: dead rows back to pending (``ids`` None = all); exit 1 if an id was not dead."""
    async with opened(settings) as store:
        retried = await store.outbox().retry_dead(ids, target)
    missing = sorted(set(ids or ()) - set(retried))
    if as_json:
        _out([{"id": i, "retried": True} for i in retried] + [{"id": i, "retried": False} for i in missing], out)
    else:
        out.write(f"{len(retried)} dead deliveries are pending again\n")
        for i in missing:
            sys.stderr.write(f"delivery {i} is not dead (or does not exist{' for that target' if target else ''})\n")
    return 1 if missing else 0


async def replay(settings: Settings, target: str, *, from_seq: int = 1, to_seq: int | None = None,
                 as_json: bool = False, out: TextIO = sys.stdout, progress: TextIO = sys.stderr) -> int:
    """`relay replay`: a new pending row for every applied event in range that ``target``'s rules match
    under the current config; events that already have a pending or in-flight row for the same
    (target, rule) are skipped, so running it twice does not send twice."""
    cfg = load_config(settings.config)
    if cfg.target(target) is None:
        known = ", ".join(t.name for t in cfg.targets) or "none"
        sys.stderr.write(printable(f"relay replay: no target {target!r} in {settings.config} (targets: {known})") + "\n")
        return 2
    queued = skipped = 0
    async with opened(settings) as store:
        outbox = store.outbox()
        last = to_seq if to_seq is not None else await store.max_seq()
        after = max(0, from_seq - 1)
        shown = False
        while after < last:
            events = [e for e in await store.read_events(after, REPLAY_PAGE) if e.seq <= last]
            if not events:
                break
            rows = [row for ev in events for row in _rows_for(cfg, target, ev)]
            added = await outbox.enqueue_missing(rows)
            queued, skipped = queued + added, skipped + len(rows) - added
            after = events[-1].seq
            progress.write(f"\rreplay {printable(target)}: seq {after}/{last}, {queued} queued, {skipped} already pending")
            progress.flush()
            shown = True
        if shown:
            progress.write("\n")
    summary = {"target": target, "from_seq": from_seq, "to_seq": last, "queued": queued, "skipped": skipped}
    if as_json:
        _out(summary, out)
    else:
        out.write(f"queued {queued} deliveries to {printable(target)} for seq {from_seq}..{last} "
                  f"({skipped} already pending)\n")
    return 0


def _rows_for(cfg: RoutingConfig, target: str, ev: EventRecord) -> list[NewOutboxRow]:
    obj = orjson.loads(ev.object) if ev.object else {}
    key = StateKey(ev.module, ev.country_code, ev.party_id, ev.object_id).as_str()
    return [
        NewOutboxRow(ev.seq, target, rule.name, key)
        for rule, t in route(cfg, ev.module, ev.action, ev.country_code, ev.party_id, obj, ev.subscription)
        if t.name == target
    ]


__all__ = ["dead_list", "dead_retry", "dead_show", "register", "replay"]
