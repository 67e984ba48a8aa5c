"""An existing plain-path database (schema before migration 0030: text-keyed readings, 1m/1h/1d rollups for
every series) upgrades in place: every reading, the rollups each series' level keeps, pending rollup work, and
the same history answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from occ.store import Store, migrate
from occ.store.migrator import discover
from tests.integration.test_history import VN, as_dict, assert_rollups_match_raw, assert_same, reference, utc_floor

T0 = datetime(2026, 10, 5, 0, 0, tzinfo=UTC)


def old_rows() -> list[tuple[str, str, datetime, float, int]]:
    fast = [("fast", "level_m", T0 + timedelta(seconds=5 * i), float(i % 11), 0) for i in range(720)]
    slow = [("slow", "rain_mm", T0 + timedelta(minutes=10 * i), float(i % 7) + 0.5, i % 2) for i in range(288)]
    once = [("once", "rain_mm", T0 + timedelta(hours=5), 3.0, 0)]
    return fast + slow + once


async def test_a_database_from_before_0030_upgrades_with_its_data(database_url: str) -> None:
    before = [m for m in discover() if m.version < 30]
    await migrate(database_url, timescaledb="off", migrations=before)
    rows = old_rows()
    conn = await asyncpg.connect(database_url)
    try:
        # As the old store left it: partitions, readings, latest, rollups refreshed except for one dirty hour.
        await conn.execute("SELECT occ_ensure_partitions($1, 7, 1)", T0)
        await conn.copy_records_to_table(
            "readings", records=rows, columns=("device_id", "metric", "ts", "value", "quality")
        )
        await conn.execute(
            "INSERT INTO latest (device_id, metric, ts, value, quality, received_at) "
            "SELECT DISTINCT ON (device_id, metric) device_id, metric, ts, value, quality, ts FROM readings "
            "ORDER BY device_id, metric, ts DESC"
        )
        hours = [T0 + timedelta(hours=h) for h in range(48)]
        await conn.execute("SELECT occ_refresh_hours($1::timestamptz[])", hours[:-1])
        await conn.execute("INSERT INTO rollup_dirty (bucket) VALUES ($1)", hours[-1])
        days = [datetime(2026, 10, d, tzinfo=VN).astimezone(UTC) for d in (5, 6)]
        await conn.execute("SELECT occ_refresh_days($1::timestamptz[], 'Asia/Ho_Chi_Minh')", days)
        assert await conn.fetchval("SELECT count(*) FROM readings_1m WHERE device_id = 'slow'") > 0
    finally:
        await conn.close()

    result = await migrate(database_url, timescaledb="off")
    assert 30 in result.applied

    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetch("SELECT device_id, metric, ts, value, quality FROM readings")
        assert sorted(tuple(r) for r in stored) == sorted(rows)
        levels = {(r["device_id"], r["metric"]): r["level"] for r in await conn.fetch("SELECT * FROM series")}
        assert levels == {("fast", "level_m"): 0, ("slow", "rain_mm"): 2, ("once", "rain_mm"): None}
        assert await conn.fetchval("SELECT count(*) FROM series_1m WHERE series_id <> "
                                   "(SELECT id FROM series WHERE device_id = 'fast')") == 0  # fmt: skip
        assert await conn.fetchval("SELECT count(*) FROM rollup_dirty") == 1
    finally:
        await conn.close()

    store = await Store.connect(database_url, timescaledb="off", pool_size=2)
    try:
        start, end = T0 - timedelta(minutes=1), T0 + timedelta(days=2)
        for device, metric in (("fast", "level_m"), ("slow", "rain_mm"), ("once", "rain_mm")):
            mine = [r for r in rows if r[0] == device]
            for bucket, floor in ((timedelta(minutes=1), utc_floor(timedelta(minutes=1))),
                                  (timedelta(hours=1), utc_floor(timedelta(hours=1)))):  # fmt: skip
                got = await store.history(device, metric, start, end, bucket=bucket, agg="avg")
                assert_same(as_dict(got), reference(mine, floor, "avg", start, end))
        report = await store.maintain(now=T0 + timedelta(days=30))
        assert report.series_classified == 0 and report.pending_hours == 0
        await store.write_batch([("new", "rain_mm", T0 + timedelta(hours=1), 1.0, 0)], received_at=T0)
        assert (await store.latest(["new"]))[0].value == 1.0
    finally:
        await store.close()
    await assert_rollups_match_raw(database_url)
