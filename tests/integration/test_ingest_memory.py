"""Bounded by bytes, not only by count (issue 11 item 8): a flood of large payloads — 200 messages of 512 KiB,
100 MiB in all, queued by the broker for the worker's session — keeps the worker's resident memory within its
byte bound (`ingest.max_unacked_mb`, 8 MiB here), although the message bound alone (50,000) would let it take
the whole 100 MiB in. Every message is still stored, exactly once.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import pytest

from occ.embedded import EmbeddedBroker, free_port
from tests.integration.fault_helpers import IngestProcess, count_readings, http_get, parse_metric
from tests.integration.ingest_helpers import Publisher, fetch, seed_devices

pytestmark = pytest.mark.slow

MESSAGES = 200
PAYLOAD = 512 * 1024
BOUND_MB = 8


def big_payload(ts: int, k: int) -> bytes:
    """A valid reading padded with JSON whitespace to PAYLOAD bytes (as a chatty gateway might send)."""
    body = b'{"ts": %d, "values": {"rain_mm": %d.5}}' % (ts, k % 200)
    return body + b" " * (PAYLOAD - len(body))


@pytest.mark.parametrize("broker", ["mosquitto"], indirect=True)
async def test_a_flood_of_large_payloads_stays_within_the_byte_bound(
    broker: EmbeddedBroker, database_url: str, tmp_path: Path
) -> None:
    await seed_devices(database_url)
    ingest = IngestProcess(tmp_path / "ingest.log", database_url=database_url, mqtt_url=broker.services_url,
                           client_id=f"flood-{uuid.uuid4().hex[:8]}", http_port=free_port(),
                           max_unacked_mb=str(BOUND_MB))
    try:
        ingest.start()
        await asyncio.to_thread(ingest.wait_ready)  # creates the persistent session
        idle_peak = ingest.peak_rss_mb()  # what starting up costs, with nothing held
        assert ingest.stop() == 0

        t0 = int(time.time()) - 3600
        publisher = Publisher(broker.url)
        try:
            for k in range(MESSAGES):
                publisher.publish(f"occ/v1/hydromet/HG-T-{k % 20:03d}/telemetry", big_payload(t0 + k, k))
            await asyncio.to_thread(publisher.wait, 120)
        finally:
            publisher.close()

        held: list[float] = []
        stop = threading.Event()

        def sample() -> None:  # the worker's own gauge, as often as it answers
            while not stop.is_set():
                answer = http_get(f"http://127.0.0.1:{ingest.http_port}/metrics", timeout=1.0)
                if answer is not None:
                    value = parse_metric(answer[1].decode(), "occ_ingest_unacked_bytes")
                    if value is not None:
                        held.append(value)
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        ingest.start()
        sampler.start()
        try:
            deadline = time.monotonic() + 120
            while await count_readings(database_url) < MESSAGES:
                assert time.monotonic() < deadline and ingest.alive(), ingest.log()
                await asyncio.sleep(0.1)
            peak = ingest.peak_rss_mb()
        finally:
            stop.set()
            sampler.join(5)
        rows = await fetch(database_url, "SELECT count(*), count(DISTINCT ts) FROM readings")
        assert tuple(rows[0]) == (MESSAGES, MESSAGES)

        total_mb = MESSAGES * PAYLOAD / 2**20
        assert max(held) <= BOUND_MB * 2**20 + PAYLOAD, f"held {max(held) / 2**20:.1f} MiB"
        assert max(held) >= (BOUND_MB / 2) * 2**20, "the flood never reached the bound: the test proves nothing"
        # Payloads held (8 MiB), frames assembled from 256 KiB reads, transient copies while decoded, and glibc
        # keeping freed 512 KiB blocks mapped: +15 MB measured when written, +26-27 MB in a fresh venv on
        # 2026-12-01 at the same code (the gauge above is the bound's own proof; this checks RSS does not follow
        # the 100 MiB flood). Without the byte bound the same run held 37 MiB and peaked +41 MB, and more with a
        # slower database.
        assert peak - idle_peak < 4 * BOUND_MB, (
            f"peak RSS {peak:.0f} MB vs {idle_peak:.0f} MB idle, flood of {total_mb:.0f} MiB, bound {BOUND_MB} MiB")
    finally:
        ingest.stop()
