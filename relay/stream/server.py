"""Placeholder until the stream part lands: serves nothing, stops when asked."""

from __future__ import annotations

import asyncio
from typing import Any


def grpc_part(settings: Any, store: Any, holder: Any, info: Any) -> Any:
    async def part(stop: asyncio.Event) -> None:
        await stop.wait()

    return part
