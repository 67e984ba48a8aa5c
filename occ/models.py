"""Value objects shared by every service, so a reading means the same thing to ingest, alerts and the map.

The ingest hot path moves readings as plain tuples (`ReadingRow`, the exact shape COPY writes) because a
frozen dataclass per reading costs more than the rest of the per-reading work; `Reading` is the named form
for APIs and tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntFlag
from typing import Any, Literal, NewType

from occ.errors import DecodeError

DeviceId = NewType("DeviceId", str)
MetricName = NewType("MetricName", str)

ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
CHANNELS = ("telemetry", "event", "status")
Channel = Literal["telemetry", "event", "status"]


class Quality(IntFlag):
    """Quality flags stored with each reading; a flagged reading is stored, never silently dropped."""

    GOOD = 0
    OUT_OF_RANGE = 1
    """Outside the catalog's plausible range for the metric."""
    UNKNOWN_METRIC = 2
    """Not in the catalog (stored as sent when the catalog allows extra metrics)."""


# (device_id, metric, ts, value, quality): the column order of the readings table and of COPY.
ReadingRow = tuple[str, str, datetime, float, int]


@dataclass(frozen=True, slots=True)
class Reading:
    device_id: str
    metric: str
    ts: datetime
    value: float
    quality: int = Quality.GOOD

    def row(self) -> ReadingRow:
        return (self.device_id, self.metric, self.ts, self.value, int(self.quality))

    @classmethod
    def from_row(cls, row: ReadingRow) -> Reading:
        return cls(*row)


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed device topic: `{prefix}/{kind}/{device_id}/{channel}`; kind `gateway` carries many devices."""

    kind: str
    device_id: str
    channel: Channel

    @property
    def is_gateway(self) -> bool:
        return self.kind == "gateway"

    @classmethod
    def parse(cls, topic: str, prefix: str = "occ/v1") -> Topic:
        if not topic.startswith(prefix + "/"):
            raise DecodeError(f"topic outside {prefix}/", topic=topic)
        parts = topic[len(prefix) + 1 :].split("/")
        if len(parts) != 3:
            raise DecodeError("topic must be {prefix}/{kind}/{device_id}/{channel}", topic=topic)
        kind, device_id, channel = parts
        if not ID_PATTERN.fullmatch(kind):
            raise DecodeError(f"invalid kind {kind!r} in topic", topic=topic)
        if not ID_PATTERN.fullmatch(device_id):
            raise DecodeError(f"invalid device id {device_id!r} in topic", topic=topic)
        if channel not in CHANNELS:
            raise DecodeError(f"unknown channel {channel!r} (expected telemetry, event or status)", topic=topic)
        return cls(kind, device_id, channel)  # type: ignore[arg-type]

    def render(self, prefix: str = "occ/v1") -> str:
        return f"{prefix}/{self.kind}/{self.device_id}/{self.channel}"


@dataclass(frozen=True, slots=True)
class Event:
    """A discrete device event (camera incident, vehicle detection, tamper); idempotent on (device, ts, type)."""

    device_id: str
    ts: datetime
    type: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StatusChange:
    """`online`/`offline` from a device's status topic (offline is usually its Last Will)."""

    device_id: str
    status: Literal["online", "offline"]
    ts: datetime


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message (or part of one) that could not be stored as data, kept with its raw bytes and reason."""

    received_at: datetime
    topic: str
    payload: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class Device:
    """A registered device. `attributes` holds station data such as flood alarm levels and report interval."""

    id: str
    kind: str
    name: str = ""
    lat: float | None = None
    lon: float | None = None
    area: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    provisioned: bool = True

    @property
    def report_interval_s(self) -> float | None:
        value = self.attributes.get("report_interval_s")
        return float(value) if value is not None else None


@dataclass(slots=True)
class Decoded:
    """What one MQTT message turned into. `rejects` lists reasons for parts that were not stored; when it is
    non-empty the raw message also goes to dead letters, so nothing is lost even when most of it was good."""

    rows: list[ReadingRow] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    status: StatusChange | None = None
    rejects: list[str] = field(default_factory=list)
    unknown_devices: set[str] = field(default_factory=set)
