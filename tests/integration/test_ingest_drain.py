"""Draining a replica (issue 11 item 11): a worker removed from the share group hands its share over.

* A running worker sent SIGUSR1 under load unsubscribes, writes and acknowledges what it holds and what the
  broker still had queued for it, ends its MQTT session (session expiry 0 on DISCONNECT) and exits 0; the
  other worker takes the whole stream, and every reading is stored exactly once.
* A worker that is gone (SIGKILL) leaves its share queued on its persistent session: `occ ingest --drain`
  with its client id takes that queue, stores it and ends the session.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from occ.bus import BrokerAddress
from occ.embedded import EmbeddedBroker, free_port
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

MESSAGES = 16_000


def worker(tmp_path: Path, database_url: str, broker: EmbeddedBroker, name: str, group: str,
           client_id: str | None = None, argv: list[str] | None = None) -> IngestProcess:
    process = IngestProcess(tmp_path / f"{name}.log", database_url=database_url, mqtt_url=broker.services_url,
                            client_id=client_id or f"{name}-{uuid.uuid4().hex[:8]}", http_port=free_port(),
                            shared="true", share_group=group)
    if argv is not None:
        process.argv = argv
    return process


def session_present(url: str, client_id: str) -> bool:
    """Whether the broker still holds a session for `client_id` (the probe leaves none behind)."""
    address = BrokerAddress.parse(url)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    flags: list[bool] = []
    client.on_connect = lambda c, u, f, rc, p: flags.append(bool(f.session_present))
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 0
    client.connect(address.host, address.port, clean_start=False, properties=properties)
    while not flags:
        client.loop(0.1)
    client.disconnect()
    return flags[0]


@pytest.mark.parametrize("broker", ["mosquitto"], indirect=True)
async def test_sigusr1_drains_one_of_two_workers_under_load(
    broker: EmbeddedBroker, database_url: str, tmp_path: Path
) -> None:
    await seed_devices(database_url)
    t0 = stream_t0(MESSAGES)
    group = f"drain-{uuid.uuid4().hex[:6]}"
    leaving, staying = (worker(tmp_path, database_url, broker, name, group) for name in ("leaving", "staying"))
    publisher: PublisherProcess | None = None
    try:
        for w in (leaving, staying):
            w.start()
        for w in (leaving, staying):
            await asyncio.to_thread(w.wait_ready)
        publisher = PublisherProcess(broker.url, start=0, stop=MESSAGES, t0=t0,
                                     client_id=f"pub-{uuid.uuid4().hex[:8]}", rate=3000)
        await wait_for_readings(database_url, 2 * MESSAGES // 5, 60, alive=publisher.running)
        leaving.send_signal(signal.SIGUSR1)
        code = await asyncio.to_thread(leaving.wait_exit, 30)
        assert code == 0, leaving.log()
        assert publisher.running(), "the stream ended before the drain"
        log = leaving.log()
        assert "draining" in log and "drained: session ended" in log, log
        assert not session_present(broker.services_url, leaving.env["OCC_INGEST__CLIENT_ID"])

        report = await asyncio.to_thread(publisher.wait, 120)
        assert report["acked"] == MESSAGES
        assert await wait_for_readings(database_url, 2 * MESSAGES, 60) == 2 * MESSAGES, staying.log()
        await verify_exactly_once(database_url, MESSAGES, t0)
        assert staying.alive()
    finally:
        for w in (leaving, staying):
            w.stop()
        if publisher is not None:
            publisher.close()


@pytest.mark.parametrize("broker", ["mosquitto"], indirect=True)
async def test_drain_command_releases_the_share_of_a_worker_that_is_gone(
    broker: EmbeddedBroker, database_url: str, tmp_path: Path
) -> None:
    await seed_devices(database_url)
    messages = 8000
    t0 = stream_t0(messages)
    group = f"gone-{uuid.uuid4().hex[:6]}"
    gone_id = f"gone-{uuid.uuid4().hex[:8]}"
    gone = worker(tmp_path, database_url, broker, "gone", group, client_id=gone_id)
    staying = worker(tmp_path, database_url, broker, "staying", group)
    publisher: PublisherProcess | None = None
    try:
        for w in (gone, staying):
            w.start()
        for w in (gone, staying):
            await asyncio.to_thread(w.wait_ready)
        gone.kill()  # its persistent session and shared subscription stay at the broker
        publisher = PublisherProcess(broker.url, start=0, stop=messages, t0=t0,
                                     client_id=f"pub-{uuid.uuid4().hex[:8]}", rate=4000)
        report = await asyncio.to_thread(publisher.wait, 120)
        assert report["acked"] == messages
        stuck = await wait_for_readings(database_url, 2 * messages, 20, stall_s=3)
        assert stuck < 2 * messages, "nothing was queued for the dead worker: the test proves nothing"

        drain = worker(tmp_path, database_url, broker, "drain", group, client_id=gone_id,
                       argv=[sys.executable, "-m", "occ.cli", "ingest", "--drain"])
        drain.start()
        code = await asyncio.to_thread(drain.wait_exit, 60)
        assert code == 0, drain.log()
        assert "drained: session ended" in drain.log()
        assert await count_readings(database_url) == 2 * messages
        await verify_exactly_once(database_url, messages, t0)
        assert not session_present(broker.services_url, gone_id)
    finally:
        for w in (gone, staying):
            w.stop()
        if publisher is not None:
            publisher.close()
