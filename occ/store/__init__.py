"""The OCC store: PostgreSQL or TimescaleDB behind one API (ARCHITECTURE §4).

All SQL lives in this package.
"""

from occ.store.history import parse_bucket
from occ.store.migrator import MigrateResult, MigrationError, migrate
from occ.store.records import (
    DeadLetterRecord,
    DeviceStatus,
    HistoryPoint,
    LatestValue,
    MaintenanceReport,
    Mode,
    StoredEvent,
    WriteResult,
)
from occ.store.store import Store

__all__ = [
    "DeadLetterRecord",
    "DeviceStatus",
    "HistoryPoint",
    "LatestValue",
    "MaintenanceReport",
    "MigrateResult",
    "MigrationError",
    "Mode",
    "Store",
    "StoredEvent",
    "WriteResult",
    "migrate",
    "parse_bucket",
]
