"""Time helpers for the simulator: durations, start times and fast vectorised ISO-8601 timestamps.

All simulated time is epoch seconds (float). Local time is Asia/Ho_Chi_Minh, a fixed UTC+07:00 with no daylight
saving, so the offset is a constant rather than a tz database lookup.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone

import numpy as np

LOCAL_OFFSET_S = 7 * 3600
LOCAL_TZ = timezone(timedelta(seconds=LOCAL_OFFSET_S))
DAY_S = 86400.0

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|d|h|m|s)")
_DURATION_FULL = re.compile(r"^\s*(?:\d+(?:\.\d+)?\s*(?:ms|d|h|m|s)\s*)+$")


def parse_duration(text: str | float | int) -> float:
    """Seconds from "90s", "20m", "1d6h", "1.5h" or a bare number of seconds; raises ValueError."""
    if isinstance(text, bool):
        raise ValueError(f"expected a duration, got {text!r}")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError(f"duration must not be negative: {text!r}")
        return float(text)
    s = str(text).strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", s):
        return float(s)
    if not _DURATION_FULL.match(s):
        raise ValueError(f"invalid duration {text!r} (examples: 90s, 20m, 6h, 1d12h)")
    factor = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY_S}
    return sum(float(n) * factor[u] for n, u in _DURATION_PART.findall(s))


def parse_timestamp(text: str) -> float:
    """Epoch seconds from ISO-8601; a timestamp without offset is local time (+07:00)."""
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"invalid timestamp {text!r} (example: 2026-07-14T06:00:00+07:00)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=LOCAL_TZ)
    return dt.timestamp()


def parse_start(text: str, now: float) -> float:
    """`--start`: "now", a relative "-2d" / "6h ago" (before now), or an ISO-8601 timestamp."""
    s = text.strip()
    if s == "now":
        return now
    if s.startswith("-"):
        return now - parse_duration(s[1:])
    if s.endswith(" ago"):
        return now - parse_duration(s[:-4])
    return parse_timestamp(s)


def local_hours(t: np.ndarray | float) -> np.ndarray:
    """Local hour of day in [0, 24) as floats."""
    return ((np.asarray(t, dtype=np.float64) + LOCAL_OFFSET_S) % DAY_S) / 3600.0


def local_day_index(t: float) -> int:
    """Days since the epoch in local time (Monday-based weekday is (index + 3) % 7)."""
    return int((t + LOCAL_OFFSET_S) // DAY_S)


def local_weekday(t: float) -> int:
    """0 = Monday … 6 = Sunday, in local time."""
    return (local_day_index(t) + 3) % 7


def day_of_year(t: float) -> float:
    """Fractional local day of year (0 = 1 January)."""
    dt = datetime.fromtimestamp(t, LOCAL_TZ)
    start = datetime(dt.year, 1, 1, tzinfo=LOCAL_TZ)
    return (dt - start).total_seconds() / DAY_S


def iso_local(t: float) -> str:
    """One ISO-8601 timestamp with the +07:00 offset, to the second."""
    return datetime.fromtimestamp(round(t), LOCAL_TZ).isoformat()


def iso_local_many(ts: np.ndarray | Sequence[float]) -> list[str]:
    """Vectorised `iso_local` (numpy formats the shifted UTC value; the offset is appended)."""
    secs = np.round(np.asarray(ts, dtype=np.float64)).astype(np.int64) + LOCAL_OFFSET_S
    text = np.datetime_as_string(secs.astype("datetime64[s]"), unit="s")
    return [s + "+07:00" for s in text.tolist()]


def utc_iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()
