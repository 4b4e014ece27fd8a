"""`relay serve`: the receiver, the gRPC stream, delivery workers and pull schedules in one process."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from relay.cli.options import add_setting_flags, settings_from_args
from relay.log import setup_logging


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve", help="run the HTTP receiver, gRPC stream and delivery workers",
        description="Run the receiver, the gRPC stream, delivery workers and pull schedules in one process. "
                    "Every setting is a RELAY_* env variable and a flag; flags win.",
    )
    add_setting_flags(p)
    p.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    setup_logging(settings.log_level)
    from relay.runtime import loop_factory, run, tune_gc

    tune_gc()
    with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
        runner.run(run(settings))
    return 0
