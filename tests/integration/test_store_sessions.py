"""Pooled sessions are not reset on release (connection.keep_session: no reset round trip per store call), so the
store must leave none of its session state behind; and history reads through the per-process series caches
answer exactly as a process that has never seen the series."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from occ.store import Store

T0 = datetime(2026, 10, 5, tzinfo=UTC)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    s = await Store.connect(database_url, timescaledb="off", pool_size=2)
    try:
        yield s
    finally:
        await s.close()


async def test_maintenance_leaves_no_advisory_lock_on_pooled_sessions(store: Store, database_url: str) -> None:
    await store.write_batch([("a", "rain_mm", T0 + timedelta(minutes=i), 1.0, 0) for i in range(90)], received_at=T0)
    for _ in range(2):
        report = await store.maintain(now=T0 + timedelta(days=2))
        assert not report.skipped
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
    finally:
        await conn.close()


async def test_a_cancelled_maintenance_releases_its_lock(store: Store, database_url: str) -> None:
    await store.write_batch([("a", "rain_mm", T0 + timedelta(minutes=i), 1.0, 0) for i in range(90)], received_at=T0)
    blocker = await asyncpg.connect(database_url)
    try:
        # Hold a row maintenance needs, so that it waits inside its locked section, then cancel it there.
        await blocker.execute("BEGIN; LOCK TABLE rollup_dirty IN ACCESS EXCLUSIVE MODE")
        task = asyncio.create_task(store.maintain(now=T0 + timedelta(days=2)))
        for _ in range(100):
            waiting = await blocker.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            )
            if waiting:
                break
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(BaseException):  # noqa: B017 (cancelled, or the connection ended under it)
            await task
        await blocker.execute("ROLLBACK")
        for _ in range(100):
            if not await blocker.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"):
                break
            await asyncio.sleep(0.05)
        assert await blocker.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
    finally:
        await blocker.close()
    assert not (await store.maintain(now=T0 + timedelta(days=2))).skipped


async def test_raw_history_is_the_same_with_and_without_cached_series(store: Store, database_url: str) -> None:
    rows = [(d, "rain_mm", T0 + timedelta(minutes=10 * i), i + (0.5 if d == "b" else 0.0), 0)
            for d in ("b", "a") for i in range(30)]  # fmt: skip
    await store.write_batch(rows, received_at=T0)  # this process now knows the series ids
    fresh = await Store.connect(database_url, migrate=False, pool_size=1)
    try:
        window = (T0 + timedelta(minutes=5), T0 + timedelta(hours=4))
        two = await store.history(["b", "a"], "rain_mm", *window, bucket="raw")
        assert [p.value for p in two][:4] == [1.0, 1.5, 2.0, 2.5]  # in time, then device order
        for devices in (["a"], ["b", "a"], ["a", "nobody"]):
            cached = await store.history_by_device(devices, "rain_mm", *window, bucket="raw")
            cold = await store.history_by_device(devices, "rain_mm", *window, bucket="raw")
            assert cached == cold
            both = await store.history(devices, "rain_mm", *window, bucket="raw")
            assert both == await store.history(devices, "rain_mm", *window, bucket="raw")
    finally:
        await fresh.close()


async def test_the_first_history_query_of_a_metric_learns_every_decided_level(store: Store) -> None:
    """After one history query of a metric, a query of another device of that metric that keeps no rollup at the
    chosen level needs no plan-state round trip (its level is known here); the answers stay those of raw data."""
    rows = [(d, "rain_mm", T0 + timedelta(minutes=10 * i), float(i % 5), 0) for d in ("a", "b", "c") for i in range(60)]
    await store.write_batch(rows, received_at=T0)
    await store.maintain(now=T0 + timedelta(days=2))  # decides the levels: 10-minute series keep daily only
    window = (T0, T0 + timedelta(hours=10))
    first = await store.history("a", "rain_mm", *window, bucket="1h", agg="sum")
    assert store._known_series(["b", "c"], "rain_mm") is not None
    second = await store.history("b", "rain_mm", *window, bucket="1h", agg="sum")
    expected = [float(sum(i % 5 for i in range(6 * h, 6 * h + 6))) for h in range(10)]
    assert [p.value for p in first] == [p.value for p in second] == expected
