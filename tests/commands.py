"""The `relay` command as an operator runs it: a child process of this interpreter.

``relay_cli`` runs a command and waits for it, for tests that have no event loop. ``relay_cli_async``
runs the same from a test's event loop without holding it: a relay started in that loop (the ``relay``
fixture) keeps answering while the command works, and asyncio debug mode sees no blocking call. Both
take extra environment variables on top of the test process's own and return
``subprocess.CompletedProcess`` with the output as text.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 120.0


def _argv(args: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "relay", *args]


def _env(env: Mapping[str, str] | None) -> dict[str, str]:
    return {**os.environ, **(env or {})}


def relay_cli(*args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None,
              timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``relay ARGS`` and wait for it to exit."""
    return subprocess.run(_argv(args), capture_output=True, text=True, env=_env(env), cwd=cwd, timeout=timeout,
                          check=False)


async def relay_cli_async(*args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None,
                          timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``relay ARGS`` as an asyncio subprocess; the loop goes on while it runs."""
    argv = _argv(args)
    proc = await asyncio.create_subprocess_exec(*argv, env=_env(env), cwd=cwd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return subprocess.CompletedProcess(argv, proc.returncode, out.decode(), err.decode())
