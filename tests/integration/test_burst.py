"""A 100,000-message QoS 1 burst, far faster than ingest writes, is queued by the broker, not dropped.

docs/architecture.md §3: Mosquitto's default `max_queued_messages 1000` silently drops QoS 1 messages queued for a
subscriber that falls behind. Here ingest's persistent session is created, ingest goes offline, and two
publisher processes push 100,000 messages as fast as they can: all of them must sit in the broker's queue for
that session (100 × the default limit). Then ingest comes back and every reading is stored exactly once.
Run on both embedded brokers (Mosquitto, and rumqttd from iotcore, whose sessions live in memory).
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

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

BURST = 100_000
PUBLISHERS = 2


@pytest.mark.slow
async def test_burst_of_100k_is_queued_not_dropped(broker: EmbeddedBroker, database_url: str, tmp_path: Path) -> None:
    await seed_devices(database_url)
    t0 = stream_t0(BURST)
    ingest = IngestProcess(tmp_path / "ingest.log", database_url=database_url, mqtt_url=broker.services_url,
                           client_id=f"burst-{broker.kind}-{uuid.uuid4().hex[:8]}", http_port=free_port())
    publishers: list[PublisherProcess] = []
    try:
        ingest.start()
        await asyncio.to_thread(ingest.wait_ready)  # creates the persistent session and its subscription
        assert ingest.stop() == 0  # offline now: from here on the broker alone holds the burst

        share = BURST // PUBLISHERS
        publishers = [
            PublisherProcess(broker.url, start=i * share, stop=BURST if i == PUBLISHERS - 1 else (i + 1) * share,
                             t0=t0, client_id=f"burst-pub-{i}-{uuid.uuid4().hex[:6]}")
            for i in range(PUBLISHERS)
        ]
        reports = [await asyncio.to_thread(p.wait, 180) for p in publishers]
        assert sum(r["acked"] for r in reports) == BURST  # the broker took responsibility for every message
        assert await count_readings(database_url) == 0  # and nothing was consumed yet: all of it is queued

        ingest.start()
        await asyncio.to_thread(ingest.wait_ready)
        stored = await wait_for_readings(database_url, 2 * BURST, 150, alive=ingest.alive)
        assert stored == 2 * BURST, f"{stored} of {2 * BURST} readings stored ({broker.kind})\n{ingest.log()}"
        await verify_exactly_once(database_url, BURST, t0)
        received = ingest.metric("occ_ingest_messages_received_total")
        assert received is not None and received >= BURST
    finally:
        ingest.stop()
        for p in publishers:
            p.close()
