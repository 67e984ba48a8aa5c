"""History queries, planned in pure Python and run as one SQL statement.

A query's time range is cut into pieces: where a rollup (1 minute, 1 hour, 1 local day) lines up with the
requested buckets and is complete, its rows are read; everywhere else (range edges that cut a rollup
bucket, hours written since the last refresh) raw readings are read. Both kinds of piece become partial
aggregates (count, sum, min, max, first, last) that SQL combines per requested bucket, so the answer is the
same whichever pieces were used, on either storage path. Gap filling happens here, on the enumerated
bucket list.

Buckets:
- a `timedelta`: fixed-width buckets aligned on local midnight of Monday 2000-01-03 in `tz`, plus
  `day_start_hour` (so 1 day with day_start_hour=7 gives hydrological days 07:00–07:00);
- 'day' | 'week' | 'month': calendar buckets in `tz`, starting at `day_start_hour` (weeks start on Monday);
- 'raw': every reading, no aggregation.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from occ.store.records import HistoryPoint

Agg = Literal["avg", "min", "max", "sum", "count", "first", "last"]
Fill = Literal["null", "previous", "linear", "zero"]
CalendarUnit = Literal["day", "week", "month"]

AGGREGATES: tuple[str, ...] = ("avg", "min", "max", "sum", "count", "first", "last")
FILLS: tuple[str | None, ...] = (None, "null", "previous", "linear", "zero")
MAX_BUCKETS = 200_000
"""Refuse queries that would produce more buckets than this (a wall display never needs them)."""

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)

_DURATION_RE = re.compile(r"^\s*(\d+)\s*(s|sec|m|min|h|hour|d|day|w|week)s?\s*$", re.IGNORECASE)
_UNITS = {
    "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600,
    "d": 86400, "day": 86400, "w": 604800, "week": 604800,
}  # fmt: skip


def parse_bucket(text: str) -> timedelta | str:
    """'raw', 'day', 'week', 'month', or a duration such as '15m', '1h', '2d' (for the REST layer)."""
    lowered = text.strip().lower()
    if lowered in ("raw", "day", "week", "month"):
        return lowered
    match = _DURATION_RE.match(lowered)
    if not match:
        raise ValueError(f"bucket must be raw, day, week, month or a duration like 15m, 1h; got {text!r}")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2).lower()])


def zone(tz: str | ZoneInfo) -> ZoneInfo:
    return tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)


@dataclass(frozen=True, slots=True)
class FixedBuckets:
    width: timedelta
    origin: datetime

    def floor(self, t: datetime) -> datetime:
        return self.origin + ((t - self.origin) // self.width) * self.width

    def next(self, b: datetime) -> datetime:
        return b + self.width


@dataclass(frozen=True, slots=True)
class CalendarBuckets:
    unit: CalendarUnit
    tz: ZoneInfo
    shift: timedelta

    def _start_of(self, day: date) -> datetime:
        return datetime(day.year, day.month, day.day, tzinfo=self.tz) + self.shift

    def floor(self, t: datetime) -> datetime:
        local = t.astimezone(self.tz).replace(tzinfo=None) - self.shift
        day = local.date()
        if self.unit == "week":
            day -= timedelta(days=day.weekday())
        elif self.unit == "month":
            day = day.replace(day=1)
        return self._wall(day)

    def next(self, b: datetime) -> datetime:
        local = (b.astimezone(self.tz).replace(tzinfo=None) - self.shift).date()
        if self.unit == "day":
            day = local + timedelta(days=1)
        elif self.unit == "week":
            day = local + timedelta(days=7)
        else:
            day = date(local.year + local.month // 12, local.month % 12 + 1, 1)
        return self._wall(day)

    def _wall(self, day: date) -> datetime:
        # Wall-clock arithmetic in the zone, then back to an absolute time (like PostgreSQL's AT TIME ZONE).
        naive = datetime(day.year, day.month, day.day) + self.shift
        return naive.replace(tzinfo=self.tz).astimezone(UTC)


BucketSpec = FixedBuckets | CalendarBuckets


def bucket_spec(bucket: timedelta | str, *, tz: ZoneInfo, day_start_hour: int = 0) -> BucketSpec | None:
    """The bucket grid for a query; None for 'raw'."""
    if not 0 <= day_start_hour <= 23:
        raise ValueError("day_start_hour must be 0..23")
    shift = timedelta(hours=day_start_hour)
    if isinstance(bucket, str):
        if bucket == "raw":
            return None
        if bucket in ("day", "week", "month"):
            return CalendarBuckets(bucket, tz, shift)  # type: ignore[arg-type]
        parsed = parse_bucket(bucket)
        return bucket_spec(parsed, tz=tz, day_start_hour=day_start_hour)
    if not isinstance(bucket, timedelta):
        raise TypeError(f"bucket must be a timedelta or a string, not {type(bucket).__name__}")
    if bucket <= timedelta(0):
        raise ValueError("bucket must be a positive duration")
    origin = (datetime(2000, 1, 3) + shift).replace(tzinfo=tz).astimezone(UTC)
    return FixedBuckets(bucket, origin)


def enumerate_buckets(spec: BucketSpec, start: datetime, end: datetime) -> list[datetime]:
    """Every bucket start from the one containing `start` up to (not including) `end`."""
    buckets: list[datetime] = []
    b = spec.floor(start)
    while b < end:
        buckets.append(b)
        if len(buckets) > MAX_BUCKETS:
            raise ValueError(f"query would produce more than {MAX_BUCKETS} buckets: use a larger bucket")
        b = spec.next(b)
    return buckets


# --- rollup levels ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Level:
    name: str
    rank: int
    """Compared with `series.level` on the plain path (the finest level a series keeps)."""
    step: timedelta | None
    """UTC-aligned step for 1m/1h; None for local days in the rollup time zone."""


LEVEL_1M = Level("1m", 0, timedelta(minutes=1))
LEVEL_1H = Level("1h", 1, HOUR)
LEVEL_1D = Level("1d", 2, None)


@dataclass(frozen=True, slots=True)
class Layout:
    """Where readings and rollups are kept: the same tables on both storage paths (series ids; migrations 0030 and
    0032)."""

    raw: str
    rollups: dict[str, str]


SERIES = Layout("series_readings", {"1m": "series_1m", "1h": "series_1h", "1d": "series_1d"})


@dataclass(frozen=True, slots=True)
class Series:
    """The series a query reads: `ids[i]` is the series of `devices[i]`; `rolled` are the ids that keep the chosen
    rollup level (the others read raw there)."""

    devices: list[str]
    ids: list[int]
    rolled: list[int]
    metric: str


def _aligned(t: datetime, step: timedelta) -> bool:
    return (t - EPOCH) % step == timedelta(0)


def _offsets_aligned(tz: ZoneInfo, step: timedelta, *instants: datetime) -> bool:
    for t in instants:
        offset = t.astimezone(tz).utcoffset() or timedelta(0)
        if offset % step != timedelta(0):
            return False
    return True


def choose_level(spec: BucketSpec, *, rollup_tz: str, start: datetime, end: datetime) -> Level | None:
    """The coarsest rollup whose buckets each lie inside one requested bucket, or None."""
    if isinstance(spec, CalendarBuckets):
        if spec.tz.key == rollup_tz and spec.shift == timedelta(0):
            return LEVEL_1D
        for level in (LEVEL_1H, LEVEL_1M):
            assert level.step is not None
            if spec.shift % level.step == timedelta(0) and _offsets_aligned(spec.tz, level.step, start, end):
                return level
        return None
    for level in (LEVEL_1H, LEVEL_1M):
        assert level.step is not None
        if spec.width % level.step == timedelta(0) and _aligned(spec.origin, level.step):
            return level
    return None


def local_day_floor(t: datetime, tz: ZoneInfo) -> datetime:
    day = t.astimezone(tz).date()
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)


def local_day_next(d: datetime, tz: ZoneInfo) -> datetime:
    day = d.astimezone(tz).date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)


def level_floor(level: Level, t: datetime, rollup_tz: ZoneInfo) -> datetime:
    if level.step is None:
        return local_day_floor(t, rollup_tz)
    return EPOCH + ((t - EPOCH) // level.step) * level.step


def level_ceil(level: Level, t: datetime, rollup_tz: ZoneInfo) -> datetime:
    floor = level_floor(level, t, rollup_tz)
    if floor == t:
        return t
    if level.step is None:
        return local_day_next(floor, rollup_tz)
    return floor + level.step


Interval = tuple[datetime, datetime]


def coalesce(intervals: Sequence[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for lo, hi in sorted(i for i in intervals if i[0] < i[1]):
        if merged and lo <= merged[-1][1]:
            if hi > merged[-1][1]:
                merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return merged


def subtract(base: Sequence[Interval], holes: Sequence[Interval]) -> list[Interval]:
    """`base` minus `holes` (both half-open)."""
    result: list[Interval] = []
    holes = coalesce(holes)
    for lo, hi in coalesce(base):
        cursor = lo
        for hlo, hhi in holes:
            if hhi <= cursor or hlo >= hi:
                continue
            if hlo > cursor:
                result.append((cursor, hlo))
            cursor = max(cursor, hhi)
            if cursor >= hi:
                break
        if cursor < hi:
            result.append((cursor, hi))
    return result


@dataclass(frozen=True, slots=True)
class Plan:
    level: Level | None
    rollup: list[Interval]
    raw: list[Interval]


def plan_ranges(
    start: datetime,
    end: datetime,
    level: Level | None,
    *,
    rollup_tz: ZoneInfo,
    dirty_hours: Sequence[datetime] = (),
    dirty_days: Sequence[datetime] = (),
) -> Plan:
    """Split [start, end) into pieces read from `level`'s rollup and pieces read raw."""
    if level is None:
        return Plan(None, [], [(start, end)])
    inner_lo = level_ceil(level, start, rollup_tz)
    inner_hi = level_floor(level, end, rollup_tz)
    if inner_lo >= inner_hi:
        return Plan(None, [], [(start, end)])
    if level.step is None:
        days = {local_day_floor(h, rollup_tz) for h in dirty_hours} | set(dirty_days)
        holes = [(d, local_day_next(d, rollup_tz)) for d in days]
    else:
        holes = [(h, h + HOUR) for h in dirty_hours]
    rollup = subtract([(inner_lo, inner_hi)], holes)
    raw = subtract([(start, end)], rollup)
    return Plan(level if rollup else None, rollup, raw)


# --- SQL ----------------------------------------------------------------------------------------------------

_AGG_SQL = {
    "count": "sum(cnt)::double precision",
    "sum": "sum(sum_v)",
    "avg": "sum(sum_v) / sum(cnt)::double precision",
    "min": "min(min_v)",
    "max": "max(max_v)",
    "first": "(array_agg(first_v ORDER BY first_ts, device_id))[1]",
    "last": "(array_agg(last_v ORDER BY last_ts DESC, device_id DESC))[1]",
}


class _Params:
    def __init__(self) -> None:
        self.values: list[object] = []

    def add(self, value: object, cast: str) -> str:
        self.values.append(value)
        return f"${len(self.values)}::{cast}"


def _bucket_sql(spec: BucketSpec, column: str, params: _Params) -> str:
    if isinstance(spec, FixedBuckets):
        width = params.add(spec.width, "interval")
        return f"date_bin({width}, {column}, {params.add(spec.origin, 'timestamptz')})"
    tz = params.add(spec.tz.key, "text")
    shift = params.add(spec.shift, "interval")
    unit = params.add(spec.unit, "text")
    return f"((date_trunc({unit}, ({column} AT TIME ZONE {tz}) - {shift}) + {shift}) AT TIME ZONE {tz})"


MAX_DIRECT_RANGES = 6
"""Up to this many time ranges are read by one branch each, with the bounds written into the branch."""


def _ranged(intervals: Sequence[Interval], column: str, select: str, params: _Params) -> list[str]:
    """`select` (ending in a WHERE clause) restricted to `intervals` of `column`.

    The bounds of each range are parameters of the statement itself, never values a join produces at run time:
    partition pruning (plain) and chunk exclusion (TimescaleDB) then happen when the statement is planned, so
    the planner looks only at the partitions or chunks in range. With bounds from a LATERAL join over an array
    of ranges (the earlier form) nothing can be excluded at plan time: every chunk of the hypertable is planned,
    and a compressed chunk costs about twice as much to plan as a plain one (it adds its compressed relation and
    the decompression paths) -- the 3-5x slowdown of rollup queries after compression was planning time, which
    EXPLAIN ANALYZE reports apart from the execution time. Many ranges (many dirty hours) still use the LATERAL
    form, bounded as a whole.
    """
    if len(intervals) <= MAX_DIRECT_RANGES:
        parts = []
        for lo, hi in intervals:
            lo_p, hi_p = params.add(lo, "timestamptz"), params.add(hi, "timestamptz")
            parts.append(f"{select} AND {column} >= {lo_p} AND {column} < {hi_p}")
        return parts
    lo_all = params.add(intervals[0][0], "timestamptz")
    hi_all = params.add(intervals[-1][1], "timestamptz")
    los = params.add([i[0] for i in intervals], "timestamptz[]")
    his = params.add([i[1] for i in intervals], "timestamptz[]")
    return [
        f"SELECT x.* FROM unnest({los}, {his}) AS w(lo, hi) CROSS JOIN LATERAL ("
        f"{select} AND {column} >= w.lo AND {column} < w.hi AND {column} >= {lo_all} AND {column} < {hi_all}"
        ") AS x"
    ]


def _keys(ids: Sequence[int], params: _Params) -> str:
    return f"series_id = ANY({params.add(list(ids), 'integer[]')})"


def aggregate_query(
    spec: BucketSpec,
    plan: Plan,
    *,
    layout: Layout,
    series: Series,
    agg: str,
    by_device: bool,
) -> tuple[str, list[object]]:
    """One statement returning (device_id, bucket, value) rows ordered by bucket (device_id NULL unless
    by_device)."""
    if agg not in _AGG_SQL:
        raise ValueError(f"agg must be one of {', '.join(AGGREGATES)}; got {agg!r}")
    if plan.level is None and len(plan.raw) == 1:
        return _raw_aggregate_query(spec, plan.raw[0], layout=layout, series=series, agg=agg, by_device=by_device)
    params = _Params()
    parts: list[str] = []
    rolled = set(series.rolled)
    unrolled = [i for i in series.ids if i not in rolled]
    raw_cols = (
        "SELECT series_id AS sid, ts AS k, 1::bigint AS cnt, value AS sum_v, value AS min_v, value AS max_v, "
        "value AS first_v, value AS last_v, ts AS first_ts, ts AS last_ts "
        f"FROM {layout.raw} WHERE "
    )
    if plan.level is not None and plan.rollup:
        if series.rolled:
            select = (
                "SELECT series_id AS sid, bucket AS k, cnt::bigint AS cnt, sum_v, min_v, max_v, first_v, last_v, "
                f"first_ts, last_ts FROM {layout.rollups[plan.level.name]} "
                f"WHERE {_keys(series.rolled, params)}"
            )
            parts += _ranged(plan.rollup, "bucket", select, params)
        if unrolled:
            parts += _ranged(plan.rollup, "ts", raw_cols + _keys(unrolled, params), params)
    if plan.raw and series.ids:
        parts += _ranged(plan.raw, "ts", raw_cols + _keys(series.ids, params), params)
    if not parts:
        return "SELECT NULL::text AS device_id, NULL::timestamptz AS b, NULL::float8 AS v WHERE false", []
    ids = params.add(list(series.ids), "integer[]")
    devices = params.add(list(series.devices), "text[]")
    source = f"parts JOIN unnest({ids}, {devices}) AS d(sid, device_id) USING (sid)"
    bucket = _bucket_sql(spec, "k", params)
    group = "device_id, b" if by_device else "b"
    select_device = "device_id" if by_device else "NULL::text AS device_id"
    sql = (
        f"WITH parts AS ({' UNION ALL '.join(parts)}) "
        f"SELECT {select_device}, {bucket} AS b, {_AGG_SQL[agg]} AS v "
        f"FROM {source} GROUP BY {group} ORDER BY {group}"
    )
    return sql, params.values


_RAW_AGG_SQL = {
    "count": "count(*)::double precision",
    "sum": "sum(r.value)",
    "avg": "avg(r.value)",
    "min": "min(r.value)",
    "max": "max(r.value)",
    "first": "(array_agg(r.value ORDER BY r.ts, d.device_id))[1]",
    "last": "(array_agg(r.value ORDER BY r.ts DESC, d.device_id DESC))[1]",
}


def _raw_aggregate_query(
    spec: BucketSpec, span: Interval, *, layout: Layout, series: Series, agg: str, by_device: bool
) -> tuple[str, list[object]]:
    """aggregate_query for a plan that reads no rollup (one raw range): the aggregate straight over the readings,
    without partial-aggregate rows, and without the device mapping when neither the grouping nor a first/last
    tie needs it. Same answers as the general form (avg is sum/count either way; ties of first/last go to the
    lowest/highest device id)."""
    params = _Params()
    ids = params.add(list(series.ids), "integer[]")
    lo, hi = params.add(span[0], "timestamptz"), params.add(span[1], "timestamptz")
    bucket = _bucket_sql(spec, "r.ts", params)
    need_device = by_device or (agg in ("first", "last") and len(series.ids) > 1)
    if need_device:
        devices = params.add(list(series.devices), "text[]")
        source = f"{layout.raw} AS r JOIN unnest({ids}, {devices}) AS d(sid, device_id) ON d.sid = r.series_id"
    else:
        source = f"{layout.raw} AS r"
    value = _RAW_AGG_SQL[agg] if need_device else _RAW_AGG_SQL[agg].replace(", d.device_id DESC", "").replace(
        ", d.device_id", ""
    )
    select_device = "d.device_id" if by_device else "NULL::text AS device_id"
    group = "d.device_id, b" if by_device else "b"
    sql = (
        f"SELECT {select_device}, {bucket} AS b, {value} AS v FROM {source} "
        f"WHERE r.series_id = ANY({ids}) AND r.ts >= {lo} AND r.ts < {hi} GROUP BY {group} ORDER BY {group}"
    )
    return sql, params.values


def raw_query(
    device_ids: Sequence[str], metric: str, start: datetime, end: datetime, limit: int | None
) -> tuple[str, list[object]]:
    sql = (
        "SELECT s.device_id, s.id AS sid, r.ts AS b, r.value AS v FROM series AS s "
        "JOIN series_readings AS r ON r.series_id = s.id "
        "WHERE s.device_id = ANY($1::text[]) AND s.metric = $2 AND r.ts >= $3 AND r.ts < $4 "
        "ORDER BY r.ts, s.device_id"
    )
    args: list[object] = [list(device_ids), metric, start, end]
    if limit is not None:
        sql += " LIMIT $5"
        args.append(limit)
    return sql, args


def raw_query_by_ids(
    ids: Sequence[int], device_ids: Sequence[str], start: datetime, end: datetime, limit: int | None
) -> tuple[str, list[object]]:
    """As raw_query, for series whose ids are known (`ids[i]` is the series of `device_ids[i]`). One series (the
    usual case) reads its primary key range in order: no join, no sort."""
    if len(ids) == 1:
        sql = (
            "SELECT $2::text AS device_id, ts AS b, value AS v FROM series_readings "
            "WHERE series_id = $1 AND ts >= $3 AND ts < $4 ORDER BY ts"
        )
        args: list[object] = [ids[0], device_ids[0], start, end]
        if limit is not None:
            sql += " LIMIT $5"
            args.append(limit)
        return sql, args
    sql = (
        "SELECT d.device_id, r.ts AS b, r.value AS v FROM series_readings AS r "
        "JOIN unnest($1::integer[], $2::text[]) AS d(sid, device_id) ON d.sid = r.series_id "
        "WHERE r.series_id = ANY($1::integer[]) AND r.ts >= $3 AND r.ts < $4 ORDER BY r.ts, d.device_id"
    )
    args = [list(ids), list(device_ids), start, end]
    if limit is not None:
        sql += " LIMIT $5"
        args.append(limit)
    return sql, args


# --- gap filling ------------------------------------------------------------------------------------------


def fill_series(
    buckets: Sequence[datetime], values: dict[datetime, float | None], fill: str | None, tz: ZoneInfo
) -> list[HistoryPoint]:
    """Turn aggregated values into points: only buckets with data (fill=None), or every bucket with gaps
    filled as None ('null'), 0 ('zero'), the previous value ('previous') or by linear interpolation in time
    between the neighbouring values ('linear'; gaps before the first or after the last value stay None)."""
    if fill not in FILLS:
        raise ValueError(f"fill must be one of None, 'null', 'previous', 'linear', 'zero'; got {fill!r}")
    if fill is None:
        return [HistoryPoint(b.astimezone(tz), values[b]) for b in buckets if b in values]
    series: list[float | None] = [values.get(b) for b in buckets]
    if fill == "zero":
        series = [0.0 if v is None else v for v in series]
    elif fill == "previous":
        last: float | None = None
        for i, v in enumerate(series):
            if v is None:
                series[i] = last
            else:
                last = v
    elif fill == "linear":
        known = [i for i, v in enumerate(series) if v is not None]
        for left, right in itertools.pairwise(known):
            if right - left < 2:
                continue
            t0, t1 = buckets[left], buckets[right]
            v0, v1 = series[left], series[right]
            assert v0 is not None and v1 is not None
            span = (t1 - t0).total_seconds()
            for i in range(left + 1, right):
                frac = (buckets[i] - t0).total_seconds() / span
                series[i] = v0 + (v1 - v0) * frac
    return [HistoryPoint(b.astimezone(tz), v) for b, v in zip(buckets, series, strict=True)]
