"""Every service stops on SIGINT or SIGTERM in every state (issue 11 item 4): connecting to a database that is
not there, connecting to a broker that refuses, holding messages while the database is down (paused,
retrying). Each case runs the real `occ ingest` process and expects a prompt exit 0 without a traceback.

Before: `occ --database-url postgresql://postgres@127.0.0.1:5999/occ ingest` ignored both signals and retried
for ever; with an unreachable broker it ignored Ctrl-C and died after 60 s with a bare TimeoutError.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from occ.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from tests.conftest import psql, with_database
from tests.integration.fault_helpers import IngestProcess, PublisherProcess, stream_t0
from tests.integration.ingest_helpers import seed_devices

STOP_WITHIN_S = 5.0
"""Generous for a loaded 2-core machine; the services take well under a second when idle."""


def stop_with(ingest: IngestProcess, sig: int) -> tuple[int, float]:
    assert ingest.process is not None and ingest.alive(), ingest.log()
    began = time.monotonic()
    ingest.process.send_signal(sig)
    code = ingest.process.wait(STOP_WITHIN_S)  # TimeoutExpired fails the test
    return code, time.monotonic() - began


def wait_log(ingest: IngestProcess, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in ingest.log():
        assert ingest.alive() and time.monotonic() < deadline, ingest.log()
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ingest_stops_while_the_database_is_unreachable(sig: int, tmp_path: Path, mqtt_services_url: str) -> None:
    database = f"postgresql://postgres@127.0.0.1:{free_port()}/occ"
    ingest = IngestProcess(tmp_path / "ingest.log", database_url=database, mqtt_url=mqtt_services_url,
                           client_id=f"sig-db-{uuid.uuid4().hex[:6]}", http_port=free_port(), timescaledb="off")
    try:
        ingest.start()
        wait_log(ingest, "database unavailable")
        code, _ = stop_with(ingest, sig)
        assert code == 0 and "Traceback" not in ingest.log(), ingest.log()
    finally:
        ingest.stop()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ingest_stops_while_the_broker_is_unreachable(sig: int, tmp_path: Path, database_url: str) -> None:
    ingest = IngestProcess(tmp_path / "ingest.log", database_url=database_url,
                           mqtt_url=f"mqtt://127.0.0.1:{free_port()}", client_id=f"sig-mqtt-{uuid.uuid4().hex[:6]}",
                           http_port=free_port())
    try:
        ingest.start()
        wait_log(ingest, "unreachable")
        code, _ = stop_with(ingest, sig)
        log = ingest.log()
        assert code == 0 and "Traceback" not in log, log
        assert log.count("unreachable") == 1, log  # one line for the outage, not one per attempt
    finally:
        ingest.stop()


@pytest.fixture
def outage_pg(work_dir: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(work_dir / f"pg-signal-{uuid.uuid4().hex[:8]}", durable=False)
    server.start()
    yield server
    server.destroy()


@pytest.mark.parametrize("broker", ["mosquitto"], indirect=True)
async def test_ingest_stops_while_holding_messages_for_a_database_that_is_down(
    broker: EmbeddedBroker, outage_pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    """Paused at its bound and retrying writes: SIGTERM ends it at once (the broker redelivers what it held)."""
    psql(outage_pg.url, "CREATE DATABASE occ_signal")
    database_url = with_database(outage_pg.url, "occ_signal")
    await seed_devices(database_url)
    ingest = IngestProcess(tmp_path / "ingest.log", database_url=database_url, mqtt_url=broker.services_url,
                           client_id=f"sig-held-{uuid.uuid4().hex[:6]}", http_port=free_port(), timescaledb="off",
                           max_unacked="200", retry_max_s="1")
    publisher: PublisherProcess | None = None
    try:
        ingest.start()
        await asyncio.to_thread(ingest.wait_ready)
        outage_pg.stop(mode="immediate")
        publisher = PublisherProcess(broker.url, start=0, stop=2000, t0=stream_t0(2000),
                                     client_id=f"pub-{uuid.uuid4().hex[:6]}", rate=2000)
        deadline = time.monotonic() + 30
        while (ingest.metric("occ_ingest_reading_paused") or 0) < 1:
            assert time.monotonic() < deadline and ingest.alive(), ingest.log()
            await asyncio.sleep(0.1)
        code, _ = await asyncio.to_thread(stop_with, ingest, signal.SIGTERM)
        assert code == 0 and "Traceback" not in ingest.log(), ingest.log()
    finally:
        ingest.stop()
        if publisher is not None:
            publisher.close()


def test_a_repeated_sigterm_still_stops_cleanly(tmp_path: Path, database_url: str, mqtt_services_url: str) -> None:
    """Under `occ up` a worker gets SIGTERM twice (from `kill -TERM -- -<group>` and from the supervisor): it must
    still drain and exit 0, not take the second one for an impatient person's second Ctrl-C."""
    ingest = IngestProcess(tmp_path / "ingest.log", database_url=database_url, mqtt_url=mqtt_services_url,
                           client_id=f"sig-twice-{uuid.uuid4().hex[:6]}", http_port=free_port())
    try:
        ingest.start()
        ingest.wait_ready()
        assert ingest.process is not None
        ingest.process.send_signal(signal.SIGTERM)
        time.sleep(0.05)  # two signals sent together would merge into one
        ingest.process.send_signal(signal.SIGTERM)
        assert ingest.process.wait(STOP_WITHIN_S) == 0, ingest.log()
        assert "second signal" not in ingest.log()
    finally:
        ingest.stop()


def _service(tmp_path: Path, command: str, database_url: str, mqtt_url: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / f"{command}.log"
    port = f"{command}.http_port={free_port()}" if command == "alerts" else f"web.port={free_port()}"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "occ.cli", "--database-url", database_url, "--mqtt-url", mqtt_url,
             "--set", port, command],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OCC_VAR_DIR": str(tmp_path / "var")},
        )
    return process, log


def _wait_text(process: subprocess.Popen[bytes], log: Path, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert process.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.05)


@pytest.mark.parametrize(("command", "outage", "waits_for"), [
    ("alerts", "database", "database unavailable"),
    ("alerts", "broker", "unreachable"),
    ("web", "broker", "unreachable"),
], ids=["alerts-no-database", "alerts-no-broker", "web-no-broker"])
def test_alerts_and_web_stop_on_sigterm_while_their_servers_are_missing(
        command: str, outage: str, waits_for: str, tmp_path: Path, database_url: str, mqtt_services_url: str) -> None:
    """Before: `occ alerts` waiting for its database ignored SIGTERM (its start was not cancellable)."""
    db = f"postgresql://postgres@127.0.0.1:{free_port()}/occ" if outage == "database" else database_url
    mqtt = f"mqtt://127.0.0.1:{free_port()}" if outage == "broker" else mqtt_services_url
    if outage != "database":
        subprocess.run([sys.executable, "-m", "occ.cli", "--database-url", db, "db", "migrate"], check=True,
                       capture_output=True)
    process, log = _service(tmp_path, command, db, mqtt)
    try:
        _wait_text(process, log, waits_for)
        process.send_signal(signal.SIGTERM)
        code = process.wait(STOP_WITHIN_S)  # TimeoutExpired fails the test
        text = log.read_text(errors="replace")
        assert code == 0 and "Traceback" not in text, text
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
