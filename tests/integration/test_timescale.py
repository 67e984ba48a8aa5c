"""The TimescaleDB storage path. These run only when the test server has the timescaledb extension
(point OCC_TEST_DATABASE_URL at a TimescaleDB 2.11+ server, shared_preload_libraries = 'timescaledb');
everywhere else they are skipped."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from occ.store import Store

pytestmark = pytest.mark.timescale

T0 = datetime(2026, 10, 5, tzinfo=UTC)


@pytest.fixture
async def ts_url(database_url: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        available = await conn.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
    finally:
        await conn.close()
    if not available:
        pytest.skip("the test database server has no timescaledb extension")
    return database_url


@pytest.fixture
async def store(ts_url: str) -> AsyncIterator[Store]:
    s = await Store.connect(ts_url, timescaledb="on", pool_size=2)
    try:
        yield s
    finally:
        await s.close()


def readings(device: str, start: datetime, hours: int, step_min: int) -> list:
    return [
        (device, "rain_mm", start + timedelta(minutes=i * step_min), float((i * 5 + len(device)) % 11) + 0.5, 0)
        for i in range(hours * 60 // step_min)
    ]


async def test_auto_mode_picks_timescaledb(ts_url: str) -> None:
    s = await Store.connect(ts_url, timescaledb="auto", pool_size=1)
    try:
        assert s.mode == "timescale"
        assert s.timescaledb_version
    finally:
        await s.close()


async def test_schema_policies_and_aggregates(store: Store, ts_url: str) -> None:
    conn = await asyncpg.connect(ts_url)
    try:
        assert await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_name = 'readings'"
        ) == 1
        interval = await conn.fetchval(
            "SELECT time_interval FROM timescaledb_information.dimensions WHERE hypertable_name = 'readings'"
        )
        assert interval == timedelta(days=1)
        segment = await conn.fetch(
            "SELECT attname FROM timescaledb_information.compression_settings "
            "WHERE hypertable_name = 'readings' AND segmentby_column_index IS NOT NULL ORDER BY segmentby_column_index"
        )
        assert [r["attname"] for r in segment] == ["device_id", "metric"]
        jobs = await conn.fetch(
            "SELECT proc_name, hypertable_name, config FROM timescaledb_information.jobs WHERE job_id >= 1000"
        )
        procs = sorted(r["proc_name"] for r in jobs)
        assert procs.count("policy_refresh_continuous_aggregate") == 3
        assert procs.count("policy_compression") == 1
        assert procs.count("policy_retention") == 2  # readings and readings_1m
        caggs = await conn.fetch(
            "SELECT view_name, materialized_only, view_definition FROM timescaledb_information.continuous_aggregates"
        )
        assert {r["view_name"] for r in caggs} == {"readings_1m", "readings_1h", "readings_1d"}
        assert all(r["materialized_only"] for r in caggs)
        day = next(r for r in caggs if r["view_name"] == "readings_1d")
        assert "Asia/Ho_Chi_Minh" in day["view_definition"]
    finally:
        await conn.close()


async def test_idempotent_writes_including_compressed_chunks(store: Store, ts_url: str) -> None:
    rows = readings("st1", T0, 48, 10)
    assert (await store.write_batch(rows, received_at=T0)).inserted == len(rows)
    conn = await asyncpg.connect(ts_url)
    try:
        compressed = await conn.fetch("SELECT compress_chunk(c) FROM show_chunks('readings') AS c")
        assert compressed
        # Redelivery of old data after compression (backfill) must still be idempotent.
        late = ("st1", "rain_mm", T0 + timedelta(minutes=5), 42.0, 0)
        result = await store.write_batch(rows[:100] + [late], received_at=T0)
        assert (result.inserted, result.duplicates) == (1, 100)
        assert await conn.fetchval("SELECT count(*) FROM readings") == len(rows) + 1
    finally:
        await conn.close()


async def test_rollups_match_raw_and_history_is_unchanged(store: Store, ts_url: str) -> None:
    rows = readings("st1", T0, 72, 5) + readings("st22", T0, 72, 10)
    await store.write_batch(rows, received_at=T0)
    start, end = T0 - timedelta(hours=2, minutes=11), T0 + timedelta(days=3, minutes=17)
    specs: list[tuple[timedelta | str, int]] = [
        (timedelta(minutes=15), 0), (timedelta(hours=1), 0), ("day", 7), ("day", 0), ("week", 0)
    ]

    async def snapshot() -> dict:
        out = {}
        for bucket, hour in specs:
            for agg in ("avg", "sum", "min", "max", "count", "first", "last"):
                out[(bucket, hour, agg)] = await store.history(
                    ["st1", "st22"], "rain_mm", start, end, bucket=bucket, agg=agg, day_start_hour=hour
                )
        return out

    before = await snapshot()
    report = await store.maintain(now=T0 + timedelta(days=30))
    assert report.hours_refreshed == 72 and report.pending_hours == 0
    after = await snapshot()
    for key, points in before.items():
        assert [p.bucket for p in after[key]] == [p.bucket for p in points], key
        for a, b in zip(after[key], points, strict=True):
            assert a.value is not None and b.value is not None
            assert math.isclose(a.value, b.value, rel_tol=1e-9), (key, a, b)
    conn = await asyncpg.connect(ts_url)
    try:
        for view, bucket in (
            ("readings_1h", "date_trunc('hour', ts, 'UTC')"),
            ("readings_1d", "date_trunc('day', ts, 'Asia/Ho_Chi_Minh')"),
        ):
            diff = await conn.fetch(
                f"WITH raw AS (SELECT device_id, metric, {bucket} AS bucket, count(*) AS cnt, sum(value) AS s "
                f"FROM readings GROUP BY 1, 2, 3) "
                f"SELECT * FROM raw FULL JOIN {view} v USING (device_id, metric, bucket) "
                "WHERE raw.cnt IS DISTINCT FROM v.cnt OR abs(raw.s - v.sum_v) > 1e-9"
            )
            assert diff == [], view
    finally:
        await conn.close()


async def test_configure_changes_policies_in_place(store: Store, ts_url: str) -> None:
    await store.configure(retention_days=90, compress_after_days=3, chunk_interval=timedelta(hours=12))
    conn = await asyncpg.connect(ts_url)
    try:
        jobs = {
            (r["proc_name"], r["hypertable_name"]): r["config"]
            for r in await conn.fetch(
                "SELECT proc_name, hypertable_name, config::text AS config FROM timescaledb_information.jobs "
                "WHERE proc_name IN ('policy_retention', 'policy_compression') AND hypertable_name = 'readings'"
            )
        }
        assert len(jobs) == 2
        ids = await conn.fetchval("SELECT array_agg(job_id ORDER BY job_id) FROM timescaledb_information.jobs")
        await store.configure(retention_days=90, compress_after_days=3, chunk_interval=timedelta(hours=12))
        assert await conn.fetchval(
            "SELECT array_agg(job_id ORDER BY job_id) FROM timescaledb_information.jobs"
        ) == ids  # unchanged settings leave the jobs alone
        assert await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.jobs WHERE proc_name = 'policy_retention' "
            "AND hypertable_name = 'readings' AND (config->>'drop_after')::interval = interval '90 days'"
        ) == 1
        assert await conn.fetchval(
            "SELECT time_interval FROM timescaledb_information.dimensions WHERE hypertable_name = 'readings'"
        ) == timedelta(hours=12)
    finally:
        await conn.close()
