"""Settings that can change after the schema exists, and periodic housekeeping.

Settings live in `occ_settings` so that every process (N ingest workers, the web server, `occ db`) maintains
the database the same way, whichever of them runs maintenance. On TimescaleDB the chunk interval and the
compression/retention policies are adjusted in place; on plain PostgreSQL the platform creates partitions
ahead, moves rows out of the default partition and drops partitions past retention.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from occ.store.migrator import MIGRATION_LOCK_KEY
from occ.store.settings import StoreSettings

log = logging.getLogger(__name__)

MAINTENANCE_LOCK_KEY = int.from_bytes(b"OCC:MNTN", "big", signed=True)
LOCK_TIMEOUT = "1s"
"""Partition DDL waits at most this long for a lock (writers queue behind a waiting DDL); when it cannot get
it, the step is reported and retried at the next maintenance."""


async def read_settings(conn: asyncpg.Connection) -> dict[str, str]:
    rows = await conn.fetch("SELECT key, value FROM occ_settings")
    return {row["key"]: row["value"] for row in rows}


async def write_settings(conn: asyncpg.Connection, settings: StoreSettings, *, timescale: bool) -> None:
    """Persist settings and, on TimescaleDB, bring the chunk interval and policies in line with them."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        values = settings.stored()
        await conn.execute(
            "INSERT INTO occ_settings (key, value) SELECT * FROM unnest($1::text[], $2::text[]) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = now() "
            "WHERE occ_settings.value IS DISTINCT FROM excluded.value",
            list(values),
            list(values.values()),
        )
        if timescale:
            await _configure_timescale(conn, settings)


async def _configure_timescale(conn: asyncpg.Connection, settings: StoreSettings) -> None:
    """The chunk interval and the compression and retention policies of series_readings (migration 0032)."""
    await conn.execute("SELECT set_chunk_time_interval('series_readings', $1::interval)", settings.chunk_interval)
    compress_after = timedelta(days=settings.compress_after_days)
    retention = timedelta(days=settings.retention_days)
    same = await conn.fetchval(
        "SELECT count(*) FROM timescaledb_information.jobs WHERE proc_name = 'policy_compression' "
        "AND hypertable_name = 'series_readings' AND (config->>'compress_after')::interval = $1::interval",
        compress_after,
    )
    if not same:
        log.info("setting the readings compression policy to %s days", settings.compress_after_days)
        await conn.execute("SELECT remove_compression_policy('series_readings', if_exists => true)")
        await conn.execute(
            "SELECT add_compression_policy('series_readings', compress_after => $1::interval)", compress_after
        )
    same = await conn.fetchval(
        "SELECT count(*) FROM timescaledb_information.jobs WHERE proc_name = 'policy_retention' "
        "AND hypertable_name = 'series_readings' AND (config->>'drop_after')::interval = $1::interval",
        retention,
    )
    if not same:
        log.info("setting the readings retention policy to %s days", settings.retention_days)
        await conn.execute("SELECT remove_retention_policy('series_readings', if_exists => true)")
        await conn.execute("SELECT add_retention_policy('series_readings', drop_after => $1::interval)", retention)


@dataclass(slots=True)
class PartitionResult:
    created: int = 0
    dropped: int = 0
    relocated: int = 0
    rollup_rows_deleted: int = 0


async def ensure_partitions(conn: asyncpg.Connection, *, now: datetime, settings: StoreSettings) -> int:
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        created: int = await conn.fetchval(
            "SELECT occ_ensure_partitions($1, $2, $3)",
            now,
            settings.partition_days,
            settings.partitions_ahead,
        )
    return created


async def maintain_partitions(
    conn: asyncpg.Connection, *, now: datetime, settings: StoreSettings, errors: list[str]
) -> PartitionResult:
    """Plain path: partitions ahead, default partition emptied, retention applied. Each step is its own
    transaction with a lock timeout; a step that cannot get its lock is reported and retried next time."""
    result = PartitionResult()
    cutoff = now - timedelta(days=settings.retention_days)
    steps = (
        ("ensure partitions", "created", "SELECT occ_ensure_partitions($1, $2, $3)",
         (now, settings.partition_days, settings.partitions_ahead)),
        ("relocate default partition rows", "relocated", "SELECT occ_relocate_default($1, $2)",
         (settings.partition_days, cutoff)),
        ("drop expired partitions", "dropped", "SELECT occ_drop_partitions($1)", (cutoff,)),
    )  # fmt: skip
    for label, attr, sql, args in steps:
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                value = await conn.fetchval(sql, *args)
            setattr(result, attr, int(value or 0))
        except asyncpg.LockNotAvailableError as exc:
            log.warning("maintenance: %s postponed: %s", label, exc)
            errors.append(f"{label}: {exc}")
    result.rollup_rows_deleted = await expire_minute_rollups(conn, cutoff)
    return result


async def expire_minute_rollups(conn: asyncpg.Connection, cutoff: datetime) -> int:
    """1-minute rollups are kept as long as raw readings (hourly and daily ones outlive them)."""
    status = await conn.execute("DELETE FROM series_1m WHERE bucket < $1", cutoff)
    return int(status.split()[-1])
