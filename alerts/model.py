"""Value objects of the alerts core: what leaves the engine (transitions, incident changes) and the states.

Times inside the core are epoch seconds (float): the hot path compares numbers, never datetimes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

State = Literal["ok", "pending", "firing", "recovering", "resolved"]
OPEN: Final = frozenset(("firing", "recovering"))
ACTIVE: Final = frozenset(("pending", "firing", "recovering"))

SEVERITY_COLOURS: Final = {1: "#7fd3f7", 2: "#fff176", 3: "#ff9800", 4: "#e53935", 5: "#8e24aa"}
"""Disaster-risk levels 1..5 of Decision 18/2021/QĐ-TTg: light blue, light yellow, orange, red, purple."""

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")
_DURATION_FULL = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|d|h|m|s))+")
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """Seconds from `90s`, `20m`, `1d6h`, `1.5h` or a number of seconds; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 10m, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration cannot be negative: {value!r}")
        return float(value)
    text = str(value).replace(" ", "")
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    if not _DURATION_FULL.fullmatch(text):
        raise ValueError(f"invalid duration {value!r} (examples: 90s, 20m, 6h, 1d12h)")
    return sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(text))


def fmt_duration(seconds: float) -> str:
    """The shortest of `3h`, `90m`, `45s` that is exact."""
    s = round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size and s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


def to_datetime(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of one alert episode, as the engine decided it. `ts` is event time (epoch seconds)."""

    fingerprint: str
    rule: str
    kind: str
    device_id: str | None
    area: str | None
    labels: dict[str, Any]
    from_state: State
    state: State
    from_severity: int | None
    severity: int
    peak_severity: int
    level: str
    value: float | None
    threshold: float | None
    message_vi: str
    message_en: str
    started_at: float
    fired_at: float | None
    ts: float
    late: bool
    muted: str | None
    flapping: bool
    reason: str
    group_key: str | None = None
    announce: bool = False
    """True when this transition should reach people (webhooks): a new, on-time, unmuted, ungrouped alert
    or a rise in severity. The wall still receives every transition."""
    device_name: str = ""

    @property
    def resolved_at(self) -> float | None:
        return self.ts if self.state == "resolved" else None


@dataclass(frozen=True, slots=True)
class IncidentChange:
    """An incident (a group of episodes, e.g. one area's offline cameras) opened, changed or resolved."""

    group_key: str
    rule: str
    area: str | None
    state: Literal["open", "resolved"]
    severity: int
    members: int
    peak_members: int
    title_vi: str
    title_en: str
    opened_at: float
    ts: float
    announce: bool = False


@dataclass(slots=True)
class Output:
    """What one engine step produced; the adapter commits it, then publishes, then acknowledges."""

    transitions: list[Transition] = field(default_factory=list)
    incidents: list[IncidentChange] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.transitions or self.incidents)
