"""The OCC store: PostgreSQL or TimescaleDB behind one API (docs/architecture.md, "Store"). All SQL lives in
this package.

    store = await Store.connect(url, timezone="Asia/Ho_Chi_Minh")   # migrates, one per process
    store = await Store.connect(url, StoreSettings.from_config(config))
    result = await store.write_batch(rows, events=..., statuses=..., dead_letters=..., received_at=now)
    points = await store.history("HG-BQ-RG01", "rain_mm", start, end, bucket="day", agg="sum", day_start_hour=7)

Connection failures raise occ.errors.StoreUnavailable (ConnectionLost when an open connection broke).
"""

from occ.store.alerts import AlertEpisode, AlertNotFound, AlertStateError, AlertTransition, Incident, Silence
from occ.store.connection import ConnectionLost
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
from occ.store.settings import StoreSettings
from occ.store.store import Store

__all__ = [
    "AlertEpisode",
    "AlertNotFound",
    "AlertStateError",
    "AlertTransition",
    "ConnectionLost",
    "DeadLetterRecord",
    "DeviceStatus",
    "HistoryPoint",
    "Incident",
    "LatestValue",
    "MaintenanceReport",
    "MigrateResult",
    "MigrationError",
    "Mode",
    "Silence",
    "Store",
    "StoreSettings",
    "StoredEvent",
    "WriteResult",
    "migrate",
    "parse_bucket",
]
