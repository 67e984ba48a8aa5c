"""`Store`: the one gateway to PostgreSQL/TimescaleDB for every OCC service (one per process, asyncpg pool).

All SQL lives in this package. `write_batch` is the ingest hot path: one transaction per batch, idempotent on
(device, metric, ts), and the caller acknowledges its MQTT messages only after it returns (ARCHITECTURE §3).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from occ.models import DeadLetter, Device, Event, ReadingRow, StatusChange
from occ.store import history as hist
from occ.store import maintenance, rollups
from occ.store.alerts import AlertStoreMethods
from occ.store.connection import ConnectionLost, create_pool, pooled, translate_errors
from occ.store.migrator import MigrateResult, MigrationError
from occ.store.migrator import migrate as run_migrations
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
from occ.store.users import UserStore

log = logging.getLogger(__name__)

READING_COLUMNS = ("device_id", "metric", "ts", "value", "quality")
DEAD_LETTER_COLUMNS = ("received_at", "topic", "payload", "reason", "code", "device_id")
_RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
_WRITE_ATTEMPTS = 3

# Lock order (issue 11 item 5): every statement below that can wait on another writer's rows takes them in
# key order, and write_batch runs them in one fixed table order (readings, latest, events, device_status,
# devices), so two transactions can wait on each other but never in a cycle. Within a key, `seq` keeps the
# batch order, so the first occurrence of a reading repeated inside a batch is the one stored.
_INSERT_FROM_STAGING = (
    "INSERT INTO readings (device_id, metric, ts, value, quality) "
    "SELECT device_id, metric, ts, value, quality FROM occ_staging ORDER BY device_id, metric, ts, seq "
    "ON CONFLICT (device_id, metric, ts) DO NOTHING"
)
# The batch's newest reading per key arrives by COPY (about half the client CPU of array parameters).
# Keys sorted so that concurrent workers lock `latest` rows in the same order (no deadlocks).
_UPSERT_LATEST = (
    "INSERT INTO latest AS l (device_id, metric, ts, value, quality, received_at) "
    "SELECT device_id, metric, ts, value, quality, $1 FROM occ_latest_staging ORDER BY device_id, metric "
    "ON CONFLICT (device_id, metric) DO UPDATE SET ts = excluded.ts, value = excluded.value, "
    "quality = excluded.quality, received_at = excluded.received_at WHERE excluded.ts > l.ts"
)
_INSERT_DIRTY = "INSERT INTO rollup_dirty (bucket) SELECT unnest($1::timestamptz[])"
_INSERT_EVENTS = (
    "INSERT INTO events (device_id, ts, type, data, received_at) "
    "SELECT d, t, y, j, $5 "
    "FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::jsonb[]) AS u(d, t, y, j) "
    "ORDER BY d, t, y ON CONFLICT (device_id, ts, type) DO NOTHING"
)
_REGISTER_UNPROVISIONED = (
    "INSERT INTO devices (id, kind, provisioned) "
    "SELECT i, k, false FROM unnest($1::text[], $2::text[]) AS u(i, k) ORDER BY i "
    "ON CONFLICT (id) DO NOTHING"
)


def _rowcount(status: str) -> int:
    """Rows affected, from a command tag such as 'INSERT 0 12' or 'UPDATE 3'."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _clean_text(value: str) -> str:
    # PostgreSQL text cannot hold NUL; a poison byte must not make a whole batch fail forever.
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _latest_rows(rows: Sequence[ReadingRow]) -> list[ReadingRow]:
    """Newest reading per (device, metric) in the batch. On equal timestamps the first occurrence wins, like
    the stored reading does."""
    best: dict[tuple[str, str], ReadingRow] = {}
    get = best.get
    for row in rows:
        key = (row[0], row[1])
        current = get(key)
        if current is None or row[2] > current[2]:
            best[key] = row
    return list(best.values())


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")


class Store(AlertStoreMethods):
    """PostgreSQL/TimescaleDB storage for OCC. Create with `await Store.connect(url)`; one per process."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        url: str,
        mode: Mode,
        timezone: str,
        rollup_timezone: str,
        rollup_grace: timedelta,
        timescaledb_version: str | None = None,
    ) -> None:
        self._pool = pool
        self._url = url
        self._mode: Mode = mode
        self.timezone = timezone
        self.rollup_timezone = rollup_timezone
        self._rollup_tz = ZoneInfo(rollup_timezone)
        self._rollup_grace = rollup_grace
        self.timescaledb_version = timescaledb_version
        self.migration: MigrateResult | None = None
        self.write_retries = 0
        """Times `write_batch` retried inside the store (deadlock, serialization failure, a stale pooled
        connection); ingest exports it in `occ_ingest_write_retries_total`."""
        self.users = UserStore(self._connection)
        """Web console users and tokens (occ/store/users.py)."""

    # --- lifecycle -----------------------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        pool_size: int = 4,
        timezone: str = "Asia/Ho_Chi_Minh",
        migrate: bool = True,
        timescaledb: str = "auto",
        retention_days: int = 730,
        compress_after_days: int = 7,
        partition_days: int = 7,
        partitions_ahead: int = 4,
        chunk_interval: timedelta = timedelta(days=1),
        connect_timeout: float = 10.0,
        rollup_grace: timedelta = timedelta(minutes=2),
    ) -> Store:
        """Connect (raising StoreUnavailable when the server cannot be reached).

        With `migrate` (the default) the schema is brought up to date first (safe when many processes
        start at once), the settings are stored and applied, and on plain PostgreSQL the partitions ahead are
        created. Without it the database must already be migrated.
        """
        ZoneInfo(timezone)
        settings = maintenance.StoreSettings(
            retention_days=retention_days,
            compress_after_days=compress_after_days,
            partition_days=partition_days,
            partitions_ahead=partitions_ahead,
            chunk_interval=chunk_interval,
        )
        settings.validate()
        result: MigrateResult | None = None
        if migrate:
            result = await run_migrations(
                url,
                timescaledb=timescaledb,
                timezone=timezone,
                chunk_interval=chunk_interval,
                compress_after_days=compress_after_days,
                retention_days=retention_days,
                connect_kwargs={"connect_timeout": connect_timeout},
            )
        pool = await create_pool(url, size=pool_size, connect_timeout=connect_timeout)
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
                    url=url,
                    mode=mode,
                    timezone=timezone,
                    rollup_timezone=values.get("rollup_timezone", timezone),
                    rollup_grace=rollup_grace,
                    timescaledb_version=ts_version,
                )
                store.migration = result
                if store.rollup_timezone != timezone:
                    log.warning(
                        "daily rollups are bucketed in %s but the site time zone is %s: "
                        "daily history will be computed from hourly rollups",
                        store.rollup_timezone,
                        timezone,
                    )
                if migrate:
                    await maintenance.write_settings(conn, settings, timescale=mode == "timescale")
                    if mode == "plain":
                        await maintenance.ensure_partitions(conn, now=datetime.now(UTC), settings=settings)
        except BaseException:
            await pool.close()
            raise
        return store

    @property
    def mode(self) -> Mode:
        """'timescale' or 'plain'."""
        return self._mode

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), timeout=10)
        except TimeoutError:
            self._pool.terminate()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _connection(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        return pooled(self._pool)

    async def ping(self) -> float:
        """Round-trip time of a trivial query in seconds; StoreUnavailable when the server is unreachable."""
        started = time.perf_counter()
        async with self._connection() as conn:
            await conn.fetchval("SELECT 1")
        return time.perf_counter() - started

    async def configure(
        self,
        *,
        retention_days: int = 730,
        compress_after_days: int = 7,
        partition_days: int = 7,
        partitions_ahead: int = 4,
        chunk_interval: timedelta = timedelta(days=1),
    ) -> None:
        """Store new storage settings for every process and apply them (TimescaleDB: chunk interval and
        policies; plain: used by the next maintain())."""
        settings = maintenance.StoreSettings(
            retention_days, compress_after_days, partition_days, partitions_ahead, chunk_interval
        )
        settings.validate()
        async with self._connection() as conn:
            await maintenance.write_settings(conn, settings, timescale=self._mode == "timescale")

    # --- ingest --------------------------------------------------------------------------------------------

    async def write_batch(
        self,
        rows: Sequence[ReadingRow],
        *,
        events: Iterable[Event] = (),
        statuses: Iterable[StatusChange] = (),
        dead_letters: Iterable[DeadLetter] = (),
        unprovisioned: Mapping[str, str] | None = None,
        received_at: datetime,
    ) -> WriteResult:
        """Store one ingest batch in ONE transaction; acknowledge its messages only after this returns.

        Idempotent on (device, metric, ts): a reading already stored is counted as a duplicate and left as it
        was. Readings repeated inside the batch are stored once; the first occurrence (batch order) wins.
        `latest` moves only forward in time; events are idempotent on (device, ts, type); status changes apply
        in time order; `unprovisioned` ({device_id: kind}) registers unknown devices in the same transaction.
        Raises StoreUnavailable when the database cannot be reached (retry the whole batch later); data errors
        propagate.
        """
        _require_aware("received_at", received_at)
        rows = rows if isinstance(rows, list) else list(rows)
        latest = _latest_rows(rows)
        hours = rollups.dirty_hours(rows)
        event_list = list(events)
        status_list = sorted(statuses, key=lambda s: (s.device_id, s.ts))
        letters = [
            (
                letter.received_at,
                _clean_text(letter.topic),
                letter.payload,
                _clean_text(letter.reason),
                str(letter.code),
                letter.device_id,
            )
            for letter in dead_letters
        ]
        conflicts = lost = 0
        while True:
            try:
                async with self._connection() as conn, conn.transaction():
                    inserted = await self._insert_readings(conn, rows)
                    if latest:
                        await conn.copy_records_to_table(
                            "occ_latest_staging", records=latest, columns=READING_COLUMNS
                        )
                        await conn.execute(_UPSERT_LATEST, received_at)
                    if hours:
                        await conn.execute(_INSERT_DIRTY, hours)
                    events_inserted = await self._insert_events(conn, event_list, received_at)
                    changes = await self._apply_statuses(conn, status_list, received_at)
                    if letters:
                        await conn.copy_records_to_table(
                            "dead_letters", records=letters, columns=DEAD_LETTER_COLUMNS
                        )
                    if unprovisioned:
                        ids = sorted(unprovisioned)
                        await conn.execute(_REGISTER_UNPROVISIONED, ids, [unprovisioned[i] for i in ids])
                return WriteResult(
                    inserted=inserted,
                    duplicates=len(rows) - inserted,
                    events_inserted=events_inserted,
                    dead_lettered=len(letters),
                    status_changes=changes,
                )
            except _RETRYABLE as exc:
                conflicts += 1
                if conflicts >= _WRITE_ATTEMPTS:
                    raise
                self.write_retries += 1
                log.warning("write_batch: %s, retrying", type(exc).__name__)
                await asyncio.sleep(0.005 * conflicts)
            except ConnectionLost:
                # After a server restart every idle pooled connection is dead: go through them at once
                # (the batch is idempotent) instead of failing the caller once per stale connection.
                # If the server is really down, getting a new connection fails with StoreUnavailable.
                lost += 1
                if lost > self._pool.get_max_size():
                    raise
                self.write_retries += 1

    @staticmethod
    async def _insert_readings(conn: asyncpg.Connection, rows: list[ReadingRow]) -> int:
        if not rows:
            return 0
        # Fast path: COPY straight into readings, inside a savepoint. Almost every batch is new data. Sorted, so
        # that two writers inserting overlapping keys (a redelivery, two simulators) wait instead of deadlocking
        # (~0.1 µs per reading). Duplicates inside the batch fail this path, so their order does not matter here.
        try:
            async with conn.transaction():
                await conn.copy_records_to_table("readings", records=sorted(rows), columns=READING_COLUMNS)
            return len(rows)
        except asyncpg.UniqueViolationError:
            pass
        # Slow path (redelivery, device retries, duplicates inside the batch): stage, insert only new rows.
        await conn.copy_records_to_table("occ_staging", records=rows, columns=READING_COLUMNS)
        return _rowcount(await conn.execute(_INSERT_FROM_STAGING))

    @staticmethod
    async def _insert_events(conn: asyncpg.Connection, events: list[Event], received_at: datetime) -> int:
        if not events:
            return 0
        status = await conn.execute(
            _INSERT_EVENTS,
            [_clean_text(e.device_id) for e in events],
            [e.ts for e in events],
            [_clean_text(e.type) for e in events],
            [e.data for e in events],
            received_at,
        )
        return _rowcount(status)

    @staticmethod
    async def _apply_statuses(
        conn: asyncpg.Connection, statuses: list[StatusChange], received_at: datetime
    ) -> int:
        if not statuses:
            return 0
        changed: int = await conn.fetchval(
            "SELECT occ_apply_statuses($1::text[], $2::text[], $3::timestamptz[], $4)",
            [s.device_id for s in statuses],
            [s.status for s in statuses],
            [s.ts for s in statuses],
            received_at,
        )
        return changed

    # --- devices -------------------------------------------------------------------------------------------

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
        return _rowcount(status)

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

    async def register_unprovisioned(self, ids_with_kind: Mapping[str, str]) -> int:
        """Register devices seen on the bus but not in the catalog (provisioned=false); existing devices are
        left untouched. Returns how many were new."""
        if not ids_with_kind:
            return 0
        ids = sorted(ids_with_kind)
        async with self._connection() as conn:
            status = await conn.execute(_REGISTER_UNPROVISIONED, ids, [ids_with_kind[i] for i in ids])
        return _rowcount(status)

    # --- current state -------------------------------------------------------------------------------------

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

    # --- history -------------------------------------------------------------------------------------------

    async def history(
        self,
        device_id: str | Sequence[str],
        metric: str,
        start: datetime,
        end: datetime,
        *,
        bucket: timedelta | str = timedelta(hours=1),
        agg: str = "avg",
        fill: str | None = None,
        tz: str | ZoneInfo | None = None,
        day_start_hour: int = 0,
        limit: int | None = None,
    ) -> list[HistoryPoint]:
        """A metric's history over [start, end) as (bucket_start, value) points, oldest first.

        bucket: a timedelta, 'day' | 'week' | 'month' (calendar buckets in `tz`), or 'raw' (every reading).
        agg: avg | min | max | sum | count | first | last. fill: None (buckets with data only), 'null',
        'previous', 'linear' or 'zero'. day_start_hour shifts day/week/month (and fixed) buckets, e.g. 7 for
        the hydrological day 07:00–07:00. Several device ids aggregate together (e.g. an area's mean);
        use history_by_device() for one series per device. The first bucket may start before `start`; it
        only aggregates data from `start` on. Bucket starts are returned in `tz` (default: the site zone).
        """
        ids = [device_id] if isinstance(device_id, str) else list(device_id)
        series = await self._history(
            ids, metric, start, end, bucket, agg, fill, tz, day_start_hour, limit, by_device=False
        )
        return series.get("", [])

    async def history_by_device(
        self,
        device_ids: Sequence[str],
        metric: str,
        start: datetime,
        end: datetime,
        *,
        bucket: timedelta | str = timedelta(hours=1),
        agg: str = "avg",
        fill: str | None = None,
        tz: str | ZoneInfo | None = None,
        day_start_hour: int = 0,
        limit: int | None = None,
    ) -> dict[str, list[HistoryPoint]]:
        """Like history(), one series per device (every requested device is a key)."""
        ids = list(device_ids)
        series = await self._history(
            ids, metric, start, end, bucket, agg, fill, tz, day_start_hour, limit, by_device=True
        )
        return {i: series.get(i, []) for i in ids}

    async def _history(
        self,
        device_ids: list[str],
        metric: str,
        start: datetime,
        end: datetime,
        bucket: timedelta | str,
        agg: str,
        fill: str | None,
        tz: str | ZoneInfo | None,
        day_start_hour: int,
        limit: int | None,
        *,
        by_device: bool,
    ) -> dict[str, list[HistoryPoint]]:
        _require_aware("start", start)
        _require_aware("end", end)
        if start >= end:
            raise ValueError("start must be before end")
        if agg not in hist.AGGREGATES:
            raise ValueError(f"agg must be one of {', '.join(hist.AGGREGATES)}; got {agg!r}")
        if fill not in hist.FILLS:
            raise ValueError(f"fill must be one of None, 'null', 'previous', 'linear', 'zero'; got {fill!r}")
        zone = hist.zone(tz or self.timezone)
        spec = hist.bucket_spec(bucket, tz=zone, day_start_hour=day_start_hour)
        if spec is None:
            sql, args = hist.raw_query(device_ids, metric, start, end, limit)
            async with self._connection() as conn:
                rows = await conn.fetch(sql, *args)
            raw: dict[str, list[HistoryPoint]] = {}
            for row in rows:
                key = row["device_id"] if by_device else ""
                raw.setdefault(key, []).append(HistoryPoint(row["b"].astimezone(zone), row["v"]))
            return raw
        buckets = hist.enumerate_buckets(spec, start, end) if fill is not None else None
        level = hist.choose_level(spec, rollup_tz=self.rollup_timezone, start=start, end=end)
        async with self._connection() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            dirty_hours: list[datetime] = []
            dirty_days: list[datetime] = []
            if level is not None:
                dirty_hours = [
                    r["bucket"]
                    for r in await conn.fetch(
                        "SELECT DISTINCT bucket FROM rollup_dirty WHERE bucket > $1 AND bucket < $2",
                        start - hist.HOUR,
                        end,
                    )
                ]
                if level.step is None:
                    dirty_days = [
                        r["day"]
                        for r in await conn.fetch(
                            "SELECT day FROM rollup_dirty_days WHERE day > $1 AND day < $2",
                            start - timedelta(days=2),
                            end,
                        )
                    ]
            plan = hist.plan_ranges(
                start, end, level, rollup_tz=self._rollup_tz, dirty_hours=dirty_hours, dirty_days=dirty_days
            )
            sql, args = hist.aggregate_query(
                spec, plan, device_ids=device_ids, metric=metric, agg=agg, by_device=by_device
            )
            rows = await conn.fetch(sql, *args)
        grouped: dict[str, dict[datetime, float | None]] = {}
        for row in rows:
            key = row["device_id"] if by_device else ""
            grouped.setdefault(key, {})[row["b"]] = row["v"]
        if buckets is None:
            result = {
                key: [HistoryPoint(b.astimezone(zone), v) for b, v in values.items()]
                for key, values in grouped.items()
            }
        else:
            keys = device_ids if by_device else [""]
            result = {key: hist.fill_series(buckets, grouped.get(key, {}), fill, zone) for key in keys}
        if limit is not None:
            result = {key: points[:limit] for key, points in result.items()}
        return result

    # --- events and dead letters ---------------------------------------------------------------------------

    async def events(
        self,
        *,
        device_ids: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 100,
    ) -> list[StoredEvent]:
        """Events, newest first."""
        conditions: list[str] = []
        args: list[object] = []
        for sql, value in (
            ("device_id = ANY(${}::text[])", list(device_ids) if device_ids is not None else None),
            ("type = ANY(${}::text[])", list(types) if types is not None else None),
            ("ts >= ${}", start),
            ("ts < ${}", end),
        ):
            if value is not None:
                args.append(value)
                conditions.append(sql.format(len(args)))
        args.append(limit)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT device_id, ts, type, data, received_at FROM events{where} "
                f"ORDER BY ts DESC, device_id, type LIMIT ${len(args)}",
                *args,
            )
        return [StoredEvent(**dict(row)) for row in rows]

    async def dead_letters(self, limit: int = 100, since: datetime | None = None) -> list[DeadLetterRecord]:
        """Dead letters, newest first."""
        async with self._connection() as conn:
            if since is None:
                rows = await conn.fetch(
                    "SELECT id, received_at, topic, payload, reason, code, device_id FROM dead_letters "
                    "ORDER BY received_at DESC, id DESC LIMIT $1",
                    limit,
                )
            else:
                rows = await conn.fetch(
                    "SELECT id, received_at, topic, payload, reason, code, device_id FROM dead_letters "
                    "WHERE received_at >= $2 ORDER BY received_at DESC, id DESC LIMIT $1",
                    limit,
                    since,
                )
        return [DeadLetterRecord(**dict(row)) for row in rows]

    # --- operations ----------------------------------------------------------------------------------------

    async def maintain(self, *, now: datetime | None = None, budget_s: float = 30.0) -> MaintenanceReport:
        """Periodic housekeeping; call every few minutes from one or more processes (only one runs at a time).

        Plain: partitions ahead, rows out of the default partition, partitions past retention dropped, rollups
        of dirty hours and days recomputed. TimescaleDB: continuous aggregates refreshed for dirty hours and
        days (the background policies handle compression and retention).
        """
        now = now or datetime.now(UTC)
        _require_aware("now", now)
        report = MaintenanceReport()
        deadline = time.monotonic() + budget_s
        async with self._connection() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", maintenance.MAINTENANCE_LOCK_KEY):
                report.skipped = True
                return report
            try:
                settings = maintenance.StoreSettings.from_settings(await maintenance.read_settings(conn))
                cutoff = now - timedelta(days=settings.retention_days)
                if self._mode == "plain":
                    parts = await maintenance.maintain_partitions(
                        conn, now=now, settings=settings, errors=report.errors
                    )
                    report.partitions_created = parts.created
                    report.partitions_dropped = parts.dropped
                    report.default_rows_relocated = parts.relocated
                    report.rollup_rows_deleted = parts.rollup_rows_deleted
                refreshed = await rollups.refresh(
                    conn,
                    mode=self._mode,
                    rollup_tz=self._rollup_tz,
                    now=now,
                    grace=self._rollup_grace,
                    retention_cutoff=cutoff,
                    deadline=deadline,
                )
                report.hours_refreshed = refreshed.hours
                report.days_refreshed = refreshed.days
                report.pending_hours = refreshed.pending_hours
            finally:
                if not conn.is_closed():
                    await conn.execute("SELECT pg_advisory_unlock($1)", maintenance.MAINTENANCE_LOCK_KEY)
        return report

    async def status(self) -> dict[str, Any]:
        """Everything `occ db status` shows: mode, versions, migrations, settings, table sizes and row
        estimates, oldest/newest reading, pending rollup work."""
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
            info["pending_rollup_hours"] = await conn.fetchval(
                "SELECT count(DISTINCT bucket) FROM rollup_dirty"
            )
            info["pending_rollup_days"] = await conn.fetchval("SELECT count(*) FROM rollup_dirty_days")
            if self._mode == "plain":
                info["partitions"] = await conn.fetchval("SELECT count(*) FROM readings_partitions")
                info["default_partition_rows"] = await conn.fetchval("SELECT count(*) FROM readings_default")
        return info

    async def _table_sizes(self, conn: asyncpg.Connection) -> dict[str, dict[str, int]]:
        plain_tables = (
            "devices", "latest", "device_status", "device_status_history", "events", "dead_letters"
        )
        sizes: dict[str, dict[str, int]] = {}
        for name in plain_tables:
            row = await conn.fetchrow(
                "SELECT pg_total_relation_size(c.oid) AS bytes, greatest(c.reltuples, 0)::bigint AS rows "
                "FROM pg_class c WHERE c.oid = to_regclass($1)",
                name,
            )
            if row:
                sizes[name] = {"bytes": row["bytes"], "rows_estimate": row["rows"]}
        if self._mode == "plain":
            for name in ("readings", "readings_1m", "readings_1h", "readings_1d"):
                row = await conn.fetchrow(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint AS bytes, "
                    "coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint AS rows FROM pg_class c "
                    "WHERE c.oid = to_regclass($1) OR c.oid IN "
                    "(SELECT inhrelid FROM pg_inherits WHERE inhparent = to_regclass($1))",
                    name,
                )
                sizes[name] = {"bytes": row["bytes"], "rows_estimate": row["rows"]}
        else:
            row = await conn.fetchrow(
                "SELECT hypertable_size('readings') AS bytes, approximate_row_count('readings') AS rows"
            )
            sizes["readings"] = {"bytes": row["bytes"] or 0, "rows_estimate": row["rows"] or 0}
            for view in ("readings_1m", "readings_1h", "readings_1d"):
                row = await conn.fetchrow(
                    "SELECT hypertable_size(format('%I.%I', materialization_hypertable_schema, "
                    "materialization_hypertable_name)::regclass) AS bytes, "
                    "approximate_row_count(format('%I.%I', materialization_hypertable_schema, "
                    "materialization_hypertable_name)::regclass) AS rows "
                    "FROM timescaledb_information.continuous_aggregates WHERE view_name = $1",
                    view,
                )
                if row:
                    sizes[view] = {"bytes": row["bytes"] or 0, "rows_estimate": row["rows"] or 0}
        return sizes

    async def _oldest_reading(self, conn: asyncpg.Connection) -> datetime | None:
        if self._mode == "timescale":
            oldest: datetime | None = await conn.fetchval("SELECT min(ts) FROM readings")
            return oldest
        # Plain: min(ts) of the default partition and of the oldest non-empty range partition (one scan).
        candidates = [await conn.fetchval("SELECT min(ts) FROM readings_default")]
        for row in await conn.fetch("SELECT name FROM readings_partitions ORDER BY lo"):
            name = row["name"]
            value = await conn.fetchval(f'SELECT min(ts) FROM "{name}"')
            if value is not None:
                candidates.append(value)
                break
        present = [c for c in candidates if c is not None]
        return min(present) if present else None


async def _settings_or_none(conn: asyncpg.Connection) -> dict[str, str] | None:
    if not await conn.fetchval("SELECT to_regclass('occ_settings') IS NOT NULL"):
        return None
    return await maintenance.read_settings(conn)
