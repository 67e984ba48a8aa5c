"""Shared fixtures: a real PostgreSQL and a real MQTT broker for the whole session.

On a fresh machine both are started here (embedded PostgreSQL from the wheel, Mosquitto or rumqttd) on free
ports under a temporary folder, and stopped at the end. `OCC_TEST_DATABASE_URL` / `OCC_TEST_MQTT_URL` point
the suite at external servers instead (for example a TimescaleDB). Each test that asks for `database_url`
gets a fresh, empty database of its own.

The servers are child processes with PR_SET_PDEATHSIG (occ/embedded/proc.py): when pytest is killed, even with
SIGKILL, they go too (tests/integration/test_embedded.py::test_a_sigkilled_pytest_leaves_no_server_behind).
Start them from the main thread (fixtures do), never from `asyncio.to_thread`: the kernel ties the signal to the
thread that forked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from occ.embedded import EmbeddedBroker, EmbeddedPostgres
from occ.embedded.postgres import bin_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def work_dir() -> Iterator[Path]:
    """A session folder others can traverse (the embedded PostgreSQL runs as its own system user)."""
    path = Path(tempfile.mkdtemp(prefix="occ-test-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server_url(work_dir: Path) -> Iterator[str]:
    external = os.environ.get("OCC_TEST_DATABASE_URL")
    if external:
        yield external
        return
    server = EmbeddedPostgres(work_dir / "pg", durable=False)
    server.start()
    yield server.url
    server.stop(mode="immediate")


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def psql(url: str, sql: str) -> str:
    result = subprocess.run(
        [str(bin_dir() / "psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", url, "-c", sql],
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C"},
    )
    if result.returncode != 0:
        raise RuntimeError(f"psql failed: {result.stderr.strip()}")
    return result.stdout


@pytest.fixture
def database_url(pg_server_url: str) -> Iterator[str]:
    """URL of a fresh, empty database; dropped after the test."""
    name = f"occ_test_{uuid.uuid4().hex[:12]}"
    psql(pg_server_url, f'CREATE DATABASE "{name}"')
    yield with_database(pg_server_url, name)
    psql(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def session_broker(work_dir: Path) -> Iterator[EmbeddedBroker | None]:
    if os.environ.get("OCC_TEST_MQTT_URL"):
        yield None
        return
    broker = EmbeddedBroker(work_dir / "broker", kind="auto")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def mqtt_url(session_broker: EmbeddedBroker | None) -> str:
    """The session broker's URL for devices and any MQTT client (3.1.1; tests use unique topics/client ids)."""
    if session_broker is None:
        return os.environ["OCC_TEST_MQTT_URL"]
    return session_broker.url


@pytest.fixture(scope="session")
def mqtt_services_url(session_broker: EmbeddedBroker | None) -> str:
    """The same broker's MQTT 5 URL, for OCC services (rumqttd serves MQTT 5 on a listener of its own)."""
    if session_broker is None:
        return os.environ.get("OCC_TEST_MQTT_SERVICES_URL") or os.environ["OCC_TEST_MQTT_URL"]
    return session_broker.services_url


@pytest.fixture(params=["mosquitto", "iotcore"])
def broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A private broker a test may stop, kill and restart; both embedded kinds (Mosquitto only if installed)."""
    from occ.embedded.broker import mosquitto_path

    if request.param == "mosquitto" and mosquitto_path() is None:
        pytest.skip("mosquitto is not installed")
    folder = tmp_path_factory.mktemp(f"broker-{request.param}")
    folder.chmod(0o755)
    instance = EmbeddedBroker(folder, kind=request.param)
    instance.start()
    yield instance
    instance.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Browser tests skipped for lack of Chromium must not pass unnoticed: say so loudly at the end."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "BROWSER TESTS SKIPPED" in str(r.longrepr)]
    if skipped:
        reason = str(skipped[0].longrepr[-1]) if isinstance(skipped[0].longrepr, tuple) else str(skipped[0].longrepr)
        terminalreporter.write_sep("!", "BROWSER TESTS SKIPPED", red=True, bold=True)
        terminalreporter.write_line(f"{len(skipped)} browser test(s) did not run: {reason}", red=True, bold=True)
        terminalreporter.write_line("install Debian's chromium (`apt-get install chromium`) to run them", red=True)


@pytest.fixture(autouse=True)
def no_background_task_errors(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail any test in which a background asyncio task or callback raised and nobody handled it.

    Every event loop without a handler of its own reports those through `default_exception_handler` ("Task
    exception was never retrieved", "Exception in callback ..."); they are recorded here, in any loop the test
    runs (pytest-asyncio's, `asyncio.run` in a thread), and the test fails at teardown."""
    import asyncio.base_events
    import gc

    seen: list[str] = []
    original = asyncio.base_events.BaseEventLoop.default_exception_handler

    def record(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        exc = context.get("exception")
        if isinstance(exc, asyncio.CancelledError):
            # Cancelling is not failing. Python 3.11's asyncio.start_server reports a cancelled connection
            # handler this way (its done-callback calls task.exception() on it; 3.12 checks cancelled() first).
            original(loop, context)  # type: ignore[arg-type]
            return
        seen.append(f"{context.get('message')}: {exc!r}" if exc is not None else str(context.get("message")))
        original(loop, context)  # type: ignore[arg-type]

    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "default_exception_handler", record)
    yield
    if not seen:
        gc.collect()  # a task that died unobserved reports itself when collected
    if seen:
        pytest.fail("a background task or callback raised during the test:\n  " + "\n  ".join(seen), pytrace=False)
