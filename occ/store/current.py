"""Current state: the latest value per (device, metric) from the maintained `latest` table (never a scan of
readings), device status and its transitions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from occ.store.base import StoreBase
from occ.store.records import DeviceStatus, LatestValue


class CurrentState(StoreBase):
    """Latest values and device status."""

    async def latest(
        self, device_ids: Sequence[str] | None = None, metrics: Sequence[str] | None = None
    ) -> list[LatestValue]:
        """Latest value per (device, metric), from the maintained table (no scan of readings)."""
        conditions: list[str] = []
        args: list[object] = []
        if device_ids is not None:
            args.append(list(device_ids))
            conditions.append(f"device_id = ANY(${len(args)}::text[])")
        if metrics is not None:
            args.append(list(metrics))
            conditions.append(f"metric = ANY(${len(args)}::text[])")
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT device_id, metric, ts, value, quality, received_at FROM latest{where} "
                "ORDER BY device_id, metric",
                *args,
            )
        return [LatestValue(**dict(row)) for row in rows]

    async def device_status(self, device_ids: Sequence[str] | None = None) -> list[DeviceStatus]:
        async with self._connection() as conn:
            if device_ids is None:
                rows = await conn.fetch(
                    "SELECT device_id, status, since, updated_at FROM device_status ORDER BY device_id"
                )
            else:
                rows = await conn.fetch(
                    "SELECT device_id, status, since, updated_at FROM device_status "
                    "WHERE device_id = ANY($1::text[]) ORDER BY device_id",
                    list(device_ids),
                )
        return [DeviceStatus(**dict(row)) for row in rows]

    async def status_history(
        self, device_id: str, *, start: datetime | None = None, limit: int = 100
    ) -> list[tuple[datetime, str]]:
        """A device's status transitions, newest first."""
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT ts, status FROM device_status_history WHERE device_id = $1 "
                "AND ($2::timestamptz IS NULL OR ts >= $2) ORDER BY ts DESC LIMIT $3",
                device_id,
                start,
                limit,
            )
        return [(row["ts"], row["status"]) for row in rows]
