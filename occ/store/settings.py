"""`StoreSettings`: every setting of the store in one frozen, validated object (built once, passed down).

Most settings belong to this process (pool size, time zone, timeouts). The storage settings (`STORED`) are
shared by every process through the `occ_settings` table, so that whichever process runs maintenance (one of N
ingest workers, `occ db maintain`) keeps partitions, retention and compression the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from occ.config import Config

TIMESCALEDB_CHOICES: Final = ("auto", "on", "off")
STORED: Final = ("retention_days", "compress_after_days", "partition_days", "partitions_ahead", "chunk_interval")
"""The settings kept in `occ_settings` (the same for every process)."""


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """How this process uses the store; invalid values raise ValueError when the object is built."""

    pool_size: int = 4
    pool_warm: bool = False
    """Open all `pool_size` connections at connect and never close them for being idle. For a service on the hot
    path (ingest): otherwise a connection is opened when concurrency first rises (a maintenance run beside two
    writers), in the middle of the stream, and each opening (authentication, codecs, staging tables) stalls the
    write that waits for it by tens of milliseconds; asyncpg also closes connections idle for five minutes."""
    timezone: str = "Asia/Ho_Chi_Minh"
    """The site time zone: default zone of history buckets; daily rollups are fixed to it at creation."""
    timescaledb: str = "auto"
    """auto (use the extension when it can be created), on (require it) or off (plain PostgreSQL path);
    decided once per database, by the first migration."""
    retention_days: int = 730
    compress_after_days: int = 7
    partition_days: int = 7
    partitions_ahead: int = 4
    chunk_interval: timedelta = timedelta(days=1)
    connect_timeout: float = 10.0
    rollup_grace: timedelta = timedelta(minutes=2)
    """An hour is rolled up this long after it ends, so live ingest does not recompute the current hour."""

    def __post_init__(self) -> None:
        ZoneInfo(self.timezone)  # ZoneInfoNotFoundError for a zone that does not exist
        if self.timescaledb not in TIMESCALEDB_CHOICES:
            raise ValueError(f"timescaledb must be auto, on or off, not {self.timescaledb!r}")
        for name in ("pool_size", "retention_days", "compress_after_days", "partition_days", "partitions_ahead"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.chunk_interval < timedelta(minutes=1):
            raise ValueError("chunk_interval must be at least a minute")
        if self.connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive")
        if self.rollup_grace < timedelta(0):
            raise ValueError("rollup_grace must not be negative")

    @classmethod
    def build(cls, base: StoreSettings | None = None, **overrides: Any) -> StoreSettings:
        """`base` (or the defaults) with some fields replaced: the keyword form of the public entry points."""
        return dataclasses.replace(base or cls(), **overrides)

    @classmethod
    def from_config(cls, config: Config, **overrides: Any) -> StoreSettings:
        """The settings a service configured by `config` (occ.yaml / OCC_* variables) uses."""
        db = config.database
        return cls.build(
            None,
            pool_size=db.pool_size,
            timezone=config.site.timezone,
            timescaledb=db.timescaledb,
            retention_days=db.retention_days,
            compress_after_days=db.compress_after_days,
            partition_days=db.partition_days,
            partitions_ahead=db.partitions_ahead,
            **overrides,
        )

    def stored(self) -> dict[str, str]:
        """The shared settings as `occ_settings` rows."""
        return {
            "retention_days": str(self.retention_days),
            "compress_after_days": str(self.compress_after_days),
            "partition_days": str(self.partition_days),
            "partitions_ahead": str(self.partitions_ahead),
            "chunk_interval_s": str(int(self.chunk_interval.total_seconds())),
        }

    def with_stored(self, values: Mapping[str, str]) -> StoreSettings:
        """These settings with the shared ones replaced by what `occ_settings` holds (missing keys keep ours)."""
        return dataclasses.replace(
            self,
            retention_days=int(values.get("retention_days", self.retention_days)),
            compress_after_days=int(values.get("compress_after_days", self.compress_after_days)),
            partition_days=int(values.get("partition_days", self.partition_days)),
            partitions_ahead=int(values.get("partitions_ahead", self.partitions_ahead)),
            chunk_interval=timedelta(
                seconds=int(values.get("chunk_interval_s", self.chunk_interval.total_seconds()))
            ),
        )
