"""Fault tests: ingest killed with SIGKILL, PostgreSQL stopped for over 10 s, the broker restarted, each in the
middle of a QoS 1 stream. After each, every reading of the stream is stored exactly once (docs/architecture.md §3).

Everything is real and separate: `occ ingest` runs as a child process with a fixed client id (so its
persistent session outlives it), publishers are paho clients in their own processes, the broker is a private
embedded one per test and, for the outage test, PostgreSQL is a private embedded server.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from occ.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from occ.embedded.net import port_open
from tests.conftest import psql, with_database
from tests.integration.fault_helpers import (
    IngestProcess,
    PublisherProcess,
    count_readings,
    stream_t0,
    verify_exactly_once,
    wait_for_readings,
)
from tests.integration.ingest_helpers import seed_devices

pytestmark = pytest.mark.slow

MESSAGES = 20_000  # 2 readings each, over 20 devices
LOST_CONNECTION = "MQTT connection to"  # ingest logs "MQTT connection to host:port lost: ..."


def ingest_for(tmp_path: Path, database_url: str, broker: EmbeddedBroker, name: str, **settings: str) -> IngestProcess:
    return IngestProcess(tmp_path / f"{name}.log", database_url=database_url, mqtt_url=broker.services_url,
                         client_id=f"{name}-{uuid.uuid4().hex[:8]}", http_port=free_port(), **settings)


@pytest.mark.parametrize("broker", ["mosquitto", "iotcore"], indirect=True)
async def test_sigkill_of_ingest_mid_stream_loses_and_duplicates_nothing(
    broker: EmbeddedBroker, database_url: str, tmp_path: Path
) -> None:
    await seed_devices(database_url)
    t0 = stream_t0(MESSAGES)
    ingest = ingest_for(tmp_path, database_url, broker, "ingest-kill")
    publisher: PublisherProcess | None = None
    try:
        ingest.start()
        await asyncio.to_thread(ingest.wait_ready)  # its persistent session exists before anything is published
        publisher = PublisherProcess(broker.url, start=0, stop=MESSAGES, t0=t0, client_id=f"pub-{uuid.uuid4().hex[:8]}",
                                     rate=4000)
        seen = await wait_for_readings(database_url, 1, 60, alive=publisher.running)
        await publisher.reached(2 * MESSAGES // 5)
        ingest.kill()
        committed = await count_readings(database_url)
        assert 0 < seen <= committed < 2 * MESSAGES, f"not killed mid-stream ({seen}, {committed})"
        assert publisher.running() and publisher.progress() < MESSAGES, "the stream ended before the kill"
        await asyncio.sleep(1.0)  # the stream goes on while no ingest is connected
        assert await count_readings(database_url) == committed, "something wrote while ingest was dead"

        ingest.start()
        await asyncio.to_thread(ingest.wait_ready)
        report = await asyncio.to_thread(publisher.wait, 120)
        assert report["acked"] == MESSAGES
        assert await wait_for_readings(database_url, 2 * MESSAGES, 60) == 2 * MESSAGES
        await verify_exactly_once(database_url, MESSAGES, t0)
        # The restarted worker resumed the session: it was handed everything the first one had not committed.
        received = ingest.metric("occ_ingest_messages_received_total")
        assert received is not None and received >= MESSAGES - committed // 2, (received, committed)
    finally:
        ingest.stop()
        if publisher is not None:
            publisher.close()


@pytest.fixture
def private_pg(work_dir: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(work_dir / f"pg-outage-{uuid.uuid4().hex[:8]}", durable=False)
    server.start()
    yield server
    server.destroy()


@pytest.mark.parametrize("broker", ["mosquitto"], indirect=True)
async def test_database_outage_of_10s_mid_stream(
    broker: EmbeddedBroker, private_pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    """PostgreSQL stopped for > 10 s while messages keep coming: ingest holds at most its bound unacknowledged,
    stops reading (the broker queues the rest), reports the database down, keeps its MQTT connection, and
    writes everything exactly once when the database is back.

    The MQTT keepalive is 4 s here, so the outage spans several keepalive periods with reading paused: the
    same situation as a several-minute outage with the default 30 s (paho must not drop the connection
    because it reads nothing while paused).
    """
    messages, rate, bound = 15_000, 1000, 1000
    psql(private_pg.url, "CREATE DATABASE occ_outage")
    database_url = with_database(private_pg.url, "occ_outage")
    await seed_devices(database_url)
    t0 = stream_t0(messages)
    ingest = ingest_for(tmp_path, database_url, broker, "ingest-outage", max_unacked=str(bound), retry_max_s="2")
    ingest.env["OCC_MQTT__KEEPALIVE_S"] = "4"
    publisher: PublisherProcess | None = None
    try:
        ingest.start()
        await asyncio.to_thread(ingest.wait_ready)
        publisher = PublisherProcess(broker.url, start=0, stop=messages, t0=t0,
                                     client_id=f"pub-{uuid.uuid4().hex[:8]}", rate=rate)
        await wait_for_readings(database_url, 2000, 60, alive=publisher.running)
        port = private_pg.port
        private_pg.stop()
        assert not port_open("127.0.0.1", port), "PostgreSQL still listening after stop()"
        down_at = time.monotonic()
        samples = []
        while time.monotonic() - down_at < 12:
            samples.append(ingest.healthz())
            await asyncio.sleep(0.25)
        assert publisher.running(), "the stream must go on through the outage"
        private_pg.start()
        assert private_pg.port == port
        outage = time.monotonic() - down_at

        assert all(s is not None for s in samples), "/healthz stopped answering during the outage"
        assert any(s[0] == 503 and s[1]["database_up"] is False for s in samples if s), samples[-3:]
        assert all(s[1]["mqtt_connected"] for s in samples if s), "ingest lost its MQTT connection"
        assert any(s[1]["paused"] for s in samples if s), "ingest never stopped reading at its bound"
        assert max(s[1]["unacked"] for s in samples if s) <= bound, "more messages held than the bound"

        deadline = time.monotonic() + 30
        while (health := ingest.healthz()) is None or health[0] != 200:
            assert time.monotonic() < deadline, f"/healthz not OK after the database came back: {health}"
            await asyncio.sleep(0.1)
        assert health[1]["database_up"] and health[1]["mqtt_connected"]

        report = await asyncio.to_thread(publisher.wait, 120)
        assert report["acked"] == messages
        assert await wait_for_readings(database_url, 2 * messages, 60) == 2 * messages
        await verify_exactly_once(database_url, messages, t0)

        retries = ingest.metric("occ_ingest_write_retries_total")
        assert retries is not None and retries > 0
        assert ingest.metric("occ_ingest_mqtt_connected") == 1
        assert ingest.metric("occ_ingest_database_up") == 1
        log = ingest.log()
        assert ingest.alive() and ingest.starts == 1
        assert LOST_CONNECTION not in log and "reconnected" not in log, log
        assert "database unavailable" in log or "holding it and retrying" in log, log
        assert "database recovered" in log, log
        assert outage >= 10
    finally:
        ingest.stop()
        if publisher is not None:
            publisher.close()


@pytest.mark.parametrize("broker", ["mosquitto"], indirect=True)
async def test_broker_restart_mid_stream(broker: EmbeddedBroker, database_url: str, tmp_path: Path) -> None:
    """Graceful broker restart while ingest is connected and behind.

    Ingest is frozen (SIGSTOP) across the restart, so what the publisher sends right after it can only reach
    ingest through its persistent session restored from Mosquitto's persistence file: without that, those
    messages have no subscriber and are dropped. The publisher (persistent session too) reconnects and resends
    what the old broker had not acknowledged; ingest reconnects by itself and resumes its session.
    """
    await seed_devices(database_url)
    t0 = stream_t0(MESSAGES)
    ingest = ingest_for(tmp_path, database_url, broker, "ingest-restart")
    publisher: PublisherProcess | None = None
    try:
        ingest.start()
        await asyncio.to_thread(ingest.wait_ready)
        publisher = PublisherProcess(broker.url, start=0, stop=MESSAGES, t0=t0, client_id=f"pub-{uuid.uuid4().hex[:8]}",
                                     rate=4000, persistent=True)
        await wait_for_readings(database_url, 1, 60, alive=publisher.running)
        await publisher.reached(2 * MESSAGES // 5)
        ingest.freeze()
        port = broker.port
        broker.stop()  # graceful: Mosquitto writes sessions and queued messages to its persistence file
        assert not port_open("127.0.0.1", port)
        assert publisher.running() and publisher.progress() < MESSAGES, "the stream ended before the restart"
        await asyncio.sleep(0.5)
        broker.start()
        assert broker.port == port
        deadline = time.monotonic() + 15
        while publisher.connects() < 2:
            assert time.monotonic() < deadline and publisher.running(), "the publisher did not reconnect"
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # messages now queue for the (restored, offline) ingest session only
        frozen = await count_readings(database_url)
        assert frozen < 2 * MESSAGES
        ingest.thaw()

        report = await asyncio.to_thread(publisher.wait, 120)
        assert report["acked"] == MESSAGES
        assert report["connects"] >= 2, report
        assert await wait_for_readings(database_url, 2 * MESSAGES, 60) == 2 * MESSAGES
        await verify_exactly_once(database_url, MESSAGES, t0)
        log = ingest.log()
        assert ingest.alive() and ingest.starts == 1, "ingest must reconnect by itself"
        assert "session present: True" in log, log
        health = ingest.healthz()
        assert health is not None and health[0] == 200, health
    finally:
        ingest.stop()
        if publisher is not None:
            publisher.close()
