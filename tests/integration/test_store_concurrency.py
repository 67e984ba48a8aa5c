"""Concurrent writers never deadlock (issue 11 item 5): every statement that locks rows of a table another
writer may lock too takes them in one order (sorted keys), so overlapping batches wait, never deadlock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from occ.models import Device, Event, ReadingRow, StatusChange
from occ.store import Store
from tests.integration.ingest_helpers import Publisher, running_ingest, seed_devices, wait_for_count

T0 = datetime(2026, 11, 27, 1, 0, tzinfo=UTC)
DEVICES = [f"HG-DL-{i:03d}" for i in range(40)]
METRICS = ("rain_mm", "water_level_m")


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    conn = await asyncpg.connect(database_url)
    try:  # detect a deadlock in 10 ms instead of 1 s: a deadlock here would be found, not waited out
        await conn.execute(f"ALTER DATABASE {conn._params.database} SET deadlock_timeout = '10ms'")
    finally:
        await conn.close()
    s = await Store.connect(database_url, timescaledb="off", pool_size=4)
    try:
        yield s
    finally:
        await s.close()


def batch(round_: int, reverse: bool) -> tuple[list[ReadingRow], list[Event], list[StatusChange], dict[str, str]]:
    """Every device, metric and 30 timestamps of this round; `reverse` lists them in the opposite order."""
    start = T0 + timedelta(minutes=30 * round_)
    rows = [(d, m, start + timedelta(minutes=s), float(s), 0) for d in DEVICES for m in METRICS for s in range(30)]
    events = [Event(d, start, "tamper", {"round": round_}) for d in DEVICES]
    statuses = [StatusChange(d, "online" if round_ % 2 else "offline", start) for d in DEVICES]
    unprovisioned = {f"HG-NEW-{i:03d}": "hydromet" for i in range(20)}
    if reverse:
        rows.reverse()
        events.reverse()
        statuses.reverse()
        unprovisioned = dict(reversed(unprovisioned.items()))
    return rows, events, statuses, unprovisioned


async def test_overlapping_writers_in_opposite_orders_never_deadlock(store: Store, database_url: str) -> None:
    rounds, writers = 10, 4
    for round_ in range(rounds):
        work: list[Coroutine[Any, Any, object]] = []
        for w in range(writers):
            rows, events, statuses, unprovisioned = batch(round_, reverse=w % 2 == 1)
            work.append(store.write_batch(rows, events=events, statuses=statuses, unprovisioned=unprovisioned,
                                          received_at=T0 + timedelta(minutes=30 * round_)))
        registry = [Device(d, "hydromet", name=f"round {round_}") for d in DEVICES]
        work.append(store.upsert_devices(registry))
        work.append(store.upsert_devices(list(reversed(registry))))
        await asyncio.gather(*work)
    assert store.write_retries == 0  # each retry was a deadlock (or serialization failure) the store hid
    conn = await asyncpg.connect(database_url)
    try:
        per_round = len(DEVICES) * len(METRICS) * 30
        assert await conn.fetchval("SELECT count(*) FROM readings") == rounds * per_round
        assert await conn.fetchval("SELECT count(*) FROM latest") == len(DEVICES) * len(METRICS)
        assert await conn.fetchval("SELECT count(*) FROM events") == rounds * len(DEVICES)
        assert await conn.fetchval("SELECT count(*) FROM device_status_history") == rounds * len(DEVICES)
        assert await conn.fetchval("SELECT count(*) FROM devices") == len(DEVICES) + 20
    finally:
        await conn.close()



async def test_ingest_counts_the_retries_the_store_makes(
    database_url: str, mqtt_url: str, mqtt_services_url: str
) -> None:
    """A deadlock the store retries inside write_batch shows in occ_ingest_write_retries_total."""
    await seed_devices(database_url)
    conn = await asyncpg.connect(database_url)
    try:  # the first batch's upsert of `latest` fails as a deadlock victim; sequences survive the rollback
        await conn.execute("""
            CREATE SEQUENCE deadlock_once;
            CREATE FUNCTION deadlock_once() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF nextval('deadlock_once') = 1 THEN
                    RAISE EXCEPTION 'injected' USING ERRCODE = 'deadlock_detected';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER deadlock_once BEFORE INSERT ON latest FOR EACH STATEMENT EXECUTE FUNCTION deadlock_once();
        """)
    finally:
        await conn.close()
    async with running_ingest(database_url, mqtt_services_url) as service:
        pub = Publisher(mqtt_url)
        pub.publish("occ/v1/hydromet/HG-T-001/telemetry", b'{"rain_mm": 2.5}')
        pub.close()
        assert await wait_for_count(database_url, "SELECT count(*) FROM readings", 1) == 1
        deadline = asyncio.get_running_loop().time() + 10
        while service.metrics.acked.get() < 1 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        assert service.metrics.write_retries.get() == 1
        assert service.store is not None and service.store.write_retries == 1
