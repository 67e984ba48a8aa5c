"""occ.store.binary_copy: the binary COPY rows, key order, newest per series and the hours touched."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from occ.store.binary_copy import (
    HEADER,
    PG_EPOCH,
    TRAILER,
    SeriesColumns,
    epoch_us,
    key_prefix,
    latest_payload,
)
from occ.store.writes import BatchMarks, latest_and_marks_sql, write_readings_args

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def _us(t: datetime) -> int:
    return (t - PG_EPOCH) // timedelta(microseconds=1)


def _parse(payload: bytes) -> list[list[bytes | None]]:
    """A reference reader of PostgreSQL's binary COPY format (field values as raw bytes)."""
    assert payload.startswith(HEADER) and payload.endswith(TRAILER)
    pos, rows = len(HEADER), []
    while True:
        (fields,) = struct.unpack_from(">h", payload, pos)
        pos += 2
        if fields == -1:
            break
        row: list[bytes | None] = []
        for _ in range(fields):
            (size,) = struct.unpack_from(">i", payload, pos)
            pos += 4
            row.append(None if size == -1 else payload[pos : pos + size])
            pos += max(size, 0)
        rows.append(row)
    assert pos == len(payload)
    return rows


def _series_rows(payload: bytes) -> list[tuple[int, int, float, int]]:
    out = []
    for sid, ts, value, quality in _parse(payload):
        assert sid is not None and ts is not None and value is not None and quality is not None
        out.append((struct.unpack(">i", sid)[0], struct.unpack(">q", ts)[0], struct.unpack(">d", value)[0],
                    struct.unpack(">h", quality)[0]))
    return out


def test_payload_holds_every_reading_in_key_order() -> None:
    rows = [
        ("d2", "rain_mm", T0 + timedelta(seconds=5), 1.5, 0),
        ("d1", "rain_mm", T0 + timedelta(seconds=9), 2.5, 0),
        ("d1", "rain_mm", T0, -3.25, 1),
        ("d2", "rain_mm", T0, 0.0, 0),
    ]
    columns = SeriesColumns.build([7, 3, 3, 7], rows)
    assert _series_rows(columns.payload()) == [
        (3, _us(T0), -3.25, 1),
        (3, _us(T0 + timedelta(seconds=9)), 2.5, 0),
        (7, _us(T0), 0.0, 0),
        (7, _us(T0 + timedelta(seconds=5)), 1.5, 0),
    ]


@pytest.mark.parametrize("stamp", [
    datetime(2026, 11, 27, 1, 0, 0, 123_456, tzinfo=timezone(timedelta(hours=7))),
    datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(2200, 5, 5, 5, 5, 5, 1, tzinfo=UTC),  # beyond float precision: the exact path
    datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
])
def test_epoch_us_is_exact(stamp: datetime) -> None:
    assert epoch_us([stamp]).tolist() == [_us(stamp)]


@given(st.lists(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2300, 1, 1),
                             timezones=st.just(UTC)), max_size=50))
def test_epoch_us_matches_integer_arithmetic(stamps: list[datetime]) -> None:
    assert epoch_us(stamps).tolist() == [_us(t) for t in stamps]


def test_newest_per_series_takes_the_first_occurrence_of_a_tied_timestamp() -> None:
    rows = [
        ("a", "m", T0, 1.0, 0),
        ("a", "m", T0 + timedelta(seconds=1), 2.0, 0),  # newest of series 1, first of its tie
        ("b", "m", T0, 3.0, 0),  # only reading of series 2
        ("a", "m", T0 + timedelta(seconds=1), 4.0, 0),  # same key again: not the one kept
        ("c", "m", T0 - timedelta(days=1), 5.0, 0),
        ("c", "m", T0 - timedelta(days=2), 6.0, 0),
    ]
    columns = SeriesColumns.build([1, 1, 2, 1, 3, 3], rows)
    newest = columns.newest()
    assert columns.series_id[newest].tolist() == [1, 2, 3]
    assert columns.value[newest].tolist() == [2.0, 3.0, 5.0]


def test_newest_of_nothing() -> None:
    assert SeriesColumns.build([], []).newest().tolist() == []


def test_batch_marks_and_the_two_write_calls_carry_the_newest_reading_per_series() -> None:
    rows = [
        ("dev-1", "rain_mm", T0, 1.0, 0),
        ("dev-2", "water_level_m", T0 + timedelta(hours=1), 98.5, 1),
        ("dev-1", "rain_mm", T0 + timedelta(minutes=5), 2.5, 0),
    ]
    columns = SeriesColumns.build([1, 2, 1], rows)
    marks = BatchMarks.of(columns, known_series=100)
    assert marks.newest.tolist() == [1, 2]  # sorted: (1, 08:00), (1, 08:05), (2, 09:00)
    assert marks.hours == f'{{"{T0.isoformat()}","{(T0 + timedelta(hours=1)).isoformat()}"}}'
    assert marks.touched == "{1,2}"  # few of the 100 known series
    assert BatchMarks.of(columns, known_series=3).touched is None  # most series: the whole hour
    sql = latest_and_marks_sql(marks, T0)
    assert "FROM occ_latest_staging ORDER BY series_id" in sql and f"'{T0.isoformat()}'::timestamptz" in sql
    assert sql.endswith(f"SELECT unnest('{marks.hours}'::timestamptz[]), '{{1,2}}'::integer[]")
    series, ts, values, quality, newest, received_at, hours, touched = write_readings_args(columns, marks, T0)
    assert (series, values, quality, newest) == ("{1,1,2}", "{1.0,2.5,98.5}", "{0,0,1}", "{2,3}")  # 1-based
    assert ts == "{" + ",".join(str(_us(r[2])) for r in sorted(rows, key=lambda r: (r[0], r[2]))) + "}"
    assert (received_at, hours, touched) == (T0, marks.hours, "{1,2}")


def test_latest_payload_names_each_series() -> None:
    rows = [("dev-1", "rain_mm", T0, 1.0, 0), ("dev-2", "water_level_m", T0 + timedelta(hours=1), 98.5, 1)]
    columns = SeriesColumns.build([7, 9], rows)
    newest = columns.newest()
    prefixes = {7: key_prefix(7, "dev-1", "rain_mm"), 9: key_prefix(9, "dev-2", "water_level_m")}
    payload = latest_payload([prefixes[s] for s in columns.series_id[newest].tolist()], columns, newest)
    parsed = _parse(payload)
    assert [struct.unpack(">i", r[0] or b"")[0] for r in parsed] == [7, 9]
    assert [(r[1], r[2]) for r in parsed] == [(b"dev-1", b"rain_mm"), (b"dev-2", b"water_level_m")]
    assert [struct.unpack(">q", r[3] or b"")[0] for r in parsed] == [_us(T0), _us(T0 + timedelta(hours=1))]
    assert [struct.unpack(">d", r[4] or b"")[0] for r in parsed] == [1.0, 98.5]
    assert [struct.unpack(">h", r[5] or b"")[0] for r in parsed] == [0, 1]


def test_hours_live_span_and_backfill() -> None:
    live = [("d", "m", T0 + timedelta(minutes=50 * i), 1.0, 0) for i in range(3)]  # 08:00 .. 09:40
    assert SeriesColumns.build([1, 1, 1], live).hours(3) == [T0, T0 + timedelta(hours=1)]
    spread = [("d", "m", T0 - timedelta(days=3), 1.0, 0), ("d", "m", T0 + timedelta(minutes=5), 1.0, 0)]
    assert SeriesColumns.build([1, 1], spread).hours(3) == [T0 - timedelta(days=3), T0]
    assert SeriesColumns.build([], []).hours(3) == []
    assert np.all(SeriesColumns.build([1], live[:1]).ts == [_us(T0)])
