"""Durable cursors: concurrent first commits of one name (two replicas, one consumer) never collide."""

from __future__ import annotations

import asyncio
import random

from relay.store import open_store


async def test_concurrent_first_commits_of_one_cursor_all_succeed_and_keep_the_highest(database_url: str) -> None:
    stores = [open_store(database_url), open_store(database_url)]
    await stores[0].migrate()
    try:
        for round_ in range(3):  # a few fresh names: the race is on the very first commit
            name = f"replayer-{round_}"
            seqs = list(range(1, 41))
            random.Random(round_).shuffle(seqs)
            results = await asyncio.gather(
                *(stores[i % 2].commit_cursor(name, seq) for i, seq in enumerate(seqs)), return_exceptions=True
            )
            failed = [r for r in results if isinstance(r, BaseException)]
            assert not failed, failed
            assert await stores[0].get_cursor(name) == 40
            assert await stores[1].get_cursor(name) == 40
            await stores[1].commit_cursor(name, 7)  # never backwards
            assert await stores[0].get_cursor(name) == 40
    finally:
        for s in stores:
            await s.close()
