"""The asyncio debug-mode gate of tests/conftest.py (``no_slow_callbacks``) fails a test that blocks.

CI runs the suite once more with ``--asyncio-debug``; that pass only proves something if a blocking
call in a test's event loop really fails the test. Here a throwaway test that sleeps 0.25 s on the loop
runs under the gate in a pytest subprocess, with and without debug mode.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.commands import REPO

BLOCKING_TEST = '''
import time


async def test_blocks_the_loop() -> None:
    time.sleep(0.25)  # a blocking call where an await belongs
'''

GATE = "from tests.conftest import no_slow_callbacks  # noqa: F401\n"


async def _pytest(tmp_path: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "asyncio_mode=auto", "-q",
        "--rootdir", str(tmp_path), *args, str(tmp_path / "test_blocking.py"),
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_a_blocking_call_fails_its_test_in_debug_mode_only(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(GATE)
    (tmp_path / "test_blocking.py").write_text(BLOCKING_TEST)

    code, out = await _pytest(tmp_path, "--asyncio-debug")
    assert code == 1, out
    assert "1 passed, 1 error" in out, out
    assert "slow callbacks in asyncio debug mode" in out and "test_blocks_the_loop" in out, out

    code, out = await _pytest(tmp_path)
    assert code == 0 and "1 passed" in out, out
