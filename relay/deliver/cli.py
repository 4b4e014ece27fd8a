"""Subcommands of the deliver package (placeholder)."""

from __future__ import annotations

from typing import Any


def register(subparsers: Any) -> None:
    """Add this package's subcommands to the `relay` parser."""
