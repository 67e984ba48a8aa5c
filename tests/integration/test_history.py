"""History queries, rollups and partition maintenance against a real PostgreSQL (plain path).

Expected values come from a small reference computed in Python over the raw readings, so the raw path, the
rollup path and any mix of the two must all give the same answers.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from occ.store import HistoryPoint, Store, rollups

VN = ZoneInfo("Asia/Ho_Chi_Minh")
T0 = datetime(2026, 10, 5, 0, 0, tzinfo=UTC)  # a Monday; well before any "now" used below
MAINTAIN_AT = T0 + timedelta(days=30)
HOUR_ = timedelta(hours=1)


def series(device: str, start: datetime, hours: int, *, step_min: int = 5, gap: tuple[int, int] | None = None):
    """Readings every step_min minutes for `hours`, optionally with a gap [from_hour, to_hour)."""
    rows = []
    for i in range(hours * 60 // step_min):
        ts = start + timedelta(minutes=i * step_min)
        hour = i * step_min // 60
        if gap and gap[0] <= hour < gap[1]:
            continue
        value = float((i * 7 + len(device)) % 13) + 0.25
        rows.append((device, "rain_mm", ts, value, 0))
    return rows


def reference(rows, floor: Callable[[datetime], datetime], agg: str, start: datetime, end: datetime):
    groups: dict[datetime, list[tuple[datetime, str, float]]] = defaultdict(list)
    for device, _, ts, value, _ in rows:
        if start <= ts < end:
            groups[floor(ts)].append((ts, device, value))
    out = {}
    for bucket, items in sorted(groups.items()):
        values = [v for _, _, v in items]
        ordered = sorted(items)
        out[bucket] = {
            "avg": sum(values) / len(values),
            "sum": sum(values),
            "min": min(values),
            "max": max(values),
            "count": float(len(values)),
            "first": ordered[0][2],
            "last": sorted(items, key=lambda x: (x[0], x[1]))[-1][2],
        }[agg]
    return out


def utc_floor(step: timedelta) -> Callable[[datetime], datetime]:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return lambda t: epoch + ((t - epoch) // step) * step


def as_dict(points: list[HistoryPoint]) -> dict[datetime, float | None]:
    return {p.bucket: p.value for p in points}


def assert_same(actual: dict[datetime, float | None], expected: dict[datetime, float | None]) -> None:
    assert list(actual) == list(expected)
    for key, value in expected.items():
        got = actual[key]
        if value is None or got is None:
            assert got == value, key
        else:
            assert math.isclose(got, value, rel_tol=1e-9, abs_tol=1e-9), (key, got, value)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    s = await Store.connect(database_url, timescaledb="off", pool_size=3)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def loaded(store: Store) -> tuple[Store, list]:
    rows = series("st1", T0, 72, gap=(30, 33)) + series("st22", T0, 72, step_min=10)
    await store.write_batch(rows, received_at=T0)
    return store, rows


# --- buckets, aggregates, gap filling ------------------------------------------------------------------------


@pytest.mark.parametrize("agg", ["avg", "min", "max", "sum", "count", "first", "last"])
async def test_fixed_buckets_every_aggregate(loaded: tuple[Store, list], agg: str) -> None:
    store, rows = loaded
    start, end = T0 + timedelta(minutes=7), T0 + timedelta(hours=5, minutes=3)
    got = await store.history("st1", "rain_mm", start, end, bucket=timedelta(minutes=15), agg=agg)
    st1 = [r for r in rows if r[0] == "st1"]
    assert_same(as_dict(got), reference(st1, utc_floor(timedelta(minutes=15)), agg, start, end))
    assert all(p.bucket.tzinfo == VN for p in got)


async def test_gap_filling(loaded: tuple[Store, list]) -> None:
    store, _ = loaded
    start, end = T0 + timedelta(hours=28), T0 + timedelta(hours=36)
    kwargs = {"bucket": timedelta(hours=1), "agg": "count"}
    plain = await store.history("st1", "rain_mm", start, end, **kwargs)  # type: ignore[arg-type]
    assert [p.bucket for p in plain] == [start + timedelta(hours=h) for h in (0, 1, 5, 6, 7)]
    nulls = await store.history("st1", "rain_mm", start, end, fill="null", **kwargs)  # type: ignore[arg-type]
    assert [p.value for p in nulls] == [12, 12, None, None, None, 12, 12, 12]
    zeros = await store.history("st1", "rain_mm", start, end, fill="zero", **kwargs)  # type: ignore[arg-type]
    assert [p.value for p in zeros] == [12, 12, 0, 0, 0, 12, 12, 12]
    sums = {p.bucket: p.value for p in await store.history("st1", "rain_mm", start, end, bucket="1h", agg="sum")}
    before, after = sums[start + timedelta(hours=1)], sums[start + timedelta(hours=5)]
    prev = await store.history("st1", "rain_mm", start, end, bucket="1h", agg="sum", fill="previous")
    assert [p.value for p in prev][1:6] == [before, before, before, before, after]
    linear = await store.history("st1", "rain_mm", start, end, bucket="1h", agg="sum", fill="linear")
    assert before is not None and after is not None
    step = (after - before) / 4
    for k, point in enumerate(linear[1:6]):
        assert point.value == pytest.approx(before + step * k)
    leading = await store.history(
        "st1", "rain_mm", T0 - timedelta(hours=2), T0 + timedelta(hours=1), bucket="1h", agg="sum", fill="linear"
    )
    assert [p.value is None for p in leading] == [True, True, False]


async def test_hydrological_day_in_vietnam_time(store: Store) -> None:
    def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
        return datetime(year, month, day, hour, minute, second, tzinfo=VN)

    readings = [
        (local(2026, 10, 20, 6, 30), 1.0),
        (local(2026, 10, 20, 6, 59), 2.0),
        (local(2026, 10, 20, 7, 0), 4.0),
        (local(2026, 10, 20, 23, 30), 8.0),
        (local(2026, 10, 21, 0, 30), 16.0),
        (local(2026, 10, 21, 6, 59, 59), 32.0),
        (local(2026, 10, 21, 7, 0), 64.0),
    ]
    await store.write_batch([("st1", "rain_mm", ts, v, 0) for ts, v in readings], received_at=T0)
    start, end = local(2026, 10, 19, 7), local(2026, 10, 22, 7)

    async def check() -> None:
        hydro = await store.history("st1", "rain_mm", start, end, bucket="day", agg="sum", day_start_hour=7)
        assert hydro == [
            HistoryPoint(local(2026, 10, 19, 7), 3.0),
            HistoryPoint(local(2026, 10, 20, 7), 60.0),
            HistoryPoint(local(2026, 10, 21, 7), 64.0),
        ]
        assert hydro[0].bucket.utcoffset() == timedelta(hours=7)
        calendar = await store.history("st1", "rain_mm", start, end, bucket="day", agg="sum")
        assert calendar == [HistoryPoint(local(2026, 10, 20), 15.0), HistoryPoint(local(2026, 10, 21), 112.0)]
        fixed = await store.history("st1", "rain_mm", start, end, bucket=timedelta(days=1), agg="sum", day_start_hour=7)
        assert fixed == hydro
        utc_days = await store.history("st1", "rain_mm", start, end, bucket="day", agg="sum", tz="UTC")
        assert [p.value for p in utc_days] == [3.0, 60.0, 64.0]  # UTC midnight is 07:00 in Vietnam

    await check()
    report = await store.maintain(now=MAINTAIN_AT)
    assert report.hours_refreshed > 0 and report.days_refreshed > 0
    await check()  # the same answers from the rollups


async def test_week_and_month_buckets(loaded: tuple[Store, list]) -> None:
    store, rows = loaded
    start, end = datetime(2026, 9, 1, tzinfo=VN), datetime(2026, 11, 1, tzinfo=VN)
    month = await store.history("st1", "rain_mm", start, end, bucket="month", agg="count", fill="null")
    assert [p.bucket for p in month] == [datetime(2026, 9, 1, tzinfo=VN), datetime(2026, 10, 1, tzinfo=VN)]
    assert [p.value for p in month] == [None, float(sum(1 for r in rows if r[0] == "st1"))]
    week = await store.history("st1", "rain_mm", start, end, bucket="week", agg="count")
    # T0 is Monday 00:00 UTC = 07:00 local, so the first local week (from Monday 00:00) holds it all.
    assert [p.bucket for p in week] == [datetime(2026, 10, 5, tzinfo=VN)]


async def test_several_devices(loaded: tuple[Store, list]) -> None:
    store, rows = loaded
    start, end = T0, T0 + timedelta(hours=6)
    together = await store.history(["st1", "st22"], "rain_mm", start, end, bucket="1h", agg="avg")
    assert_same(as_dict(together), reference(rows, utc_floor(timedelta(hours=1)), "avg", start, end))
    apart = await store.history_by_device(["st1", "st22", "nobody"], "rain_mm", start, end, bucket="1h", agg="max")
    assert set(apart) == {"st1", "st22", "nobody"}
    assert apart["nobody"] == []
    st22 = [r for r in rows if r[0] == "st22"]
    assert_same(as_dict(apart["st22"]), reference(st22, utc_floor(timedelta(hours=1)), "max", start, end))


async def test_raw_history(loaded: tuple[Store, list]) -> None:
    store, rows = loaded
    start, end = T0 + timedelta(minutes=10), T0 + timedelta(minutes=40)
    raw = await store.history("st1", "rain_mm", start, end, bucket="raw")
    expected = [(r[2], r[3]) for r in rows if r[0] == "st1" and start <= r[2] < end]
    assert [(p.bucket, p.value) for p in raw] == expected
    assert len(await store.history("st1", "rain_mm", start, end, bucket="raw", limit=2)) == 2


async def test_history_validation(store: Store) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.history("st1", "rain_mm", datetime(2026, 1, 1), T0)
    with pytest.raises(ValueError, match="before end"):
        await store.history("st1", "rain_mm", T0, T0)
    with pytest.raises(ValueError, match="agg"):
        await store.history("st1", "rain_mm", T0, T0 + timedelta(hours=1), agg="median")
    with pytest.raises(ValueError, match="fill"):
        await store.history("st1", "rain_mm", T0, T0 + timedelta(hours=1), fill="spline")
    with pytest.raises(ValueError, match="bucket"):
        await store.history("st1", "rain_mm", T0, T0 + timedelta(hours=1), bucket="fortnight")
    with pytest.raises(ValueError, match="buckets"):
        await store.history("st1", "rain_mm", T0, T0 + timedelta(days=400), bucket="1m", fill="null")


# --- rollups -------------------------------------------------------------------------------------------------

SPECS: list[tuple[timedelta | str, int]] = [
    (timedelta(minutes=5), 0),  # 1-minute rollups
    (timedelta(minutes=30), 0),
    (timedelta(hours=1), 0),  # 1-hour rollups
    (timedelta(hours=3), 7),
    ("day", 7),  # hydrological day: 1-hour rollups
    ("day", 0),  # local day: 1-day rollups
    ("week", 0),
]


async def snapshot(store: Store, start: datetime, end: datetime) -> dict:
    out = {}
    for bucket, hour in SPECS:
        for agg in ("avg", "sum", "min", "max", "count", "first", "last"):
            points = await store.history(
                ["st1", "st22"], "rain_mm", start, end, bucket=bucket, agg=agg, day_start_hour=hour
            )
            out[(bucket, hour, agg)] = as_dict(points)
    return out


async def assert_rollups_match_raw(url: str) -> None:
    """Every rollup row equals the aggregate of the raw readings it covers, and there is one exactly for the
    series whose report interval asks for that level (series.level: 10+ readings per bucket)."""
    conn = await asyncpg.connect(url)
    try:
        for table, bucket, rank in (
            ("readings_1m", "date_trunc('minute', ts, 'UTC')", 0),
            ("readings_1h", "date_trunc('hour', ts, 'UTC')", 1),
            ("readings_1d", "date_trunc('day', ts, 'Asia/Ho_Chi_Minh')", 2),
        ):
            diff = await conn.fetch(
                f"""
                WITH raw AS (
                    SELECT device_id, metric, {bucket} AS bucket, count(*) AS cnt, sum(value) AS sum_v,
                           min(value) AS min_v, max(value) AS max_v,
                           (array_agg(value ORDER BY ts))[1] AS first_v,
                           (array_agg(value ORDER BY ts DESC))[1] AS last_v,
                           min(ts) AS first_ts, max(ts) AS last_ts
                    FROM readings JOIN series AS s USING (device_id, metric) WHERE s.level <= {rank}
                    GROUP BY 1, 2, 3)
                SELECT * FROM raw FULL JOIN {table} r USING (device_id, metric, bucket)
                WHERE raw.cnt IS DISTINCT FROM r.cnt OR abs(raw.sum_v - r.sum_v) > 1e-9
                   OR raw.min_v IS DISTINCT FROM r.min_v OR raw.max_v IS DISTINCT FROM r.max_v
                   OR raw.first_v IS DISTINCT FROM r.first_v OR raw.last_v IS DISTINCT FROM r.last_v
                   OR abs(r.avg_v - raw.sum_v / raw.cnt) > 1e-9
                   OR raw.first_ts IS DISTINCT FROM r.first_ts OR raw.last_ts IS DISTINCT FROM r.last_ts
                """
            )
            assert diff == [], (table, diff[:3])
    finally:
        await conn.close()


async def test_rollups_give_the_same_answers_as_raw(loaded: tuple[Store, list], database_url: str) -> None:
    store, _ = loaded
    start, end = T0 - timedelta(hours=1, minutes=13), T0 + timedelta(days=3, hours=2, minutes=7)
    before = await snapshot(store, start, end)
    report = await store.maintain(now=MAINTAIN_AT)
    assert report.hours_refreshed == 72 and report.days_refreshed == 4 and report.pending_hours == 0
    await assert_rollups_match_raw(database_url)
    after = await snapshot(store, start, end)
    for key, expected in before.items():
        try:
            assert_same(after[key], expected)
        except AssertionError as exc:
            raise AssertionError(f"{key}: {exc}") from None


async def test_series_are_classified_in_paced_chunks(
    store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Classification goes through the series a chunk at a time (migration 0042), past series that cannot be
    classified yet (one reading), and sleeps between chunks as `busy_share` asks; the result is the same as in one
    go. A deadline that has passed stops after one chunk; the next run goes on from the start."""
    monkeypatch.setattr(rollups, "CLASSIFY_CHUNK", 3)
    sleeps: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded_sleep(delay: float) -> None:
        sleeps.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(rollups.asyncio, "sleep", recorded_sleep)
    rows = [row for i in range(8) for row in series(f"k{i}", T0, 2, step_min=10)]
    rows += [(f"k{i}x", "rain_mm", T0, 1.0, 0) for i in range(4)]  # one reading: not yet; ids k0 k0x k1 k1x ...
    await store.write_batch(rows, received_at=T0)
    conn = await asyncpg.connect(database_url)
    try:
        first = await rollups.classify_series(conn, deadline=0.0)  # deadline passed: one chunk only
        assert first == 2 and sleeps == []  # k0 and k1 (k0x has one reading)
        left = await conn.fetchval("SELECT count(*) FROM series WHERE level IS NULL")
        rest = await rollups.classify_series(conn, deadline=float("inf"), busy_share=0.25)
        assert first + rest == 8
        assert len(sleeps) == -(-left // 3) and all(s >= 0 for s in sleeps)  # a pause after each chunk
        levels = dict(await conn.fetch("SELECT device_id, level FROM series"))
        assert {d: v for d, v in levels.items() if not d.endswith("x")} == {f"k{i}": 2 for i in range(8)}
        assert all(levels[f"k{i}x"] is None for i in range(4))
        assert await rollups.classify_series(conn, deadline=float("inf")) == 0
    finally:
        await conn.close()


async def test_rollup_levels_follow_each_series_report_interval(store: Store, database_url: str) -> None:
    """A series keeps only the rollups whose buckets hold 10+ of its readings (issue 12): a 5-second series
    every level, a 10-minute one daily only, a 3-hourly one none. Queries mixing them give the raw answer."""
    fast = [("fast", "rain_mm", T0 + timedelta(seconds=5 * i), float(i % 17), 0) for i in range(2 * 720)]
    slow = series("slow", T0, 48, step_min=10)
    rare = [("rare", "rain_mm", T0 + timedelta(hours=3 * i), float(i), 0) for i in range(16)]
    rows = fast + slow + rare
    await store.write_batch(rows, received_at=T0)
    report = await store.maintain(now=MAINTAIN_AT)
    assert report.series_classified == 3 and report.pending_hours == 0 and report.lag_s == 0
    conn = await asyncpg.connect(database_url)
    try:
        levels = dict(await conn.fetch("SELECT device_id, level FROM series"))
        assert levels == {"fast": 0, "slow": 2, "rare": 3}
        for table, devices in (("readings_1m", {"fast"}), ("readings_1h", {"fast"}),
                               ("readings_1d", {"fast", "slow"})):  # fmt: skip
            stored = {r["device_id"] for r in await conn.fetch(f"SELECT DISTINCT device_id FROM {table}")}
            assert stored == devices, table
    finally:
        await conn.close()
    await assert_rollups_match_raw(database_url)
    start, end = T0 - timedelta(minutes=3), T0 + timedelta(days=2, minutes=7)
    names = ["fast", "slow", "rare"]
    for bucket, floor in ((timedelta(minutes=1), utc_floor(timedelta(minutes=1))),
                          (timedelta(hours=1), utc_floor(HOUR_))):  # fmt: skip
        for agg in ("avg", "count", "first", "last"):
            got = await store.history(names, "rain_mm", start, end, bucket=bucket, agg=agg)
            assert_same(as_dict(got), reference(rows, floor, agg, start, end))
    for device in names:
        got = await store.history(device, "rain_mm", start, end, bucket="day", agg="sum", tz=VN)
        mine = [r for r in rows if r[0] == device]
        days = reference(
            mine, lambda t: datetime.combine(t.astimezone(VN).date(), datetime.min.time(), VN), "sum", start, end
        )
        assert_same(as_dict(got), days)


async def test_rollup_and_raw_pieces_give_the_answer_of_raw_alone(
    loaded: tuple[Store, list], database_url: str
) -> None:
    """The statement that mixes rollup pieces with raw ones (a few dirty hours: one branch per range; many: the
    LATERAL form) answers exactly as the same query over raw readings only."""
    from occ.store import history as hist

    store, _ = loaded
    await store.maintain(now=MAINTAIN_AT)
    start, end = T0 - timedelta(minutes=13), T0 + timedelta(days=3, hours=2)
    conn = await asyncpg.connect(database_url)
    try:
        sid = await conn.fetchval("SELECT id FROM series WHERE device_id = 'st1'")
        # Hours as if written since the refresh (read raw): a few ranges (one branch each), then many (LATERAL).
        few = [T0 + timedelta(hours=h) for h in (5, 6, 9)]
        many = [T0 + timedelta(hours=2 * h) for h in range(12)]
        cases = ((timedelta(hours=1), hist.LEVEL_1H, few), ("day", hist.LEVEL_1D, few),
                 (timedelta(hours=1), hist.LEVEL_1H, many))  # fmt: skip
        series = hist.Series(["st1"], [sid], [sid], "rain_mm")
        for bucket, level, dirty in cases:
            spec = hist.bucket_spec(bucket, tz=VN)
            assert spec is not None
            plan = hist.plan_ranges(start, end, level, rollup_tz=VN, dirty_hours=dirty)
            assert len(plan.raw) > 1 and plan.rollup
            raw_only = hist.plan_ranges(start, end, None, rollup_tz=VN)
            for agg in ("avg", "first", "last", "count"):
                answers = []
                for p in (plan, raw_only):
                    sql, args = hist.aggregate_query(
                        spec, p, layout=hist.SERIES, series=series, agg=agg, by_device=True
                    )
                    answers.append([(r[0], r[1], round(r[2], 9)) for r in await conn.fetch(sql, *args)])
                assert answers[0] == answers[1] and answers[0], (bucket, agg)
    finally:
        await conn.close()


async def test_rollups_are_used_when_clean_and_raw_when_dirty(loaded: tuple[Store, list], database_url: str) -> None:
    store, _ = loaded
    await store.maintain(now=MAINTAIN_AT)
    hour = T0 + timedelta(hours=10)
    window = (hour - timedelta(hours=1), hour + timedelta(hours=2))
    honest = as_dict(await store.history("st1", "rain_mm", *window, bucket="1h", agg="sum"))
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE series_1h SET sum_v = 999 WHERE bucket = $1 AND series_id = "
            "(SELECT id FROM series WHERE device_id = 'st1' AND metric = 'rain_mm')",
            hour,
        )
    finally:
        await conn.close()
    tampered = as_dict(await store.history("st1", "rain_mm", *window, bucket="1h", agg="sum"))
    assert tampered[hour] == 999  # proof that the clean hour was read from the rollup
    # A late reading for that hour makes it dirty: history reads it raw (correct), maintenance recomputes it.
    late = ("st1", "rain_mm", hour + timedelta(minutes=2, seconds=30), 100.0, 0)
    await store.write_batch([late], received_at=MAINTAIN_AT)
    expected = dict(honest)
    expected[hour] = honest[hour] + 100.0  # type: ignore[operator]
    assert_same(as_dict(await store.history("st1", "rain_mm", *window, bucket="1h", agg="sum")), expected)
    day = await store.history("st1", "rain_mm", T0, T0 + timedelta(days=1), bucket="day", agg="count", tz="UTC")
    assert day[0].value == 24 * 12 + 1
    report = await store.maintain(now=MAINTAIN_AT)
    assert (report.hours_refreshed, report.days_refreshed) == (1, 1)
    assert_same(as_dict(await store.history("st1", "rain_mm", *window, bucket="1h", agg="sum")), expected)
    await assert_rollups_match_raw(database_url)


async def test_recent_hours_wait_for_their_grace_period(store: Store) -> None:
    now = datetime.now(UTC)
    # The current hour is never refreshed (it is still being written), nor the one just closed until it is
    # `rollup_grace` (2 minutes) old.
    await store.write_batch([("st1", "rain_mm", now - timedelta(minutes=1), 1.0, 0)], received_at=now)
    report = await store.maintain(now=now)
    assert report.hours_refreshed == 0 and report.pending_hours >= 1
    later = await store.maintain(now=now + timedelta(hours=2))
    assert later.hours_refreshed >= 1 and later.pending_hours == 0


async def test_a_day_is_rolled_up_once_it_is_over(store: Store) -> None:
    """Recomputing the current day at every maintenance would read its readings over and over (issue 12): a
    local day is rolled up once, after it ends (plus the grace); until then history reads it raw."""
    await store.write_batch([("st1", "rain_mm", T0 + timedelta(hours=10, minutes=m), 1.0, 0) for m in (0, 30)],
                            received_at=T0)  # fmt: skip
    day_end = datetime(2026, 10, 6, tzinfo=VN)  # the reading is at 17:00 on 5 October, Vietnam time
    report = await store.maintain(now=T0 + timedelta(hours=12))
    assert (report.hours_refreshed, report.days_refreshed) == (1, 0)
    day = await store.history("st1", "rain_mm", T0, T0 + timedelta(days=1), bucket="day", agg="sum", tz=VN)
    assert [p.value for p in day] == [2.0]
    report = await store.maintain(now=day_end + timedelta(minutes=1))
    assert report.days_refreshed == 0
    report = await store.maintain(now=day_end + timedelta(minutes=3))
    assert report.days_refreshed == 1


async def test_only_one_maintenance_at_a_time(store: Store, database_url: str) -> None:
    from occ.store.maintenance import MAINTENANCE_LOCK_KEY

    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MAINTENANCE_LOCK_KEY)
        assert (await store.maintain()).skipped
        await conn.execute("SELECT pg_advisory_unlock($1)", MAINTENANCE_LOCK_KEY)
        assert not (await store.maintain()).skipped
    finally:
        await conn.close()


# --- partitions ----------------------------------------------------------------------------------------------


async def test_partitions_are_created_ahead(store: Store, database_url: str) -> None:
    now = datetime.now(UTC)
    conn = await asyncpg.connect(database_url)
    try:
        for days in (-7, 0, 7, 14, 21, 28):
            covered = await conn.fetchval(
                "SELECT count(*) FROM readings_partitions WHERE lo <= $1 AND hi > $1", now + timedelta(days=days)
            )
            assert covered == 1, days
        attached = await conn.fetchval("SELECT count(*) FROM pg_inherits WHERE inhparent = 'series_readings'::regclass")
        assert attached == await conn.fetchval("SELECT count(*) FROM readings_partitions") + 1  # + default
        await store.write_batch([("st1", "rain_mm", now, 1.0, 0)], received_at=now)
        assert await conn.fetchval("SELECT count(*) FROM series_readings_default") == 0
        # Later maintenance keeps the window moving.
        report = await store.maintain(now=now + timedelta(days=14))
        assert report.partitions_created == 2
    finally:
        await conn.close()


async def test_far_backfill_lands_in_the_default_partition_then_moves(store: Store, database_url: str) -> None:
    now = datetime.now(UTC)
    old = now - timedelta(days=300)
    batch = [("st1", "rain_mm", old, 5.0, 0), ("st1", "rain_mm", now, 6.0, 0)]
    result = await store.write_batch(batch, received_at=now)
    assert result.inserted == 2
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM series_readings_default") == 1
        assert (await store.status())["default_partition_rows"] == 1
        # Idempotency holds for rows in the default partition too.
        again = await store.write_batch([("st1", "rain_mm", old, 5.0, 0)], received_at=now)
        assert (again.inserted, again.duplicates) == (0, 1)
        report = await store.maintain(now=now)
        assert report.default_rows_relocated == 1
        assert await conn.fetchval("SELECT count(*) FROM series_readings_default") == 0
        home = await conn.fetchval("SELECT tableoid::regclass::text FROM series_readings WHERE ts = $1", old)
        lo, hi = await conn.fetchrow("SELECT lo, hi FROM readings_partitions WHERE name = $1", home)
        assert lo <= old < hi
        again = await store.write_batch([("st1", "rain_mm", old, 5.0, 0)], received_at=now)
        assert (again.inserted, again.duplicates) == (0, 1)
        raw = await store.history("st1", "rain_mm", old, old + timedelta(seconds=1), bucket="raw")
        assert [p.value for p in raw] == [5.0]
    finally:
        await conn.close()


async def test_retention_drops_old_partitions(store: Store, database_url: str) -> None:
    now = datetime.now(UTC)
    old = now - timedelta(days=100)
    await store.write_batch([("st1", "rain_mm", old, 5.0, 0), ("st1", "rain_mm", now, 6.0, 0)], received_at=now)
    await store.maintain(now=now)  # moves the old row into a partition of its own
    await store.configure(retention_days=30)
    report = await store.maintain(now=now)
    assert report.partitions_dropped == 1  # the old row's partition
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM readings") == 1
        assert await conn.fetchval("SELECT min(lo) FROM readings_partitions") > now - timedelta(days=38)
    finally:
        await conn.close()


async def test_daily_rollups_complete_while_data_keeps_arriving(store: Store, database_url: str) -> None:
    """Issue 9 item 7: with a reading and a maintenance run every 10 minutes (ingest maintains every 5), a local
    day is rolled up a few minutes after it ends, although the current hour is always dirty."""
    start = datetime(2026, 10, 20, 22, 0, tzinfo=VN)  # two hours before local midnight
    await store.write_batch(series("st1", start - timedelta(hours=22), 22, step_min=10), received_at=start)
    completed: dict[datetime, datetime] = {}
    for step in range(0, 3 * 6):  # 22:00 .. 00:50, data arriving all the time
        now = start + timedelta(minutes=10 * step)
        await store.write_batch([("st1", "rain_mm", now - timedelta(seconds=30), 1.0, 0)], received_at=now)
        report = await store.maintain(now=now)
        if report.days_refreshed:
            for row in await _rows(database_url, "SELECT bucket FROM readings_1d ORDER BY bucket"):
                completed.setdefault(row["bucket"], now)
    day = datetime(2026, 10, 20, tzinfo=VN)
    # Rolled up once its last hour is `rollup_grace` (2 min) past its end: at the first maintenance after 00:02.
    assert completed == {day: datetime(2026, 10, 21, 0, 10, tzinfo=VN)}
    [row] = await _rows(database_url, "SELECT bucket, cnt FROM readings_1d")
    assert row["cnt"] == 22 * 6 + 13  # every reading of the day: the backfill and 21:59:30 .. 23:59:30


async def _rows(url: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


async def test_every_maintenance_makes_progress_on_hours_and_days(store: Store) -> None:
    """A maintenance run whose time budget is used up by a backlog of hours must still roll up the days that are
    ready: otherwise, while data keeps arriving faster than hours are refreshed, readings_1d stays empty."""
    now = datetime(2026, 10, 23, 12, 0, tzinfo=VN)
    await store.write_batch(series("st1", datetime(2026, 10, 20, tzinfo=VN), 72, step_min=30), received_at=now)
    days_done = 0
    for run in range(4):
        now += timedelta(minutes=5)
        await store.write_batch([("st1", "rain_mm", now - timedelta(seconds=1), 1.0, 0)], received_at=now)
        report = await store.maintain(now=now, budget_s=0)  # the budget is always already spent
        assert report.hours_refreshed > 0 or report.pending_hours <= 1, (run, report)
        days_done += report.days_refreshed
    assert days_done == 3  # 20, 21 and 22 October; the 23rd is still being written
