"""Durations, start times, timestamps and the pacer (real time, accelerated, fast, never in the future)."""

from __future__ import annotations

import orjson
import pytest

from simulators.clock import Pacer
from simulators.timeutil import (
    iso_local,
    iso_local_many,
    local_hours,
    local_weekday,
    parse_duration,
    parse_start,
    parse_timestamp,
)


def test_durations() -> None:
    assert parse_duration("90s") == 90
    assert parse_duration("20m") == 1200
    assert parse_duration("1d6h") == 30 * 3600
    assert parse_duration("1.5h") == 5400
    assert parse_duration(42) == 42
    for bad in ("", "5x", "-3h", "h"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_timestamps_are_local_time_with_offset() -> None:
    t = parse_timestamp("2026-07-14T06:30:00")  # no offset: Asia/Ho_Chi_Minh
    assert t == parse_timestamp("2026-07-13T23:30:00+00:00")
    assert iso_local(t) == "2026-07-14T06:30:00+07:00"
    assert iso_local_many([t, t + 61]) == ["2026-07-14T06:30:00+07:00", "2026-07-14T06:31:01+07:00"]
    assert float(local_hours(t)) == pytest.approx(6.5)
    assert local_weekday(parse_timestamp("2026-11-23T06:00:00")) == 0  # Monday


def test_start_forms() -> None:
    now = 1_800_000_000.0
    assert parse_start("now", now) == now
    assert parse_start("-2d", now) == now - 2 * 86400
    assert parse_start("6h ago", now) == now - 6 * 3600
    assert parse_start("2026-07-14T00:00:00+07:00", now) == parse_timestamp("2026-07-14T00:00:00+07:00")


class FakeTime:
    def __init__(self, wall: float) -> None:
        self.wall = wall
        self.mono = 100.0

    def advance(self, s: float) -> None:
        self.wall += s
        self.mono += s


def test_pacer_speed_and_catch_up() -> None:
    clock = FakeTime(wall=1_000_000.0)
    start = clock.wall - 3600.0  # one hour in the past
    pacer = Pacer(start, 60.0, wall=lambda: clock.wall, monotonic=lambda: clock.mono)
    assert pacer.delay(start) == pytest.approx(0.0)
    assert pacer.delay(start + 600) == pytest.approx(10.0)  # 10 simulated minutes = 10 s at 60×
    clock.advance(61.0)  # sim reached start + 3660 s: one minute in the future
    # a message stamped now + 60 s must wait for the wall clock, not for the speed-up
    assert pacer.delay(clock.wall + 60.0) == pytest.approx(60.0)
    assert pacer.caught_up
    future = Pacer(start, 60.0, allow_future=True, wall=lambda: clock.wall, monotonic=lambda: clock.mono)
    assert future.delay(start + 600) == pytest.approx(10.0)


def test_pacer_fast_never_waits_for_the_past() -> None:
    clock = FakeTime(wall=1_000_000.0)
    pacer = Pacer(clock.wall - 7 * 86400, None, wall=lambda: clock.wall, monotonic=lambda: clock.mono)
    assert pacer.delay(clock.wall - 86400) <= 0
    assert pacer.delay(clock.wall + 5) == pytest.approx(5.0)


def test_iso_is_valid_json_string() -> None:
    assert orjson.loads(orjson.dumps({"ts": iso_local(0)}))["ts"] == "1970-01-01T07:00:00+07:00"
