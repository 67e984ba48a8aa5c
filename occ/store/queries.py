"""Reading the past: metric history from rollups and raw readings (planned by `occ.store.history`), events and
dead letters."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from occ.store import history as hist
from occ.store.base import StoreBase, require_aware
from occ.store.binary_copy import key_prefix
from occ.store.records import DeadLetterRecord, HistoryPoint, StoredEvent

_DIRTY = (
    "ARRAY(SELECT DISTINCT bucket FROM rollup_dirty WHERE bucket > $1 AND bucket < $2 ORDER BY 1) AS hours, "
    "ARRAY(SELECT day FROM rollup_dirty_days WHERE day > $3 AND day < $2 ORDER BY 1) AS days"
)
_PLAN_STATE = (
    f"SELECT {_DIRTY}, coalesce(s.ids, '{{}}') AS ids, coalesce(s.devices, '{{}}') AS devices, "
    "coalesce(s.levels, '{}') AS levels FROM (SELECT array_agg(id ORDER BY device_id) AS ids, "
    "array_agg(device_id ORDER BY device_id) AS devices, array_agg(level ORDER BY device_id) AS levels "
    "FROM series WHERE device_id = ANY($4::text[]) AND metric = $5) AS s"
)
# The first query of a metric in this process also brings the decided level of every series of that metric, so
# that later queries of other devices need no plan-state round trip (a wall or a report walks many devices).
_PLAN_STATE_AND_METRIC = (
    f"SELECT st.*, m.* FROM ({_PLAN_STATE}) AS st, (SELECT coalesce(array_agg(id), '{{}}') AS all_ids, "
    "coalesce(array_agg(device_id), '{}') AS all_devices, coalesce(array_agg(level), '{}') AS all_levels "
    "FROM series WHERE metric = $5 AND level IS NOT NULL) AS m"
)


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
        if spec is None:
            ids = self._cached_ids(device_ids, metric)
            if ids is None:
                sql, args = hist.raw_query(device_ids, metric, start, end, limit)
            else:  # series known here: straight to the primary key, no join with `series`
                sql, args = hist.raw_query_by_ids(ids, device_ids, start, end, limit)
            async with self._connection() as conn:
                rows = await conn.fetch(sql, *args)
            if ids is None:
                seen = {(row["device_id"], row["sid"]) for row in rows}
                self._remember_series([d for d, _ in seen], metric, [i for _, i in seen], [None] * len(seen))
            raw: dict[str, list[HistoryPoint]] = {}
            for row in rows:
                key = row["device_id"] if by_device else ""
                raw.setdefault(key, []).append(HistoryPoint(row["b"].astimezone(zone), row["v"]))
            return raw
        buckets = hist.enumerate_buckets(spec, start, end) if fill is not None else None
        level = hist.choose_level(spec, rollup_tz=self.rollup_timezone, start=start, end=end)
        known = self._known_series(device_ids, metric)
        async with self._connection() as conn:
            if known is not None and (level is None or all(lv > level.rank for lv in known[2])):
                # No requested series keeps this rollup level (a 10-minute station has no hourly rollups): the
                # answer is raw readings whatever is pending, so ONE round trip (issue 12 item 4).
                series = hist.Series(known[0], known[1], [], metric)
                plan = hist.plan_ranges(start, end, None, rollup_tz=self._rollup_tz)
            else:
                # Two round trips and no explicit transaction: what is pending and which series keep which level
                # are read in ONE statement (one snapshot), then the answer. An hour refreshed in between is read
                # raw (still exact); a late reading committed in between is simply not in this answer yet.
                first_of_metric = metric not in self._levels_loaded
                state = await conn.fetchrow(
                    _PLAN_STATE_AND_METRIC if first_of_metric else _PLAN_STATE,
                    start - hist.HOUR,
                    end,
                    start - timedelta(days=2),
                    device_ids,
                    metric,
                )
                assert state is not None
                if first_of_metric:
                    all_ids = list(state["all_ids"])
                    self._remember_series(list(state["all_devices"]), metric, all_ids, list(state["all_levels"]))
                    self._levels_loaded.add(metric)
                ids, devices, levels = list(state["ids"]), list(state["devices"]), list(state["levels"])
                self._remember_series(devices, metric, ids, levels)
                rank = level.rank if level is not None else -1
                rolled = [i for i, lv in zip(ids, levels, strict=True) if lv is not None and lv <= rank]
                series = hist.Series(devices, ids, rolled, metric)
                plan = hist.plan_ranges(
                    start,
                    end,
                    level if rolled else None,
                    rollup_tz=self._rollup_tz,
                    dirty_hours=state["hours"] if level is not None else [],
                    dirty_days=state["days"] if level is not None and level.step is None else [],
                )
            sql, args = hist.aggregate_query(
                spec, plan, layout=hist.SERIES, series=series, agg=agg, by_device=by_device
            )
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

    def _cached_ids(self, device_ids: list[str], metric: str) -> list[int] | None:
        """The series ids of the devices' `metric` when this process knows them all (ids never change)."""
        cached = self._series_ids
        ids = []
        for device in device_ids:
            sid = cached.get(device, {}).get(metric)
            if sid is None:
                return None
            ids.append(sid)
        return ids

    def _known_series(self, device_ids: list[str], metric: str) -> tuple[list[str], list[int], list[int]] | None:
        """(devices, ids, levels) from this process's caches when every requested series is known and has its
        level decided (both never change once set), else None."""
        ids: list[int] = []
        levels: list[int] = []
        cached_ids, cached_levels = self._series_ids, self._series_levels
        for device in device_ids:
            sid = cached_ids.get(device, {}).get(metric)
            level = cached_levels.get(sid) if sid is not None else None
            if level is None:
                return None
            ids.append(sid)  # type: ignore[arg-type]
            levels.append(level)
        return device_ids, ids, levels

    def _remember_series(self, devices: list[str], metric: str, ids: list[int], levels: list[int | None]) -> None:
        for device, sid, level in zip(devices, ids, levels, strict=True):
            # The write path expects a COPY prefix for every id it finds in this cache.
            self._series_prefixes.setdefault(sid, key_prefix(sid, device, metric))
            self._series_ids.setdefault(device, {})[metric] = sid
            if level is not None:
                self._series_levels[sid] = level

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
