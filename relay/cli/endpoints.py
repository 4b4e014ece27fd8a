"""`relay endpoints`: the exact receiver URLs to hand to GreenFlux, one per module."""

from __future__ import annotations

import argparse
import sys
from typing import Any
from urllib.parse import urlsplit

from relay.cli.options import add_setting_flags, settings_from_args
from relay.cli.output import json_text, printable
from relay.errors import ConfigError
from relay.ocpi.paths import PREFIXES


def register(subparsers: Any) -> None:
    """Add `relay endpoints` to the `relay` parser."""
    p = subparsers.add_parser(
        "endpoints", help="print the receiver URL of every module, to hand to GreenFlux",
        description="Print the URL of each OCPI module the relay receives (locations, sessions, cdrs, tariffs, "
                    "ChargeStationNotifications, notifications) under the public address and RELAY_BASE_PATH.",
    )
    p.add_argument("--public-url", required=True, metavar="URL",
                   help="the address GreenFlux reaches the relay at, e.g. https://relay.example.com "
                        "(with a path if a proxy adds one)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    add_setting_flags(p, ("base_path",))
    p.set_defaults(func=endpoints_command)


def public_root(url: str) -> str:
    """``url`` checked (http or https, a host, no credentials, query or fragment), without a trailing '/'."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError([f"--public-url: {url!r} is not an http:// or https:// URL"])
    if parts.username or parts.password:
        raise ConfigError(["--public-url: credentials in the URL are not allowed"])
    if parts.query or parts.fragment:
        raise ConfigError([f"--public-url: {url!r} must not have a query or fragment"])
    return url.strip().rstrip("/")


def endpoint_urls(public_url: str, base_path: str) -> list[dict[str, str]]:
    """One entry per module: its forwarding.yaml name, the OCPI path segment and the full URL."""
    root = public_root(public_url) + base_path
    return [{"module": module, "identifier": segment, "url": f"{root}/{segment}"} for segment, module in PREFIXES.items()]


def endpoints_command(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    rows = endpoint_urls(args.public_url, settings.base_path)
    if args.json:
        sys.stdout.write(json_text({"base_path": settings.base_path, "endpoints": rows}) + "\n")
        return 0
    width = max(len(r["identifier"]) for r in rows)
    for r in rows:
        sys.stdout.write(f"{r['identifier']:<{width}}  {printable(r['url'])}\n")
    return 0
