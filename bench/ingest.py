"""Ingest benchmark: sustained MQTT → PostgreSQL throughput and publish→commit latency, with the naive
baseline and the C-tool limits of this machine measured in the same run (see bench/README.md).

    python -m bench.ingest                        # full run: native and paho receive paths, 1 worker
    python -m bench.ingest --workers 1,2 --quick  # both paths with one and with two workers, short phases

Each variant (receive path × worker count) runs (a) single-reading and (b) ten-reading throughput, reports the
ingest processes' CPU µs per message / per reading over the measured window, then checks that (a) is a rate the
stack sustains at a fixed publish rate ("sustain") and measures publish→commit latency at half of the sustained
rate. All variants, the C tools and the baseline run in the same run, so their ratios compare like with like.

Everything runs on this machine: an embedded PostgreSQL (durable, as in production) and an embedded Mosquitto
in a temporary folder under /tmp (or OCC_BENCH_DATABASE_URL / OCC_BENCH_MQTT_URL), the ingest as its own
process (`python -m occ.cli ingest`), and the publishers as separate processes (`bench.common`).
Progress goes to stderr; the report to stdout, whose last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from bench.common import (
    BUSY,
    KIND,
    PROBE_METRIC,
    READINGS_PER_MESSAGE,
    STEAL,
    PayloadMaker,
    cpu_snapshot,
    device_ids,
    first_json_line,
    machine_info,
    machine_steal_s,
    percentile,
    publisher_command,
    status_kb,
)
from occ.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from occ.embedded.postgres import bin_dir
from occ.models import Device
from occ.store import Store

ROOT = Path(__file__).resolve().parents[1]
INGEST_CLIENT_ID = "bench-ingest"
PROBE_PREFIX = "BENCH-PROBE"
SUSTAIN_STEPS = 4
SUSTAIN_KEEP_UP = 0.97
SUSTAIN_P99_MS = 500.0
"""A fixed rate is sustained when commits keep up with at least this share of it and the p99 stays under this
(ten times the half-load target): a queue that grows shows in both within the check's window."""
PROBE_INTERVAL_S = 0.02
POLL_INTERVAL_S = 0.005
# Throughput runs: publishers stay at most this many messages ahead of the ingest's commits, so the ingest
# is saturated (its own bound is 50,000 unacknowledged) while the broker's backlog, and the drain at the
# end, stay bounded. Without it the publishers outrun the ingest ~10× and the broker queues millions.
BACKLOG_MESSAGES = 80_000
# --foreign-load: a duty-cycled busy loop (fraction of a core in argv[1]), another tenant of a shared machine
FOREIGN_LOAD = ("import sys, time\nd = float(sys.argv[1])\nwhile True:\n    t = time.perf_counter()\n"
                "    while time.perf_counter() - t < 0.01 * d:\n        pass\n    time.sleep(0.01 * (1 - d))\n")
OTHER_LOAD_WARN_PCT = 25  # % of a core used by other work during a window that makes the run suspect
PUBLISHER_NICE = 10
"""Publishers at maximum rate run at this lower priority. Devices are not on the ingest's machine, but here the
load generator shares its two cores, and the scheduler gives each runnable process an equal share: two Python
publishers took two shares from the system under test (one worker, same run: 42-47k msg/s at equal priority,
49-59k niced). The C tool's limit is taken over both arrangements (`mosquitto_sub`), so the ratio's
denominator is the best the C tool did, not the arrangement that suits the ingest."""
CPU_MARK_EARLY_S = 0.6  # the second CPU snapshot is taken this long before the publishers stop
PHASES = ("receive", "copy", "sub", "single", "batched", "latency", "baseline", "backfill")
TARGETS = {  # on 2 cores (the words)
    "single_msgs_per_s": 10_000,
    "batched_readings_per_s": 80_000,
    "backfill_vs_batched": 0.8,
    "p99_commit_ms": 250,
    "ingest_rss_mb": 300,
    "batched_vs_baseline": 20,
    "batched_vs_psql_copy": 0.55,
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@dataclass(slots=True)
class Options:
    quick: bool = False
    duration: float = 20.0
    warmup: float = 5.0
    publishers: int = 2
    devices: int = 1000  # per publisher
    workers: int = 1
    """Worker count of the primary variant (the first of `worker_counts`); the backfill and baseline use it."""
    worker_counts: tuple[int, ...] = (1,)
    transports: tuple[str, ...] = ("native", "paho")
    foreign_load: float = 0.0
    backfill_messages: int = 200_000
    latency_s: float = 20.0
    baseline_s: float = 10.0
    copy_rows: int = 1_000_000
    sub_messages: int = 1_000_000
    keep: bool = False
    profile_dir: str | None = None
    phases: frozenset[str] = frozenset(PHASES)
    latency_rate: float | None = None
    ingest_settings: tuple[tuple[str, str], ...] = ()
    """`--set ingest.linger_ms=5`: settings of the ingest processes (as OCC_INGEST__LINGER_MS)."""

    @classmethod
    def parse(cls, argv: Sequence[str] | None) -> Options:
        p = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n")[0])
        p.add_argument("--quick", action="store_true", help="short smoke run (~1 minute)")
        p.add_argument("--duration", type=float, help="seconds of publishing per throughput scenario (20)")
        p.add_argument("--publishers", type=int, default=2, help="publisher processes (2)")
        p.add_argument("--devices", type=int, default=1000, help="devices per publisher (1000)")
        p.add_argument("--workers", default="1",
                       help="ingest processes per variant, comma-separated (e.g. 1,2); >1 share one MQTT 5 shared "
                            "subscription (1)")
        p.add_argument("--transports", default="native,paho",
                       help="ingest receive paths to compare, comma-separated (native,paho); the first is primary")
        p.add_argument("--foreign-load", type=float, default=0.0,
                       help="fraction of one core burnt by a busy process during the latency runs (e.g. 0.33)")
        p.add_argument("--backfill-messages", type=int, help="messages in the backfill burst (200000)")
        p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, data)")
        p.add_argument("--profile-dir", help="run the ingest under cProfile and write its stats here")
        p.add_argument("--phases", default=",".join(PHASES),
                       help=f"comma-separated subset of {','.join(PHASES)} (default: all)")
        p.add_argument("--latency-rate", type=float, help="msg/s for the latency run (default: half of (a))")
        p.add_argument("--latency-seconds", type=float, help="length of each latency run (20; 6 with --quick)")
        p.add_argument("--set", action="append", default=[], metavar="ingest.KEY=VALUE",
                       help="an ingest setting for every worker, e.g. ingest.linger_ms=5 (repeatable)")
        a = p.parse_args(argv)
        settings = []
        for item in a.set:
            key, eq, value = item.partition("=")
            if not eq or not key.startswith("ingest.") or len(key.split(".")) != 2:
                p.error(f"--set expects ingest.KEY=VALUE, got {item!r}")
            settings.append((key.split(".")[1], value))
        phases = frozenset(x.strip() for x in a.phases.split(",") if x.strip())
        if not phases <= set(PHASES):
            p.error(f"unknown phase(s): {', '.join(sorted(phases - set(PHASES)))}")
        try:
            worker_counts = tuple(int(w) for w in a.workers.split(",") if w.strip())
        except ValueError:
            p.error(f"--workers expects numbers like 1 or 1,2, got {a.workers!r}")
        transports = tuple(t.strip() for t in a.transports.split(",") if t.strip())
        if not worker_counts or min(worker_counts) < 1:
            p.error("--workers needs at least one count ≥ 1")
        if not transports or not set(transports) <= {"native", "paho"}:
            p.error(f"--transports expects native and/or paho, got {a.transports!r}")
        o = cls(quick=a.quick, publishers=a.publishers, devices=a.devices, workers=worker_counts[0], keep=a.keep,
                profile_dir=a.profile_dir, phases=phases, latency_rate=a.latency_rate, worker_counts=worker_counts,
                transports=transports, foreign_load=max(0.0, min(1.0, a.foreign_load)),
                ingest_settings=tuple(settings))
        if a.quick:
            o.duration, o.warmup, o.backfill_messages, o.latency_s = 8.0, 3.0, 30_000, 6.0
            o.baseline_s, o.copy_rows, o.sub_messages = 5.0, 200_000, 50_000
        if a.duration:
            o.duration = a.duration
            o.warmup = min(o.warmup, a.duration / 4)
        if a.backfill_messages:
            o.backfill_messages = a.backfill_messages
        if a.latency_seconds:
            o.latency_s = a.latency_seconds
        return o


@dataclass(slots=True)
class Sample:
    t: float
    readings: float
    acked: float


@dataclass(slots=True)
class Phase:
    """What one scenario measured."""

    name: str
    figures: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # % of one core over the measured window


class IngestProcess:
    """One `python -m occ.cli ingest` child with its /metrics and /healthz."""

    def __init__(self, index: int, *, database_url: str, mqtt_url: str, shared: bool, log_path: Path,
                 profile_path: Path | None, transport: str = "native", tag: str = "",
                 settings: Sequence[tuple[str, str]] = ()) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.profile_path = profile_path
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OCC_")}
        self.env.update({
            "OCC_DATABASE_URL": database_url,
            "OCC_MQTT_URL": mqtt_url,
            "OCC_INGEST__CLIENT_ID": f"{INGEST_CLIENT_ID}{tag}-{index}",
            "OCC_INGEST__HTTP_PORT": str(self.port),
            "OCC_INGEST__SHARED": "true" if shared else "false",
            "OCC_INGEST__SHARE_GROUP": f"bench-ingest{tag}",
            "OCC_INGEST__TRANSPORT": transport,
            "XDG_RUNTIME_DIR": str(log_path.parent),
        })
        self.env.update({f"OCC_INGEST__{key.upper()}": value for key, value in settings})
        self.process: asyncio.subprocess.Process | None = None
        self.hwm_kb = 0
        self.spawned_at = 0.0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, http: aiohttp.ClientSession, timeout: float = 60.0) -> float:
        """Spawn and wait until connected to the broker; returns the wall-clock time it became ready."""
        command = [sys.executable]
        if self.profile_path:
            command += ["-m", "cProfile", "-o", str(self.profile_path)]
        command += ["-m", "occ.cli", "ingest"]
        self.spawned_at = time.time()
        with self.log_path.open("ab") as out:  # the child keeps its own copy of the descriptor
            self.process = await asyncio.create_subprocess_exec(*command, env=self.env, cwd=str(ROOT), stdout=out,
                                                                stderr=out)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                raise RuntimeError(f"ingest exited with {self.process.returncode}; see {self.log_path}")
            try:
                async with http.get(self.base + "/healthz") as response:
                    report = await response.json()
                    if report.get("mqtt_connected") and report.get("database_up"):
                        return time.time()
            except (aiohttp.ClientError, ValueError):
                pass
            await asyncio.sleep(0.02)
        raise RuntimeError(f"ingest did not become ready in {timeout} s; see {self.log_path}")

    async def batch_stats(self, http: aiohttp.ClientSession) -> dict[str, float]:
        """Batches committed, messages in them, and the sum of their receive→commit seconds, from /metrics."""
        async with http.get(self.base + "/metrics") as response:
            text = await response.text()
        wanted = {"occ_ingest_batch_messages_count": "batches", "occ_ingest_batch_messages_sum": "messages",
                  "occ_ingest_receive_to_commit_seconds_sum": "commit_s", "occ_ingest_write_seconds_sum": "write_s",
                  "occ_ingest_write_seconds_count": "writes"}
        stats = dict.fromkeys(wanted.values(), 0.0)
        for line in text.splitlines():
            name = line.split(" ", 1)[0].split("{", 1)[0]
            if name in wanted:
                stats[wanted[name]] = float(line.rsplit(" ", 1)[1])
        return stats

    async def counters(self, http: aiohttp.ClientSession) -> tuple[float, float]:
        """(readings written, messages acked) from /metrics."""
        async with http.get(self.base + "/metrics") as response:
            text = await response.text()
        readings = acked = 0.0
        for line in text.splitlines():
            if line.startswith("occ_ingest_readings_written_total"):
                readings = float(line.rsplit(" ", 1)[1])
            elif line.startswith("occ_ingest_messages_acked_total"):
                acked = float(line.rsplit(" ", 1)[1])
        return readings, acked

    async def stalls(self, http: aiohttp.ClientSession) -> list[dict[str, Any]]:
        """The worker's latest stalls (event loop late, or a garbage collection) of 50 ms or more, from /healthz."""
        async with http.get(self.base + "/healthz") as response:
            report = await response.json()
        return list(report.get("recent_stalls", []))

    def note_memory(self) -> None:
        if self.pid:
            self.hwm_kb = max(self.hwm_kb, status_kb(self.pid, "VmHWM") or 0)

    async def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.note_memory()
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


class Bench:
    def __init__(self, options: Options, work: Path) -> None:
        self.o = options
        self.work = work
        self.pg: EmbeddedPostgres | None = None
        self.broker: EmbeddedBroker | None = None
        self.server_url = ""
        self.mqtt_url = ""
        self.db_url = ""
        self.tools_db_url = ""
        self.db_names: list[str] = []
        self.ingests: list[IngestProcess] = []
        self.retired_hwm_kb: list[int] = []
        self.http: aiohttp.ClientSession | None = None
        self.phases: dict[str, Phase] = {}
        self.run_id = uuid.uuid4().hex[:6]
        self.ingest_starts = 0
        self.variant_name = ""

    # -- servers ----------------------------------------------------------------------------------------
    async def setup(self) -> None:
        external_db = os.environ.get("OCC_BENCH_DATABASE_URL")
        external_mqtt = os.environ.get("OCC_BENCH_MQTT_URL")
        if external_db:
            self.server_url = external_db
        else:
            self.pg = EmbeddedPostgres(self.work / "pg", durable=True)
            await asyncio.to_thread(self.pg.start)
            self.server_url = self.pg.url
            await self._log_server_events()
        if external_mqtt:
            self.mqtt_url = external_mqtt
        else:
            self.broker = EmbeddedBroker(self.work / "broker", kind="auto")
            await asyncio.to_thread(self.broker.start)
            self.mqtt_url = self.broker.services_url
        self.db_url = await self._create_database(f"occ_bench_{self.run_id}")
        self.tools_db_url = await self._create_database(f"occ_bench_tools_{self.run_id}")
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        broker = self.broker.kind if self.broker else "external"
        log(f"PostgreSQL {'embedded (durable)' if self.pg else 'external'} at {self.server_url}; "
            f"broker {broker} at {self.mqtt_url}")

    async def _log_server_events(self) -> None:
        """The embedded server logs every autovacuum run and every statement over 100 ms (pg.log, kept with
        `--keep`): background work is what a latency tail is usually made of, and this says which and when."""
        conn = await asyncpg.connect(self.server_url)
        try:
            await conn.execute("ALTER SYSTEM SET log_autovacuum_min_duration = 0")
            await conn.execute("ALTER SYSTEM SET log_min_duration_statement = 100")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()

    async def _create_database(self, name: str) -> str:
        conn = await asyncpg.connect(self.server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        self.db_names.append(name)
        return with_database(self.server_url, name)

    async def teardown(self) -> None:
        for ingest in self.ingests:
            await ingest.stop()
        if self.http:
            await self.http.close()
        with contextlib.suppress(Exception):
            conn = await asyncpg.connect(self.server_url)
            try:
                for name in self.db_names:
                    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await conn.close()
        if self.broker:
            self.broker.stop()
        else:
            await asyncio.to_thread(self._discard_ingest_sessions)
        if self.pg:
            self.pg.stop()

    def _discard_ingest_sessions(self, client_ids: Sequence[str] = ()) -> None:
        """Drop persistent ingest sessions (their queues and subscriptions): those of a finished variant, or on an
        external broker those of the primary variant at the end of the run."""
        import paho.mqtt.client as paho
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        from occ.bus import BrokerAddress

        address = BrokerAddress.parse(self.mqtt_url)
        for client_id in client_ids or [f"{INGEST_CLIENT_ID}-{index}" for index in range(self.o.workers)]:
            client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 0
            with contextlib.suppress(OSError):
                client.connect(address.host, address.port, clean_start=True, properties=props)
                client.loop(0.5)
                client.disconnect()

    def server_pids(self) -> dict[str, int | None]:
        pids: dict[str, int | None] = {"broker": self.broker.pid if self.broker else None, "postgres": None}
        if self.pg:
            with contextlib.suppress(OSError, ValueError, IndexError):
                pids["postgres"] = int((self.pg.data_dir / "postmaster.pid").read_text().split()[0])
        return pids

    # -- store ------------------------------------------------------------------------------------------
    async def prepare_schema(self) -> None:
        store = await Store.connect(self.db_url, pool_size=1)
        try:
            devices = [Device(id=d, kind=KIND, name="bench", attributes={"report_interval_s": 600})
                       for i in range(self.o.publishers) for d in device_ids(f"BENCH-P{i}", self.o.devices)]
            devices += [Device(id=d, kind=KIND, name="bench probe") for d in device_ids(PROBE_PREFIX, 1)]
            await store.upsert_devices(devices)
            log(f"schema migrated ({store.mode}), {len(devices):,} devices registered")
        finally:
            await store.close()

    async def truncate(self) -> None:
        """Empty the ingest's tables and checkpoint, so that no scenario pays for the previous one's writes
        (a checkpoint triggered by (b)'s WAL would otherwise land in the latency run)."""
        conn = await asyncpg.connect(self.db_url)
        try:
            # plain path: readings live in series_readings (`readings` is a view); series ids are kept
            raw = "series_readings" if await conn.fetchval("SELECT to_regclass('series_readings')") else "readings"
            await conn.execute(f"TRUNCATE {raw}, latest, rollup_dirty, dead_letters")
            with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
                await conn.execute("CHECKPOINT")
        finally:
            await conn.close()

    async def checkpoints(self) -> int | None:
        """Checkpoints completed so far by the server (to tell when one fell inside a scenario)."""
        conn = await asyncpg.connect(self.db_url)
        try:
            for sql in ("SELECT num_timed + num_requested FROM pg_stat_checkpointer",  # PostgreSQL 17+
                        "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"):
                with contextlib.suppress(asyncpg.PostgresError):
                    return int(await conn.fetchval(sql))
            return None
        finally:
            await conn.close()

    async def stored(self) -> tuple[int, int]:
        conn = await asyncpg.connect(self.db_url)
        try:
            readings = await conn.fetchval("SELECT count(*) FROM readings")
            letters = await conn.fetchval("SELECT count(*) FROM dead_letters")
            return int(readings), int(letters)
        finally:
            await conn.close()

    # -- ingest -----------------------------------------------------------------------------------------
    async def start_ingest(self, *, workers: int | None = None, transport: str | None = None, tag: str = "") -> float:
        """Start the ingest workers of a variant (default: the primary one, whose sessions the backfill uses)."""
        assert self.http is not None
        self.ingests = []
        workers = workers or self.o.workers
        transport = transport or self.o.transports[0]
        shared = workers > 1
        for index in range(workers):
            profile = None
            if self.o.profile_dir:
                Path(self.o.profile_dir).mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
                profile = Path(self.o.profile_dir) / f"ingest{tag}-{self.ingest_starts}-{index}.prof"
            self.ingests.append(IngestProcess(index, database_url=self.db_url, mqtt_url=self.mqtt_url,
                                              shared=shared, log_path=self.work / f"ingest{tag}-{index}.log",
                                              profile_path=profile, transport=transport, tag=tag,
                                              settings=self.o.ingest_settings))
        self.ingest_starts += 1
        ready = await asyncio.gather(*(i.start(self.http) for i in self.ingests))
        return max(ready)

    async def stop_ingest(self) -> None:
        for ingest in self.ingests:
            await ingest.stop()
            self.retired_hwm_kb.append(ingest.hwm_kb)
        self.ingests = []

    async def batch_stats(self) -> dict[str, float]:
        assert self.http is not None
        values = await asyncio.gather(*(i.batch_stats(self.http) for i in self.ingests))
        return {k: sum(v[k] for v in values) for k in ("batches", "messages", "commit_s", "write_s", "writes")}

    async def ingest_stalls(self, since: float, until: float) -> list[dict[str, Any]]:
        """Every worker's stalls between two wall-clock times, each marked with the worker's index."""
        assert self.http is not None
        reports = await asyncio.gather(*(i.stalls(self.http) for i in self.ingests))
        return sorted(({**stall, "worker": index} for index, stalls in enumerate(reports) for stall in stalls
                       if since <= stall["at"] <= until), key=lambda stall: stall["at"])

    async def ingest_counters(self) -> tuple[float, float]:
        assert self.http is not None
        values = await asyncio.gather(*(i.counters(self.http) for i in self.ingests))
        return sum(v[0] for v in values), sum(v[1] for v in values)

    def cpu_pids(self, publishers: Sequence[asyncio.subprocess.Process]) -> dict[str, int | None]:
        pids = self.server_pids()
        for i, ingest in enumerate(self.ingests):
            pids[f"ingest{i if len(self.ingests) > 1 else ''}"] = ingest.pid
        for i, p in enumerate(publishers):
            pids[f"publisher{i}"] = p.pid
        pids["bench"] = os.getpid()
        return pids

    # -- publishers -------------------------------------------------------------------------------------
    async def spawn_publishers(self, shape: str, *, prefix: str = "occ/v1", count: int = 0, duration: float = 0.0,
                               rate: float = 0.0, base_ms: int = 0, start_in: float = 1.0, tag: str = "",
                               backlog: int | None = None, nice: int = 0,
                               ) -> tuple[list[asyncio.subprocess.Process], float]:
        """Start the publisher processes; they start sending together at the returned wall-clock time.
        With `backlog`, they send only as far as `grant()` allows (see `bench.common.publish`)."""
        start_at = time.time() + start_in
        n = self.o.publishers
        processes = []
        for i in range(n):
            share = count // n + (1 if i < count % n else 0) if count else 0
            argv = publisher_command(self.mqtt_url, shape=shape, client_id=f"bench-pub-{tag}{shape}-{i}",
                                     id_prefix=f"BENCH-P{i}", devices=self.o.devices, topic_prefix=prefix,
                                     base_ms=base_ms, count=share, duration=duration, rate=rate / n,
                                     start_at=start_at, seed=i,
                                     credit=None if backlog is None else backlog // n, nice=nice)
            processes.append(await asyncio.create_subprocess_exec(
                *argv, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                stdin=subprocess.PIPE if backlog is not None else subprocess.DEVNULL))
        return processes, start_at

    @staticmethod
    def grant(processes: Sequence[asyncio.subprocess.Process], committed_msgs: float, backlog: int) -> None:
        """Let each publisher send up to its share of (messages committed so far + backlog)."""
        credit = int(committed_msgs / len(processes)) + backlog // len(processes)
        for p in processes:
            if p.returncode is None and p.stdin is not None:
                with contextlib.suppress(OSError, RuntimeError):
                    p.stdin.write(b"%d\n" % credit)

    @staticmethod
    async def collect(processes: Sequence[asyncio.subprocess.Process]) -> list[dict[str, Any]]:
        results = []
        for p in processes:
            assert p.stdout is not None and p.stderr is not None
            out, err = await asyncio.gather(p.stdout.read(), p.stderr.read())  # stdin stays open for credits
            await p.wait()
            if p.stdin is not None:
                p.stdin.close()
            result = first_json_line(out.decode().splitlines())
            if result is None or result.get("error"):
                raise RuntimeError(f"publisher failed: {result and result.get('error')} {err.decode()[-2000:]}")
            results.append(result)
        return results

    # -- C-tool limits ----------------------------------------------------------------------------------
    async def psql_copy(self) -> Phase:
        phase = Phase("psql_copy")
        rows = self.o.copy_rows
        path = self.work / "copy.tsv"
        await asyncio.to_thread(self._write_copy_file, path, rows)
        psql = bin_dir() / "psql"
        psql_bin = str(psql) if psql.exists() else (shutil.which("psql") or "psql")
        conn = await asyncpg.connect(self.tools_db_url)
        try:
            columns = ("device_id text NOT NULL, metric text NOT NULL, ts timestamptz NOT NULL, "
                       "value double precision NOT NULL, quality smallint NOT NULL DEFAULT 0")
            await conn.execute(f"CREATE TABLE copy_narrow ({columns})")
            await conn.execute(f"CREATE TABLE copy_narrow_pk ({columns}, PRIMARY KEY (device_id, metric, ts))")
        finally:
            await conn.close()
        for table, key in (("copy_narrow", "psql_copy_rows_per_s"), ("copy_narrow_pk", "psql_copy_pk_rows_per_s")):
            started = time.perf_counter()
            result = await asyncio.to_thread(
                subprocess.run,
                [psql_bin, "-X", "-q", "-v", "ON_ERROR_STOP=1", self.tools_db_url, "-c",
                 f"\\copy {table} (device_id, metric, ts, value, quality) FROM '{path}'"],
                capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"},
            )
            elapsed = time.perf_counter() - started
            if result.returncode != 0:
                raise RuntimeError(f"psql \\copy failed: {result.stderr.strip()}")
            phase.figures[key] = rows / elapsed
            log(f"psql \\copy {rows:,} rows into {table}: {elapsed:.2f} s = {rows / elapsed:,.0f} rows/s")
        path.unlink()
        return phase

    def _write_copy_file(self, path: Path, rows: int) -> None:
        """Rows shaped like scenario (b)'s readings: round-robin devices, five metrics, ISO local timestamps."""
        metrics = ("water_level_m", "rain_mm", "temperature_c", "humidity_pct", "pressure_hpa")
        makers = [PayloadMaker("batched", device_ids(f"BENCH-P{i}", self.o.devices), prefix="x",
                               base_ms=int(time.time() * 1000) - 300_000) for i in range(self.o.publishers)]
        lines = []
        n_dev = self.o.devices
        per_message = 10
        for r in range(rows):
            message, slot = divmod(r, per_message)
            pub = message % len(makers)
            k = message // len(makers)
            maker = makers[pub]
            entry, metric = divmod(slot, 5)
            ts = maker.iso(maker.base_ms + (k // n_dev) * 2 * maker.period + entry * maker.period)
            lines.append(f"BENCH-P{pub}-{k % n_dev:04d}\t{metrics[metric]}\t{ts}\t{90.0 + (r % 1000) / 100}\t0\n")
        path.write_text("".join(lines))

    async def mosquitto_sub(self) -> Phase:
        """`mosquitto_sub -q 1 -C N`, twice: (1) live, while the publishers publish N messages; (2) draining
        N messages the broker queued for its persistent session beforehand (the pure receive rate, the way
        the backfill is measured). The figure is the higher of the two: the C tool's limit."""
        phase = Phase("mosquitto_sub")
        exe = shutil.which("mosquitto_sub")
        if exe is None:
            log("mosquitto_sub not installed: skipping the broker C-tool limit")
            return phase
        n = self.o.sub_messages
        parts = urlsplit(self.mqtt_url)
        base = [exe, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 1883), "-q", "1"]

        async def run_sub(*args: str) -> float:
            process = await asyncio.create_subprocess_exec(*base, *args, stdout=subprocess.DEVNULL,
                                                           stderr=subprocess.PIPE)
            _, err = await process.communicate()
            if process.returncode != 0:
                raise RuntimeError(f"mosquitto_sub {' '.join(args)} failed: {err.decode().strip()}")
            return time.time()

        # (1) live, with the publishers at the ingest runs' priority and at the same priority as the C tool:
        # the better of the two is its limit
        live: dict[int, tuple[float, float, float]] = {}  # nice -> (receive rate, publish rate, steal %)
        for nice in (PUBLISHER_NICE, 0):
            steal0, wall0 = machine_steal_s(), time.time()
            receiving = asyncio.create_task(run_sub("-C", str(n), "-W", "300", "-t", "bench/csub/#",
                                                    "-i", f"bench-csub-{self.run_id}"))
            await asyncio.sleep(1.0)  # let it subscribe
            publishers, _ = await self.spawn_publishers("single", prefix="bench/csub", count=n, tag="csub-",
                                                        nice=nice)
            done = await receiving
            results = await self.collect(publishers)
            started = min(r["started"] for r in results)
            live[nice] = (n / (done - started), n / (max(r["acked_done"] for r in results) - started),
                          100 * (machine_steal_s() - steal0) / (time.time() - wall0))
        live_rate, publish_rate, live_steal = max(live.values())
        # (2) drain a queue
        client = f"bench-csubq-{self.run_id}"
        await run_sub("-c", "-i", client, "-t", "bench/csubq/#", "-E")  # persistent session, subscribed
        publishers, _ = await self.spawn_publishers("single", prefix="bench/csubq", count=n, tag="csubq-")
        await self.collect(publishers)
        began = time.time()
        drained = await run_sub("-c", "-i", client, "-t", "bench/csubq/#", "-C", str(n), "-W", "300")
        drain_rate = n / (drained - began)
        await run_sub("-i", client, "-t", "bench/csubq/#", "-E")  # a clean session discards the persistent one
        phase.figures.update(mosquitto_sub_msgs_per_s=max(live_rate, drain_rate), mosquitto_sub_live_msgs_per_s=
                             live_rate, mosquitto_sub_drain_msgs_per_s=drain_rate,
                             mosquitto_sub_publish_msgs_per_s=publish_rate, mosquitto_sub_live_steal_pct=live_steal,
                             **{f"mosquitto_sub_live_nice{nice}_msgs_per_s": v[0] for nice, v in live.items()})
        log(f"mosquitto_sub -q 1 -C {n:,}: live " + "; ".join(
            f"{rate:,.0f} msg/s with publishers at nice {nice} ({sent:,.0f} msg/s published, steal {steal:.0f} % "
            f"of a core)" for nice, (rate, sent, steal) in live.items()) + "; "
            f"draining a queued session {drain_rate:,.0f} msg/s")
        return phase

    # -- scenarios --------------------------------------------------------------------------------------
    async def sample_until(self, done: asyncio.Future[Any] | asyncio.Task[Any], samples: list[Sample],
                           marks: dict[float, dict[str, float]], pids: dict[str, int | None],
                           every: float = 0.25, on_sample: Callable[[Sample], None] | None = None) -> None:
        """Sample the ingest counters until `done`; take CPU snapshots when the wall clock passes each mark
        (on their own timer: a saturated ingest can take a second to answer /metrics)."""
        snapshots = asyncio.create_task(self.take_marks(marks, pids))
        try:
            while not done.done():
                readings, acked = await self.ingest_counters()
                now = time.time()
                samples.append(Sample(now, readings, acked))
                if on_sample is not None:
                    on_sample(samples[-1])
                for ingest in self.ingests:
                    ingest.note_memory()
                await asyncio.wait({done}, timeout=every)
        finally:
            snapshots.cancel()

    @staticmethod
    async def take_marks(marks: dict[float, dict[str, float]], pids: dict[str, int | None]) -> None:
        """In a thread: a snapshot reads /proc for every process on the machine (8 ms idle, tens of ms on a busy
        machine), and the latency probes' poller shares this event loop: a probe seen by a poll that waited for
        the snapshot would be timed late."""
        for when in sorted(marks):
            await asyncio.sleep(max(0.0, when - time.time()))
            marks[when] = {"_t": time.time(), **await asyncio.to_thread(cpu_snapshot, pids)}

    @staticmethod
    def window_rate(samples: Sequence[Sample], t1: float, t2: float, attr: str = "readings") -> float:
        """Counter increase per second between the first sample at or after t1 and the last at or before t2
        (widened to the nearest samples around the window when fewer than two fall inside it)."""
        inside = [s for s in samples if t1 <= s.t <= t2]
        if len(inside) < 2:
            before = [s for s in samples if s.t < t1][-1:]
            after = [s for s in samples if s.t > t2][:1]
            inside = before + inside + after
        if len(inside) < 2:
            return float("nan")
        a, b = inside[0], inside[-1]
        return (getattr(b, attr) - getattr(a, attr)) / (b.t - a.t)

    @staticmethod
    def cpu_split(marks: dict[float, dict[str, float]]) -> dict[str, float]:
        snaps = [marks[t] for t in sorted(marks)]
        if len(snaps) < 2 or not snaps[0] or not snaps[1]:
            return {}
        a, b = snaps[0], snaps[1]
        span = b["_t"] - a["_t"]
        split: dict[str, float] = {}
        for name in b:
            if name in ("_t", BUSY, STEAL) or name not in a or b[name] < a[name]:  # absent, or exited in between
                continue
            key = "publishers" if name.startswith("publisher") else name
            split[key] = split.get(key, 0.0) + 100 * (b[name] - a[name]) / span
        steal = 100 * (b[STEAL] - a[STEAL]) / span if STEAL in a and STEAL in b else 0.0
        if BUSY in a and BUSY in b:
            # whatever else ran on the machine meanwhile (kernel threads, other people's jobs): a warning sign
            split["other"] = max(0.0, 100 * (b[BUSY] - a[BUSY]) / span - steal - sum(split.values()))
        split["steal"] = steal  # the hypervisor ran another guest on our cores: the machine was not quiet
        return split

    async def wait_committed(self, expected: float, timeout: float = 180.0) -> float:
        """Wait until the ingest has committed `expected` readings; the wall-clock time it was seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            readings, _ = await self.ingest_counters()
            if readings >= expected:
                return time.time()
            await asyncio.sleep(0.05)
        health = []
        for ingest in self.ingests:
            assert self.http is not None
            with contextlib.suppress(aiohttp.ClientError, ValueError):
                async with self.http.get(ingest.base + "/healthz") as response:
                    health.append(await response.json())
                async with self.http.get(ingest.base + "/metrics") as response:
                    health.append([line for line in (await response.text()).splitlines()
                                   if line.startswith("occ_ingest_") and "_bucket" not in line])
        raise RuntimeError(f"ingest committed {readings:,.0f} of {expected:,.0f} readings within {timeout} s; "
                           f"health: {health}")

    async def throughput(self, shape: str) -> Phase:
        """Publishers at maximum rate for `duration`; committed readings/s over the steady-state window."""
        phase = Phase(shape)
        await self.truncate()
        per_message = READINGS_PER_MESSAGE[shape]
        before, acked_before = await self.ingest_counters()
        checkpoints = await self.checkpoints()
        backlog = BACKLOG_MESSAGES
        publishers, start_at = await self.spawn_publishers(shape, duration=self.o.duration, backlog=backlog,
                                                           nice=PUBLISHER_NICE)
        t1, t2 = start_at + self.o.warmup, start_at + self.o.duration
        marks: dict[float, dict[str, float]] = {t1: {}, t2 - CPU_MARK_EARLY_S: {}}  # publishers still alive
        samples: list[Sample] = []
        collecting = asyncio.ensure_future(self.collect(publishers))
        await self.sample_until(collecting, samples, marks, self.cpu_pids(publishers),
                                on_sample=lambda s: self.grant(publishers, s.acked - acked_before, backlog))
        results = collecting.result()
        sent = sum(r["acked"] for r in results)
        expected_readings = before + sent * per_message
        published_until = max(r["send_done"] for r in results)
        drained_at = await self.wait_committed(expected_readings)
        rate = self.window_rate(samples, t1, t2)
        overall = sent * per_message / (drained_at - start_at)  # ramp-up and final drain included
        published_rate = sum(r["sent"] for r in results) / (published_until - start_at)
        stored, letters = await self.stored()
        checkpoints = _delta(await self.checkpoints(), checkpoints)
        lost = sent * per_message - stored
        phase.figures.update(
            readings_per_s=rate, msgs_per_s=rate / per_message, published_msgs_per_s=published_rate,
            overall_readings_per_s=overall, checkpoints=checkpoints,
            messages=sent, readings=sent * per_message, stored=stored, lost=lost, dead_letters=letters,
            drain_after_publish_s=drained_at - published_until,
            publisher_cpu_us_per_msg=1e6 * sum(r["cpu_s"] for r in results) / max(1, sent),
        )
        phase.cpu = self.cpu_split(marks)
        ingest_cpu = sum(v for k, v in phase.cpu.items() if k.startswith("ingest"))
        if ingest_cpu and rate == rate and rate > 0:
            # CPU of the ingest processes over the window, per unit committed over (about) the same window
            phase.figures.update(ingest_cpu_pct=ingest_cpu,
                                 ingest_cpu_us_per_msg=1e4 * ingest_cpu / (rate / per_message),
                                 ingest_cpu_us_per_reading=1e4 * ingest_cpu / rate)
            log(f"({shape}) ingest CPU {ingest_cpu:.0f} % of a core = "
                f"{phase.figures['ingest_cpu_us_per_msg']:.1f} µs per message, "
                f"{phase.figures['ingest_cpu_us_per_reading']:.1f} µs per reading")
        log(f"({shape}) committed {rate:,.0f} readings/s = {rate / per_message:,.0f} msg/s over "
            f"[{self.o.warmup:.0f} s, {self.o.duration:.0f} s] ({overall:,.0f} readings/s from first publish to "
            f"last commit); published {published_rate:,.0f} msg/s; "
            f"{sent:,} msgs, stored {stored:,} readings (lost {lost}, dead letters {letters}); "
            f"backlog drained {drained_at - published_until:.1f} s after publishing stopped; "
            f"server checkpoints during the run: {checkpoints}; "
            f"CPU % of a core: {fmt_cpu(phase.cpu)}")
        return phase

    async def latency(self, rate: float, label: str = "latency") -> Phase:
        """A fixed-rate load at `rate` msg/s plus a probe every 20 ms whose timestamp is its publish time;
        commit time is when the probe's reading is first visible to a query polled every 5 ms. With
        `--foreign-load`, a busy process burns that fraction of a core meanwhile (other tenants of the box)."""
        phase = Phase(label)
        await self.truncate()
        duration = self.o.latency_s
        before, _ = await self.ingest_counters()
        stats_before = await self.batch_stats()
        checkpoints = await self.checkpoints()
        publishers, start_at = await self.spawn_publishers("single", duration=duration, rate=rate)
        probe = await asyncio.create_subprocess_exec(
            *publisher_command(self.mqtt_url, shape="probe", client_id=f"bench-probe-{self.run_id}",
                               id_prefix=PROBE_PREFIX, devices=1, duration=duration, rate=1 / PROBE_INTERVAL_S,
                               start_at=start_at, nodelay=True),
            cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        probe_device = device_ids(PROBE_PREFIX, 1)[0]
        latencies: list[tuple[float, float]] = []  # (publish time, publish→commit s)
        # The poll runs 200 times a second against tables emptied just before the phase. When autovacuum analyzed
        # them while empty, the planner chose a sequential scan of the growing partition for every poll: 71 % of a
        # core in PostgreSQL where 43 % was usual, taken from the system under test. Index scans only, here.
        conn = await asyncpg.connect(self.db_url, server_settings={"enable_seqscan": "off"})
        poll_stop = asyncio.Event()

        async def poll() -> None:
            # Probes can commit out of order (several ingest workers): fetch everything above the newest probe
            # before which all were seen, and tell probes apart by their sequence number (their value).
            stmt = await conn.prepare(
                "SELECT ts, value FROM readings WHERE device_id = $1 AND metric = $2 AND ts > $3 ORDER BY ts")
            watermark = datetime.fromtimestamp(start_at - 60, UTC)
            seen: dict[int, datetime] = {}
            next_k = 0
            while not poll_stop.is_set():
                rows = await stmt.fetch(probe_device, PROBE_METRIC, watermark)
                visible = time.time()  # upper bound of the commit time: the rows were visible to this query
                for ts, value in rows:
                    k = int(value)
                    if k not in seen:
                        seen[k] = ts
                        published = ts.timestamp()
                        latencies.append((published, visible - published))
                while next_k in seen:
                    watermark = seen[next_k]
                    next_k += 1
                await asyncio.sleep(POLL_INTERVAL_S)

        poller = asyncio.create_task(poll())
        t1, t2 = start_at + min(2.0, duration / 4), start_at + duration
        marks: dict[float, dict[str, float]] = {t1: {}, t2 - CPU_MARK_EARLY_S: {}}  # publishers still alive
        samples: list[Sample] = []
        foreign = None
        if self.o.foreign_load > 0:
            foreign = await asyncio.create_subprocess_exec(sys.executable, "-c", FOREIGN_LOAD, str(self.o.foreign_load),
                                                           stdin=subprocess.DEVNULL)
        pids = self.cpu_pids(publishers)
        if foreign is not None:
            pids["foreign"] = foreign.pid
        collecting = asyncio.ensure_future(self.collect([*publishers, probe]))
        try:
            await self.sample_until(collecting, samples, marks, pids)
        finally:
            if foreign is not None:
                foreign.kill()
                await foreign.wait()
        results = collecting.result()
        probe_result = results[-1]
        loaded = results[:-1]
        await self.wait_committed(before + sum(r["acked"] for r in results), timeout=60)
        await asyncio.sleep(0.1)
        poll_stop.set()
        await poller
        await conn.close()
        measured = [lat for ts, lat in latencies if ts >= t1]
        stats_after = await self.batch_stats()
        batches = stats_after["batches"] - stats_before["batches"]
        if batches > 0:  # what the ingest itself saw: batch size and its oldest message's receive→commit time
            phase.figures.update(
                batches_per_s=batches / duration,
                msgs_per_batch=(stats_after["messages"] - stats_before["messages"]) / batches,
                receive_to_commit_mean_ms=1000 * (stats_after["commit_s"] - stats_before["commit_s"]) / batches,
                write_mean_ms=1000 * (stats_after["write_s"] - stats_before["write_s"])
                / max(1.0, stats_after["writes"] - stats_before["writes"]),
            )
        sent_after_t1 = probe_result["acked"] - min(probe_result["acked"], round((t1 - start_at) / PROBE_INTERVAL_S))
        stem = f"{label}_{self.variant_name.replace('/', '_')}"
        with (self.work / f"probes_{stem}.csv").open("w") as out:
            out.write("publish_time_s,publish_to_commit_ms\n")
            out.writelines(f"{ts:.3f},{1000 * lat:.1f}\n" for ts, lat in latencies)
        stalls = await self.ingest_stalls(t1, t2)
        (self.work / f"stalls_{stem}.json").write_text(json.dumps(stalls, indent=1))
        phase.figures.update(ingest_stalls=len(stalls),
                             ingest_worst_stall_ms=1000 * max((st["seconds"] for st in stalls), default=0.0))
        committed_rate = self.window_rate(samples, t1, t2)
        checkpoints = _delta(await self.checkpoints(), checkpoints)
        phase.figures.update(checkpoints=checkpoints,
            offered_msgs_per_s=rate, committed_msgs_per_s=committed_rate,
            achieved_publish_msgs_per_s=sum(r["sent"] for r in loaded) / duration,
            probes=probe_result["acked"], probes_measured=len(measured),
            p50_commit_ms=1000 * percentile(measured, 50), p90_commit_ms=1000 * percentile(measured, 90),
            p99_commit_ms=1000 * percentile(measured, 99), max_commit_ms=1000 * max(measured, default=float("nan")),
        )
        phase.cpu = self.cpu_split(marks)
        f = phase.figures
        log(f"({label}) at {rate:,.0f} msg/s offered ({f['achieved_publish_msgs_per_s']:,.0f} published, "
            f"{committed_rate:,.0f} committed): publish→commit "
            f"p50 {f['p50_commit_ms']:.1f} ms, p90 {f['p90_commit_ms']:.1f} ms, p99 {f['p99_commit_ms']:.1f} ms, "
            f"max {f['max_commit_ms']:.1f} ms over {len(measured)} probes (of ~{sent_after_t1} sent after the "
            f"warm-up); server checkpoints during the run: "
            f"{checkpoints}; CPU: {fmt_cpu(phase.cpu)}")
        if stalls:  # the workers remember their latest 32 (occ.stalls.RECENT); an overloaded run has more
            worst = sorted(stalls, key=lambda st: -st["seconds"])[:6]
            log(f"({label}) ingest stalls of 50 ms or more in the window: {len(stalls)}; the longest: " + ", ".join(
                f"{st['kind']} {1000 * st['seconds']:.0f} ms at +{st['at'] - start_at:.1f} s (worker {st['worker']})"
                for st in worst))
        if "batches_per_s" in f:
            log(f"({label}) ingest batches: {f['batches_per_s']:,.0f}/s of {f['msgs_per_batch']:,.1f} messages, "
                f"oldest message received→commit {f['receive_to_commit_mean_ms']:.1f} ms on average, "
                f"of which the write {f['write_mean_ms']:.1f} ms")
        return phase

    async def baseline(self) -> Phase:
        """The naive subscriber under the (b) load, on its own topic prefix (the ingest never sees it)."""
        phase = Phase("baseline")
        await self.truncate()
        naive = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.baseline_naive", "--mqtt-url", self.mqtt_url, "--database-url", self.db_url,
            "--topic-prefix", "bench/naive", cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert naive.stdout is not None
        line = await asyncio.wait_for(naive.stdout.readline(), 30)
        if b"subscribed" not in line:
            raise RuntimeError(f"naive baseline did not start: {line!r}")
        backlog = BACKLOG_MESSAGES
        publishers, start_at = await self.spawn_publishers("batched", prefix="bench/naive",
                                                           duration=self.o.baseline_s, tag="naive-", backlog=backlog)
        t1, t2 = start_at + min(2.0, self.o.baseline_s / 4), start_at + self.o.baseline_s
        conn = await asyncpg.connect(self.db_url)
        samples: list[Sample] = []
        marks: dict[float, dict[str, float]] = {t1: {}, t2 - CPU_MARK_EARLY_S: {}}  # publishers still alive
        pids: dict[str, int | None] = {**self.server_pids(), "naive": naive.pid, "bench": os.getpid(),
                **{f"publisher{i}": p.pid for i, p in enumerate(publishers)}}
        snapshots = asyncio.create_task(self.take_marks(marks, pids))
        while time.time() < t2 + 0.3:
            count = await conn.fetchval("SELECT count(*) FROM readings")
            now = time.time()
            samples.append(Sample(now, count, 0))
            self.grant(publishers, count / READINGS_PER_MESSAGE["batched"], backlog)
            await asyncio.sleep(0.25)
        await conn.close()
        await snapshots
        await self.collect(publishers)
        naive.send_signal(signal.SIGTERM)
        out, _ = await naive.communicate()
        report = first_json_line(out.decode().splitlines()) or {}
        rate = self.window_rate(samples, t1, t2)
        phase.figures.update(baseline_readings_per_s=rate, baseline_rss_mb=report.get("max_rss_mb"),
                             baseline_errors=report.get("errors"),
                             baseline_unprocessed_messages=report.get("queued_unprocessed"))
        phase.cpu = self.cpu_split(marks)
        log(f"(naive baseline) {rate:,.0f} readings/s committed (one INSERT + commit per reading, ack after "
            f"commit); {report.get('queued_unprocessed', '?'):,} messages still queued in it when stopped; "
            f"CPU: {fmt_cpu(phase.cpu)}")
        return phase

    async def backfill(self) -> Phase:
        """A burst queued for the (stopped) ingest's persistent session, then drained by a fresh ingest."""
        phase = Phase("backfill")
        await self.truncate()
        n = self.o.backfill_messages
        base_ms = int((time.time() - 3 * 86400) * 1000)
        publishers, start_at = await self.spawn_publishers("backfill", count=n, base_ms=base_ms, start_in=0.5)
        results = await self.collect(publishers)
        acked = sum(r["acked"] for r in results)
        pub_s = max(r["acked_done"] for r in results) - start_at
        readings = acked * READINGS_PER_MESSAGE["backfill"]
        log(f"(backfill) {acked:,} messages ({readings:,} readings) queued at the broker in {pub_s:.1f} s; "
            f"starting the ingest")
        checkpoints = await self.checkpoints()
        spawned = time.time()
        ready = await self.start_ingest()
        samples: list[Sample] = []
        done_at: float | None = None
        first_at: float | None = None
        pids = self.cpu_pids([])
        cpu0 = {"_t": time.time(), **cpu_snapshot(pids)}
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            count, msgs = await self.ingest_counters()
            now = time.time()
            samples.append(Sample(now, count, msgs))
            for ingest in self.ingests:
                ingest.note_memory()
            if count and first_at is None:
                first_at = now
            if count >= readings:
                done_at = now
                break
            await asyncio.sleep(0.1)
        if done_at is None:
            raise RuntimeError(f"backfill not drained: {samples[-1].readings:,.0f} of {readings:,} readings")
        cpu1 = {"_t": time.time(), **cpu_snapshot(pids)}
        stored, letters = await self.stored()
        checkpoints = _delta(await self.checkpoints(), checkpoints)
        rate = readings / (done_at - ready)
        phase.figures.update(
            backfill_readings_per_s=rate, backfill_msgs_per_s=rate / 10, backfill_messages=acked,
            backfill_readings=readings, stored=stored, lost=readings - stored, dead_letters=letters,
            drain_s=done_at - ready, ingest_startup_s=ready - spawned,
            from_spawn_readings_per_s=readings / (done_at - spawned), publish_s=pub_s, checkpoints=checkpoints,
        )
        phase.cpu = self.cpu_split({0.0: cpu0, 1.0: cpu1})
        log(f"(backfill) drained {readings:,} readings in {done_at - ready:.1f} s after the ingest connected "
            f"= {rate:,.0f} readings/s ({readings / (done_at - spawned):,.0f}/s counting its "
            f"{ready - spawned:.1f} s start); stored {stored:,} (lost {readings - stored}, dead letters {letters}); "
            f"server checkpoints during the drain: {checkpoints}; "
            f"CPU: {fmt_cpu(phase.cpu)}")
        return phase

    # -- the run ----------------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        o = self.o
        want = o.phases
        started = time.monotonic()
        info = machine_info()
        log(f"machine: {info['cpu_model']}, {info['cores']} usable cores, {info['mem_mb']:,} MB; "
            f"{'quick' if o.quick else 'full'} run, {o.publishers} publisher processes, {o.workers} ingest worker(s)")
        if "receive" in want:
            log("receive paths in isolation (bench.receive): native vs paho, CPU of one process")
            from bench import receive

            phase = Phase("receive")
            phase.figures.update(await asyncio.to_thread(receive.run, 50_000 if o.quick else 200_000,
                                                         o.transports))
            f = phase.figures
            log(f"receive: native {f.get('native_cpu_us_per_msg')} µs/msg, paho {f.get('paho_cpu_us_per_msg')} "
                f"µs/msg ({f.get('paho_vs_native_cpu')}×)")
            self.phases["receive"] = phase
        await self.setup()
        if "copy" in want:
            log("C-tool limit: psql \\copy")
            self.phases["psql_copy"] = await self.psql_copy()
        if "sub" in want:
            log("C-tool limit: mosquitto_sub")
            self.phases["mosquitto_sub"] = await self.mosquitto_sub()
        await self.prepare_schema()
        primary = (o.worker_counts[0], o.transports[0])
        variants = [(w, t) for w in o.worker_counts for t in o.transports if (w, t) != primary]
        variants.append(primary)  # last, so its sessions are the ones the backfill finds
        for workers, transport in variants:
            if want & {"single", "batched", "latency"}:
                await self.variant(workers, transport, primary=(workers, transport) == primary)
        if "baseline" in want:
            log(f"naive baseline under the (b) load for {o.baseline_s:.0f} s")
            self.phases["baseline"] = await self.baseline()
        if "backfill" in want:
            log(f"(c) backfill burst of {o.backfill_messages:,} messages × 10 readings")
            self.phases["backfill"] = await self.backfill()
            await self.stop_ingest()
        elapsed = time.monotonic() - started
        return self.summary(info, elapsed)

    async def variant(self, workers: int, transport: str, *, primary: bool) -> None:
        """(a), (b), the sustain check and latency at half the sustained rate for one receive path × worker count."""
        o, want = self.o, self.o.phases
        name = self.variant_name = f"{transport}/{workers}w"
        tag = "" if primary else f"-{transport}{workers}"
        await self.start_ingest(workers=workers, transport=transport, tag=tag)
        log(f"[{name}] ingest running (pid {', '.join(str(i.pid) for i in self.ingests)})")
        if "single" in want:
            log(f"[{name}] (a) one reading per message, {o.duration:.0f} s at maximum rate")
            self.phases[f"single@{name}"] = await self.throughput("single")
        if "batched" in want:
            log(f"[{name}] (b) ten readings per message, {o.duration:.0f} s at maximum rate")
            self.phases[f"batched@{name}"] = await self.throughput("batched")
        if "latency" in want:
            single = self.phases.get(f"single@{name}")
            peak = single.figures["msgs_per_s"] if single else 5000.0
            if single and not peak > 0:  # NaN or 0: the window saw no commit (a starved machine); use the whole run
                peak = single.figures["overall_readings_per_s"]
            peak = peak if peak > 0 else 1000.0
            sustained = None
            if o.latency_rate:
                rate = o.latency_rate
            else:
                sustained = await self.find_sustained(name, peak)
                rate = sustained / 2
            log(f"[{name}] latency at {'the given rate' if sustained is None else 'half the sustained rate'}: "
                f"{rate:,.0f} msg/s for {o.latency_s:.0f} s, probe every {PROBE_INTERVAL_S * 1000:.0f} ms")
            phase = await self.latency(rate)
            phase.figures["sustained_msgs_per_s"] = sustained
            self.phases[f"latency@{name}"] = phase
        await self.stop_ingest()
        if not primary:
            await asyncio.to_thread(self._discard_ingest_sessions,
                                    [f"{INGEST_CLIENT_ID}{tag}-{i}" for i in range(workers)])

    async def find_sustained(self, name: str, peak: float) -> float:
        """The highest fixed publish rate the stack keeps up with: commits keep pace with publishing (at least
        `SUSTAIN_KEEP_UP` of it over the window) and the p99 stays under `SUSTAIN_P99_MS`, i.e. no queue grows.

        (a) is a burst maximum under credit-paced publishers (full 5,000-message batches from a backlog); at a
        fixed rate batches are as large as a linger's worth of traffic, so each message costs more and (a)'s
        rate is not sustained: committed falls behind offered and the queue, and the latency, grow without
        bound. The first check offers (a)'s rate; each next one offers 90 % of what the previous committed
        (80 % of what it offered when it committed all but its latency grew), at most `SUSTAIN_STEPS` checks.
        Every check is kept (`sustain`, `sustain2`, ... in the phases) and printed."""
        o = self.o
        offered = peak
        for step in range(1, SUSTAIN_STEPS + 1):
            label = "sustain" if step == 1 else f"sustain{step}"
            log(f"[{name}] sustain check {step}: {offered:,.0f} msg/s at a fixed publish rate for {o.latency_s:.0f} s")
            check = await self.latency(offered, label=label)
            self.phases[f"{label}@{name}"] = check
            f = check.figures
            committed, published = f["committed_msgs_per_s"], f["achieved_publish_msgs_per_s"]
            if not committed > 0:  # NaN or 0: no commit inside the window at all, the machine is starved
                log(f"[{name}] the sustain window saw no commit (see `other` in the CPU split)")
                offered /= 2
                continue
            if committed >= SUSTAIN_KEEP_UP * published and f["p99_commit_ms"] <= SUSTAIN_P99_MS:
                log(f"[{name}] sustained: {offered:,.0f} msg/s (committed {committed:,.0f}, p99 "
                    f"{f['p99_commit_ms']:,.0f} ms)")
                return offered
            offered = 0.9 * committed if committed < SUSTAIN_KEEP_UP * published else 0.8 * offered
        log(f"[{name}] no sustain check kept up in {SUSTAIN_STEPS} tries; taking {offered:,.0f} msg/s (untested)")
        return offered

    def summary(self, info: dict[str, Any], elapsed: float) -> dict[str, Any]:
        o = self.o
        first = f"@{o.transports[0]}/{o.worker_counts[0]}w"
        p = dict(self.phases)
        p.update({name.removesuffix(first): phase for name, phase in self.phases.items() if name.endswith(first)})

        def fig(phase: str, key: str, digits: int = 0) -> float | None:
            value = p[phase].figures.get(key) if phase in p else None
            if value is None or value != value:  # missing or NaN
                return None
            return round(value, digits) if digits else round(value)

        def ratio(a: float | None, b: float | None) -> float | None:
            return round(a / b, 3) if a and b else None

        def at_least(value: float | None, bound: float) -> bool | None:
            return None if value is None else value >= bound

        rss = max(self.retired_hwm_kb, default=0) / 1024
        single = fig("single", "msgs_per_s")
        batched = fig("batched", "readings_per_s")
        backfill = fig("backfill", "backfill_readings_per_s")
        baseline = fig("baseline", "baseline_readings_per_s")
        sub = fig("mosquitto_sub", "mosquitto_sub_msgs_per_s")
        copy, copy_pk = fig("psql_copy", "psql_copy_rows_per_s"), fig("psql_copy", "psql_copy_pk_rows_per_s")
        p99 = fig("latency", "p99_commit_ms", 1)
        lost = [p[n].figures["lost"] for n in ("single", "batched", "backfill") if n in p]
        letters = [p[n].figures["dead_letters"] for n in ("single", "batched", "backfill") if n in p]
        result: dict[str, Any] = {
            "single_msgs_per_s": single,
            "batched_readings_per_s": batched,
            "backfill_readings_per_s": backfill,
            "p50_commit_ms": fig("latency", "p50_commit_ms", 1),
            "p99_commit_ms": p99,
            "max_commit_ms": fig("latency", "max_commit_ms", 1),
            "latency_at_msgs_per_s": fig("latency", "offered_msgs_per_s"),
            "ingest_rss_mb": round(rss, 1) if rss else None,
            "baseline_readings_per_s": baseline,
            "mosquitto_sub_msgs_per_s": sub,
            "mosquitto_sub_live_msgs_per_s": fig("mosquitto_sub", "mosquitto_sub_live_msgs_per_s"),
            "mosquitto_sub_drain_msgs_per_s": fig("mosquitto_sub", "mosquitto_sub_drain_msgs_per_s"),
            "psql_copy_rows_per_s": copy,
            "psql_copy_pk_rows_per_s": copy_pk,
            "single_vs_mosquitto_sub": ratio(single, sub),
            "batched_vs_psql_copy": ratio(batched, copy),
            "batched_vs_psql_copy_pk": ratio(batched, copy_pk),
            "batched_vs_baseline": ratio(batched, baseline),
            "backfill_vs_batched": ratio(backfill, batched),
            "single_overall_msgs_per_s": fig("single", "overall_readings_per_s"),
            "batched_overall_readings_per_s": fig("batched", "overall_readings_per_s"),
            "backfill_with_startup_readings_per_s": fig("backfill", "from_spawn_readings_per_s"),
            "lost_readings": sum(lost) if lost else None,
            "dead_letters": sum(letters) if letters else None,
            "ingest_workers": self.o.workers,
            "publishers": self.o.publishers,
            "quick": self.o.quick,
            "cpu_model": info["cpu_model"],
            "cores": info["cores"],
            "mem_mb": info["mem_mb"],
            "broker": self.broker.kind if self.broker else "external",
            "postgres_durable": bool(self.pg is None or self.pg.durable),
            "elapsed_s": round(elapsed, 1),
        }
        result["targets_met"] = {
            "a_single_10k_msgs": at_least(single, TARGETS["single_msgs_per_s"]),
            "b_batched_80k_readings": at_least(batched, TARGETS["batched_readings_per_s"]),
            "c_backfill_80pct_of_b": at_least(result["backfill_vs_batched"], TARGETS["backfill_vs_batched"]),
            "p99_250ms_at_half_load": None if p99 is None else p99 <= TARGETS["p99_commit_ms"],
            "rss_300mb": None if not rss else rss <= TARGETS["ingest_rss_mb"],
            "20x_baseline": at_least(result["batched_vs_baseline"], TARGETS["batched_vs_baseline"]),
            "b_55pct_of_psql_copy": at_least(result["batched_vs_psql_copy"], TARGETS["batched_vs_psql_copy"]),
            "nothing_lost": None if not lost else result["lost_readings"] == 0 and result["dead_letters"] == 0,
        }
        sub_live = fig("mosquitto_sub", "mosquitto_sub_live_msgs_per_s")
        variants: dict[str, dict[str, Any]] = {}
        for w in o.worker_counts:
            for t in o.transports:
                v = f"@{t}/{w}w"
                a, b = fig(f"single{v}", "msgs_per_s"), fig(f"batched{v}", "readings_per_s")
                variants[f"{t}/{w}w"] = {
                    "single_msgs_per_s": a,
                    "batched_readings_per_s": b,
                    "ingest_cpu_us_per_msg": fig(f"single{v}", "ingest_cpu_us_per_msg", 1),
                    "ingest_cpu_us_per_reading": fig(f"batched{v}", "ingest_cpu_us_per_reading", 2),
                    "ingest_cpu_us_per_msg_batched": fig(f"batched{v}", "ingest_cpu_us_per_msg", 1),
                    "sustained_msgs_per_s": fig(f"latency{v}", "sustained_msgs_per_s"),
                    "sustain_p99_commit_ms": fig(f"sustain{v}", "p99_commit_ms", 1),
                    "sustain_checks": [
                        [fig(f"{label}{v}", "offered_msgs_per_s"), fig(f"{label}{v}", "committed_msgs_per_s"),
                         fig(f"{label}{v}", "p99_commit_ms", 1)]
                        for label in ["sustain", *(f"sustain{k}" for k in range(2, SUSTAIN_STEPS + 1))]
                        if f"{label}{v}" in p
                    ],
                    "write_mean_ms": fig(f"latency{v}", "write_mean_ms", 1),
                    "latency_at_msgs_per_s": fig(f"latency{v}", "offered_msgs_per_s"),
                    "p50_commit_ms": fig(f"latency{v}", "p50_commit_ms", 1),
                    "p99_commit_ms": fig(f"latency{v}", "p99_commit_ms", 1),
                    "latency_steal_pct": round(p[f"latency{v}"].cpu.get("steal", 0.0)) if f"latency{v}" in p
                    else None,
                    "single_vs_mosquitto_sub_live": ratio(a, sub_live),
                    "batched_vs_psql_copy_pk": ratio(b, copy_pk),
                }
        result["variants"] = variants
        result["ingest_cpu_us_per_msg"] = fig("single", "ingest_cpu_us_per_msg", 1)
        result["ingest_cpu_us_per_reading"] = fig("batched", "ingest_cpu_us_per_reading", 2)
        result["single_vs_mosquitto_sub_live"] = ratio(single, sub_live)
        w0 = o.worker_counts[0]
        native, paho = variants.get(f"native/{w0}w", {}), variants.get(f"paho/{w0}w", {})
        result["paho_vs_native_cpu_per_msg"] = ratio(paho.get("ingest_cpu_us_per_msg"),
                                                     native.get("ingest_cpu_us_per_msg"))
        result["paho_vs_native_cpu_per_reading"] = ratio(paho.get("ingest_cpu_us_per_reading"),
                                                         native.get("ingest_cpu_us_per_reading"))
        result["receive_native_cpu_us_per_msg"] = fig("receive", "native_cpu_us_per_msg", 2)
        result["receive_paho_cpu_us_per_msg"] = fig("receive", "paho_cpu_us_per_msg", 2)
        result["receive_paho_vs_native_cpu"] = fig("receive", "paho_vs_native_cpu", 2)
        result["transports"] = list(o.transports)
        result["worker_counts"] = list(o.worker_counts)
        result["foreign_load"] = o.foreign_load
        result["targets_met"].update({
            "a_25us_cpu_per_msg": None if result["ingest_cpu_us_per_msg"] is None
            else result["ingest_cpu_us_per_msg"] <= 25,
            "a_half_mosquitto_sub_live": at_least(result["single_vs_mosquitto_sub_live"], 0.5),
            "b_half_psql_copy_pk": at_least(result["batched_vs_psql_copy_pk"], 0.5),
        })
        result["cpu_split_pct"] = {name: {k: round(v) for k, v in phase.cpu.items()}
                                   for name, phase in self.phases.items() if phase.cpu}
        others = [phase.cpu.get("other", 0.0) for phase in self.phases.values() if phase.cpu]
        result["other_load_pct_max"] = round(max(others)) if others else None
        steals = [phase.cpu.get("steal", 0.0) for phase in self.phases.values() if phase.cpu]
        result["steal_pct_max"] = round(max(steals)) if steals else None
        return result


def _delta(after: int | None, before: int | None) -> int | None:
    return None if after is None or before is None else after - before


def fmt_cpu(split: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f}" for k, v in sorted(split.items(), key=lambda kv: -kv[1])) or "n/a"


def report(result: dict[str, Any]) -> str:
    """The human-readable table printed before the JSON line."""
    r = result
    checks = r["targets_met"]

    def num(v: float | None, unit: str) -> str:
        return "n/a" if v is None else f"{v:,.0f} {unit}"

    def verdict(key: str | None) -> str:
        return "" if key is None else {True: "met", False: "MISSED", None: "not run"}[checks[key]]

    latency = (f"p50 {r['p50_commit_ms']} / p99 {r['p99_commit_ms']} ms" if r["p99_commit_ms"] is not None
               else "n/a")
    rows = [
        ("(a) 1 reading/msg, QoS 1, ack after commit", num(r["single_msgs_per_s"], "msg/s"), "≥ 10,000 msg/s",
         "a_single_10k_msgs"),
        ("(b) 10 readings/msg", num(r["batched_readings_per_s"], "readings/s"), "≥ 80,000 readings/s",
         "b_batched_80k_readings"),
        ("(c) 200k-msg backfill burst, drain", num(r["backfill_readings_per_s"], "readings/s"),
         f"≥ 0.8 × (b)   [{r['backfill_vs_batched']}]", "c_backfill_80pct_of_b"),
        (f"publish→commit at {num(r['latency_at_msgs_per_s'], 'msg/s')}", latency, "p99 ≤ 250 ms",
         "p99_250ms_at_half_load"),
        ("ingest peak RSS (VmHWM)", num(r["ingest_rss_mb"], "MB"), "≤ 300 MB", "rss_300mb"),
        ("naive baseline (INSERT + commit per reading)", num(r["baseline_readings_per_s"], "readings/s"),
         f"(b) ≥ 20 × baseline   [{r['batched_vs_baseline']}×]", "20x_baseline"),
        ("psql \\copy, narrow table (C tool)", num(r["psql_copy_rows_per_s"], "rows/s"),
         f"(b) ≥ 0.55 × psql   [{r['batched_vs_psql_copy']}]", "b_55pct_of_psql_copy"),
        ("psql \\copy, same + primary key (C tool)", num(r["psql_copy_pk_rows_per_s"], "rows/s"),
         f"(info) (b) / psql+pk   [{r['batched_vs_psql_copy_pk']}]", None),
        ("mosquitto_sub -q 1 receive (C tool)", num(r["mosquitto_sub_msgs_per_s"], "msg/s"),
         f"(info) (a) / mosquitto_sub   [{r['single_vs_mosquitto_sub']}]", None),
        ("nothing lost (stored = published)", f"{r['lost_readings']} lost, {r['dead_letters']} dead letters",
         "0 and 0", "nothing_lost"),
    ]
    lines = [
        "",
        f"OCC ingest benchmark — {r['cpu_model']}, {r['cores']} cores, {r['mem_mb']:,} MB RAM; broker {r['broker']}, "
        f"PostgreSQL durable={r['postgres_durable']}; {r['publishers']} publisher processes, "
        f"{r['ingest_workers']} ingest process(es){'; QUICK run' if r['quick'] else ''}; {r['elapsed_s']} s",
        "",
        f"  {'measure':<46} {'value':>24}   {'target [ratio]':<38} verdict",
    ]
    for label, value, target, key in rows:
        lines.append(f"  {label:<46} {value:>24}   {target:<38} {verdict(key)}")
    lines += ["", "  receive path / workers: (a) msg/s, ingest CPU µs/msg | (b) readings/s, µs/reading | "
                  "sustained (a), p50/p99 ms at half of it (steal, % of a core) | (a)/mosquitto_sub live, "
                  "(b)/psql+pk"]
    for name, v in r["variants"].items():
        lines.append(f"    {name:<10} {num(v['single_msgs_per_s'], 'msg/s'):>12}, {v['ingest_cpu_us_per_msg']} µs | "
                     f"{num(v['batched_readings_per_s'], 'r/s'):>12}, {v['ingest_cpu_us_per_reading']} µs | "
                     f"{num(v['sustained_msgs_per_s'], 'msg/s')}, {v['p50_commit_ms']}/{v['p99_commit_ms']} ms "
                     f"({v.get('latency_steal_pct')}) | "
                     f"{v['single_vs_mosquitto_sub_live']}, {v['batched_vs_psql_copy_pk']}")
    lines.append(f"    paho / native CPU per message: {r['paho_vs_native_cpu_per_msg']}×, per reading: "
                 f"{r['paho_vs_native_cpu_per_reading']}× (same run)")
    lines.append(f"    receive path alone (bench.receive, CPU of one process): native "
                 f"{r['receive_native_cpu_us_per_msg']} µs/msg, paho {r['receive_paho_cpu_us_per_msg']} µs/msg "
                 f"({r['receive_paho_vs_native_cpu']}×)")
    lines += ["", "  CPU, % of one core, over each measured window ('other': whatever else ran on the machine; "
                  "'steal': time the hypervisor gave these cores to another guest):"]
    for name, split in r["cpu_split_pct"].items():
        ordered = sorted(split.items(), key=lambda kv: -kv[1])
        lines.append(f"    {name:<22} " + ", ".join(f"{k} {v}" for k, v in ordered))
    if (r["other_load_pct_max"] or 0) >= OTHER_LOAD_WARN_PCT:
        lines += ["", f"  WARNING: up to {r['other_load_pct_max']} % of a core was used by other work on this machine "
                      "during a measured window: the figures of that run are not representative; run it again."]
    if (r.get("steal_pct_max") or 0) >= OTHER_LOAD_WARN_PCT:
        lines += ["", f"  WARNING: the hypervisor took up to {r['steal_pct_max']} % of a core from this machine "
                      "(steal) during a measured window: rates and ratios of that run are depressed by a shared host."]
    return "\n".join(lines)


async def amain(options: Options) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="occ-bench-", dir="/tmp"))
    os.chmod(work, 0o755)  # the embedded PostgreSQL runs as its own system user and must traverse it
    bench = Bench(options, work)
    try:
        return await bench.run()
    except BaseException:
        log(f"failed; logs in {work}" + ("" if options.keep else " (kept)"))
        options.keep = True
        raise
    finally:
        await bench.teardown()
        if not options.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM takes Ctrl-C's path: the run is cancelled and its servers are stopped


def main(argv: Sequence[str] | None = None) -> int:
    options = Options.parse(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    result = asyncio.run(amain(options))
    print(report(result))
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
