"""Rollup upkeep proportional to what changed (issue 12, migration 0033): writers record the series each batch
touched; maintenance recomputes only those (series, hour) and (series, day) pairs when few series changed (a
backfill), and whole hours and days when most did (live data). The proofs are tampered rollup rows: a row of a
series the backfill did not touch keeps its tampered value (it was not recomputed), a row of an hour most series
touched gets its true value back (the whole hour was)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from occ.store import Store
from tests.integration.test_history import VN, assert_rollups_match_raw

T0 = datetime(2026, 10, 5, tzinfo=UTC)
MAINTAIN_AT = T0 + timedelta(days=30)
FIVE = [f"m{i:02d}" for i in range(10)]  # every 5 minutes: hourly and daily rollups (level 1)
TEN = [f"t{i:02d}" for i in range(10)]  # every 10 minutes: daily rollups only (level 2)


def readings(device: str, start: datetime, hours: int, step_min: int, shift: timedelta = timedelta(0)) -> list:
    return [
        (device, "rain_mm", start + shift + timedelta(minutes=i * step_min), float((i * 7 + len(device)) % 13), 0)
        for i in range(hours * 60 // step_min)
    ]


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    s = await Store.connect(database_url, timescaledb="off", pool_size=2)
    try:
        rows = [r for d in FIVE for r in readings(d, T0, 48, 5)] + [r for d in TEN for r in readings(d, T0, 48, 10)]
        await s.write_batch(rows, received_at=T0)
        report = await s.maintain(now=MAINTAIN_AT)
        assert report.pending_hours == report.pending_days == 0
        yield s
    finally:
        await s.close()


async def sid(conn: asyncpg.Connection, device: str) -> int:
    value: int = await conn.fetchval("SELECT id FROM series WHERE device_id = $1", device)
    return value


async def test_a_backfill_recomputes_only_the_series_it_touched(store: Store, database_url: str) -> None:
    day = datetime(2026, 10, 6, tzinfo=VN).astimezone(UTC)  # a whole local day inside the data
    hour = day + timedelta(hours=5)
    conn = await asyncpg.connect(database_url)
    try:
        m01 = await sid(conn, "m01")
        tamper = "UPDATE {} SET sum_v = -1 WHERE series_id = $1 AND bucket = $2 RETURNING 1"
        other_day = await conn.fetchval(tamper.format("series_1d"), m01, day)
        other_hour = await conn.fetchval(tamper.format("series_1h"), m01, hour)
        assert other_day == other_hour == 1
        # Store-and-forward from two stations: readings between their existing ones, all over that day.
        late = readings("m00", day, 24, 5, timedelta(minutes=2, seconds=30)) + readings(
            "t00", day, 24, 10, timedelta(minutes=5)
        )
        result = await store.write_batch(late, received_at=MAINTAIN_AT)
        assert result.inserted == len(late)
        touched = await conn.fetch("SELECT DISTINCT series FROM rollup_dirty")
        assert [r["series"] for r in touched] == [sorted([await sid(conn, "m00"), await sid(conn, "t00")])]

        report = await store.maintain(now=MAINTAIN_AT)
        assert (report.hours_refreshed, report.days_refreshed) == (24, 1)  # that local day's 24 hours
        assert report.pending_hours == report.pending_days == 0
        # Untouched series were not recomputed: their tampered rows are still there.
        assert await conn.fetchval("SELECT count(*) FROM series_1d WHERE sum_v = -1") == 1
        assert await conn.fetchval("SELECT count(*) FROM series_1h WHERE sum_v = -1") == 1
        await conn.execute("UPDATE series_1d SET sum_v = 0 WHERE sum_v = -1")  # (recomputed below)
        await conn.execute("UPDATE series_1h SET sum_v = 0 WHERE sum_v = -1")
        await conn.execute("INSERT INTO rollup_dirty (bucket) VALUES ($1)", hour)  # NULL series: every series
        await conn.execute("INSERT INTO rollup_dirty_days (day) VALUES ($1)", day)
        await store.maintain(now=MAINTAIN_AT)
    finally:
        await conn.close()
    # The backfilled series' rollups (and the restored ones) equal their raw readings.
    await assert_rollups_match_raw(database_url)


async def test_an_hour_most_series_touched_is_recomputed_whole(store: Store, database_url: str) -> None:
    hour = T0 + timedelta(hours=30)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE series_1h SET sum_v = -1 WHERE series_id = $1 AND bucket = $2", await sid(conn, "m09"), hour
        )
        # A late reading in that hour from 15 of the 20 series (not m09): most series changed.
        late = [(d, "rain_mm", hour + timedelta(seconds=30), 1.0, 0) for d in (FIVE[:9] + TEN[:6])]
        await store.write_batch(late, received_at=MAINTAIN_AT)
        report = await store.maintain(now=MAINTAIN_AT)
        assert report.hours_refreshed == 1 and report.pending_hours == report.pending_days == 0
        assert await conn.fetchval("SELECT count(*) FROM series_1h WHERE sum_v = -1") == 0
        # Its day was marked for every series, and recomputed.
        assert await conn.fetchval("SELECT count(*) FROM rollup_dirty_days") == 0
    finally:
        await conn.close()
    await assert_rollups_match_raw(database_url)


async def test_a_redelivered_batch_marks_nothing(store: Store, database_url: str) -> None:
    again = readings("m00", T0, 2, 5)
    result = await store.write_batch(again, received_at=MAINTAIN_AT)
    assert (result.inserted, result.duplicates) == (0, len(again))
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM rollup_dirty") == 0
    finally:
        await conn.close()


async def test_days_marked_by_several_backfills_keep_the_union_of_their_series(
    store: Store, database_url: str
) -> None:
    day = datetime(2026, 10, 6, tzinfo=VN).astimezone(UTC)
    conn = await asyncpg.connect(database_url)
    try:
        # Two backfills of the same hours, each refreshed before the day is due (the day is not over yet).
        for device in ("t01", "t02"):
            await store.write_batch(readings(device, day, 3, 10, timedelta(minutes=5)), received_at=MAINTAIN_AT)
            await store.maintain(now=day + timedelta(hours=4))
        marked = await conn.fetchval("SELECT series FROM rollup_dirty_days WHERE day = $1", day)
        assert marked == sorted([await sid(conn, "t01"), await sid(conn, "t02")])
        await store.maintain(now=MAINTAIN_AT)
        assert await conn.fetchval("SELECT count(*) FROM rollup_dirty_days") == 0
    finally:
        await conn.close()
    await assert_rollups_match_raw(database_url)
