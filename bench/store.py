"""Storage benchmark (issue 12): what a reading costs on disk and in upkeep, and how fast history reads stay, as
the store grows to 1M, 5M and 15M readings -- with a naive baseline side by side in the same run.

    python -m bench.store              # 1M, 5M, 15M readings (the full run: long on a shared 2-core machine)
    python -m bench.store --quick      # 200k and 600k readings, a smoke run of a few minutes
    python -m bench.store --sizes 1M,3M --devices 500

The fleet: `--devices` hydromet stations x 5 metrics, one reading each every `--interval-min` minutes, each
station at its own offset in the interval, written oldest first through `Store.write_batch` (ingest's own path,
batches of `--batch` readings), ending now. Maintenance runs as it does under ingest: every 30 simulated minutes,
`Store.maintain(now=<simulated now>)`, so upkeep is measured on a steady stream. After the last size a backfill
slice (one day of extra readings for 5 % of the stations, between the existing ones) goes into the oldest data.

The baseline ("naive") is one table with a unique btree on (device, metric, ts), written by COPY in the same
batches, no rollups: history aggregates raw readings and "latest" probes the index per series.

Measured at each size (each on both): write throughput (readings/s over the stage) and its CPU (client + server),
maintenance seconds per million readings and its CPU as a share of the write's, bytes per reading (total, and by
table and index), and the median latency of: latest for all devices; 24 h raw (one series); 7 d hourly (avg);
30 d daily in the site time zone (avg). Rollup lag after each maintenance is recorded (max).

On TimescaleDB (when OCC_TEST_DATABASE_URL points at a server with the extension, or --timescale-url) the same
run is repeated in a database on that server, and bytes and latencies are measured again after compressing every
chunk but the newest. The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench.common import machine_info, tree_cpu_s
from occ.embedded import EmbeddedPostgres
from occ.store import Store

METRICS = ("water_level_m", "rain_mm", "temp_c", "humidity_pct", "battery_v")
SITE_TZ = "Asia/Ho_Chi_Minh"
MAINTAIN_EVERY = timedelta(minutes=30)
QUERY_RUNS = 15


def log(message: str) -> None:
    print(f"[bench.store {datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


def parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


# --- the fleet ------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Fleet:
    devices: int
    interval: timedelta
    end: datetime
    total: int

    @property
    def per_step(self) -> int:
        return self.devices * len(METRICS)

    @property
    def steps(self) -> int:
        return -(-self.total // self.per_step)

    @property
    def start(self) -> datetime:
        return self.end - self.steps * self.interval

    def device(self, d: int) -> str:
        return f"HG-H-{d:05d}"

    def offset(self, d: int) -> timedelta:
        return timedelta(seconds=(d * 7919) % int(self.interval.total_seconds()))

    def step_rows(self, k: int, *, devices: Sequence[int] | None = None, shift: timedelta = timedelta(0)) -> list:
        """All readings of step k (time order: stations sorted by their offset)."""
        base = self.start + k * self.interval + shift
        chosen = range(self.devices) if devices is None else devices
        rows = []
        for d in sorted(chosen, key=lambda d: (self.offset(d), d)):
            ts = base + self.offset(d)
            name = self.device(d)
            for m, metric in enumerate(METRICS):
                rows.append((name, metric, ts, float((k * 31 + d * 7 + m * 3) % 1000) / 10.0, 0))
        return rows


def batches(rows: list, size: int) -> Iterator[list]:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


# --- the two targets ------------------------------------------------------------------------------------------


class Target:
    """One storage design under test."""

    name = ""

    async def write(self, rows: list) -> None:
        raise NotImplementedError

    async def maintain(self, now: datetime) -> float:
        """Run upkeep as of `now`; returns the rollup lag in seconds."""
        return 0.0

    async def close(self) -> None:
        pass

    async def sizes(self) -> dict[str, int]:
        raise NotImplementedError

    async def settle(self) -> None:
        """Before the queries: VACUUM (ANALYZE) and CHECKPOINT, as autovacuum and the checkpointer leave a
        database in steady state. Right after a bulk load the heap pages carry no hint bits and autovacuum,
        started by the load, runs during the queries: on a quiet 15M run that made the same 24 h and 7 d reads
        3x slower than on the same database once vacuumed (11.2 vs 1.8-3.6 ms, 83 vs 12-20 ms)."""
        raise NotImplementedError

    async def q_latest(self, fleet: Fleet) -> int:
        raise NotImplementedError

    async def q_history(self, device: str, metric: str, start: datetime, end: datetime, kind: str) -> int:
        raise NotImplementedError


class OccTarget(Target):
    def __init__(self, store: Store, url: str, conn: asyncpg.Connection) -> None:
        self.store = store
        self.url = url
        self.conn = conn
        """The bench's own connection (checks between maintenance runs; not a new connection each time)."""
        self.name = "occ-" + store.mode

    @classmethod
    async def open(cls, url: str, *, timescale: bool, start: datetime) -> OccTarget:
        store = await Store.connect(url, timescaledb="on" if timescale else "off", timezone=SITE_TZ, pool_size=2)
        target = cls(store, url, await asyncpg.connect(url))
        await store.maintain(now=start)  # partitions from the first reading on
        return target

    async def write(self, rows: list) -> None:
        await self.store.write_batch(rows, received_at=datetime.now(UTC))

    async def maintain(self, now: datetime) -> float:
        lag = 0.0
        while True:
            report = await self.store.maintain(now=now, budget_s=600.0)
            lag = max(lag, report.lag_s)
            ready = now - self.store.settings.rollup_grace - timedelta(hours=1)
            left = await self.conn.fetchval("SELECT count(*) FROM rollup_dirty WHERE bucket <= $1", ready)
            if not left or report.skipped:
                return lag

    async def close(self) -> None:
        await self.conn.close()
        await self.store.close()

    async def sizes(self) -> dict[str, int]:
        return await relation_sizes(self.conn, timescale=self.store.mode == "timescale")

    async def settle(self) -> None:
        await self.conn.execute("VACUUM (ANALYZE) series_readings, series, series_1m, series_1h, series_1d, latest")
        await self.conn.execute("CHECKPOINT")

    async def q_latest(self, fleet: Fleet) -> int:
        return len(await self.store.latest())

    async def q_history(self, device: str, metric: str, start: datetime, end: datetime, kind: str) -> int:
        buckets: dict[str, timedelta | str] = {"raw": "raw", "hourly": timedelta(hours=1), "daily": "day"}
        bucket = buckets[kind]
        points = await self.store.history(device, metric, start, end, bucket=bucket, agg="avg", tz=SITE_TZ)
        return len(points)


NAIVE_SCHEMA = """
CREATE TABLE readings (
    device_id text NOT NULL, metric text NOT NULL, ts timestamptz NOT NULL,
    value double precision NOT NULL, quality smallint NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX readings_key ON readings (device_id, metric, ts);
"""


class NaiveTarget(Target):
    name = "naive"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, url: str) -> NaiveTarget:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        async with pool.acquire() as conn:
            await conn.execute(NAIVE_SCHEMA)
        return cls(pool)

    async def write(self, rows: list) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.copy_records_to_table(
                "readings", records=rows, columns=("device_id", "metric", "ts", "value", "quality")
            )

    async def close(self) -> None:
        await self.pool.close()

    async def settle(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute("VACUUM (ANALYZE) readings")
            await conn.execute("CHECKPOINT")

    async def sizes(self) -> dict[str, int]:
        async with self.pool.acquire() as conn:
            return {
                "readings (heap)": await conn.fetchval("SELECT pg_table_size('readings')"),
                "readings_key (index)": await conn.fetchval("SELECT pg_relation_size('readings_key')"),
            }

    async def q_latest(self, fleet: Fleet) -> int:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT k.d, k.m, x.ts, x.value FROM unnest($1::text[]) AS k0(d) CROSS JOIN unnest($2::text[]) "
                "AS k1(m) CROSS JOIN LATERAL (SELECT k0.d AS d, k1.m AS m) AS k CROSS JOIN LATERAL ("
                "SELECT ts, value FROM readings WHERE device_id = k.d AND metric = k.m ORDER BY ts DESC LIMIT 1"
                ") AS x",
                [fleet.device(d) for d in range(fleet.devices)],
                list(METRICS),
            )
        return len(rows)

    async def q_history(self, device: str, metric: str, start: datetime, end: datetime, kind: str) -> int:
        if kind == "raw":
            sql = (
                "SELECT ts, value FROM readings WHERE device_id = $1 AND metric = $2 AND ts >= $3 AND ts < $4 "
                "ORDER BY ts"
            )
            args: tuple[Any, ...] = (device, metric, start, end)
        elif kind == "hourly":
            sql = (
                "SELECT date_trunc('hour', ts, 'UTC') AS b, avg(value) FROM readings WHERE device_id = $1 "
                "AND metric = $2 AND ts >= $3 AND ts < $4 GROUP BY 1 ORDER BY 1"
            )
            args = (device, metric, start, end)
        else:
            sql = (
                "SELECT date_trunc('day', ts, $5) AS b, avg(value) FROM readings WHERE device_id = $1 "
                "AND metric = $2 AND ts >= $3 AND ts < $4 GROUP BY 1 ORDER BY 1"
            )
            args = (device, metric, start, end, SITE_TZ)
        async with self.pool.acquire() as conn:
            return len(await conn.fetch(sql, *args))


async def relation_sizes(conn: asyncpg.Connection, *, timescale: bool) -> dict[str, int]:
    """Bytes of everything that holds readings or rollups, by table (heap incl. TOAST/FSM/VM) and by index;
    partitions are summed under their parent's name."""
    out: dict[str, int] = {}
    if timescale:
        # The hypertable's chunks (compressed or not) live in TimescaleDB's own schemas: summed by the extension.
        detail = await conn.fetchrow("SELECT * FROM hypertable_detailed_size('series_readings')")
        out["series_readings (heap)"] = (detail["table_bytes"] or 0) + (detail["toast_bytes"] or 0)
        out["series_readings (indexes)"] = detail["index_bytes"] or 0
    rows = await conn.fetch(
        """
        WITH rel AS (
            SELECT c.oid, c.relname, c.relkind, coalesce(p.relname, c.relname) AS owner_name
            FROM pg_class c
            LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
            LEFT JOIN pg_class p ON p.oid = i.inhparent
            WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
              AND coalesce(p.relname, c.relname) IN ('series_readings', 'series', 'series_1m', 'series_1h',
                                                      'series_1d', 'rollup_dirty', 'rollup_dirty_days')
        )
        SELECT owner_name || ' (heap)' AS name, sum(pg_table_size(oid))::bigint AS bytes FROM rel GROUP BY 1
        UNION ALL
        SELECT rel.owner_name || ' (' || coalesce(pi.relname, ix.relname) || ')', sum(pg_relation_size(ix.oid))::bigint
        FROM rel JOIN pg_index x ON x.indrelid = rel.oid JOIN pg_class ix ON ix.oid = x.indexrelid
        LEFT JOIN pg_inherits ii ON ii.inhrelid = ix.oid LEFT JOIN pg_class pi ON pi.oid = ii.inhparent
        GROUP BY 1
        """
    )
    out.update(
        (r["name"], r["bytes"])
        for r in rows
        if r["bytes"] and not (timescale and r["name"].startswith("series_readings "))
    )
    return out


# --- measuring ------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Meter:
    """Wall and CPU seconds (this process + the database server) spent in write and in maintenance."""

    server_pid: int | None
    write_wall: float = 0.0
    write_cpu: float = 0.0
    write_client_cpu: float = 0.0
    """This process alone (the writer's side of write_batch: ingest's cost per reading)."""
    maintain_wall: float = 0.0
    maintain_cpu: float = 0.0
    max_lag_s: float = 0.0

    def _cpu(self) -> float:
        server = tree_cpu_s(self.server_pid) if self.server_pid else 0.0
        return time.process_time() + server

    async def timed(self, what: str, call: Awaitable[Any]) -> Any:
        wall, cpu = time.perf_counter(), self._cpu()
        client = time.process_time()  # after _cpu(): reading /proc for the server's CPU is the bench's own cost
        result = await call
        client = time.process_time() - client
        wall, cpu = time.perf_counter() - wall, self._cpu() - cpu
        if what == "write":
            self.write_wall += wall
            self.write_cpu += cpu
            self.write_client_cpu += client
        else:
            self.maintain_wall += wall
            self.maintain_cpu += cpu
        return result


async def query_latencies(targets: Sequence[Target], fleet: Fleet) -> list[dict[str, float]]:
    """Median latency of each query on each target. The targets take turns run by run, so that the load other
    processes put on the machine at that moment weighs on all of them alike."""
    end = fleet.end
    queries: dict[str, tuple[str, timedelta]] = {
        "q_latest_ms": ("latest", timedelta(0)),
        "q_24h_ms": ("raw", timedelta(hours=24)),
        "q_7d_hourly_ms": ("hourly", timedelta(days=7)),
        "q_30d_daily_ms": ("daily", timedelta(days=30)),
    }
    out: list[dict[str, float]] = [{} for _ in targets]
    for key, (kind, span) in queries.items():
        runs = 7 if kind == "latest" else QUERY_RUNS
        times: list[list[float]] = [[] for _ in targets]
        for i in range(runs + 1):
            device = fleet.device((i * 37) % fleet.devices)
            metric = METRICS[i % len(METRICS)]
            for j, target in enumerate(targets):
                t = time.perf_counter()
                if kind == "latest":
                    await target.q_latest(fleet)
                else:
                    await target.q_history(device, metric, end - span, end, kind)
                if i:  # the first run warms statement caches
                    times[j].append((time.perf_counter() - t) * 1000)
        for j in range(len(targets)):
            out[j][key] = round(statistics.median(times[j]), 2)
    return out


@dataclass(slots=True)
class Run:
    target: Target
    meter: Meter
    written: int = 0
    stages: list[dict[str, Any]] = field(default_factory=list)


async def write_until(run: Run, fleet: Fleet, size: int, step: int, batch: int, maintain: bool) -> int:
    """Write steps from `step` until `size` readings are stored; returns the next step."""
    next_maintain = fleet.start + (step * fleet.interval) + MAINTAIN_EVERY
    last_log = time.monotonic()
    while run.written < size and step < fleet.steps:
        rows = fleet.step_rows(step)
        for chunk in batches(rows, batch):
            await run.meter.timed("write", run.target.write(chunk))
        run.written += len(rows)
        step += 1
        frontier = fleet.start + step * fleet.interval
        if maintain and frontier >= next_maintain:
            lag = await run.meter.timed("maintain", run.target.maintain(frontier))
            run.meter.max_lag_s = max(run.meter.max_lag_s, lag)
            next_maintain = frontier + MAINTAIN_EVERY
        if time.monotonic() - last_log > 30:
            log(f"  {run.target.name}: {run.written:,} readings ({run.written / size:.0%} of this stage)")
            last_log = time.monotonic()
    return step


async def measure_stage(run: Run) -> dict[str, Any]:
    sizes = await run.target.sizes()
    total = sum(sizes.values())
    stage = {
        "readings": run.written,
        "bytes_per_reading": round(total / run.written, 1),
        "bytes_by_relation": {k: round(v / run.written, 1) for k, v in sorted(sizes.items(), key=lambda x: -x[1])},
        "total_mb": round(total / 2**20, 1),
    }
    return stage


async def bench_pair(
    fleet: Fleet,
    sizes: list[int],
    *,
    occ_url: str,
    naive_url: str | None,
    timescale: bool,
    batch: int,
    server_pid: int | None,
) -> dict[str, Any]:
    occ = Run(await OccTarget.open(occ_url, timescale=timescale, start=fleet.start), Meter(server_pid))
    runs = [occ]
    if naive_url:
        runs.append(Run(await NaiveTarget.open(naive_url), Meter(server_pid)))
    steps = {id(r): 0 for r in runs}
    results: dict[str, Any] = {r.target.name: [] for r in runs}
    try:
        for size in sizes:
            for run in runs:
                w0 = (
                    run.meter.write_wall,
                    run.meter.write_cpu,
                    run.meter.maintain_wall,
                    run.meter.maintain_cpu,
                    run.written,
                    run.meter.write_client_cpu,
                )
                log(f"{run.target.name}: writing up to {size:,} readings")
                steps[id(run)] = await write_until(
                    run, fleet, size, steps[id(run)], batch, maintain=isinstance(run.target, OccTarget)
                )
                n = run.written - w0[4]
                write_wall, write_cpu = run.meter.write_wall - w0[0], run.meter.write_cpu - w0[1]
                m_wall, m_cpu = run.meter.maintain_wall - w0[2], run.meter.maintain_cpu - w0[3]
                stage = {
                    "stage_readings": n,
                    "write_readings_per_s": round(n / write_wall) if write_wall else None,
                    "write_cpu_us_per_reading": round(write_cpu / n * 1e6, 2) if n else None,
                    "write_client_cpu_us_per_reading": round((run.meter.write_client_cpu - w0[5]) / n * 1e6, 2)
                    if n
                    else None,
                    "maintain_s_per_million": round(m_wall / n * 1e6, 2) if n else None,
                    "maintain_cpu_share_of_write": round(m_cpu / write_cpu, 3) if write_cpu else None,
                    "rollup_lag_max_s": run.meter.max_lag_s,
                }
                stage.update(await measure_stage(run))
                results[run.target.name].append(stage)
            for run in runs:
                await run.target.settle()
            latencies = await query_latencies([r.target for r in runs], fleet)
            for run, lat in zip(runs, latencies, strict=True):
                results[run.target.name][-1].update(lat)
                log(f"{run.target.name} @ {run.written:,}: " + json.dumps(results[run.target.name][-1]))
        # Backfill slice into the oldest data: one day for 5 % of the stations, half an interval after theirs.
        backfill_devices = list(range(0, fleet.devices, 20))
        day_steps = int(timedelta(days=1) / fleet.interval)
        rows = []
        for k in range(min(day_steps, fleet.steps)):
            rows += fleet.step_rows(k, devices=backfill_devices, shift=fleet.interval / 2)
        meter = occ.meter
        w_wall, m_wall, m_cpu, w_cpu = meter.write_wall, meter.maintain_wall, meter.maintain_cpu, meter.write_cpu
        for chunk in batches(rows, batch):
            await meter.timed("write", occ.target.write(chunk))
        await meter.timed("maintain", occ.target.maintain(fleet.end + timedelta(minutes=5)))
        results["backfill"] = {
            "readings": len(rows),
            "hours_touched": day_steps * fleet.interval // timedelta(hours=1),
            "write_readings_per_s": round(len(rows) / (meter.write_wall - w_wall)),
            "maintain_s": round(meter.maintain_wall - m_wall, 2),
            "maintain_s_per_million": round((meter.maintain_wall - m_wall) / len(rows) * 1e6, 2),
            "maintain_cpu_share_of_write": round((meter.maintain_cpu - m_cpu) / (meter.write_cpu - w_cpu), 3),
        }
        log("backfill: " + json.dumps(results["backfill"]))
        if timescale:
            results["compressed"] = await compress_and_measure(occ, fleet)
    finally:
        for run in runs:
            await run.target.close()
    return results


async def compress_and_measure(run: Run, fleet: Fleet) -> dict[str, Any]:
    """TimescaleDB: compress every chunk of readings but the newest, then bytes and latencies again."""
    assert isinstance(run.target, OccTarget)
    conn = await asyncpg.connect(run.target.url)
    try:
        chunks = await conn.fetch(
            "SELECT format('%I.%I', chunk_schema, chunk_name) AS c FROM timescaledb_information.chunks "
            "WHERE hypertable_name = 'series_readings' AND NOT is_compressed ORDER BY range_end DESC OFFSET 1"
        )
        t = time.perf_counter()
        for row in chunks:
            await conn.execute("SELECT compress_chunk($1::regclass, if_not_compressed => true)", row["c"])
        seconds = time.perf_counter() - t
        stats = await conn.fetchrow(
            "SELECT sum(before_compression_total_bytes) AS before, sum(after_compression_total_bytes) AS after "
            "FROM chunk_compression_stats('series_readings')"
        )
        rows_compressed = await conn.fetchval(
            "SELECT count(*) FROM series_readings WHERE ts < (SELECT max(range_end) "
            "FROM timescaledb_information.chunks WHERE hypertable_name = 'series_readings' AND is_compressed)"
        )
    finally:
        await conn.close()
    out: dict[str, Any] = {
        "chunks": len(chunks),
        "compress_s": round(seconds, 1),
        "compressed_bytes_per_reading": round((stats["after"] or 0) / rows_compressed, 1) if rows_compressed else None,
        "uncompressed_bytes_per_reading_same_chunks": round((stats["before"] or 0) / rows_compressed, 1)
        if rows_compressed
        else None,
    }
    sizes = await run.target.sizes()
    out["bytes_per_reading"] = round(sum(sizes.values()) / run.written, 1)
    await run.target.settle()
    out.update((await query_latencies([run.target], fleet))[0])
    log("after compression: " + json.dumps(out))
    return out


# --- main -------------------------------------------------------------------------------------------------------


async def has_timescale(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except (OSError, asyncpg.PostgresError):
        return False
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"))
    finally:
        await conn.close()


async def create_database(server_url: str, name: str) -> str:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(server_url, name)


def ratios(occ: dict[str, Any], naive: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in (
        "bytes_per_reading",
        "q_latest_ms",
        "q_24h_ms",
        "q_7d_hourly_ms",
        "q_30d_daily_ms",
        "write_readings_per_s",
    ):
        a, b = occ.get(key), naive.get(key)
        out[key] = round(a / b, 3) if a and b else None
    return out


async def main_async(args: argparse.Namespace) -> int:
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    if args.quick:
        sizes = [200_000, 600_000]
        args.devices = min(args.devices, 200)
    fleet = Fleet(
        args.devices, timedelta(minutes=args.interval_min), datetime.now(UTC).replace(microsecond=0), max(sizes)
    )
    info = machine_info()
    log(f"machine: {info}")
    log(
        f"fleet: {fleet.devices} stations x {len(METRICS)} metrics every {args.interval_min} min, "
        f"{fleet.steps} steps from {fleet.start:%Y-%m-%d %H:%M} to {fleet.end:%Y-%m-%d %H:%M} UTC; sizes {sizes}"
    )
    report: dict[str, Any] = {
        "machine": info,
        "sizes": sizes,
        "devices": fleet.devices,
        "interval_min": args.interval_min,
    }
    pg: EmbeddedPostgres | None = None
    work = Path(tempfile.mkdtemp(prefix="occ-bench-store-"))
    try:
        server_url = args.database_url or os.environ.get("OCC_BENCH_DATABASE_URL")
        server_pid = None
        if not server_url:
            pg = EmbeddedPostgres(work / "pg", durable=True)
            await asyncio.to_thread(pg.start)
            server_url = pg.url
            server_pid = (
                int((work / "pg" / "postmaster.pid").read_text().split()[0])
                if (work / "pg" / "postmaster.pid").exists()
                else None
            )
        run_id = f"{os.getpid()}"
        plain = await bench_pair(
            fleet,
            sizes,
            occ_url=await create_database(server_url, f"occ_bench_store_{run_id}"),
            naive_url=await create_database(server_url, f"occ_bench_naive_{run_id}"),
            timescale=False,
            batch=args.batch,
            server_pid=server_pid,
        )
        report["plain"] = plain
        ts_url = args.timescale_url or os.environ.get("OCC_TEST_DATABASE_URL")
        if ts_url and await has_timescale(ts_url):
            log("TimescaleDB path")
            report["timescale"] = await bench_pair(
                fleet,
                sizes,
                occ_url=await create_database(ts_url, f"occ_bench_store_ts_{run_id}"),
                naive_url=None,
                timescale=True,
                batch=args.batch,
                server_pid=None,
            )
        else:
            log("TimescaleDB path skipped (OCC_TEST_DATABASE_URL does not point at a server with timescaledb)")
    finally:
        if pg is not None and not args.keep:
            await asyncio.to_thread(pg.destroy)
            shutil.rmtree(work, ignore_errors=True)
    occ_last = plain["occ-plain"][-1]
    naive_last = plain["naive"][-1]
    report["ratio_to_naive"] = ratios(occ_last, naive_last)
    summary = {
        "readings": occ_last["readings"],
        "write_readings_per_s": occ_last["write_readings_per_s"],
        "write_client_cpu_us_per_reading": occ_last["write_client_cpu_us_per_reading"],
        "bytes_per_reading": occ_last["bytes_per_reading"],
        "maintain_s_per_million": occ_last["maintain_s_per_million"],
        "maintain_cpu_share_of_write": occ_last["maintain_cpu_share_of_write"],
        "rollup_lag_max_s": occ_last["rollup_lag_max_s"],
        "q_latest_ms": occ_last["q_latest_ms"],
        "q_24h_ms": occ_last["q_24h_ms"],
        "q_7d_hourly_ms": occ_last["q_7d_hourly_ms"],
        "q_30d_daily_ms": occ_last["q_30d_daily_ms"],
        "backfill_maintain_s_per_million": plain["backfill"]["maintain_s_per_million"],
        "naive": {
            k: naive_last[k]
            for k in (
                "write_readings_per_s",
                "write_client_cpu_us_per_reading",
                "bytes_per_reading",
                "q_latest_ms",
                "q_24h_ms",
                "q_7d_hourly_ms",
                "q_30d_daily_ms",
            )
        },
        "ratio_to_naive": report["ratio_to_naive"],
        "by_size": {
            str(s["readings"]): {
                k: s[k]
                for k in ("bytes_per_reading", "write_readings_per_s", "maintain_s_per_million", "q_7d_hourly_ms")
            }
            for s in plain["occ-plain"]
        },
    }
    if "timescale" in report:
        summary["timescale"] = {
            "bytes_per_reading": report["timescale"]["occ-timescale"][-1]["bytes_per_reading"],
            "compressed": report["timescale"].get("compressed"),
        }
    log("full report: " + json.dumps(report, default=str))
    print(json.dumps(summary, default=str), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.store", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1M,5M,15M", help="cumulative sizes to measure at (default 1M,5M,15M)")
    parser.add_argument("--quick", action="store_true", help="200k and 600k readings, 200 stations (a smoke run)")
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--interval-min", type=int, default=10)
    parser.add_argument("--batch", type=int, default=5000, help="readings per write_batch (default 5000)")
    parser.add_argument("--database-url", help="a PostgreSQL server to use instead of an embedded one")
    parser.add_argument("--timescale-url", help="a server with timescaledb (default: OCC_TEST_DATABASE_URL)")
    parser.add_argument("--keep", action="store_true", help="keep the embedded server's data directory")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(main_async(args))
    except KeyboardInterrupt:
        return 130
    except (OSError, asyncpg.PostgresError, ValueError) as exc:
        print(f"bench.store: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
