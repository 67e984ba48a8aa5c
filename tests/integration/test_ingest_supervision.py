"""No silent stalls (issue 11 item 3): a bug that kills any long-lived part of ingest — the decode task, a writer,
housekeeping, the MQTT connection task, the per-message callback — makes the worker unhealthy, is logged once
with its cause, and ends the process with a non-zero exit, so that `occ up` (or compose) restarts it; the
restarted worker gets what was not acknowledged from the broker, and every reading is stored exactly once.

The worker is a real `occ ingest` process (tests/integration/faulty_ingest.py injects the bug), with a real
Mosquitto and PostgreSQL; the test restarts it the way `occ up`'s supervisor does.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path

import pytest

from ingest.service import IngestService
from occ.embedded import EmbeddedBroker, free_port
from tests.integration.fault_helpers import (
    IngestProcess,
    PublisherProcess,
    stream_t0,
    verify_exactly_once,
    wait_for_readings,
)
from tests.integration.ingest_helpers import running_ingest, seed_devices

pytestmark = pytest.mark.slow

MESSAGES = 6000


@pytest.mark.parametrize("site", ["decode", "write", "housekeeping", "mqtt", "receive"])
@pytest.mark.parametrize("broker", ["mosquitto"], indirect=True)
async def test_a_crashed_task_exits_nonzero_and_the_restart_loses_nothing(
    site: str, broker: EmbeddedBroker, database_url: str, tmp_path: Path
) -> None:
    await seed_devices(database_url)
    t0 = stream_t0(MESSAGES)
    argv = [sys.executable, "-m", "tests.integration.faulty_ingest", site, str(tmp_path / "fired")]
    ingest = IngestProcess(tmp_path / "ingest.log", database_url=database_url, mqtt_url=broker.services_url,
                           client_id=f"crash-{site}-{uuid.uuid4().hex[:8]}", http_port=free_port(),
                           batch_max="200")
    ingest.argv = argv
    publisher: PublisherProcess | None = None
    try:
        ingest.start()
        await asyncio.to_thread(ingest.wait_ready)
        publisher = PublisherProcess(broker.url, start=0, stop=MESSAGES, t0=t0,
                                     client_id=f"pub-{uuid.uuid4().hex[:8]}", rate=2000)
        code = await asyncio.to_thread(ingest.wait_exit, 60)
        assert code == 1, f"exit code {code}\n{ingest.log()}"
        assert (tmp_path / "fired").exists(), "the fault did not fire"
        log = ingest.log()
        assert log.count(" crashed (") == 1, log
        assert f"RuntimeError: injected fault in {site}" in log, log
        assert "will be redelivered" in log
        assert publisher.running(), "the stream ended before the crash: nothing was left to redeliver"

        started = time.monotonic()
        ingest.start()  # what `occ up` does with a worker that exited non-zero
        await asyncio.to_thread(ingest.wait_ready)
        report = await asyncio.to_thread(publisher.wait, 120)
        assert report["acked"] == MESSAGES
        assert await wait_for_readings(database_url, 2 * MESSAGES, 60) == 2 * MESSAGES
        await verify_exactly_once(database_url, MESSAGES, t0)
        assert ingest.alive() and ingest.starts == 2
        assert time.monotonic() - started < 60
    finally:
        ingest.stop()
        if publisher is not None:
            publisher.close()


async def test_a_crash_marks_the_service_unhealthy_at_once(
    database_url: str, mqtt_services_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process: the crashed task's cause is in /healthz (503) and reading stops, before the process exits."""
    await seed_devices(database_url)
    async with running_ingest(database_url, mqtt_services_url) as service:
        assert service.health()["ok"]

        async def broken_refresh(self: IngestService, **_: object) -> bool:
            raise KeyError("injected")

        monkeypatch.setattr(IngestService, "_refresh_registry", broken_refresh)
        monkeypatch.setattr("ingest.service.REGISTRY_REFRESH_S", 0.05)
        # the housekeeping task is asleep on the old interval: start a second one the way start() does
        service._supervise(service._housekeeping_loop(), "housekeeping-2")
        await asyncio.wait_for(service.failed.wait(), 5)
        health = service.health()
        assert not health["ok"] and health["crashed"] == "KeyError"
        assert service.bus is not None and service.bus.paused
        lines = service.metrics.registry.render().splitlines()
        assert [line for line in lines if line.startswith("occ_ingest_healthy ")] == ["occ_ingest_healthy 0"], lines
