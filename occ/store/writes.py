"""The ingest write path: one batch (readings, latest, rollup bookkeeping, events, statuses, dead letters,
unprovisioned devices) in ONE transaction, idempotent on (device, metric, ts). The caller acknowledges its
MQTT messages only after `write_batch` returns (docs/architecture.md, "Delivery guarantees")."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import numpy as np

from occ.models import DeadLetter, Event, ReadingRow, StatusChange
from occ.store import rollups
from occ.store.base import StoreBase, clean_text, require_aware, rowcount
from occ.store.binary_copy import LATEST_COLUMNS, SERIES_COLUMNS, SeriesColumns, key_prefix, latest_payload
from occ.store.connection import ConnectionLost
from occ.store.records import WriteResult
from occ.store.registry import REGISTER_UNPROVISIONED

log = logging.getLogger(__name__)

DEAD_LETTER_COLUMNS = ("received_at", "topic", "payload", "reason", "code", "device_id")
_RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
_WRITE_ATTEMPTS = 3

# Lock order (issue 11 item 5): every statement below that can wait on another writer's rows takes them in
# key order, and write_batch runs them in one fixed table order (readings, latest, events, device_status,
# devices), so two transactions can wait on each other but never in a cycle. Within a key, `seq` keeps the
# batch order, so the first occurrence of a reading repeated inside a batch is the one stored.
# Readings are stored under integer series ids on both storage paths (migrations 0030, 0032).
_INSERT_SERIES_FROM_STAGING = (
    "INSERT INTO series_readings (ts, value, series_id, quality) "
    "SELECT ts, value, series_id, quality FROM occ_series_staging ORDER BY series_id, ts, seq "
    "ON CONFLICT (series_id, ts) DO NOTHING"
)
# New series are registered in their own statement before the batch's transaction (a series row is harmless
# if the batch then fails), in key order so that concurrent registrations wait instead of deadlocking.
# A batch of at most SMALL_BATCH readings and nothing else (the live stream between bursts) is written by one
# statement in autocommit: one round trip, where the COPY path takes six (BEGIN, the readings' COPY and its data,
# the `latest` staging COPY and its data, the rest with the COMMIT). On a busy machine each round trip waits for
# a core on both sides; a larger batch is written by COPY, which costs the server less per reading (issue 8).
SMALL_BATCH = 1000
_WRITE_READINGS = (
    "SELECT occ_write_readings($1::text::integer[], $2::text::bigint[], $3::text::double precision[], "
    "$4::text::smallint[], $5::text::integer[], $6, $7::text::timestamptz[], $8::text::integer[])"
)
_REGISTER_SERIES = (
    "WITH k AS (SELECT * FROM unnest($1::text[], $2::text[]) AS u(device_id, metric)), "
    "ins AS (INSERT INTO series (device_id, metric) SELECT device_id, metric FROM k ORDER BY device_id, metric "
    "ON CONFLICT (device_id, metric) DO NOTHING RETURNING id, device_id, metric) "
    "SELECT id, device_id, metric FROM ins UNION ALL "
    "SELECT s.id, s.device_id, s.metric FROM series AS s JOIN k USING (device_id, metric)"
)
_INSERT_EVENTS = (
    "INSERT INTO events (device_id, ts, type, data, received_at) "
    "SELECT d, t, y, j, $5 "
    "FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::jsonb[]) AS u(d, t, y, j) "
    "ORDER BY d, t, y ON CONFLICT (device_id, ts, type) DO NOTHING"
)


def _numbers(values: list[int] | list[float]) -> str:
    """An array's text form for numbers (`str` of a float is its shortest exact form; NaN and inf are spelled
    the way PostgreSQL reads them)."""
    return "{" + ",".join(map(str, values)) + "}"


@dataclass(frozen=True, slots=True)
class BatchMarks:
    """What a batch leaves besides its readings: the newest reading per series (positions in the sorted
    columns) for `latest`, and for maintenance the hours touched with the series that touched them (0033)."""

    newest: np.ndarray
    hours: str
    """`timestamptz[]` text."""
    touched: str | None
    """`integer[]` text of the series touched, or None: every series (a batch that touched most of them makes
    its hours whole-hour work for maintenance anyway)."""

    @classmethod
    def of(cls, columns: SeriesColumns, known_series: int) -> BatchMarks:
        """`known_series`: how many series there are (about)."""
        newest = columns.newest()
        series = columns.series_id[newest].tolist()  # each series once, ascending
        hours = columns.hours(rollups.SMALL_SPAN_HOURS)
        return cls(
            newest,
            "{" + ",".join('"' + h.isoformat() + '"' for h in hours) + "}",
            None if len(series) >= rollups.WHOLE_SHARE * known_series else _numbers(series),
        )


def latest_and_marks_sql(marks: BatchMarks, received_at: datetime) -> str:
    """After a COPY batch's readings and its `occ_latest_staging` rows: the `latest` upsert and the dirty marks,
    as one simple query that the COMMIT can join. The literals are made here from an aware datetime and numbers
    (never from device input), so nothing needs escaping; parameters would have cost a round trip more.

    `latest` rows are locked in series-id order, as `occ_batch_written` (0036, 0041) does for small batches, so that
    writers on the two paths never wait on each other in a cycle."""
    touched = "NULL" if marks.touched is None else f"'{marks.touched}'::integer[]"
    return (
        "INSERT INTO latest AS l (device_id, metric, ts, value, quality, received_at) "
        f"SELECT device_id, metric, ts, value, quality, '{received_at.isoformat()}'::timestamptz "
        "FROM occ_latest_staging ORDER BY series_id "
        "ON CONFLICT (device_id, metric) DO UPDATE SET ts = excluded.ts, value = excluded.value, "
        "quality = excluded.quality, received_at = excluded.received_at WHERE excluded.ts > l.ts;"
        f"INSERT INTO rollup_dirty (bucket, series) SELECT unnest('{marks.hours}'::timestamptz[]), {touched}"
    )


def write_readings_args(columns: SeriesColumns, marks: BatchMarks, received_at: datetime) -> tuple[object, ...]:
    """The parameters of `_WRITE_READINGS` (migration 0036) for a small batch: the whole batch in one statement."""
    return (
        _numbers(columns.series_id.tolist()), _numbers(columns.ts.tolist()), _numbers(columns.value.tolist()),
        _numbers(columns.quality.tolist()), _numbers((marks.newest + 1).tolist()), received_at, marks.hours,
        marks.touched,
    )


async def _roll_back(conn: asyncpg.Connection) -> None:
    """End a failed write's transaction. A connection too broken for that is handled by the caller (`pooled`
    terminates a lost connection; the pool's release rolls back any transaction still open)."""
    if not conn.is_closed() and conn.is_in_transaction():
        try:
            await conn.execute("ROLLBACK")
        except Exception as exc:
            log.debug("rollback after a failed write failed too: %s", exc)


class Writes(StoreBase):
    """`write_batch`, the hot path of ingest."""

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
        require_aware("received_at", received_at)
        rows = rows if isinstance(rows, list) else list(rows)
        # The batch as sorted binary COPY columns (occ/store/binary_copy.py), which also give the newest reading
        # per series, the series touched and the hours touched (both storage paths: series_readings).
        event_list = list(events)
        status_list = sorted(statuses, key=lambda s: (s.device_id, s.ts))
        letters = [
            (
                letter.received_at,
                clean_text(letter.topic),
                letter.payload,
                clean_text(letter.reason),
                str(letter.code),
                letter.device_id,
            )
            for letter in dead_letters
        ]
        conflicts = lost = 0
        columns: SeriesColumns | None = None
        marks: BatchMarks | None = None
        latest_copy: memoryview | None = None
        finish = ""
        extras = bool(event_list or status_list or letters or unprovisioned)
        events_inserted = changes = 0
        while True:
            try:
                async with self._connection() as conn:
                    if columns is None and rows:
                        columns = SeriesColumns.build(await self._series_id_list(conn, rows), rows)
                        marks = BatchMarks.of(columns, max(self._series_total, len(self._series_prefixes)))
                    if columns is not None and marks is not None and not extras and len(columns) <= SMALL_BATCH:
                        args = write_readings_args(columns, marks, received_at)
                        inserted = await conn.fetchval(_WRITE_READINGS, *args)
                        return WriteResult(inserted=inserted, duplicates=len(rows) - inserted)
                    if latest_copy is None and columns is not None and marks is not None:  # once, not per retry
                        prefixes = self._series_prefixes
                        index = marks.newest
                        latest_copy = memoryview(  # a memoryview: asyncpg takes bytes for a file name
                            latest_payload([prefixes[s] for s in columns.series_id[index].tolist()], columns, index)
                        )
                        finish = latest_and_marks_sql(marks, received_at)
                    await conn.execute("BEGIN")
                    try:
                        inserted = await self._insert_series_readings(conn, columns)
                        if inserted and latest_copy is not None:  # a pure redelivery changes nothing more
                            await conn.copy_to_table(
                                "occ_latest_staging", source=latest_copy, columns=LATEST_COLUMNS, format="binary"
                            )
                        if inserted and not extras:
                            await conn.execute(f"{finish};COMMIT")  # the rest and the COMMIT: one round trip
                        else:
                            if inserted:
                                await conn.execute(finish)
                            events_inserted = await self._insert_events(conn, event_list, received_at)
                            changes = await self._apply_statuses(conn, status_list, received_at)
                            if letters:
                                await conn.copy_records_to_table(
                                    "dead_letters", records=letters, columns=DEAD_LETTER_COLUMNS
                                )
                            if unprovisioned:
                                ids = sorted(unprovisioned)
                                await conn.execute(REGISTER_UNPROVISIONED, ids, [unprovisioned[i] for i in ids])
                            await conn.execute("COMMIT")
                    except BaseException:
                        await _roll_back(conn)
                        raise
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

    async def _series_id_list(self, conn: asyncpg.Connection, rows: list[ReadingRow]) -> list[int]:
        """The series id of each reading, registering series seen for the first time. (A dict per device, not
        one keyed by (device, metric): no key tuple per reading.)"""
        ids = self._series_ids
        try:
            return [ids[r[0]][r[1]] for r in rows]
        except KeyError:
            pass
        missing = sorted({(r[0], r[1]) for r in rows if r[1] not in ids.get(r[0], ())})
        # A series another writer registers concurrently is committed but invisible to this statement's
        # snapshot (ON CONFLICT waited for it): the second round finds it.
        prefixes = self._series_prefixes
        for _ in range(3):
            found = await conn.fetch(_REGISTER_SERIES, [k[0] for k in missing], [k[1] for k in missing])
            for row in found:
                ids.setdefault(row["device_id"], {})[row["metric"]] = row["id"]
                prefixes[row["id"]] = key_prefix(row["id"], row["device_id"], row["metric"])
            missing = [k for k in missing if k[1] not in ids.get(k[0], ())]
            if not missing:
                break
        return [ids[r[0]][r[1]] for r in rows]

    @staticmethod
    async def _insert_series_readings(conn: asyncpg.Connection, columns: SeriesColumns | None) -> int:
        """Inside the caller's transaction. Fast path: COPY in key order (series_id, ts); almost every batch is
        new data. On a duplicate (redelivery, device retries, a key twice in the batch) the transaction is
        aborted: roll back, begin again, stage the same binary stream and insert only the new rows. (No
        savepoint around the COPY: it cost two round trips on every batch to save one on a rare one.)"""
        if columns is None or not len(columns):
            return 0
        payload = memoryview(columns.payload())  # not bytes: asyncpg takes bytes for a file name (os.fspath)
        try:
            await conn.copy_to_table("series_readings", source=payload, columns=SERIES_COLUMNS, format="binary")
            return len(columns)
        except asyncpg.UniqueViolationError:
            pass
        await conn.execute("ROLLBACK;BEGIN")
        await conn.copy_to_table("occ_series_staging", source=payload, columns=SERIES_COLUMNS, format="binary")
        return rowcount(await conn.execute(_INSERT_SERIES_FROM_STAGING))

    @staticmethod
    async def _insert_events(conn: asyncpg.Connection, events: list[Event], received_at: datetime) -> int:
        if not events:
            return 0
        status = await conn.execute(
            _INSERT_EVENTS,
            [clean_text(e.device_id) for e in events],
            [e.ts for e in events],
            [clean_text(e.type) for e in events],
            [e.data for e in events],
            received_at,
        )
        return rowcount(status)

    @staticmethod
    async def _apply_statuses(conn: asyncpg.Connection, statuses: list[StatusChange], received_at: datetime) -> int:
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
