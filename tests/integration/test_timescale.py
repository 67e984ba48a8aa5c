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
from tests.integration.test_history import assert_rollups_match_raw

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


async def test_schema_hypertable_compression_and_policies(store: Store, ts_url: str) -> None:
    """Migration 0032: readings in the series_readings hypertable (integer series ids), compressed segment by
    series, a compression and a retention policy; rollups are platform tables, not continuous aggregates."""
    conn = await asyncpg.connect(ts_url)
    try:
        assert await conn.fetch(
            "SELECT hypertable_name FROM timescaledb_information.hypertables ORDER BY 1"
        ) == [("series_readings",)]
        interval = await conn.fetchval(
            "SELECT time_interval FROM timescaledb_information.dimensions WHERE hypertable_name = 'series_readings'"
        )
        assert interval == timedelta(days=1)
        segment = await conn.fetch(
            "SELECT attname FROM timescaledb_information.compression_settings WHERE hypertable_name = "
            "'series_readings' AND segmentby_column_index IS NOT NULL ORDER BY segmentby_column_index"
        )
        assert [r["attname"] for r in segment] == ["series_id"]
        order = await conn.fetch(
            "SELECT attname, orderby_asc FROM timescaledb_information.compression_settings WHERE hypertable_name = "
            "'series_readings' AND orderby_column_index IS NOT NULL ORDER BY orderby_column_index"
        )
        assert [(r["attname"], r["orderby_asc"]) for r in order] == [("ts", False)]
        jobs = await conn.fetch(
            "SELECT proc_name, hypertable_name FROM timescaledb_information.jobs WHERE job_id >= 1000 ORDER BY 1"
        )
        assert [tuple(r) for r in jobs] == [
            ("policy_compression", "series_readings"), ("policy_retention", "series_readings")
        ]
        assert await conn.fetchval("SELECT count(*) FROM timescaledb_information.continuous_aggregates") == 0
        # No default btree on ts (BRIN instead): the primary key and the BRIN index only.
        indexes = await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'series_readings' ORDER BY 1")
        assert [r["indexname"] for r in indexes] == ["series_readings_pkey", "series_readings_ts_brin"]
    finally:
        await conn.close()


async def test_idempotent_writes_including_compressed_chunks(store: Store, ts_url: str) -> None:
    rows = readings("st1", T0, 48, 10)
    assert (await store.write_batch(rows, received_at=T0)).inserted == len(rows)
    conn = await asyncpg.connect(ts_url)
    try:
        compressed = await conn.fetch("SELECT compress_chunk(c) FROM show_chunks('series_readings') AS c")
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
    # And again once the raw data is compressed: rollups, backfill and history read compressed chunks alike.
    conn = await asyncpg.connect(ts_url)
    try:
        await conn.fetch("SELECT compress_chunk(c) FROM show_chunks('series_readings') AS c")
    finally:
        await conn.close()
    late = [("st1", "rain_mm", T0 + timedelta(hours=30, minutes=2, seconds=30), 7.0, 0)]
    assert (await store.write_batch(late, received_at=T0)).inserted == 1
    report = await store.maintain(now=T0 + timedelta(days=30))
    assert report.hours_refreshed == 1 and report.pending_hours == report.pending_days == 0
    for key, points in before.items():
        assert [p.bucket for p in after[key]] == [p.bucket for p in points], key
        for a, b in zip(after[key], points, strict=True):
            assert a.value is not None and b.value is not None
            assert math.isclose(a.value, b.value, rel_tol=1e-9), (key, a, b)
    await assert_rollups_match_raw(ts_url)


async def test_configure_changes_policies_in_place(store: Store, ts_url: str) -> None:
    await store.configure(retention_days=90, compress_after_days=3, chunk_interval=timedelta(hours=12))
    conn = await asyncpg.connect(ts_url)
    try:
        jobs = {
            (r["proc_name"], r["hypertable_name"]): r["config"]
            for r in await conn.fetch(
                "SELECT proc_name, hypertable_name, config::text AS config FROM timescaledb_information.jobs "
                "WHERE proc_name IN ('policy_retention', 'policy_compression') AND hypertable_name = 'series_readings'"
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
            "AND hypertable_name = 'series_readings' AND (config->>'drop_after')::interval = interval '90 days'"
        ) == 1
        assert await conn.fetchval(
            "SELECT time_interval FROM timescaledb_information.dimensions WHERE hypertable_name = 'series_readings'"
        ) == timedelta(hours=12)
    finally:
        await conn.close()


async def test_a_database_from_before_0032_upgrades_with_its_data(ts_url: str) -> None:
    """A TimescaleDB database with the text-keyed hypertable and continuous aggregates (before migration 0032)
    moves to series ids: every reading, the materialised rollups each series' level keeps, the pending hours, the
    same history answers; the old hypertable, aggregates and their policies are gone."""
    from occ.store import migrate
    from occ.store.migrator import discover

    await migrate(ts_url, timescaledb="on", migrations=[m for m in discover() if m.version < 32])
    fast = [("fast", "level_m", T0 + timedelta(seconds=5 * i), float(i % 11), 0) for i in range(720)]
    slow = [("slow", "rain_mm", T0 + timedelta(minutes=10 * i), float(i % 7) + 0.5, i % 2) for i in range(288)]
    rows = fast + slow
    conn = await asyncpg.connect(ts_url)
    try:
        await conn.copy_records_to_table(
            "readings", records=rows, columns=("device_id", "metric", "ts", "value", "quality")
        )
        await conn.execute(
            "INSERT INTO latest (device_id, metric, ts, value, quality, received_at) "
            "SELECT DISTINCT ON (device_id, metric) device_id, metric, ts, value, quality, ts FROM readings "
            "ORDER BY device_id, metric, ts DESC"
        )
        for view in ("readings_1m", "readings_1h", "readings_1d"):
            await conn.execute(f"CALL refresh_continuous_aggregate('{view}', NULL, '2026-10-09'::timestamptz)")
        await conn.execute("INSERT INTO rollup_dirty (bucket) VALUES ($1)", T0 + timedelta(hours=47))
        await conn.fetch("SELECT compress_chunk(c) FROM show_chunks('readings') AS c")
    finally:
        await conn.close()

    result = await migrate(ts_url, timescaledb="on")
    assert 32 in result.applied and 33 in result.applied

    conn = await asyncpg.connect(ts_url)
    try:
        stored = await conn.fetch("SELECT device_id, metric, ts, value, quality FROM readings")
        assert sorted(tuple(r) for r in stored) == sorted(rows)
        levels = {r["device_id"]: r["level"] for r in await conn.fetch("SELECT device_id, level FROM series")}
        assert levels == {"fast": 0, "slow": 2}
        assert await conn.fetchval("SELECT count(*) FROM series_1d") > 0
        assert await conn.fetchval(
            "SELECT count(*) FROM series_1h WHERE series_id = (SELECT id FROM series WHERE device_id = 'slow')"
        ) == 0
        assert await conn.fetchval("SELECT count(*) FROM timescaledb_information.continuous_aggregates") == 0
        assert await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.jobs WHERE job_id >= 1000 "
            "AND hypertable_name <> 'series_readings'"
        ) == 0
    finally:
        await conn.close()

    store = await Store.connect(ts_url, timescaledb="on", pool_size=2)
    try:
        report = await store.maintain(now=T0 + timedelta(days=30))
        assert report.pending_hours == report.pending_days == 0
        got = await store.history("slow", "rain_mm", T0, T0 + timedelta(days=2), bucket=timedelta(hours=1), agg="sum")
        assert sum(p.value or 0.0 for p in got) == sum(r[3] for r in slow)
    finally:
        await store.close()
    await assert_rollups_match_raw(ts_url)
