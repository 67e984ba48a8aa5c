"""`Store`: the one gateway to PostgreSQL/TimescaleDB for every OCC service (one per process, asyncpg pool).

All SQL lives in this package, one concern per module, combined here behind one facade:

    writes.py    write_batch, the ingest hot path          registry.py  devices
    current.py   latest values, device status              queries.py   history, events, dead letters
    admin.py     settings, maintenance, status report      settings.py  StoreSettings (one frozen object)
    alerts.py    alert episodes, silences, incidents (the alerts service)
    users.py     web console users and tokens (`store.users`)
    credentials.py  MQTT accounts of devices, gateways and services (`store.credentials`)
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg

from occ.store import maintenance
from occ.store.admin import Administration
from occ.store.alerts import AlertStoreMethods
from occ.store.connection import create_pool, translate_errors
from occ.store.credentials import CredentialStore
from occ.store.current import CurrentState
from occ.store.migrator import MigrateResult, MigrationError
from occ.store.migrator import migrate as run_migrations
from occ.store.queries import HistoryQueries
from occ.store.records import Mode
from occ.store.registry import DeviceRegistry
from occ.store.settings import StoreSettings
from occ.store.users import UserStore
from occ.store.writes import Writes

log = logging.getLogger(__name__)


class Store(Writes, DeviceRegistry, CurrentState, HistoryQueries, Administration, AlertStoreMethods):
    """PostgreSQL/TimescaleDB storage for OCC. Create with `await Store.connect(url)`; one per process."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: StoreSettings,
        *,
        mode: Mode,
        rollup_timezone: str,
        timescaledb_version: str | None = None,
    ) -> None:
        super().__init__(
            pool, settings, mode=mode, rollup_timezone=rollup_timezone, timescaledb_version=timescaledb_version
        )
        self.users = UserStore(self._connection)
        """Web console users and tokens (occ/store/users.py)."""
        self.credentials = CredentialStore(self._connection)
        """MQTT accounts (occ/store/credentials.py)."""

    @classmethod
    async def connect(
        cls, url: str, settings: StoreSettings | None = None, *, migrate: bool = True, **overrides: Any
    ) -> Store:
        """Connect (raising StoreUnavailable when the server cannot be reached).

        `settings` (or the defaults), with any StoreSettings field given as a keyword replacing its value
        (`Store.connect(url, pool_size=2, timescaledb="off")`). With `migrate` (the default) the schema is
        brought up to date first (safe when many processes start at once), the storage settings are stored
        and applied, and on plain PostgreSQL the partitions ahead are created. Without it the database must
        already be migrated.
        """
        settings = StoreSettings.build(settings, **overrides)
        result: MigrateResult | None = None
        if migrate:
            result = await run_migrations(url, settings)
        pool = await create_pool(
            url, size=settings.pool_size, warm=settings.pool_warm, connect_timeout=settings.connect_timeout
        )
        try:
            async with translate_errors(), pool.acquire() as conn:
                values = await _settings_or_none(conn)
                if values is None or "mode" not in values:
                    raise MigrationError("the database has no OCC schema: run `occ db migrate` first")
                mode: Mode = "timescale" if values["mode"] == "timescale" else "plain"
                ts_version = None
                if mode == "timescale":
                    ts_version = await conn.fetchval(
                        "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
                    )
                store = cls(
                    pool,
                    settings,
                    mode=mode,
                    rollup_timezone=values.get("rollup_timezone", settings.timezone),
                    timescaledb_version=ts_version,
                )
                store.migration = result
                if await conn.fetchval("SELECT to_regclass('series') IS NOT NULL"):  # (an older schema has none)
                    store._series_total = await conn.fetchval("SELECT count(*) FROM series")
                if store.rollup_timezone != settings.timezone:
                    log.warning(
                        "daily rollups are bucketed in %s but the site time zone is %s: "
                        "daily history will be computed from hourly rollups",
                        store.rollup_timezone,
                        settings.timezone,
                    )
                if migrate:
                    await maintenance.write_settings(conn, settings, timescale=mode == "timescale")
                    if mode == "plain":
                        await maintenance.ensure_partitions(conn, now=datetime.now(UTC), settings=settings)
        except BaseException:
            await pool.close()
            raise
        return store

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), timeout=10)
        except TimeoutError:
            self._pool.terminate()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def ping(self) -> float:
        """Round-trip time of a trivial query in seconds; StoreUnavailable when the server is unreachable."""
        started = time.perf_counter()
        async with self._connection() as conn:
            await conn.fetchval("SELECT 1")
        return time.perf_counter() - started


async def _settings_or_none(conn: asyncpg.Connection) -> dict[str, str] | None:
    if not await conn.fetchval("SELECT to_regclass('occ_settings') IS NOT NULL"):
        return None
    return await maintenance.read_settings(conn)
