"""Rollup bookkeeping: which hours a batch touched (hot path), and refreshing them (maintenance).

Both storage paths keep the same rollup tables (series_1m/1h/1d, platform-maintained; migrations 0030, 0032)
and track dirty hours the same way (0001_core.sql `rollup_dirty`, and since 0033 the series each batch touched).
An hour is refreshed once it is `grace` past its end, so live ingest does not recompute the current hour over
and over; until then history reads it raw. A day is refreshed once it is over (plus the grace) and none of its
hours is pending.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg

from occ.store.history import HOUR, coalesce, local_day_floor

log = logging.getLogger(__name__)

SMALL_SPAN_HOURS = 3
"""A batch spanning at most this many hours marks every hour in between dirty (live data; a superset is
harmless); a longer one (a backfill) marks exactly the hours it has readings in."""


@dataclass(slots=True)
class RefreshResult:
    hours: int = 0
    days: int = 0
    pending_hours: int = 0
    pending_days: int = 0
    dropped: int = 0
    lag_s: float = 0.0
    classified: int = 0


CLASSIFY_CHUNK = 200
"""Series examined per classification statement (~20 ms each on an idle machine, 50-100 ms beside a busy ingest):
a fleet's first maintenance run classifies thousands of series, which in one statement held a core for most of a
second."""


async def pace(began: float, busy_share: float) -> None:
    """Sleep so that the step that began at `began` (time.monotonic()) took at most `busy_share` of the time since
    then: maintenance beside live ingest must leave the machine to it (a step in a row of steps never waits for
    more than it worked)."""
    if busy_share < 1.0:
        await asyncio.sleep((time.monotonic() - began) * (1.0 - busy_share) / busy_share)


async def classify_series(conn: asyncpg.Connection, *, deadline: float, busy_share: float = 1.0) -> int:
    """Give their rollup level to the series that have none yet and now have two readings, CLASSIFY_CHUNK series
    per statement (migration 0042), until none is left or `deadline` passes (the next run goes on). Returns how
    many were classified."""
    after, total = 0, 0
    while True:
        began = time.monotonic()
        row = await conn.fetchrow(
            "SELECT classified, last_id FROM occ_classify_series_after($1, $2)", after, CLASSIFY_CHUNK
        )
        if row["last_id"] is None:
            return total
        total += row["classified"]
        after = row["last_id"]
        if time.monotonic() >= deadline:
            return total
        await pace(began, busy_share)


WHOLE_SHARE = 0.5
"""A dirty hour or day is recomputed for every series in one range pass when its batches touched at least this
share of all series (a live hour); below it, only the touched (series, bucket) pairs are, one index range scan
each (a backfill). Either way the result is the same; only the cost differs."""

_DIRTY_HOURS = (
    "SELECT g.bucket, g.ids, g.whole, CASE WHEN g.whole THEN 0 ELSE ("
    " SELECT count(DISTINCT u.sid) FROM rollup_dirty AS d CROSS JOIN LATERAL unnest(d.series) AS u(sid)"
    " WHERE d.id = ANY(g.ids)) END AS touched "
    "FROM (SELECT bucket, array_agg(id) AS ids, bool_or(series IS NULL) AS whole FROM rollup_dirty "
    "WHERE bucket <= $1 GROUP BY bucket ORDER BY bucket LIMIT $2) AS g ORDER BY g.bucket"
)
# A day is computed once it is over (plus the grace) and its hours are clean: recomputing the current day at
# every run would read its raw readings again and again (~24x the upkeep of computing it once). Until then
# history reads the day raw (or from its hours), which costs about as little.
_READY_DAYS = (
    "SELECT d.day, d.series IS NULL AS whole, coalesce(cardinality(d.series), 0) AS touched "
    "FROM rollup_dirty_days AS d "
    "WHERE ((d.day AT TIME ZONE $1) + interval '1 day') AT TIME ZONE $1 <= $3 AND NOT EXISTS ("
    " SELECT 1 FROM rollup_dirty AS h WHERE h.bucket >= d.day"
    " AND h.bucket < ((d.day AT TIME ZONE $1) + interval '1 day') AT TIME ZONE $1"
    ") ORDER BY d.day LIMIT $2"
)


async def refresh(
    conn: asyncpg.Connection,
    *,
    rollup_tz: ZoneInfo,
    now: datetime,
    grace: timedelta,
    retention_cutoff: datetime | None,
    deadline: float,
    batch_hours: int = 24,
    busy_share: float = 1.0,
) -> RefreshResult:
    """Refresh dirty hours (oldest first) and then days whose hours are all clean, until done or `deadline`
    (a time.monotonic() value) passes. The caller holds the maintenance advisory lock.

    Each call refreshes at least one batch of hours and then at least one batch of days, whatever the deadline:
    a backlog of hours that takes the whole budget (a backfill, a slow disk) must not starve the days, or daily
    rollups would never complete while data keeps arriving (issue 9 item 7). Between its statements it sleeps so
    as to be busy at most `busy_share` of the time (`pace`).

    Work is proportional to what changed: an hour or day that most series touched is recomputed in one range
    pass (occ_refresh_range / occ_refresh_days); one that few series touched (a backfill) only for those series
    (occ_refresh_series_hours / occ_refresh_series_days, migration 0033)."""
    result = RefreshResult()
    if retention_cutoff is not None:
        # Raw data before the cutoff is gone (or going): recomputing would only erase good rollups.
        status = await conn.execute("DELETE FROM rollup_dirty WHERE bucket < $1", retention_cutoff)
        result.dropped += int(status.split()[-1])
        status = await conn.execute("DELETE FROM rollup_dirty_days WHERE day < $1", retention_cutoff)
        result.dropped += int(status.split()[-1])
    # Series that have just reached two readings get their rollup level (and their hours marked dirty).
    result.classified = await classify_series(conn, deadline=deadline, busy_share=busy_share)
    whole_from = max(1, int(WHOLE_SHARE * await conn.fetchval("SELECT count(*) FROM series")))
    ready_before = now - grace - HOUR
    began = time.monotonic()
    first = True
    while first or time.monotonic() < deadline:
        if not first:
            await pace(began, busy_share)
        first = False
        began = time.monotonic()
        rows = await conn.fetch(_DIRTY_HOURS, ready_before, batch_hours)
        if not rows:
            break
        whole = [row["whole"] or row["touched"] >= whole_from for row in rows]
        hours = [row["bucket"] for row in rows]
        ids = [i for row in rows for i in row["ids"]]
        partial_ids = [i for row, w in zip(rows, whole, strict=True) if not w for i in row["ids"]]
        async with conn.transaction():
            # One pass per run of consecutive whole hours, not one per hour (0006_refresh_ranges).
            for lo, hi in coalesce([(h, h + HOUR) for h, w in zip(hours, whole, strict=True) if w]):
                await conn.execute("SELECT occ_refresh_range($1, $2)", lo, hi)
            if partial_ids:
                await conn.execute("SELECT occ_refresh_series_hours($1::bigint[])", partial_ids)
            await conn.execute(
                "SELECT occ_mark_days($1::timestamptz[], $2::timestamptz[], $3::boolean[], $4::bigint[])",
                hours,
                [local_day_floor(h, rollup_tz) for h in hours],
                whole,
                partial_ids,
            )
            await conn.execute("DELETE FROM rollup_dirty WHERE id = ANY($1::bigint[])", ids)
        result.hours += len(hours)
    first = True
    while first or time.monotonic() < deadline:
        if not first:
            await pace(began, busy_share)
        first = False
        began = time.monotonic()
        rows = await conn.fetch(_READY_DAYS, rollup_tz.key, batch_hours, now - grace)
        if not rows:
            break
        days = [row["day"] for row in rows]
        whole_days = [row["day"] for row in rows if row["whole"] or row["touched"] >= whole_from]
        partial_days = [row["day"] for row in rows if not (row["whole"] or row["touched"] >= whole_from)]
        async with conn.transaction():
            if whole_days:
                await conn.execute("SELECT occ_refresh_days($1::timestamptz[], $2)", whole_days, rollup_tz.key)
            if partial_days:
                await conn.execute(
                    "SELECT occ_refresh_series_days($1::timestamptz[], $2)", partial_days, rollup_tz.key
                )
            await conn.execute("DELETE FROM rollup_dirty_days WHERE day = ANY($1::timestamptz[])", days)
        result.days += len(days)
    if result.hours:
        # Writers append and maintenance deletes: keep the queue's table (and its TOASTed series lists) at the
        # size of what is pending, without waiting for autovacuum. VACUUM does not block writers.
        await conn.execute("VACUUM rollup_dirty")
    row = await conn.fetchrow("SELECT count(DISTINCT bucket) AS n, min(bucket) AS oldest FROM rollup_dirty")
    result.pending_hours = row["n"]
    if row["oldest"] is not None:
        result.lag_s = max(0.0, (now - (row["oldest"] + HOUR + grace)).total_seconds())
    result.pending_days = await conn.fetchval("SELECT count(*) FROM rollup_dirty_days")
    return result
