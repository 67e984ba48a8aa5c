"""Connecting to PostgreSQL, and telling "the database is unreachable" (retry later) from data errors.

Connection failures become `occ.errors.StoreUnavailable` so ingest keeps its messages unacknowledged and
retries (docs/architecture.md §3); every other database error propagates unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson

from occ.errors import StoreUnavailable

log = logging.getLogger(__name__)

SERVER_SETTINGS: Mapping[str, str] = {
    "application_name": "occ",
    # All SQL here converts time zones explicitly; UTC keeps anything implicit deterministic.
    "TimeZone": "UTC",
    # Short OLTP-style statements: JIT compilation only adds latency.
    "jit": "off",
}

_TRANSIENT_POSTGRES_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # class 08, includes ConnectionDoesNotExistError
    asyncpg.exceptions.CannotConnectNowError,  # 57P03: starting up / shutting down / recovering
    asyncpg.exceptions.AdminShutdownError,  # 57P01
    asyncpg.exceptions.CrashShutdownError,  # 57P02
    asyncpg.exceptions.IdleSessionTimeoutError,
    asyncpg.exceptions.TooManyConnectionsError,  # 53300
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # 25006: a failover left us on a replica
)


class ConnectionLost(StoreUnavailable):
    """An established connection broke (server restart, network cut, backend terminated). The statement may
    or may not have committed; idempotent work can retry at once on a fresh connection."""


def is_connection_error(exc: BaseException) -> bool:
    """True when `exc` means the server cannot be reached or the session was lost (worth retrying)."""
    if isinstance(exc, StoreUnavailable):
        return True
    if isinstance(exc, (OSError, TimeoutError, *_TRANSIENT_POSTGRES_ERRORS)):
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        text = str(exc)
        return "connection is closed" in text or "connection was closed" in text
    return False


def unavailable(exc: BaseException) -> StoreUnavailable:
    if isinstance(exc, StoreUnavailable):
        return exc
    detail = str(exc) or type(exc).__name__
    error = StoreUnavailable(f"database unavailable: {detail}")
    error.__cause__ = exc
    return error


@asynccontextmanager
async def translate_errors() -> AsyncIterator[None]:
    """Re-raise connection failures inside the block as StoreUnavailable."""
    try:
        yield
    except BaseException as exc:
        if is_connection_error(exc):
            raise unavailable(exc) from exc
        raise


def _lost(exc: BaseException, conn: asyncpg.Connection) -> bool:
    if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
        return False
    # A server shutdown message arriving on an idle connection can leave asyncpg's protocol in a state where
    # the next statement fails with InternalClientError ("cannot switch to state ..."): the session is gone.
    if is_connection_error(exc) or isinstance(exc, asyncpg.exceptions.InternalClientError):
        return True
    return _is_closed(conn)


def _is_closed(conn: asyncpg.Connection) -> bool:
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:  # the pool already took back a connection that closed under us
        return True


@asynccontextmanager
async def pooled(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A pool connection. Failing to get one raises StoreUnavailable; losing it while in use raises
    ConnectionLost (and the broken connection is discarded, never handed out again)."""
    async with translate_errors():
        conn = await pool.acquire()
    try:
        yield conn
    except BaseException as exc:
        if _lost(exc, conn):
            with contextlib.suppress(Exception):
                conn.terminate()
                await pool.release(conn)
            error = ConnectionLost(f"database connection lost: {str(exc) or type(exc).__name__}")
            raise error from exc
        await _release(pool, conn)
        raise
    await _release(pool, conn)


async def _release(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    # The work is done (committed or rolled back); a connection that fails its reset is terminated by asyncpg
    # and replaced later, which is no reason to report the work as failed.
    try:
        await pool.release(conn)
    except Exception as exc:
        log.debug("discarding a connection that failed to reset: %s", exc)


def _json_dumps(value: Any) -> str:
    text = orjson.dumps(value).decode()
    # jsonb rejects \u0000; a device sending one must not make its whole batch fail forever.
    return text.replace("\\u0000", "\\ufffd") if "\\u0000" in text else text


# Session-private staging tables for the write path, made once per pooled connection. ON COMMIT DELETE ROWS
# empties them at the end of each transaction that used them, without the catalog churn of TRUNCATE.
STAGING_TABLES = (
    "CREATE TEMP TABLE IF NOT EXISTS occ_latest_staging (series_id integer, device_id text, metric text, "
    "ts timestamptz, value double precision, quality smallint) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS occ_series_staging (seq bigint GENERATED ALWAYS AS IDENTITY, "
    "ts timestamptz, value double precision, series_id integer, quality smallint) ON COMMIT DELETE ROWS",
)


async def init_connection(conn: asyncpg.Connection) -> None:
    """Per-connection setup: jsonb as Python objects (orjson both ways), staging tables."""
    await conn.set_type_codec("jsonb", encoder=_json_dumps, decoder=orjson.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=_json_dumps, decoder=orjson.loads, schema="pg_catalog")
    await conn.execute(";".join(STAGING_TABLES))


async def connect_one(url: str, *, connect_timeout: float = 10.0, **kwargs: Any) -> asyncpg.Connection:
    """One connection (migrations, maintenance locks); StoreUnavailable when the server is unreachable."""
    settings = dict(SERVER_SETTINGS)
    settings.update(kwargs.pop("server_settings", {}) or {})
    async with translate_errors():
        return await asyncpg.connect(url, timeout=connect_timeout, server_settings=settings, **kwargs)


async def keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset: nothing beyond what asyncpg always does (roll back an open transaction, drop listeners).

    asyncpg's default reset sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;` on EVERY
    release: one more round trip per store call, as long as the query itself for a 24 h history (issue 12 item
    4). The store leaves no session state behind: settings are SET LOCAL, results are fetched whole (no cursors),
    nothing LISTENs, and the one session-level advisory lock (maintenance) is released in a `finally` that
    terminates the connection when the unlock cannot run. Its temporary staging tables are meant to stay."""


async def create_pool(
    url: str, *, size: int, warm: bool = False, connect_timeout: float = 10.0, **kwargs: Any
) -> asyncpg.Pool:
    """`warm`: all `size` connections opened now and kept however long they are idle (StoreSettings.pool_warm)."""
    settings = dict(SERVER_SETTINGS)
    settings.update(kwargs.pop("server_settings", {}) or {})
    async with translate_errors():
        pool = await asyncpg.create_pool(
            url,
            min_size=size if warm else 1,
            max_size=size,
            max_inactive_connection_lifetime=0 if warm else 300.0,
            timeout=connect_timeout,
            server_settings=settings,
            init=init_connection,
            reset=keep_session,
            **kwargs,
        )
    assert pool is not None
    return pool
