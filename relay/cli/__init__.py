"""The `relay` command: one package, one module per group of subcommands.

``main`` parses the flags, builds ``Settings`` (env, then flags) and runs one subcommand; each module
here only parses, prints and calls runtime / store / routing functions.
"""

from __future__ import annotations

from relay.cli.main import main

__all__ = ["main"]
