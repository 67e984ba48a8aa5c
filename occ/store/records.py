"""Value objects returned by the store."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple

Mode = Literal["timescale", "plain"]


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one `Store.write_batch` committed."""

    inserted: int
    """Readings stored by this batch."""
    duplicates: int
    """Readings not stored because the same (device, metric, ts) was already stored or came twice."""
    events_inserted: int = 0
    dead_lettered: int = 0
    status_changes: int = 0
    """Device status transitions recorded (a repeated or older status is not a transition)."""


@dataclass(frozen=True, slots=True)
class LatestValue:
    """The newest reading of one (device, metric), from the maintained `latest` table."""

    device_id: str
    metric: str
    ts: datetime
    value: float
    quality: int
    received_at: datetime


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    device_id: str
    status: Literal["online", "offline"]
    since: datetime
    updated_at: datetime


class HistoryPoint(NamedTuple):
    """One bucket of a history series: `(bucket_start, value)`; value is None for an unfilled gap."""

    bucket: datetime
    value: float | None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    device_id: str
    ts: datetime
    type: str
    data: dict[str, Any]
    received_at: datetime


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    id: int
    received_at: datetime
    topic: str
    payload: bytes
    reason: str
    code: str | None
    """A `RejectCode` value; None for rows stored before codes existed."""
    device_id: str | None


@dataclass(slots=True)
class MaintenanceReport:
    """What one `Store.maintain()` run did; `skipped` when another process held the maintenance lock."""

    skipped: bool = False
    partitions_created: int = 0
    partitions_dropped: int = 0
    default_rows_relocated: int = 0
    hours_refreshed: int = 0
    days_refreshed: int = 0
    rollup_rows_deleted: int = 0
    pending_hours: int = 0
    """Dirty hours left for a later run (too recent, or the time budget ran out)."""
    errors: list[str] = field(default_factory=list)
