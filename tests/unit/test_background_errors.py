"""The suite-wide fixture `no_background_task_errors` (tests/conftest.py) fails a test whose background task or
callback raised unobserved, and only such a test: checked by running pytest on three small probe tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBES = '''
import asyncio

async def test_task_raised() -> None:
    async def boom() -> None:
        raise RuntimeError("background boom")
    asyncio.get_running_loop().create_task(boom())
    await asyncio.sleep(0.01)

async def test_callback_raised() -> None:
    asyncio.get_running_loop().call_soon(lambda: 1 / 0)
    await asyncio.sleep(0.01)

async def test_clean() -> None:
    task = asyncio.get_running_loop().create_task(asyncio.sleep(0))
    await task
'''


def test_a_background_exception_fails_its_test_and_only_it(tmp_path: Path) -> None:
    (tmp_path / "test_probes.py").write_text(PROBES)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-q", "-rE",
         "-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function", "test_probes.py"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    )
    out = result.stdout
    assert result.returncode != 0, out
    assert "ERROR test_probes.py::test_task_raised" in out and "background boom" in out, out
    assert "ERROR test_probes.py::test_callback_raised" in out and "ZeroDivisionError" in out, out
    assert "test_clean" not in out.split("short test summary info")[-1], out
    assert "3 passed, 2 errors" in out, out
