"""Delivery workers: the runtime part that runs the Dispatcher over one shared aiohttp session.

A claim commits before any send; each outcome is recorded in a new transaction (group-committed with
the outcomes that finished meanwhile) before the object's next row goes out, so a crash can repeat a
delivery but never reorder an object's deliveries (order rules: relay.store.outbox). The pieces:
dispatcher.py (a loop per target, wake-ups, lease housekeeping), target_loop.py (claim and send one
target's rows), slots.py (requests on the wire), outcomes.py (recording outcomes), backoff.py and
senders.py (when to retry, how to send).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp

from relay.deliver.dispatcher import Dispatcher
from relay.store.base import Store

if TYPE_CHECKING:
    from relay.routing.holder import ConfigHolder
    from relay.settings import Settings


async def run_workers(settings: Settings, store: Store, holder: ConfigHolder, stop: asyncio.Event) -> None:
    """Delivery workers for every configured target until ``stop``, then drain (a part of `relay serve`)."""
    # No connection cap in aiohttp: per-target concurrency is the limit, so a slow partner
    # holding its connections cannot starve another target's sends.
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
    # The workers' outbox transactions run on a thread of their own on SQLite (see Outbox).
    outbox = store.outbox(own_thread=True)
    try:
        async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as session:
            dispatcher = Dispatcher(outbox, holder, session, owner=settings.instance,
                                    claim_max=settings.delivery_concurrency)
            holder.on_change(lambda _cfg: dispatcher.reconfigure())
            await dispatcher.run(stop)
    finally:
        await outbox.close()
