"""Versioned SQL migrations, safe to run from many processes at once (N ingest workers start together).

Files live in `occ/store/migrations/` as `NNNN_name.sql` (both modes) or as a pair `NNNN_name.timescale.sql` +
`NNNN_name.plain.sql`. The runner takes a PostgreSQL advisory lock, picks the storage mode once (recorded in
`occ_settings`, never changed afterwards), applies pending versions in order, each in its own transaction,
and records (version, name, variant, checksum, applied_at) in `occ_schema_migrations`. It refuses to run when
an applied file has changed, or when the database has versions this code does not know.

Files may use `${name}` placeholders for the values in `MIGRATION_PARAMS`; they are replaced by quoted SQL
literals. The checksum covers the file as written, so a different setting never looks like an edited file.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import asyncpg

from occ.errors import OccError
from occ.store.connection import connect_one
from occ.store.settings import StoreSettings

log = logging.getLogger(__name__)

Mode = Literal["timescale", "plain"]
Variant = Literal["common", "timescale", "plain"]

MIN_TIMESCALEDB = (2, 11)
"""Oldest TimescaleDB this schema supports: primary-key checks on compressed chunks (backfill) need 2.11."""

# pg_advisory_lock key for migrations: the bytes of "OCC:MIGR" as a signed 64-bit integer.
MIGRATION_LOCK_KEY = int.from_bytes(b"OCC:MIGR", "big", signed=True)

MIGRATION_PARAMS = ("timezone", "chunk_interval", "compress_after", "retention")

_FILE_RE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+?)(?:\.(?P<variant>timescale|plain))?\.sql$")
_PLACEHOLDER_RE = re.compile(r"\$\{([a-z_]+)\}")
_NO_TRANSACTION = "-- occ:no-transaction"

_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS occ_schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    variant    text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS occ_settings (
    key        text PRIMARY KEY,
    value      text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"""


class MigrationError(OccError, RuntimeError):
    """The schema cannot be brought up to date safely; nothing further was applied."""


@dataclass(frozen=True, slots=True)
class MigrationFile:
    version: int
    name: str
    variant: Variant
    filename: str
    sql: str
    checksum: str

    @property
    def transactional(self) -> bool:
        return not self.sql.lstrip().startswith(_NO_TRANSACTION)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    files: Mapping[Variant, MigrationFile]

    def for_mode(self, mode: Mode) -> MigrationFile:
        return self.files.get("common") or self.files[mode]


@dataclass(frozen=True, slots=True)
class AppliedMigration:
    version: int
    name: str
    variant: str
    checksum: str
    applied_at: datetime


@dataclass(frozen=True, slots=True)
class MigrateResult:
    mode: Mode
    applied: list[int] = field(default_factory=list)
    """Versions applied by this call (empty when the schema was already current)."""
    version: int = 0
    """Highest applied version after this call."""
    timescaledb_version: str | None = None


def discover(directory: Path | None = None) -> list[Migration]:
    """Read and validate the migration files, in version order."""
    entries: list[tuple[str, str]] = []
    if directory is None:
        root = resources.files("occ.store").joinpath("migrations")
        for item in root.iterdir():
            if item.name.endswith(".sql"):
                entries.append((item.name, item.read_text(encoding="utf-8")))
    else:
        for path in directory.iterdir():
            if path.name.endswith(".sql"):
                entries.append((path.name, path.read_text(encoding="utf-8")))
    by_version: dict[int, dict[Variant, MigrationFile]] = {}
    for filename, sql in sorted(entries):
        match = _FILE_RE.match(filename)
        if not match:
            raise MigrationError(f"migration file name {filename!r} is not NNNN_name[.timescale|.plain].sql")
        version = int(match["version"])
        variant: Variant = match["variant"] or "common"  # type: ignore[assignment]
        checksum = hashlib.sha256(sql.encode("utf-8")).hexdigest()
        files = by_version.setdefault(version, {})
        files[variant] = MigrationFile(version, match["name"], variant, filename, sql, checksum)
    migrations: list[Migration] = []
    for version in sorted(by_version):
        files = by_version[version]
        names = {f.name for f in files.values()}
        if len(names) != 1:
            raise MigrationError(f"migration {version:04d} has files with different names: {sorted(names)}")
        if "common" in files and len(files) > 1:
            raise MigrationError(f"migration {version:04d} has both a common file and mode variants")
        if "common" not in files and set(files) != {"timescale", "plain"}:
            raise MigrationError(f"migration {version:04d} needs both .timescale.sql and .plain.sql variants")
        migrations.append(Migration(version, names.pop(), files))
    return migrations


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _interval(value: timedelta) -> str:
    return _literal(f"{int(value.total_seconds())} seconds")


def render(sql: str, params: Mapping[str, str]) -> str:
    """Replace `${name}` placeholders by the given (already quoted) SQL literals."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in params:
            raise MigrationError(f"unknown placeholder ${{{name}}} in migration")
        return params[name]

    return _PLACEHOLDER_RE.sub(substitute, sql)


def migration_params(settings: StoreSettings) -> dict[str, str]:
    """The `${name}` values of the migration files (StoreSettings has validated them)."""
    return {
        "timezone": _literal(settings.timezone),
        "chunk_interval": _interval(settings.chunk_interval),
        "compress_after": _interval(timedelta(days=settings.compress_after_days)),
        "retention": _interval(timedelta(days=settings.retention_days)),
    }


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        digits = re.match(r"\d+", piece)
        parts.append(int(digits.group(0)) if digits else 0)
    return tuple(parts)


async def _detect_mode(url: str, want: str, connect_kwargs: Mapping[str, Any]) -> tuple[Mode, str | None]:
    """Decide the storage mode for a database that has none recorded yet (see DatabaseConfig.timescaledb)."""
    if want not in ("auto", "on", "off"):
        raise MigrationError(f"timescaledb must be auto, on or off, not {want!r}")
    if want == "off":
        return "plain", None
    # A separate connection: a failed CREATE EXTENSION (library not preloaded) can end the session.
    conn = await connect_one(url, **connect_kwargs)
    try:
        available = await conn.fetchval(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'"
        )
        if available is None:
            if want == "on":
                raise MigrationError(
                    "database.timescaledb is 'on' but this PostgreSQL server has no timescaledb extension "
                    "(not in pg_available_extensions): install TimescaleDB or set it to 'auto' or 'off'"
                )
            log.info("timescaledb extension not available: using the plain PostgreSQL storage path")
            return "plain", None
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if want == "on":
                raise MigrationError(
                    f"cannot create extension timescaledb: {exc} (it must be listed in "
                    "shared_preload_libraries and the role needs the right to create extensions)"
                ) from exc
            log.warning("timescaledb is available but could not be created (%s): using plain PostgreSQL", exc)
            return "plain", None
        version = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    finally:
        await conn.close(timeout=5)
    return _check_version(version, want)


def _check_version(version: str, want: str) -> tuple[Mode, str | None]:
    if _version_tuple(version) < MIN_TIMESCALEDB:
        need = ".".join(map(str, MIN_TIMESCALEDB))
        if want == "on":
            raise MigrationError(f"TimescaleDB {version} is too old: OCC needs {need} or newer")
        log.warning("TimescaleDB %s is older than %s: using the plain PostgreSQL storage path", version, need)
        return "plain", None
    return "timescale", version


async def applied_migrations(conn: asyncpg.Connection) -> list[AppliedMigration]:
    exists = await conn.fetchval("SELECT to_regclass('occ_schema_migrations') IS NOT NULL")
    if not exists:
        return []
    rows = await conn.fetch(
        "SELECT version, name, variant, checksum, applied_at FROM occ_schema_migrations ORDER BY version"
    )
    return [AppliedMigration(**dict(row)) for row in rows]


def verify(applied: list[AppliedMigration], migrations: list[Migration]) -> None:
    """Refuse a database whose applied migrations differ from the files this code carries."""
    known = {m.version: m for m in migrations}
    for record in applied:
        migration = known.get(record.version)
        if migration is None:
            raise MigrationError(
                f"the database has migration {record.version:04d}_{record.name}, which this version of OCC "
                "does not know (the schema is newer than the code): upgrade OCC"
            )
        file = migration.files.get(record.variant)  # type: ignore[call-overload]
        if file is None or file.checksum != record.checksum:
            raise MigrationError(
                f"migration {record.version:04d}_{record.name} ({record.variant}) was changed after it was "
                "applied (checksum mismatch): applied migrations must never be edited; add a new one instead"
            )


async def migrate(
    url: str,
    settings: StoreSettings | None = None,
    *,
    migrations: list[Migration] | None = None,
    **overrides: Any,
) -> MigrateResult:
    """Bring the schema at `url` up to date; a no-op when it already is. Safe to call concurrently.

    `settings` (or the defaults), with any StoreSettings field given as a keyword replacing its value. The
    storage mode is chosen the first time (`timescaledb` = auto | on | off) and recorded; later calls keep it
    and fail when `on`/`off` contradicts it. `timezone` fixes the 1-day rollup buckets at creation time.
    """
    settings = StoreSettings.build(settings, **overrides)
    migrations = discover() if migrations is None else migrations
    params = migration_params(settings)
    connect_kwargs = {"connect_timeout": settings.connect_timeout}
    conn = await connect_one(url, **connect_kwargs)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            return await _migrate_locked(
                conn, url, migrations, params, settings.timescaledb, settings.timezone, connect_kwargs
            )
        finally:
            if not conn.is_closed():
                await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        await conn.close(timeout=5)


async def _migrate_locked(
    conn: asyncpg.Connection,
    url: str,
    migrations: list[Migration],
    params: Mapping[str, str],
    want: str,
    timezone: str,
    connect_kwargs: Mapping[str, Any],
) -> MigrateResult:
    await conn.execute(_BOOTSTRAP)
    applied = await applied_migrations(conn)
    verify(applied, migrations)
    recorded = await conn.fetchval("SELECT value FROM occ_settings WHERE key = 'mode'")
    ts_version: str | None = None
    if recorded is None:
        installed = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
        if installed is not None and want != "off":
            # Created beforehand (by a DBA, or an earlier attempt): no need to probe on a second connection.
            mode, ts_version = _check_version(installed, want)
        else:
            mode, ts_version = await _detect_mode(url, want, connect_kwargs)
        await conn.execute(
            "INSERT INTO occ_settings (key, value) VALUES ('mode', $1), ('rollup_timezone', $2) "
            "ON CONFLICT (key) DO NOTHING",
            mode,
            timezone,
        )
    else:
        mode = recorded
        if want == "on" and mode != "timescale":
            raise MigrationError(
                "database.timescaledb is 'on' but this database was created on the plain PostgreSQL path; "
                "converting an existing database is not supported"
            )
        if want == "off" and mode != "plain":
            raise MigrationError("database.timescaledb is 'off' but this database uses TimescaleDB")
        if mode == "timescale":
            ts_version = await conn.fetchval(
                "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
            )
            if ts_version is None:
                raise MigrationError("the database was created with TimescaleDB but the extension is missing")
    done = {record.version for record in applied}
    newly: list[int] = []
    for migration in migrations:
        if migration.version in done:
            continue
        file = migration.for_mode(mode)
        sql = render(file.sql, params)
        log.info("applying migration %s", file.filename)
        if file.transactional:
            async with conn.transaction():
                await conn.execute(sql)
                await _record(conn, file)
        else:
            await conn.execute(sql)
            await _record(conn, file)
        newly.append(migration.version)
    version = max(done | set(newly), default=0)
    return MigrateResult(mode=mode, applied=newly, version=version, timescaledb_version=ts_version)


async def _record(conn: asyncpg.Connection, file: MigrationFile) -> None:
    await conn.execute(
        "INSERT INTO occ_schema_migrations (version, name, variant, checksum) VALUES ($1, $2, $3, $4)",
        file.version,
        file.name,
        file.variant,
        file.checksum,
    )
