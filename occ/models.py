"""Value objects shared by every service, so a reading means the same thing to ingest, alerts and the map.

The ingest hot path moves readings as plain tuples (`ReadingRow`, the exact shape COPY writes) because a
frozen dataclass per reading costs more than the rest of the per-reading work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntFlag, StrEnum
from typing import Any, Literal, NamedTuple

from occ.errors import DecodeError

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


class RejectCode(StrEnum):
    """Why (part of) a message was not stored: a stable, bounded code for metrics labels, dead-letter rows and
    decisions (ingest re-checks the registry on UNKNOWN_DEVICE). The human text travels beside it in `Reject`;
    never decide anything by parsing that text. Values are stored in the database: never rename one."""

    PAYLOAD_TOO_LARGE = "payload_too_large"
    BAD_TOPIC = "bad_topic"
    """Outside the prefix, wrong number of levels, invalid kind/device id, unknown channel."""
    UNKNOWN_DEVICE = "unknown_device"
    KIND_MISMATCH = "kind_mismatch"
    """The topic's kind differs from the kind registered for the device."""
    NOT_UTF8 = "not_utf8"
    EMPTY_PAYLOAD = "empty_payload"
    MALFORMED_JSON = "malformed_json"
    NON_FINITE = "non_finite"
    """A NaN/Infinity literal or an overflowing number in the JSON."""
    BAD_SHAPE = "bad_shape"
    """Valid JSON of the wrong structure: wrong type for the payload, a record, 'values' or 'units'."""
    UNKNOWN_FIELD = "unknown_field"
    NO_READINGS = "no_readings"
    BAD_TIMESTAMP = "bad_timestamp"
    """Not ISO-8601 or epoch seconds/ms, or out of the representable range."""
    TIME_IN_FUTURE = "time_in_future"
    TIME_TOO_OLD = "time_too_old"
    DEVICE_MISMATCH = "device_mismatch"
    """The payload names another device than the topic (or gateway key)."""
    UNKNOWN_METRIC = "unknown_metric"
    METRIC_NOT_ALLOWED = "metric_not_allowed"
    BAD_UNIT = "bad_unit"
    BAD_VALUE = "bad_value"
    """Not a number, or not finite."""
    BAD_SENML = "bad_senml"
    """A SenML record breaks RFC 8428 or uses what OCC does not support (names, base fields, vs/vd/s)."""
    BAD_STATUS = "bad_status"
    BAD_EVENT = "bad_event"
    DECODER_ERROR = "decoder_error"
    """A bug in the decoder; the message is dead-lettered instead of stopping ingest."""
    STORE_REJECTED = "store_rejected"
    """The database refused a message that decoded (set by ingest, not by the decoder)."""


class Reject(NamedTuple):
    """One part of a message that was not stored: the code decides, the text explains (with ids and values)."""

    code: RejectCode
    text: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message (or part of one) that could not be stored as data, kept with its raw bytes, its primary
    reject code, the human reason, and the device named by its topic (None when the topic names none)."""

    received_at: datetime
    topic: str
    payload: bytes
    reason: str
    code: RejectCode
    device_id: str | None = None


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
    """What one MQTT message turned into. `rejects` lists the parts that were not stored (code and text,
    at most `codecs.MAX_REJECT_REASONS`); when it is non-empty the raw message also goes to dead letters, so
    nothing is lost even when most of it was good."""

    rows: list[ReadingRow] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    status: StatusChange | None = None
    rejects: list[Reject] = field(default_factory=list)
    unknown_devices: set[str] = field(default_factory=set)
    reject_counts: dict[RejectCode, int] = field(default_factory=dict)
    """Every reject by code, including those beyond the kept list (filled by the decoder)."""
    dropped_rejects: int = 0
    """Rejects counted in `reject_counts` whose text was not kept."""

    @property
    def stored(self) -> int:
        """Readings, events and status changes kept from this message."""
        return len(self.rows) + len(self.events) + (self.status is not None)

    def reject_text(self) -> str:
        """Every kept reason in one line, for the dead-letter row and logs."""
        text = "; ".join(r.text for r in self.rejects)
        if self.dropped_rejects:
            text += f"; … and {self.dropped_rejects} more rejects"
        return text
