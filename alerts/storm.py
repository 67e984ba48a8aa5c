"""Storm control: silences, recurring maintenance windows, inhibition and grouping into incidents.

None of these hide an episode: it is still stored and shown with `muted` set (or its incident id); they only
decide who gets paged. Silences come from the database (operators), maintenance windows from rule files or the
database, both evaluated in the site time zone (Asia/Ho_Chi_Minh, no daylight saving).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from alerts.messages import render
from alerts.model import IncidentChange
from alerts.rules import GroupSpec, Inhibit, Maintenance, Matcher


@dataclass(frozen=True, slots=True)
class LabelMatch:
    """One `{label, op, value}` matcher of a silence; ops `=`, `!=`, `=~`, `!~` (full-match regex)."""

    label: str
    op: str
    value: str
    pattern: re.Pattern[str] | None = None

    @classmethod
    def build(cls, raw: Mapping[str, Any]) -> LabelMatch:
        op = str(raw.get("op", "="))
        value = str(raw["value"])
        return cls(str(raw["label"]), op, value, re.compile(value) if op in ("=~", "!~") else None)

    def matches(self, labels: Mapping[str, Any]) -> bool:
        actual = labels.get(self.label)
        text = "" if actual is None else str(actual)
        if self.op == "=":
            return text == self.value
        if self.op == "!=":
            return text != self.value
        assert self.pattern is not None
        hit = self.pattern.fullmatch(text) is not None
        return hit if self.op == "=~" else not hit


@dataclass(frozen=True, slots=True)
class SilenceRule:
    id: int
    matchers: tuple[LabelMatch, ...]
    starts: float
    ends: float

    def covers(self, labels: Mapping[str, Any], now: float) -> bool:
        return self.starts <= now < self.ends and all(m.matches(labels) for m in self.matchers)


@dataclass(frozen=True, slots=True)
class Window:
    """A recurring maintenance window: weekdays (ISO) × local start time × duration."""

    name: str
    match: Matcher | tuple[LabelMatch, ...]
    weekdays: tuple[int, ...]
    start: time
    duration_s: float

    def matches(self, labels: Mapping[str, Any]) -> bool:
        if isinstance(self.match, Matcher):
            return self.match.matches(labels)
        return all(m.matches(labels) for m in self.match)

    def active(self, local: datetime) -> bool:
        # A window that started on an earlier day may still run (e.g. 23:00 for 2h, or several days).
        days_back = int(self.duration_s // 86400) + 1
        for back in range(days_back + 1):
            day = (local - timedelta(days=back)).date()
            if day.isoweekday() not in self.weekdays:
                continue
            start = datetime.combine(day, self.start, tzinfo=local.tzinfo)
            if start <= local < start + timedelta(seconds=self.duration_s):
                return True
        return False


def windows_from_rules(items: Iterable[Maintenance]) -> list[Window]:
    return [Window(m.name, m.match, m.weekdays, m.start, m.duration_s) for m in items]


@dataclass(slots=True)
class Muting:
    """Decides `muted` for an episode's labels at a time: silenced, maintenance (inhibition and flapping are
    decided by the engine, which knows the other episodes)."""

    timezone: str = "Asia/Ho_Chi_Minh"
    silences: list[SilenceRule] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    _tz: ZoneInfo | None = None

    def reason(self, labels: Mapping[str, Any], now: float) -> str | None:
        for s in self.silences:
            if s.covers(labels, now):
                return "silenced"
        if self.windows:
            if self._tz is None:
                self._tz = ZoneInfo(self.timezone)
            local = datetime.fromtimestamp(now, self._tz)
            for w in self.windows:
                if w.matches(labels) and w.active(local):
                    return "maintenance"
        return None


def inhibited(rules: Sequence[Inhibit], target: Mapping[str, Any],
              sources: Iterable[Mapping[str, Any]]) -> bool:
    """True when an open source episode inhibits `target` (source/target matchers, equal labels)."""
    relevant = [r for r in rules if r.target.matches(target)]
    if not relevant:
        return False
    for src in sources:
        if src is target:
            continue
        for r in relevant:
            if r.source.matches(src) and all(src.get(k) == target.get(k) for k in r.equal):
                if src.get("rule") == target.get("rule"):
                    continue
                return True
    return False


class Incidents:
    """Grouping: the open episodes of a grouped rule form one incident per area ("Hà Giang city: 30 cameras
    offline" is one incident, not 30 pages). Fed member joins/leaves; yields incident changes."""

    def __init__(self) -> None:
        self.members: dict[str, dict[str, set[str]]] = {}  # group key → member (device) → its fingerprints
        self.opened: dict[str, float] = {}
        self.peak: dict[str, int] = {}
        self.severity: dict[str, int] = {}

    def update(self, key: str, rule: str, area: str | None, spec: GroupSpec, fingerprint: str, joined: bool,
               severity: int, ts: float, area_name: str, member: str | None = None) -> IncidentChange | None:
        """`member` (the device) counts once however many of the group's rules fire for it."""
        members = self.members.setdefault(key, {})
        before = len(members)
        who = member or fingerprint
        if joined:
            members.setdefault(who, set()).add(fingerprint)
        elif who in members:
            members[who].discard(fingerprint)
            if not members[who]:
                del members[who]
        count = len(members)
        if count == before and not (joined and severity > self.severity.get(key, 0)):
            return None
        new = before == 0 and count > 0
        if new:
            self.opened[key] = ts
            self.peak[key] = 0
            self.severity[key] = 0
        if joined:
            self.severity[key] = max(self.severity.get(key, 0), severity)
        self.peak[key] = max(self.peak.get(key, 0), count)
        context = {"area_name": area_name, "area": area or "", "count": count, "rule": rule}
        change = IncidentChange(
            group_key=key, rule=spec.name or rule, area=area, state="open" if count else "resolved",
            severity=max(1, self.severity.get(key, 1)), members=count, peak_members=self.peak[key],
            title_vi=render(spec.title_vi, context, vietnamese=True),
            title_en=render(spec.title_en, context, vietnamese=False),
            opened_at=self.opened.get(key, ts), ts=ts, announce=new or count == 0,
        )
        if count == 0:
            self.members.pop(key, None)
            self.opened.pop(key, None)
        return change

    def dump(self) -> dict[str, Any]:
        return {k: {"m": {who: sorted(fps) for who, fps in v.items()}, "o": self.opened.get(k),
                    "p": self.peak.get(k, 0), "s": self.severity.get(k, 0)} for k, v in self.members.items()}

    def load(self, data: Mapping[str, Any]) -> None:
        for k, v in data.items():
            self.members[k] = {who: set(fps) for who, fps in v["m"].items()}
            if v.get("o") is not None:
                self.opened[k] = v["o"]
            self.peak[k] = v.get("p", 0)
            self.severity[k] = v.get("s", 0)
