"""The device registry: devices imported from the catalog (provisioned) or seen on the bus first
(unprovisioned), and a cheap version stamp that lets ingest notice changes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from occ.models import Device
from occ.store.base import StoreBase, rowcount

# Sorted by id, so two writers registering overlapping devices lock them in the same order (no deadlock).
REGISTER_UNPROVISIONED = (
    "INSERT INTO devices (id, kind, provisioned) "
    "SELECT i, k, false FROM unnest($1::text[], $2::text[]) AS u(i, k) ORDER BY i "
    "ON CONFLICT (id) DO NOTHING"
)


class DeviceRegistry(StoreBase):
    """Devices: upsert, list, look up, register the unprovisioned."""

    async def upsert_devices(self, devices: Sequence[Device]) -> int:
        """Insert or update devices (e.g. from the catalog); returns how many rows were inserted or changed.
        An upserted device is provisioned."""
        if not devices:
            return 0
        by_id = {d.id: d for d in devices}
        ordered = [by_id[i] for i in sorted(by_id)]
        async with self._connection() as conn:
            status = await conn.execute(
                "INSERT INTO devices AS d (id, kind, name, lat, lon, area, attributes, provisioned) "
                "SELECT i, k, n, la, lo, a, at, p FROM unnest($1::text[], $2::text[], $3::text[], "
                "$4::float8[], $5::float8[], $6::text[], $7::jsonb[], $8::bool[]) "
                "AS u(i, k, n, la, lo, a, at, p) ORDER BY i "
                "ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, name = excluded.name, "
                "lat = excluded.lat, lon = excluded.lon, area = excluded.area, "
                "attributes = excluded.attributes, provisioned = excluded.provisioned, updated_at = now() "
                "WHERE (d.kind, d.name, d.lat, d.lon, d.area, d.attributes, d.provisioned) IS DISTINCT FROM "
                "(excluded.kind, excluded.name, excluded.lat, excluded.lon, excluded.area, "
                "excluded.attributes, excluded.provisioned)",
                [d.id for d in ordered],
                [d.kind for d in ordered],
                [d.name for d in ordered],
                [d.lat for d in ordered],
                [d.lon for d in ordered],
                [d.area for d in ordered],
                [d.attributes for d in ordered],
                [d.provisioned for d in ordered],
            )
        return rowcount(status)

    async def list_devices(
        self, kind: str | None = None, area: str | None = None, *, provisioned: bool | None = None
    ) -> list[Device]:
        conditions: list[str] = []
        args: list[object] = []
        for column, value in (("kind", kind), ("area", area), ("provisioned", provisioned)):
            if value is not None:
                args.append(value)
                conditions.append(f"{column} = ${len(args)}")
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT id, kind, name, lat, lon, area, attributes, provisioned "
                f"FROM devices{where} ORDER BY id",
                *args,
            )
        return [Device(**dict(row)) for row in rows]

    async def devices_version(self) -> tuple[int, datetime | None]:
        """(count, newest updated_at) of the registry: a cheap way for ingest to see that devices changed."""
        async with self._connection() as conn:
            row = await conn.fetchrow("SELECT count(*) AS n, max(updated_at) AS newest FROM devices")
        assert row is not None
        return int(row["n"]), row["newest"]

    async def get_device(self, device_id: str) -> Device | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "SELECT id, kind, name, lat, lon, area, attributes, provisioned FROM devices WHERE id = $1",
                device_id,
            )
        return Device(**dict(row)) if row else None

    async def remove_devices(self, device_ids: Sequence[str]) -> list[str]:
        """Unregister devices; returns the ids that were registered. Their readings, events and status history
        stay (history is evidence); their `latest` values and current status go, so live views forget them.
        Ingest stops accepting them at its next registry refresh (with `auto_register`, a removed device that
        keeps publishing comes back as unprovisioned)."""
        ids = sorted(set(device_ids))
        if not ids:
            return []
        # Tables in write_batch's lock order (latest, device_status, devices): no deadlock with ingest.
        async with self._connection() as conn, conn.transaction():
            await conn.execute("DELETE FROM latest WHERE device_id = ANY($1::text[])", ids)
            await conn.execute("DELETE FROM device_status WHERE device_id = ANY($1::text[])", ids)
            rows = await conn.fetch("DELETE FROM devices WHERE id = ANY($1::text[]) RETURNING id", ids)
        return sorted(r["id"] for r in rows)

    async def register_unprovisioned(self, ids_with_kind: Mapping[str, str]) -> int:
        """Register devices seen on the bus but not in the catalog (provisioned=false); existing devices are
        left untouched. Returns how many were new."""
        if not ids_with_kind:
            return 0
        ids = sorted(ids_with_kind)
        async with self._connection() as conn:
            status = await conn.execute(REGISTER_UNPROVISIONED, ids, [ids_with_kind[i] for i in ids])
        return rowcount(status)
