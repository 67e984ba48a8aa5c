"""Rollup bookkeeping: which hours a batch touched (hot path), and refreshing them (maintenance).

Both storage modes track dirty hours the same way (see 0001_core.sql, `rollup_dirty`): on plain PostgreSQL
maintenance recomputes them with occ_refresh_range()/occ_refresh_days(); on TimescaleDB it calls
refresh_continuous_aggregate() for them, which also catches backfill older than the refresh policies' windows.
An hour is refreshed once it is `grace` past its end, so live ingest does not recompute the current hour over
and over; until then history reads it raw. A day is refreshed once it is over (plus the grace) and none of its
hours is pending.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg

from occ.models import ReadingRow
from occ.store.history import HOUR, coalesce, local_day_floor, local_day_next
from occ.store.records import Mode

log = logging.getLogger(__name__)

_HOUR_S = 3600
_SMALL_SPAN_HOURS = 3


def hour_floor(t: datetime) -> datetime:
    return datetime.fromtimestamp((int(t.timestamp()) // _HOUR_S) * _HOUR_S, UTC)


def dirty_hours(rows: Sequence[ReadingRow]) -> list[datetime]:
    """The UTC hours a batch touches. Cheap for the usual batch (a few hours of live data: min/max only);
    a batch spanning more (store-and-forward backfill) takes a pass over its timestamps."""
    if not rows:
        return []
    stamps = [row[2] for row in rows]
    first = hour_floor(min(stamps))
    last = hour_floor(max(stamps))
    span = int((last - first) / HOUR)
    if span <= _SMALL_SPAN_HOURS:
        return [first + i * HOUR for i in range(span + 1)]
    hours = {int(t.timestamp()) // _HOUR_S for t in stamps}
    return [datetime.fromtimestamp(h * _HOUR_S, UTC) for h in sorted(hours)]


@dataclass(slots=True)
class RefreshResult:
    hours: int = 0
    days: int = 0
    pending_hours: int = 0
    pending_days: int = 0
    dropped: int = 0
    lag_s: float = 0.0
    classified: int = 0


def _ts_literal(t: datetime) -> str:
    return "'" + t.astimezone(UTC).isoformat() + "'::timestamptz"


async def _refresh_caggs(conn: asyncpg.Connection, view: str, ranges: Sequence[tuple[datetime, datetime]]) -> None:
    # CALL cannot run inside a transaction block; this connection is in autocommit here.
    for lo, hi in ranges:
        await conn.execute(f"CALL refresh_continuous_aggregate('{view}', {_ts_literal(lo)}, {_ts_literal(hi)})")


async def refresh(
    conn: asyncpg.Connection,
    *,
    mode: Mode,
    rollup_tz: ZoneInfo,
    now: datetime,
    grace: timedelta,
    retention_cutoff: datetime | None,
    deadline: float,
    batch_hours: int = 24,
) -> RefreshResult:
    """Refresh dirty hours (oldest first) and then days whose hours are all clean, until done or `deadline`
    (a time.monotonic() value) passes. The caller holds the maintenance advisory lock.

    Each call refreshes at least one batch of hours and then at least one batch of days, whatever the deadline:
    a backlog of hours that takes the whole budget (a backfill, a slow disk) must not starve the days, or daily
    rollups would never complete while data keeps arriving (issue 9 item 7)."""
    result = RefreshResult()
    if retention_cutoff is not None:
        # Raw data before the cutoff is gone (or going): recomputing would only erase good rollups.
        status = await conn.execute("DELETE FROM rollup_dirty WHERE bucket < $1", retention_cutoff)
        result.dropped += int(status.split()[-1])
        status = await conn.execute("DELETE FROM rollup_dirty_days WHERE day < $1", retention_cutoff)
        result.dropped += int(status.split()[-1])
    if mode == "plain":
        # Series that have just reached two readings get their rollup level (and their hours marked dirty).
        result.classified = await conn.fetchval("SELECT occ_classify_series()")
    ready_before = now - grace - HOUR
    first = True
    while first or time.monotonic() < deadline:
        first = False
        rows = await conn.fetch(
            "SELECT bucket, array_agg(id) AS ids FROM rollup_dirty WHERE bucket <= $1 "
            "GROUP BY bucket ORDER BY bucket LIMIT $2",
            ready_before,
            batch_hours,
        )
        if not rows:
            break
        hours = [row["bucket"] for row in rows]
        ids = [i for row in rows for i in row["ids"]]
        days = sorted({local_day_floor(h, rollup_tz) for h in hours})
        if mode == "timescale":
            ranges = coalesce([(h, h + HOUR) for h in hours])
            await _refresh_caggs(conn, "readings_1m", ranges)
            await _refresh_caggs(conn, "readings_1h", ranges)
        async with conn.transaction():
            if mode == "plain":  # one pass per run of consecutive hours, not one per hour (0006_refresh_ranges)
                for lo, hi in coalesce([(h, h + HOUR) for h in hours]):
                    await conn.execute("SELECT occ_refresh_range($1, $2)", lo, hi)
            await conn.execute("DELETE FROM rollup_dirty WHERE id = ANY($1::bigint[])", ids)
            await conn.execute(
                "INSERT INTO rollup_dirty_days (day) SELECT unnest($1::timestamptz[]) ON CONFLICT DO NOTHING",
                days,
            )
        result.hours += len(hours)
    first = True
    while first or time.monotonic() < deadline:
        first = False
        # A day is computed once it is over (plus the grace) and its hours are clean: recomputing the current
        # day at every run would read its raw readings again and again (~24x the upkeep of computing it once).
        # Until then history reads the day raw (or from its hours), which costs about as little.
        rows = await conn.fetch(
            "SELECT d.day FROM rollup_dirty_days AS d "
            "WHERE ((d.day AT TIME ZONE $1) + interval '1 day') AT TIME ZONE $1 <= $3 AND NOT EXISTS ("
            " SELECT 1 FROM rollup_dirty AS h WHERE h.bucket >= d.day"
            " AND h.bucket < ((d.day AT TIME ZONE $1) + interval '1 day') AT TIME ZONE $1"
            ") ORDER BY d.day LIMIT $2",
            rollup_tz.key,
            batch_hours,
            now - grace,
        )
        if not rows:
            break
        days = [row["day"] for row in rows]
        if mode == "timescale":
            ranges = coalesce([(d, local_day_next(d, rollup_tz)) for d in days])
            await _refresh_caggs(conn, "readings_1d", ranges)
        async with conn.transaction():
            if mode == "plain":
                await conn.execute("SELECT occ_refresh_days($1::timestamptz[], $2)", days, rollup_tz.key)
            await conn.execute("DELETE FROM rollup_dirty_days WHERE day = ANY($1::timestamptz[])", days)
        result.days += len(days)
    row = await conn.fetchrow("SELECT count(DISTINCT bucket) AS n, min(bucket) AS oldest FROM rollup_dirty")
    result.pending_hours = row["n"]
    if row["oldest"] is not None:
        result.lag_s = max(0.0, (now - (row["oldest"] + HOUR + grace)).total_seconds())
    result.pending_days = await conn.fetchval("SELECT count(*) FROM rollup_dirty_days")
    return result
