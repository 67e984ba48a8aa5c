"""Reading the past: metric history from rollups and raw readings (planned by `occ.store.history`), events and
dead letters."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg

from occ.store import history as hist
from occ.store.base import StoreBase, require_aware
from occ.store.records import DeadLetterRecord, HistoryPoint, StoredEvent


class HistoryQueries(StoreBase):
    """History series, events and dead letters."""

    async def history(
        self,
        device_id: str | Sequence[str],
        metric: str,
        start: datetime,
        end: datetime,
        *,
        bucket: timedelta | str = timedelta(hours=1),
        agg: str = "avg",
        fill: str | None = None,
        tz: str | ZoneInfo | None = None,
        day_start_hour: int = 0,
        limit: int | None = None,
    ) -> list[HistoryPoint]:
        """A metric's history over [start, end) as (bucket_start, value) points, oldest first.

        bucket: a timedelta, 'day' | 'week' | 'month' (calendar buckets in `tz`), or 'raw' (every reading).
        agg: avg | min | max | sum | count | first | last. fill: None (buckets with data only), 'null',
        'previous', 'linear' or 'zero'. day_start_hour shifts day/week/month (and fixed) buckets, e.g. 7 for
        the hydrological day 07:00–07:00. Several device ids aggregate together (e.g. an area's mean);
        use history_by_device() for one series per device. The first bucket may start before `start`; it
        only aggregates data from `start` on. Bucket starts are returned in `tz` (default: the site zone).
        """
        ids = [device_id] if isinstance(device_id, str) else list(device_id)
        series = await self._history(
            ids, metric, start, end, bucket, agg, fill, tz, day_start_hour, limit, by_device=False
        )
        return series.get("", [])

    async def history_by_device(
        self,
        device_ids: Sequence[str],
        metric: str,
        start: datetime,
        end: datetime,
        *,
        bucket: timedelta | str = timedelta(hours=1),
        agg: str = "avg",
        fill: str | None = None,
        tz: str | ZoneInfo | None = None,
        day_start_hour: int = 0,
        limit: int | None = None,
    ) -> dict[str, list[HistoryPoint]]:
        """Like history(), one series per device (every requested device is a key)."""
        ids = list(device_ids)
        series = await self._history(
            ids, metric, start, end, bucket, agg, fill, tz, day_start_hour, limit, by_device=True
        )
        return {i: series.get(i, []) for i in ids}

    async def _history(
        self,
        device_ids: list[str],
        metric: str,
        start: datetime,
        end: datetime,
        bucket: timedelta | str,
        agg: str,
        fill: str | None,
        tz: str | ZoneInfo | None,
        day_start_hour: int,
        limit: int | None,
        *,
        by_device: bool,
    ) -> dict[str, list[HistoryPoint]]:
        require_aware("start", start)
        require_aware("end", end)
        if start >= end:
            raise ValueError("start must be before end")
        if agg not in hist.AGGREGATES:
            raise ValueError(f"agg must be one of {', '.join(hist.AGGREGATES)}; got {agg!r}")
        if fill not in hist.FILLS:
            raise ValueError(f"fill must be one of None, 'null', 'previous', 'linear', 'zero'; got {fill!r}")
        zone = hist.zone(tz or self.timezone)
        spec = hist.bucket_spec(bucket, tz=zone, day_start_hour=day_start_hour)
        layout = hist.PLAIN if self._mode == "plain" else hist.TIMESCALE
        if spec is None:
            async with self._connection() as conn:
                series = await self._series(conn, device_ids, metric, None)
                if not series.ids:
                    return {}
                sql, args = hist.raw_query(layout, series, start, end, limit)
                rows = await conn.fetch(sql, *args)
            raw: dict[str, list[HistoryPoint]] = {}
            for row in rows:
                key = row["device_id"] if by_device else ""
                raw.setdefault(key, []).append(HistoryPoint(row["b"].astimezone(zone), row["v"]))
            return raw
        buckets = hist.enumerate_buckets(spec, start, end) if fill is not None else None
        level = hist.choose_level(spec, rollup_tz=self.rollup_timezone, start=start, end=end)
        async with self._connection() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            series = await self._series(conn, device_ids, metric, level)
            if not series.rolled:
                level = None
            dirty_hours: list[datetime] = []
            dirty_days: list[datetime] = []
            if level is not None:
                dirty_hours = [
                    r["bucket"]
                    for r in await conn.fetch(
                        "SELECT DISTINCT bucket FROM rollup_dirty WHERE bucket > $1 AND bucket < $2",
                        start - hist.HOUR,
                        end,
                    )
                ]
                if level.step is None:
                    dirty_days = [
                        r["day"]
                        for r in await conn.fetch(
                            "SELECT day FROM rollup_dirty_days WHERE day > $1 AND day < $2",
                            start - timedelta(days=2),
                            end,
                        )
                    ]
            plan = hist.plan_ranges(
                start, end, level, rollup_tz=self._rollup_tz, dirty_hours=dirty_hours, dirty_days=dirty_days
            )
            sql, args = hist.aggregate_query(spec, plan, layout=layout, series=series, agg=agg, by_device=by_device)
            rows = await conn.fetch(sql, *args) if series.ids else []
        grouped: dict[str, dict[datetime, float | None]] = {}
        for row in rows:
            key = row["device_id"] if by_device else ""
            grouped.setdefault(key, {})[row["b"]] = row["v"]
        if buckets is None:
            result = {
                key: [HistoryPoint(b.astimezone(zone), v) for b, v in values.items()] for key, values in grouped.items()
            }
        else:
            keys = device_ids if by_device else [""]
            result = {key: hist.fill_series(buckets, grouped.get(key, {}), fill, zone) for key in keys}
        if limit is not None:
            result = {key: points[:limit] for key, points in result.items()}
        return result

    async def _series(
        self, conn: asyncpg.Connection, device_ids: list[str], metric: str, level: hist.Level | None
    ) -> hist.Series:
        """The stored series of `device_ids` for `metric`, and which of them keep `level`'s rollups."""
        if self._mode != "plain":
            return hist.Series(list(device_ids), list(device_ids), list(device_ids) if level else [], metric)
        rows = await conn.fetch(
            "SELECT id, device_id, level FROM series WHERE device_id = ANY($1::text[]) AND metric = $2 "
            "ORDER BY device_id",
            device_ids,
            metric,
        )
        rolled = [r["id"] for r in rows if level is not None and r["level"] is not None and r["level"] <= level.rank]
        return hist.Series([r["device_id"] for r in rows], [r["id"] for r in rows], rolled, metric)

    async def events(
        self,
        *,
        device_ids: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 100,
    ) -> list[StoredEvent]:
        """Events, newest first."""
        conditions: list[str] = []
        args: list[object] = []
        for sql, value in (
            ("device_id = ANY(${}::text[])", list(device_ids) if device_ids is not None else None),
            ("type = ANY(${}::text[])", list(types) if types is not None else None),
            ("ts >= ${}", start),
            ("ts < ${}", end),
        ):
            if value is not None:
                args.append(value)
                conditions.append(sql.format(len(args)))
        args.append(limit)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT device_id, ts, type, data, received_at FROM events{where} "
                f"ORDER BY ts DESC, device_id, type LIMIT ${len(args)}",
                *args,
            )
        return [StoredEvent(**dict(row)) for row in rows]

    async def dead_letters(self, limit: int = 100, since: datetime | None = None) -> list[DeadLetterRecord]:
        """Dead letters, newest first."""
        async with self._connection() as conn:
            if since is None:
                rows = await conn.fetch(
                    "SELECT id, received_at, topic, payload, reason, code, device_id FROM dead_letters "
                    "ORDER BY received_at DESC, id DESC LIMIT $1",
                    limit,
                )
            else:
                rows = await conn.fetch(
                    "SELECT id, received_at, topic, payload, reason, code, device_id FROM dead_letters "
                    "WHERE received_at >= $2 ORDER BY received_at DESC, id DESC LIMIT $1",
                    limit,
                    since,
                )
        return [DeadLetterRecord(**dict(row)) for row in rows]
