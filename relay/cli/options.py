"""Flags from settings: every ``Settings`` field is a flag of `relay serve`, declared once, here.

A flag's help is the line of ``relay.settings.HELP`` with its env name and its real default (the
flags themselves default to None, so that only flags given on the command line override the env).
Commands that open the store take the common ones (``--database-url``, ``--config``, ``--log-level``).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable
from typing import Any

from relay.settings import HELP, Settings

COMMON = ("database_url", "config", "log_level")
# Settings that are on by default are turned off with --no-<name> (relay serve --no-grpc).
_SWITCHES = frozenset(f.name for f in dataclasses.fields(Settings) if f.type in ("bool", bool))
_CHOICES = {"event_loop": ("auto", "asyncio", "uvloop")}


def _default_text(f: dataclasses.Field[Any]) -> str:
    if f.default is dataclasses.MISSING:
        return "computed at start"
    if f.default == "":
        return "empty"
    return str(f.default)


def _type(f: dataclasses.Field[Any]) -> Any:
    return {"int": int, "float": float}.get(str(f.type), str)


def _metavar(f: dataclasses.Field[Any]) -> str | None:
    if f.name in _CHOICES:
        return None
    if f.name.endswith("_bytes"):
        return "BYTES"
    return {"int": "N", "float": "SECONDS"}.get(str(f.type), f.name.split("_")[-1].upper())


def add_setting_flags(parser: argparse.ArgumentParser, names: Iterable[str] | None = None) -> None:
    """Add a flag for each named setting (all of them when ``names`` is None)."""
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    for name in names if names is not None else fields:
        f = fields[name]
        env = f"RELAY_{name.upper()}"
        if name in _SWITCHES:
            parser.add_argument(f"--no-{name.replace('_', '-')}", dest=name, action="store_const", const=False,
                                default=None, help=f"do not {HELP[name]} (env {env}=false)")
            continue
        parser.add_argument(
            f"--{name.replace('_', '-')}", dest=name, type=_type(f), default=None, choices=_CHOICES.get(name),
            metavar=_metavar(f),
            help=f"{HELP[name]} (env {env}; default {_default_text(f)})",
        )


def settings_from_args(args: argparse.Namespace, **extra: Any) -> Settings:
    """Settings from RELAY_* env, overridden by every setting flag given and by ``extra``."""
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings) if getattr(args, f.name, None) is not None}
    return Settings.from_env(**{**flags, **extra})


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """--database-url / --config / --log-level, the same on every subcommand that opens the store."""
    add_setting_flags(parser, COMMON)
