"""Administration: storage settings shared by every process, periodic maintenance (partitions, retention,
rollups) and the status report of `occ db status`."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from occ.store import maintenance, rollups
from occ.store.base import StoreBase, require_aware
from occ.store.records import MaintenanceReport
from occ.store.settings import StoreSettings

EXACT_COUNT_MAX_BYTES = 64 * 1024 * 1024
"""`status()` counts rows exactly in tables up to this size (indexes included), and estimates larger ones."""


class Administration(StoreBase):
    """configure(), maintain(), status()."""

    async def configure(self, settings: StoreSettings | None = None, **overrides: Any) -> None:
        """Store new storage settings for every process and apply them (TimescaleDB: chunk interval and
        policies; plain: used by the next maintain()). Keywords replace fields of `settings` (default: this
        store's settings)."""
        new = StoreSettings.build(settings or self.settings, **overrides)
        async with self._connection() as conn:
            await maintenance.write_settings(conn, new, timescale=self._mode == "timescale")

    async def maintain(
        self, *, now: datetime | None = None, budget_s: float = 30.0, busy_share: float = 1.0
    ) -> MaintenanceReport:
        """Periodic housekeeping; call every few minutes from one or more processes (only one runs at a time).
        `busy_share` < 1 paces the rollup work (occ/store/rollups.py `pace`) for a process that shares the machine
        with live ingest.

        Plain: partitions ahead, rows out of the default partition, partitions past retention dropped.
        TimescaleDB: the background policies compress and drop chunks. Both: 1-minute rollups past retention
        deleted, rollups of dirty (series, hour) and (series, day) pairs recomputed.
        """
        now = now or datetime.now(UTC)
        require_aware("now", now)
        report = MaintenanceReport()
        started = time.monotonic()
        deadline = started + budget_s
        async with self._connection() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", maintenance.MAINTENANCE_LOCK_KEY):
                report.skipped = True
                return report
            try:
                settings = self.settings.with_stored(await maintenance.read_settings(conn))
                cutoff = now - timedelta(days=settings.retention_days)
                if self._mode == "plain":
                    parts = await maintenance.maintain_partitions(
                        conn, now=now, settings=settings, errors=report.errors
                    )
                    report.partitions_created = parts.created
                    report.partitions_dropped = parts.dropped
                    report.default_rows_relocated = parts.relocated
                    report.rollup_rows_deleted = parts.rollup_rows_deleted
                else:  # TimescaleDB: its policies compress and drop raw chunks; 1-minute rollups go with them
                    report.rollup_rows_deleted = await maintenance.expire_minute_rollups(conn, cutoff)
                refreshed = await rollups.refresh(
                    conn,
                    rollup_tz=self._rollup_tz,
                    now=now,
                    grace=self.settings.rollup_grace,
                    retention_cutoff=cutoff,
                    deadline=deadline,
                    busy_share=busy_share,
                )
                report.hours_refreshed = refreshed.hours
                report.days_refreshed = refreshed.days
                report.pending_hours = refreshed.pending_hours
                report.pending_days = refreshed.pending_days
                report.lag_s = refreshed.lag_s
                report.series_classified = refreshed.classified
            finally:
                # The pool does not reset sessions (connection.keep_session): a lock left held here would stop
                # maintenance in every process until this connection closed. If the unlock cannot run (a second
                # cancellation, a broken connection), end the session, which releases it.
                try:
                    if not conn.is_closed():
                        await conn.execute("SELECT pg_advisory_unlock($1)", maintenance.MAINTENANCE_LOCK_KEY)
                except BaseException:
                    conn.terminate()
                    raise
        report.elapsed_s = time.monotonic() - started
        return report

    async def status(self) -> dict[str, Any]:
        """Everything `occ db status` shows: mode, versions, migrations, settings, table sizes and rows (`rows`,
        exact when `exact`, else the planner's estimate), oldest/newest reading, pending rollup work."""
        async with self._connection() as conn:
            info: dict[str, Any] = {
                "mode": self._mode,
                "server_version": await conn.fetchval("SHOW server_version"),
                "timescaledb_version": self.timescaledb_version,
                "rollup_timezone": self.rollup_timezone,
            }
            info["migrations"] = [
                dict(row)
                for row in await conn.fetch(
                    "SELECT version, name, variant, applied_at FROM occ_schema_migrations ORDER BY version"
                )
            ]
            info["settings"] = await maintenance.read_settings(conn)
            info["tables"] = await self._table_sizes(conn)
            info["newest_reading"] = await conn.fetchval("SELECT max(ts) FROM latest")
            info["oldest_reading"] = await self._oldest_reading(conn)
            info["pending_rollup_hours"] = await conn.fetchval("SELECT count(DISTINCT bucket) FROM rollup_dirty")
            info["pending_rollup_days"] = await conn.fetchval("SELECT count(*) FROM rollup_dirty_days")
            if self._mode == "plain":
                info["partitions"] = await conn.fetchval("SELECT count(*) FROM readings_partitions")
                info["default_partition_rows"] = await conn.fetchval("SELECT count(*) FROM series_readings_default")
        return info

    async def _table_sizes(self, conn: asyncpg.Connection) -> dict[str, dict[str, int]]:
        """{table: {bytes, rows_estimate, rows, exact}}; names are fixed identifiers, never user input."""
        plain_tables = (
            "devices", "latest", "device_status", "device_status_history", "events", "dead_letters"
        )
        sizes: dict[str, dict[str, int]] = {}

        async def relation(name: str, table: str) -> None:
            row = await conn.fetchrow(
                "SELECT pg_total_relation_size(c.oid) AS bytes, greatest(c.reltuples, 0)::bigint AS rows "
                "FROM pg_class c WHERE c.oid = to_regclass($1)",
                table,
            )
            if row:
                sizes[name] = {"bytes": row["bytes"], "rows_estimate": row["rows"]}

        for name in plain_tables:
            await relation(name, name)
        # Reported under the names the views keep (readings is series_readings: its partitions on plain, its
        # chunks on TimescaleDB, compressed or not).
        if self._mode == "plain":
            row = await conn.fetchrow(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint AS bytes, "
                "coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint AS rows FROM pg_class c "
                "WHERE c.oid = 'series_readings'::regclass OR c.oid IN "
                "(SELECT inhrelid FROM pg_inherits WHERE inhparent = 'series_readings'::regclass)"
            )
        else:
            row = await conn.fetchrow(
                "SELECT hypertable_size('series_readings') AS bytes, "
                "approximate_row_count('series_readings') AS rows"
            )
        assert row is not None
        sizes["readings"] = {"bytes": row["bytes"] or 0, "rows_estimate": row["rows"] or 0}
        for name, table in (
            ("readings_1m", "series_1m"),
            ("readings_1h", "series_1h"),
            ("readings_1d", "series_1d"),
            ("series", "series"),
        ):
            await relation(name, table)
        # Estimates are 0 until ANALYZE runs (a fresh import of 135 devices showed "~0 rows"): count small tables
        # exactly; a scan of at most EXACT_COUNT_MAX_BYTES is quick.
        for name, size in sizes.items():
            exact = size["bytes"] <= EXACT_COUNT_MAX_BYTES
            size["rows"] = int(await conn.fetchval(f"SELECT count(*) FROM {name}")) if exact else size["rows_estimate"]
            size["exact"] = exact
        return sizes

    async def _oldest_reading(self, conn: asyncpg.Connection) -> datetime | None:
        if self._mode == "timescale":  # chunk exclusion: only the oldest chunk is read
            oldest: datetime | None = await conn.fetchval("SELECT min(ts) FROM series_readings")
            return oldest
        # Plain: min(ts) of the default partition and of the oldest non-empty range partition (one scan).
        candidates = [await conn.fetchval("SELECT min(ts) FROM series_readings_default")]
        for row in await conn.fetch("SELECT name FROM readings_partitions ORDER BY lo"):
            name = row["name"]
            value = await conn.fetchval(f'SELECT min(ts) FROM "{name}"')
            if value is not None:
                candidates.append(value)
                break
        present = [c for c in candidates if c is not None]
        return min(present) if present else None
