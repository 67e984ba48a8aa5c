"""Query-string parsing for the REST API: every bad value becomes a ValueError naming the parameter (→ 400)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from multidict import MultiMapping

MAX_LIMIT = 1000
MAX_OFFSET = 10_000


def text(query: MultiMapping[str], name: str, default: str | None = None) -> str | None:
    value = query.get(name)
    if value is None or value == "":
        return default
    return value


def names(query: MultiMapping[str], name: str) -> list[str] | None:
    """A list given as repeated parameters and/or comma-separated values."""
    values = [v for raw in query.getall(name, []) for v in raw.split(",") if v]
    return values or None


def integer(query: MultiMapping[str], name: str, default: int, *, lo: int, hi: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def page(query: MultiMapping[str], default_limit: int = 100) -> tuple[int, int]:
    return (integer(query, "limit", default_limit, lo=1, hi=MAX_LIMIT),
            integer(query, "offset", 0, lo=0, hi=MAX_OFFSET))


def when(query: MultiMapping[str], name: str, tz: ZoneInfo) -> datetime | None:
    """ISO 8601; a time without an offset is read in the site time zone."""
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00").replace(" ", "+") if "T" in raw else raw)
    except ValueError:
        raise ValueError(f"{name} must be an ISO 8601 time such as 2026-11-27T07:00:00+07:00, got {raw!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value


def time_range(query: MultiMapping[str], tz: ZoneInfo, default: timedelta) -> tuple[datetime, datetime]:
    end = when(query, "end", tz) or datetime.now(UTC)
    start = when(query, "start", tz) or end - default
    if start >= end:
        raise ValueError("start must be before end")
    return start, end


def zone(query: MultiMapping[str], default: ZoneInfo) -> ZoneInfo:
    raw = query.get("tz")
    if not raw:
        return default
    try:
        return ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"tz must be an IANA time zone such as Asia/Ho_Chi_Minh, got {raw!r}") from None


def choice(query: MultiMapping[str], name: str, options: tuple[str, ...], default: str) -> str:
    value = query.get(name) or default
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(options)}; got {value!r}")
    return value
