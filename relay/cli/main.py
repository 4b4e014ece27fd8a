"""The `relay` command: the parser, made of each module's ``register``, and the exit codes.

Exit codes: 0 success, 1 runtime failure, 2 usage or configuration errors.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from relay import __version__
from relay.cli import backup, dead, endpoints, operate, prune, pull, serve, tail
from relay.errors import ConfigError, StoreError

# Each module adds its subcommands with a ``func(args) -> exit code`` default: one declaration each.
COMMANDS = (serve, operate, dead, pull, tail, prune, backup, endpoints)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay", description="ocpi-relay: receive GreenFlux OCPI 2.1.1 pushes, store, stream and forward them.",
    )
    parser.add_argument("--version", action="version", version=f"ocpi-relay {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args))
    except ConfigError as err:
        for line in err.problems:
            sys.stderr.write(line + "\n")
        code = 2
    except StoreError as err:
        sys.stderr.write(f"database error: {err}\n")
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
