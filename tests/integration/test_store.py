"""Store against a real PostgreSQL: migrations, the ingest write path, devices, current state, dead letters,
and the database going away. `database_url` (tests/conftest.py) is a fresh empty database per test."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlparse, urlunparse

import asyncpg
import pytest

from occ.errors import StoreUnavailable
from occ.models import DeadLetter, Device, Event, Quality, RejectCode, StatusChange
from occ.store import MigrationError, Store, migrate, writes
from occ.store.migrator import discover

T0 = datetime(2026, 11, 27, 1, 0, tzinfo=UTC)


def rows_at(start: datetime, n: int, *, device: str = "st1", metric: str = "rain_mm", step_s: int = 60):
    return [(device, metric, start + timedelta(seconds=i * step_s), float(i), 0) for i in range(n)]


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    s = await Store.connect(database_url, timescaledb="off", pool_size=3)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture(params=["copy", "one-statement"])
def write_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways `write_batch` writes readings: COPY in a transaction (large batches) and one statement (small
    ones, occ/store/writes.py SMALL_BATCH); each property of the write path must hold on both."""
    monkeypatch.setattr(writes, "SMALL_BATCH", 0 if request.param == "copy" else 1_000_000)
    return str(request.param)


async def fetchval(url: str, sql: str, *args: object) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def fetch(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


# --- migrations ----------------------------------------------------------------------------------------------


async def test_migrations_apply_and_are_recorded(database_url: str) -> None:
    result = await migrate(database_url, timescaledb="off")
    files = discover()
    assert result.mode == "plain"
    assert result.applied == [m.version for m in files]
    assert result.version == files[-1].version
    recorded = await fetch(
        database_url, "SELECT version, name, variant, checksum FROM occ_schema_migrations ORDER BY version"
    )
    assert [r["version"] for r in recorded] == [m.version for m in files]
    for record, migration in zip(recorded, files, strict=True):
        file = migration.for_mode("plain")
        assert (record["name"], record["variant"], record["checksum"]) == (file.name, file.variant, file.checksum)
    assert await fetchval(database_url, "SELECT value FROM occ_settings WHERE key = 'mode'") == "plain"
    for table in ("devices", "readings", "latest", "device_status", "device_status_history", "events",
                  "dead_letters", "readings_1m", "readings_1h", "readings_1d", "rollup_dirty"):  # fmt: skip
        assert await fetchval(database_url, "SELECT to_regclass($1) IS NOT NULL", table), table


async def test_migrate_rerun_is_a_noop(database_url: str) -> None:
    await migrate(database_url, timescaledb="off")
    before = await fetch(database_url, "SELECT * FROM occ_schema_migrations ORDER BY version")
    again = await migrate(database_url, timescaledb="off")
    assert again.applied == []
    assert again.mode == "plain"
    assert await fetch(database_url, "SELECT * FROM occ_schema_migrations ORDER BY version") == before


async def test_upgrade_applies_only_new_versions(database_url: str) -> None:
    files = discover()
    first = await migrate(database_url, timescaledb="off", migrations=files[:-1])
    assert first.applied == [m.version for m in files[:-1]]
    upgrade = await migrate(database_url, timescaledb="off")
    assert upgrade.applied == [files[-1].version]


async def test_concurrent_migrations_are_safe(database_url: str) -> None:
    results = await asyncio.gather(*(migrate(database_url, timescaledb="off") for _ in range(4)))
    applied = [r.applied for r in results]
    assert sorted(applied, key=len)[-1] == [m.version for m in discover()]
    assert sum(1 for a in applied if a) == 1, applied
    assert await fetchval(database_url, "SELECT count(*) FROM occ_schema_migrations") == len(discover())


async def test_concurrent_store_startup(database_url: str) -> None:
    started = await asyncio.gather(
        *(Store.connect(database_url, timescaledb="off", pool_size=1) for _ in range(3)), return_exceptions=True
    )
    stores = [s for s in started if isinstance(s, Store)]
    try:
        assert len(stores) == 3, started
        assert {s.mode for s in stores} == {"plain"}
        results = await asyncio.gather(*(s.write_batch(rows_at(T0, 10), received_at=T0) for s in stores))
        assert sum(r.inserted for r in results) == 10
        assert sum(r.duplicates for r in results) == 20
    finally:
        for s in stores:
            await s.close()


async def test_changed_migration_is_refused(database_url: str) -> None:
    await migrate(database_url, timescaledb="off")
    migrations = discover()
    first = migrations[0]
    edited_file = dataclasses.replace(first.for_mode("plain"), sql="-- edited\n", checksum="0" * 64)
    migrations[0] = dataclasses.replace(first, files={edited_file.variant: edited_file})
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(database_url, timescaledb="off", migrations=migrations)


async def test_unknown_applied_version_is_refused(database_url: str) -> None:
    await migrate(database_url, timescaledb="off")
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO occ_schema_migrations (version, name, variant, checksum) VALUES (9999, 'future', "
            "'common', 'x')"
        )
    finally:
        await conn.close()
    with pytest.raises(MigrationError, match="does not know"):
        await migrate(database_url, timescaledb="off")


async def test_mode_is_kept_and_contradictions_refused(database_url: str) -> None:
    await migrate(database_url, timescaledb="off")
    assert (await migrate(database_url, timescaledb="auto")).mode == "plain"
    with pytest.raises(MigrationError, match="plain PostgreSQL path"):
        await migrate(database_url, timescaledb="on")


async def test_timescaledb_on_without_the_extension_fails_clearly(database_url: str) -> None:
    available = await fetchval(database_url, "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
    if available:
        pytest.skip("this server has timescaledb")
    with pytest.raises(MigrationError, match="no timescaledb extension"):
        await migrate(database_url, timescaledb="on")
    assert (await migrate(database_url, timescaledb="auto")).mode == "plain"


def test_discover_validates_file_names(tmp_path: Path) -> None:
    (tmp_path / "0001_core.sql").write_text("SELECT 1;")
    (tmp_path / "0002_readings.plain.sql").write_text("SELECT 2;")
    with pytest.raises(MigrationError, match="needs both"):
        discover(tmp_path)
    (tmp_path / "0002_readings.timescale.sql").write_text("SELECT 3;")
    assert [m.version for m in discover(tmp_path)] == [1, 2]
    (tmp_path / "3_bad.sql").write_text("SELECT 4;")
    with pytest.raises(MigrationError, match="is not NNNN_name"):
        discover(tmp_path)


async def test_connect_without_migrating_needs_a_schema(database_url: str) -> None:
    with pytest.raises(MigrationError, match="no OCC schema"):
        await Store.connect(database_url, migrate=False)


# --- write path ----------------------------------------------------------------------------------------------


async def test_write_batch_is_idempotent(store: Store, database_url: str, write_path: str) -> None:
    batch = rows_at(T0, 50)
    first = await store.write_batch(batch, received_at=T0)
    assert (first.inserted, first.duplicates) == (50, 0)
    again = await store.write_batch(batch, received_at=T0 + timedelta(seconds=5))
    assert (again.inserted, again.duplicates) == (0, 50)
    overlap = rows_at(T0 + timedelta(minutes=25), 50)  # 25 already stored, 25 new
    third = await store.write_batch(overlap, received_at=T0)
    assert (third.inserted, third.duplicates) == (25, 25)
    assert await fetchval(database_url, "SELECT count(*) FROM readings") == 75


async def test_duplicates_inside_one_batch_first_wins(store: Store, database_url: str, write_path: str) -> None:
    batch = [
        ("st1", "rain_mm", T0, 1.0, 0),
        ("st1", "rain_mm", T0, 2.0, 0),  # same key: the first occurrence is stored
        ("st1", "rain_mm", T0 + timedelta(minutes=1), 3.0, 0),
        ("st1", "rain_mm", T0 + timedelta(minutes=1), 4.0, 1),
    ]
    result = await store.write_batch(batch, received_at=T0)
    assert (result.inserted, result.duplicates) == (2, 2)
    stored = await fetch(database_url, "SELECT value, quality FROM readings ORDER BY ts")
    assert [(r["value"], r["quality"]) for r in stored] == [(1.0, 0), (3.0, 0)]
    latest = await store.latest(["st1"])
    assert [(v.value, v.ts) for v in latest] == [(3.0, T0 + timedelta(minutes=1))]


async def test_latest_only_moves_forward(store: Store, write_path: str) -> None:
    await store.write_batch(
        [("st1", "rain_mm", T0 + timedelta(hours=1), 5.0, 0), ("st1", "level_m", T0, 100.5, 0)], received_at=T0
    )
    # Store-and-forward backfill of older data must not replace the latest value.
    backfill = rows_at(T0 - timedelta(hours=6), 300)
    await store.write_batch(backfill, received_at=T0 + timedelta(minutes=1))
    latest = {(v.device_id, v.metric): v for v in await store.latest()}
    assert latest[("st1", "rain_mm")].value == 5.0
    assert latest[("st1", "rain_mm")].ts == T0 + timedelta(hours=1)
    assert latest[("st1", "rain_mm")].received_at == T0
    await store.write_batch([("st1", "rain_mm", T0 + timedelta(hours=2), 7.0, 1)], received_at=T0)
    newest = (await store.latest(["st1"], ["rain_mm"]))[0]
    assert (newest.value, newest.quality, newest.ts) == (7.0, 1, T0 + timedelta(hours=2))
    assert [v.metric for v in await store.latest(metrics=["level_m"])] == ["level_m"]
    assert await store.latest(["nobody"]) == []


async def test_both_write_paths_mark_the_same_hours_and_series(
    store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Maintenance reads what writers mark (rollup_dirty): the two write paths must leave the same marks and the
    same readings and `latest`, for live batches and for a backfill spread over days."""
    live = rows_at(T0, 30) + rows_at(T0, 30, metric="level_m")
    backfill = rows_at(T0 - timedelta(days=3), 5, step_s=86_400 // 5)
    states = []
    for small in (0, 1_000_000):
        monkeypatch.setattr(writes, "SMALL_BATCH", small)
        for batch in (live, backfill, live[:10]):
            await store.write_batch(batch, received_at=T0)
        states.append((
            await fetch(database_url, "SELECT device_id, metric, ts, value, quality FROM readings ORDER BY 1, 2, 3"),
            await fetch(database_url, "SELECT device_id, metric, ts, value, received_at FROM latest ORDER BY 1, 2"),
            await fetch(database_url, "SELECT bucket, series FROM rollup_dirty ORDER BY id"),
        ))
        await fetchval(database_url, "TRUNCATE series_readings, latest, rollup_dirty")
    assert states[0] == states[1]
    assert len(states[0][0]) == 65 and len(states[0][2]) == 1 + 5  # live: its hour; backfill: its five hours


async def test_a_warm_pool_opens_every_connection_at_connect(database_url: str) -> None:
    """Ingest's pool (pool_warm) never opens a connection in the middle of the stream; the default opens one."""
    for warm, expected in ((True, 3), (False, 1)):
        s = await Store.connect(database_url, timescaledb="off", pool_size=3, pool_warm=warm)
        try:
            assert s._pool.get_size() == expected
        finally:
            await s.close()


async def test_small_batches_look_up_their_series_by_key(store: Store, database_url: str) -> None:
    """A small batch's `latest` upsert finds each reading's (device, metric) by the series' primary key. From
    about ten readings on, the planner used to prefer a hash join over a sequential scan of all of `series`, on
    every batch (migration 0041): a cost that grew with the number of series."""
    await store.write_batch([(f"st{i:04d}", "rain_mm", T0, 1.0, 0) for i in range(3000)], received_at=T0)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("ANALYZE series")
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM series ORDER BY id LIMIT 160")]
        async with conn.transaction():
            for k, n in enumerate((1, 5, 15, 30, 15, 15, 15, 15, 15, 34)):  # custom plans, then the generic one
                batch, ids = ids[:n], ids[n:]
                await conn.execute(
                    "SELECT occ_batch_written($1, $2, $3, $4, $5, $6, NULL)",
                    batch, [10**15 + k] * n, [2.0] * n, [0] * n, T0, [T0],
                )
            scans = await conn.fetchval("SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'series'")
    finally:
        await conn.close()
    assert scans == 0
    assert await fetchval(database_url, "SELECT count(*) FROM latest WHERE value = 2.0") == 160


async def test_events_statuses_dead_letters_and_unprovisioned(store: Store) -> None:
    events = [
        Event("cam1", T0, "incident", {"kind": "landslide", "confidence": 0.9}),
        Event("cam1", T0, "incident", {"kind": "dup"}),  # same key inside the batch
        Event("cam2", T0 + timedelta(seconds=1), "vehicle", {"plate": "23A-\x00123"}),
    ]
    statuses = [StatusChange("st1", "online", T0), StatusChange("st1", "offline", T0 + timedelta(minutes=5))]
    letters = [
        DeadLetter(T0, "occ/v1/hydromet/st9/telemetry", b"\xff\x00garbage", "undecodable JSON",
                   RejectCode.NOT_UTF8, "st9")
    ]
    result = await store.write_batch(
        rows_at(T0, 3),
        events=events,
        statuses=statuses,
        dead_letters=letters,
        unprovisioned={"st9": "hydromet"},
        received_at=T0,
    )
    assert (result.inserted, result.events_inserted, result.dead_lettered, result.status_changes) == (3, 2, 1, 2)
    again = await store.write_batch([], events=events[:1], received_at=T0)
    assert again.events_inserted == 0

    stored = await store.events()
    assert [(e.device_id, e.type) for e in stored] == [("cam2", "vehicle"), ("cam1", "incident")]
    assert stored[1].data == {"kind": "landslide", "confidence": 0.9}
    assert stored[0].data == {"plate": "23A-\ufffd123"}  # NUL cannot be stored in jsonb; replaced, not fatal
    assert [e.device_id for e in await store.events(device_ids=["cam1"])] == ["cam1"]
    assert await store.events(types=["vehicle"], start=T0 + timedelta(seconds=2)) == []

    # An older status is history we missed, not the current state; a repeat is not a transition.
    later = await store.write_batch(
        [],
        statuses=[
            StatusChange("st1", "online", T0 + timedelta(minutes=1)),
            StatusChange("st1", "offline", T0 + timedelta(minutes=9)),
        ],
        received_at=T0 + timedelta(minutes=10),
    )
    assert later.status_changes == 0
    [status] = await store.device_status(["st1"])
    assert (status.status, status.since) == ("offline", T0 + timedelta(minutes=5))
    assert status.updated_at == T0 + timedelta(minutes=10)
    back = await store.write_batch(
        [], statuses=[StatusChange("st1", "online", T0 + timedelta(minutes=20))], received_at=T0
    )
    assert back.status_changes == 1
    assert [s for _, s in await store.status_history("st1")] == ["online", "offline", "online"]

    [letter] = await store.dead_letters()
    assert (letter.topic, letter.payload, letter.reason, letter.code, letter.device_id) == (
        "occ/v1/hydromet/st9/telemetry",
        b"\xff\x00garbage",
        "undecodable JSON",
        "not_utf8",
        "st9",
    )
    assert await store.dead_letters(since=T0 + timedelta(seconds=1)) == []
    device = await store.get_device("st9")
    assert device is not None and (device.kind, device.provisioned) == ("hydromet", False)


async def test_a_failing_batch_stores_nothing(store: Store, database_url: str) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await store.write_batch(
            rows_at(T0, 10),
            statuses=[StatusChange("st1", "sideways", T0)],  # type: ignore[arg-type]
            received_at=T0,
        )
    assert await fetchval(database_url, "SELECT count(*) FROM readings") == 0
    assert await store.latest() == []
    assert (await store.write_batch(rows_at(T0, 10), received_at=T0)).inserted == 10


async def test_value_and_quality_types(store: Store, database_url: str) -> None:
    # Decoders may hand over ints, bools and Quality flags; all are stored as float8 / smallint.
    batch = [
        ("st1", "rain_mm", T0, 5, Quality.OUT_OF_RANGE),
        ("st1", "door_open", T0, True, Quality.OUT_OF_RANGE | Quality.UNKNOWN_METRIC),
    ]
    assert (await store.write_batch(batch, received_at=T0)).inserted == 2
    latest = {v.metric: (v.value, v.quality) for v in await store.latest()}
    assert latest == {"rain_mm": (5.0, 1), "door_open": (1.0, 3)}


async def test_write_batch_requires_aware_times(store: Store) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.write_batch([], received_at=datetime(2026, 1, 1))


async def test_empty_batch(store: Store) -> None:
    assert await store.write_batch([], received_at=T0) == (await store.write_batch((), received_at=T0))


async def test_concurrent_writers_with_overlapping_keys(store: Store, database_url: str) -> None:
    # Two ingest workers writing the same devices at once (shared subscription after a redelivery).
    batches = [
        [(f"st{d}", "rain_mm", T0 + timedelta(seconds=s), float(s), 0) for d in range(50) for s in range(20)]
        for _ in range(4)
    ]
    results = await asyncio.gather(*(store.write_batch(b, received_at=T0) for b in batches))
    assert sum(r.inserted for r in results) == 1000
    assert sum(r.duplicates for r in results) == 3000
    assert await fetchval(database_url, "SELECT count(*) FROM latest") == 50


# --- devices -------------------------------------------------------------------------------------------------


async def test_devices(store: Store) -> None:
    devices = [
        Device("st1", "hydromet", "Trạm Hà Giang", 22.82, 104.98, "Hà Giang city", {"alarm_levels": [99.5, 101.0]}),
        Device("cam1", "camera", "Cầu Yên Biên", 22.81, 104.97, "Hà Giang city"),
        Device("st2", "hydromet", "Bắc Quang", 22.49, 104.86, "Bắc Quang", {"report_interval_s": 600}),
    ]
    assert await store.upsert_devices(devices) == 3
    assert await store.upsert_devices(devices) == 0  # unchanged rows are not rewritten
    moved = dataclasses.replace(devices[0], attributes={"alarm_levels": [99.5, 101.2]})
    assert await store.upsert_devices([moved]) == 1
    assert [d.id for d in await store.list_devices(kind="hydromet")] == ["st1", "st2"]
    assert [d.id for d in await store.list_devices(area="Bắc Quang")] == ["st2"]
    assert await store.get_device("st1") == moved
    assert (await store.get_device("st2")).report_interval_s == 600  # type: ignore[union-attr]
    assert await store.register_unprovisioned({"st1": "camera", "gw7": "hydromet"}) == 1
    assert (await store.get_device("st1")).kind == "hydromet"  # type: ignore[union-attr]
    assert [d.id for d in await store.list_devices(provisioned=False)] == ["gw7"]
    assert await store.get_device("nobody") is None


# --- operations ----------------------------------------------------------------------------------------------


async def test_status_and_ping(store: Store) -> None:
    await store.write_batch(rows_at(T0, 5), received_at=T0)
    assert await store.ping() >= 0
    info = await store.status()
    assert info["mode"] == "plain"
    assert [m["version"] for m in info["migrations"]] == [m.version for m in discover()]
    assert info["newest_reading"] == T0 + timedelta(minutes=4)
    assert info["oldest_reading"] == T0
    assert {"readings", "latest", "readings_1h", "dead_letters"} <= set(info["tables"])
    assert info["pending_rollup_hours"] == 1
    assert info["settings"]["retention_days"] == "730"


async def test_status_counts_small_tables_exactly(store: Store) -> None:
    """Issue 9 item 7: right after an import (no ANALYZE yet) the planner's estimate for devices is 0."""
    await store.upsert_devices([Device(f"HG-{i:03d}", "hydromet") for i in range(135)])
    await store.write_batch(rows_at(T0, 7), received_at=T0)
    tables = (await store.status())["tables"]
    assert (tables["devices"]["rows"], tables["devices"]["exact"]) == (135, True)
    assert (tables["readings"]["rows"], tables["readings"]["exact"]) == (7, True)
    assert tables["latest"]["rows"] == 1


async def test_maintenance_report_reads_as_text(store: Store) -> None:
    await store.write_batch(rows_at(T0, 5), received_at=T0)
    report = await store.maintain(now=T0 + timedelta(days=2))
    text = str(report)
    assert "MaintenanceReport(" not in text
    lines = text.splitlines()
    assert lines[0].startswith("maintenance done in ") and lines[0].endswith(" s")
    assert lines[1] == "  rollups: 1 hour and 1 day refreshed; 0 hours and 0 days pending " \
        "(not yet complete, or left for the next run)"
    assert str(dataclasses.replace(report, skipped=True)).startswith("maintenance skipped: another process")


# --- the database going away ---------------------------------------------------------------------------------


async def test_unreachable_server_raises_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable):
        await Store.connect("postgresql://occ@127.0.0.1:1/occ", connect_timeout=2)
    with pytest.raises(StoreUnavailable):
        await migrate("postgresql://occ@127.0.0.1:1/occ", connect_timeout=2)


class FaultProxy:
    """A TCP proxy in front of PostgreSQL that can cut every connection and refuse new ones (as in asyncpg's
    adversity tests), then come back on the same port."""

    def __init__(self, target: tuple[str, int] | str) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _open_target(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if isinstance(self.target, str):
            return await asyncio.open_unix_connection(self.target)
        return await asyncio.open_connection(*self.target)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await self._open_target()
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        tasks = [asyncio.create_task(pump(reader, up_writer)), asyncio.create_task(pump(up_reader, writer))]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.difference_update(tasks)
        self._writers -= {writer, up_writer}

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def stop(self) -> None:
        await self.cut()


def proxied(url: str, port: int) -> tuple[str, tuple[str, int] | str]:
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    host = query.get("host", [parsed.hostname or "/tmp"])[0]
    target_port = parsed.port or int(query.get("port", ["5432"])[0])
    target: tuple[str, int] | str = (
        f"{host}/.s.PGSQL.{target_port}" if host.startswith("/") else (host, target_port)
    )
    auth = parsed.username or ""
    if parsed.password:
        auth += f":{parsed.password}"
    netloc = f"{auth}@127.0.0.1:{port}" if auth else f"127.0.0.1:{port}"
    return urlunparse(("postgresql", netloc, parsed.path, "", "", "")), target


async def test_store_unavailable_when_the_connection_is_cut(database_url: str) -> None:
    await migrate(database_url, timescaledb="off")
    _, target = proxied(database_url, 0)
    proxy = FaultProxy(target)
    await proxy.start()
    url, _ = proxied(database_url, proxy.port)
    store = await Store.connect(url, pool_size=2, connect_timeout=3)
    try:
        assert (await store.write_batch(rows_at(T0, 10), received_at=T0)).inserted == 10
        await proxy.cut()
        batch = rows_at(T0 + timedelta(minutes=10), 10)
        with pytest.raises(StoreUnavailable):
            await store.write_batch(batch, received_at=T0)
        with pytest.raises(StoreUnavailable):
            await store.write_batch(batch, received_at=T0)  # new connections are refused too
        with pytest.raises(StoreUnavailable):
            await store.ping()
        await proxy.start()  # the database is back: the same batch goes through, nothing lost or doubled
        result = await store.write_batch(batch, received_at=T0)
        assert (result.inserted, result.duplicates) == (10, 0)
        assert await fetchval(database_url, "SELECT count(*) FROM readings") == 20
        # A blip between two batches (every pooled connection dead, server already back): the next batch
        # goes through at once on fresh connections instead of failing once per stale connection.
        assert await store.ping() >= 0
        await proxy.cut()
        await proxy.start()
        assert (await store.write_batch(rows_at(T0 + timedelta(hours=1), 5), received_at=T0)).inserted == 5
    finally:
        await store.close()
        await proxy.stop()


async def test_terminated_backends_are_replaced(store: Store, database_url: str) -> None:
    """The server ends our sessions (restart, failover, an operator): the next batch is written anyway."""
    async def hold_two() -> None:
        async with store._connection() as a, store._connection() as b:  # two live pooled connections
            await a.fetchval("SELECT 1")
            await b.fetchval("SELECT 1")

    await hold_two()
    conn = await asyncpg.connect(database_url)
    try:
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = 'occ'"
        )
        assert killed >= 2
    finally:
        await conn.close()
    await asyncio.sleep(0.2)  # let the termination notices arrive on the idle connections
    assert (await store.write_batch(rows_at(T0, 7), received_at=T0)).inserted == 7


async def test_remove_devices_keeps_history(store: Store) -> None:
    await store.upsert_devices([Device("st1", "hydromet"), Device("st2", "hydromet")])
    await store.write_batch(rows_at(T0, 3), statuses=[StatusChange("st1", "online", T0)], received_at=T0)
    assert await store.remove_devices(["st1", "nobody", "st1"]) == ["st1"]
    assert [d.id for d in await store.list_devices()] == ["st2"]
    assert await store.latest(["st1"]) == [] and await store.device_status(["st1"]) == []
    assert len(await store.history("st1", "rain_mm", T0, T0 + timedelta(hours=1), bucket="raw")) == 3
    assert await store.remove_devices([]) == []
