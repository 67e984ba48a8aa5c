"""`StoreBase`: what every part of the `Store` facade shares (the pool, the settings, the storage mode), and
small SQL helpers. Each concern lives in its own module as a class derived from this one; `occ.store.store`
combines them into `Store`."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from datetime import datetime
from zoneinfo import ZoneInfo

import asyncpg

from occ.store.connection import pooled
from occ.store.migrator import MigrateResult
from occ.store.records import Mode
from occ.store.settings import StoreSettings


class StoreBase:
    """State shared by the store's parts; built only by `Store.connect`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: StoreSettings,
        *,
        mode: Mode,
        rollup_timezone: str,
        timescaledb_version: str | None = None,
    ) -> None:
        self._pool = pool
        self.settings = settings
        self._mode: Mode = mode
        self.rollup_timezone = rollup_timezone
        """The zone daily rollups are bucketed in (fixed when the schema was created)."""
        self._rollup_tz = ZoneInfo(rollup_timezone)
        self.timescaledb_version = timescaledb_version
        self.migration: MigrateResult | None = None
        self.write_retries = 0
        """Times `write_batch` retried inside the store (deadlock, serialization failure, a stale pooled
        connection); ingest exports it in `occ_ingest_write_retries_total`."""
        self._series_ids: dict[str, dict[str, int]] = {}
        """device_id -> metric -> series id. Ids never change once made, so a cache that only grows is exact
        (bounded by the number of series, like `latest`)."""
        self._series_prefixes: dict[int, bytes] = {}
        """series id -> the start of its binary COPY row for `latest` staging (id, device_id, metric); kept for
        every id in `_series_ids`."""
        self._series_levels: dict[int, int] = {}
        """series id -> its rollup level, once maintenance decided it (it never changes afterwards)."""
        self._series_total = 0
        """How many series the database had when this store connected (a floor for the series this process
        knows, which a freshly started worker would underestimate)."""
        self._levels_loaded: set[str] = set()
        """Metrics whose decided levels were all loaded into `_series_levels` (by a history query)."""

    @property
    def mode(self) -> Mode:
        """'timescale' or 'plain'."""
        return self._mode

    @property
    def timezone(self) -> str:
        """The site time zone (default zone of history buckets)."""
        return self.settings.timezone

    def _connection(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        return pooled(self._pool)


def rowcount(status: str) -> int:
    """Rows affected, from a command tag such as 'INSERT 0 12' or 'UPDATE 3'."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def clean_text(value: str) -> str:
    """PostgreSQL text cannot hold NUL; a poison byte must not make a whole batch fail forever."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
