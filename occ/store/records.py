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
    pending_days: int = 0
    """Days waiting for their hours (today, until it ends), or for the next run."""
    elapsed_s: float = 0.0
    lag_s: float = 0.0
    """Rollup lag: how long the oldest pending hour has been due (its end plus the grace); 0 when maintenance
    keeps up. Ingest's rate is sustainable while this stays near 0."""
    series_classified: int = 0
    """Plain path: series whose rollup level was decided in this run."""
    errors: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        """A report for people (`occ db maintain`), one fact per line."""
        if self.skipped:
            return "maintenance skipped: another process is running it right now (try again in a minute)"
        lines = [
            f"maintenance done in {self.elapsed_s:.1f} s",
            f"  rollups: {_count(self.hours_refreshed, 'hour')} and {_count(self.days_refreshed, 'day')} refreshed; "
            f"{_count(self.pending_hours, 'hour')} and {_count(self.pending_days, 'day')} pending "
            "(not yet complete, or left for the next run)",
        ]
        if self.partitions_created or self.partitions_dropped or self.default_rows_relocated:
            lines.append(
                f"  partitions: {self.partitions_created} created, {self.partitions_dropped} dropped past retention, "
                f"{_count(self.default_rows_relocated, 'row')} moved out of the default partition"
            )
        if self.rollup_rows_deleted:
            lines.append(f"  retention: {_count(self.rollup_rows_deleted, 'expired 1-minute rollup row')} deleted")
        lines += [f"  postponed: {error}" for error in self.errors]
        return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
