"""Alerts benchmark (issue 6): `python -m bench.alerts [--quick] [--skip-e2e]`.

1. Core: the pure engine over 200 rules (40 metrics × threshold ladder, rate of change, rain over 1 h, 24 h and
   72 h) and 5,000 devices, windows warmed to steady state (72 h of 10-minute reports), then timed on fresh
   readings — next to the naive baseline (`bench.alerts_naive`: the same rules and state machine, every window
   recomputed from scratch), run in the same process on the same readings. Both are first checked to produce
   identical transitions on a small run. Also the state size per (rule, device) instance (a full snapshot).
2. End to end: `occ alerts` as a child process (wall clock, production settings) between a real broker and
   a real PostgreSQL, devices publishing 5,000 msg/s; every 100th message is a probe whose reading flips an
   alert; latency = probe published → its alert received on occ/v1/_sys/alerts/#.

Progress on stderr; the report on stdout, its last line one JSON object with core_readings_per_s,
baseline_readings_per_s, ratio, e2e_p99_ms, state_bytes_per_instance and the machine. Core and baseline
rates are per CPU-second of this process (time.process_time): the test machines are shared, and wall time
would measure the neighbours; the ratio is what to compare across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from alerts.engine import Engine
from alerts.rules import RuleSet, parse_rules
from bench.alerts_naive import NaiveEngine
from bench.common import machine_info, percentile
from occ.models import Device

T0 = 1_784_000_000.0
REPORT_S = 600.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


CATALOG_METRICS = ("rain_mm", "water_level_m", "temperature_c", "humidity_pct", "wind_speed_ms", "pressure_hpa",
                   "battery_v", "signal_dbm")


def rules_text(metrics: int, *, catalog: bool = False) -> str:
    """5 rules per metric. `catalog`: metric names from config/metrics.yaml (the service decodes with the
    catalog), rule groups cycling over them; otherwise synthetic metrics m00, m01, ... (the core alone)."""
    parts = ["rules:"]
    for m in range(metrics):
        name = f"m{m:02d}"
        metric = CATALOG_METRICS[m % len(CATALOG_METRICS)] if catalog else name
        parts.append(f"""
  - name: {name}-level
    kind: threshold
    select: {{has: [levels.I]}}
    metric: {metric}
    hysteresis: 0.5
    levels:
      - {{name: I, severity: 1, enter: levels.I}}
      - {{name: II, severity: 2, enter: levels.II}}
      - {{name: III, severity: 3, enter: levels.III}}
    keep_firing_for: 20m
    deescalate_after: 30m
  - name: {name}-rate
    kind: rate
    metric: {metric}
    window: 1h
    levels: [{{name: rising, severity: 1, enter: 30, exit: 20}}]
    for: 10m
  - name: {name}-1h
    kind: accumulation
    metric: {metric}
    window: 1h
    resolution: 10m
    hysteresis: 2
    levels: [{{name: heavy-1h, severity: 2, enter: 25}}, {{name: intense-1h, severity: 3, enter: 45}}]
    keep_firing_for: 30m
  - name: {name}-24h
    kind: accumulation
    metric: {metric}
    window: 24h
    resolution: 10m
    strict: true
    hysteresis: 5
    levels: [{{name: moderate, severity: 1, enter: 15}}, {{name: heavy, severity: 2, enter: 50}},
             {{name: very-heavy, severity: 3, enter: 100}}]
  - name: {name}-72h
    kind: accumulation
    metric: {metric}
    window: 72h
    resolution: 10m
    hysteresis: 10
    levels: [{{name: wet-72h, severity: 1, enter: 150}}, {{name: soaked-72h, severity: 2, enter: 300}}]
""")
    return "".join(parts)


def make_devices(count: int, metrics: int) -> list[Device]:
    return [Device(f"B{i:05d}", "hydromet", area=f"area-{i % 11}",
                   attributes={"report_interval_s": REPORT_S, "metric": f"m{i % metrics:02d}",
                               "levels": {"I": 6.0 + (i % 5), "II": 9.0 + (i % 5), "III": 12.0 + (i % 5)}})
            for i in range(count)]


class Stream:
    """Readings in event-time order: every device reports its metric every 10 minutes (staggered), rain-like
    values: a gauge is wet about 10 % of the time (showers start with p = 0.02 and stop with p = 0.18 per
    step; gamma-distributed amounts, mean 2.4 mm per 10 min), generated step by step so memory stays flat."""

    def __init__(self, devices: list[Device], seed: int = 1) -> None:
        self.ids = [d.id for d in devices]
        self.metrics = [d.attributes["metric"] for d in devices]
        self.offsets = np.array([(i * 7) % int(REPORT_S) for i in range(len(devices))], dtype=np.float64)
        order = np.argsort(self.offsets, kind="stable")
        self.ids = [self.ids[i] for i in order]
        self.metrics = [self.metrics[i] for i in order]
        self.offsets = self.offsets[order]
        self.rng = np.random.default_rng(seed)
        self.step = 0
        self.wet = np.zeros(len(devices), dtype=bool)

    def next_step(self) -> list[tuple[str, str, float, float]]:
        n = len(self.ids)
        u = self.rng.random(n)
        self.wet = np.where(self.wet, u >= 0.18, u < 0.02)
        values = np.where(self.wet, self.rng.gamma(0.8, 3.0, n), 0.0)
        ts = T0 + self.step * REPORT_S + self.offsets
        self.step += 1
        return list(zip(self.ids, self.metrics, ts.tolist(), np.round(values, 1).tolist(), strict=True))


def check_equivalent(rules: RuleSet, devices: list[Device]) -> int:
    """The core and the baseline decide the same transitions (a small run from scratch)."""
    sample = devices[:200]
    core = Engine(rules, sample)
    naive = NaiveEngine(rules, sample)
    stream = Stream(sample, seed=5)
    a: list[tuple[str, str, str, float]] = []
    b: list[tuple[str, str, str, float]] = []
    for _ in range(300):
        for device_id, metric, ts, value in stream.next_step():
            core.feed_reading(device_id, metric, ts, value)
            naive.feed_reading(device_id, metric, ts, value)
        a.extend((t.fingerprint, t.from_state, t.state, t.ts) for t in core.take().transitions)
        b.extend((i.fingerprint, f, snap[0], ts) for i, f, _s, ts, _r, snap in naive.take())
    if sorted(a) != sorted(b):
        raise SystemExit(f"core and baseline disagree: {len(a)} vs {len(b)} transitions")
    return len(a)


def bench_core(args: argparse.Namespace) -> dict[str, Any]:
    metrics = args.rules // 5
    rules = parse_rules(rules_text(metrics), "bench-rules.yaml")
    devices = make_devices(args.devices, metrics)
    log(f"core: {len(rules.rules)} rules, {len(devices)} devices; checking the baseline agrees with the core")
    agreed = check_equivalent(rules, devices)
    log(f"core: identical transitions on the check run ({agreed})")
    engine = Engine(rules, devices)
    naive = NaiveEngine(rules, devices)
    stream = Stream(devices)
    warm_steps = int(args.warmup_h * 3600 / REPORT_S)
    began = time.process_time()
    for _ in range(warm_steps):
        batch = stream.next_step()
        for device_id, metric, ts, value in batch:
            engine.feed_reading(device_id, metric, ts, value)
            naive.samples.setdefault((device_id, metric), deque()).append((ts, value))
            naive.last_ts[(device_id, metric)] = ts
        engine.tick(batch[-1][2])
        engine.take()
    log(f"core: warmed {warm_steps} steps ({warm_steps * len(devices):,} readings) in "
        f"{time.process_time() - began:.1f} s")
    state_bytes, instances = engine.state_size()
    engine.snapshot()
    steps = [stream.next_step() for _ in range(args.steps)]
    transitions = 0
    snapshot_s = journal_s = 0.0
    snapshot_bytes = journal_bytes = 0
    engine.record_inputs()  # as in the service: every input is journaled
    began = time.process_time()
    feed = engine.feed_reading
    for batch in steps:
        for device_id, metric, ts, value in batch:
            feed(device_id, metric, ts, value)
        transitions += len(engine.tick(batch[-1][2]).transitions)
        # What the service writes, timed apart (the evaluation is the core's figure): the journal row of every
        # step, and a checkpoint (here one per 10-minute step, in which every device reported once: the
        # service checkpoints every 30 s, so this is its cost when each device reports once per checkpoint).
        mark = time.process_time()
        journal_bytes += len(orjson.dumps(engine.take_journal()))
        mid = time.process_time()
        snapshot_bytes += sum(len(v) for v in engine.snapshot().values() if v)
        end = time.process_time()
        journal_s += mid - mark
        snapshot_s += end - mid
    core_s = time.process_time() - began - snapshot_s - journal_s
    core_n = sum(len(b) for b in steps)
    base_steps = steps[: args.baseline_steps]
    began = time.process_time()
    for batch in base_steps:
        for device_id, metric, ts, value in batch:
            naive.feed_reading(device_id, metric, ts, value)
        naive.take()
    base_s = time.process_time() - began
    base_n = sum(len(b) for b in base_steps)
    result = {
        "rules": len(rules.rules), "devices": len(devices), "instances": instances,
        "core_readings": core_n, "core_seconds": round(core_s, 3),
        "core_readings_per_s": round(core_n / core_s), "core_transitions": transitions,
        "baseline_readings": base_n, "baseline_seconds": round(base_s, 3),
        "baseline_readings_per_s": round(base_n / base_s),
        "snapshot_us_per_reading": round(snapshot_s / core_n * 1e6, 2),
        "snapshot_bytes_per_reading": round(snapshot_bytes / core_n, 1),
        "journal_us_per_reading": round(journal_s / core_n * 1e6, 2),
        "journal_bytes_per_reading": round(journal_bytes / core_n, 1),
        "state_bytes_total": state_bytes, "state_bytes_per_instance": round(state_bytes / max(1, instances), 1),
    }
    result["ratio"] = round(result["core_readings_per_s"] / result["baseline_readings_per_s"], 1)
    log(f"core: {result['core_readings_per_s']:,} readings/s; baseline {result['baseline_readings_per_s']:,} "
        f"readings/s; ratio {result['ratio']}×; state {result['state_bytes_per_instance']} B per instance")
    return result


# --- end to end -------------------------------------------------------------------------------------------

class RawPublisher:
    """The device side of the load: MQTT 3.1.1 PUBLISH frames at QoS 1 written straight to a socket, PUBACKs
    read and dropped by a thread. paho cost about a core at 5,000 msg/s on the test machine, starving the
    service it was measuring on two shared cores; this costs a few µs a message. The broker sees exactly what
    devices send (QoS 1, one message per reading), and delivers at QoS 1."""

    def __init__(self, host: str, port: int, client_id: str) -> None:
        import socket
        import struct

        self._struct = struct
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = self._utf8("MQTT") + bytes((4, 0x02)) + struct.pack("!H", 0) + self._utf8(client_id)
        self.sock.sendall(b"\x10" + self._varint(len(body)) + body)
        connack = self.sock.recv(4)
        if len(connack) < 4 or connack[0] != 0x20 or connack[3] != 0:
            raise SystemExit(f"bench publisher: CONNECT refused ({connack!r})")
        self.sock.settimeout(None)
        self.packet_id = 0
        self.acked_bytes = 0
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    @staticmethod
    def _varint(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def _utf8(self, text: str) -> bytes:
        raw = text.encode()
        return self._struct.pack("!H", len(raw)) + raw

    def frame(self, topic: str, payload: bytes) -> bytes:
        self.packet_id = self.packet_id % 65535 + 1
        body = self._utf8(topic) + self._struct.pack("!H", self.packet_id) + payload
        return b"\x32" + self._varint(len(body)) + body

    def send(self, frames: list[bytes]) -> None:
        self.sock.sendall(b"".join(frames))

    def _drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            self.acked_bytes += len(data)

    def close(self) -> None:
        import socket

        try:
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class Probes:
    """Publishes the load (QoS 1, `RawPublisher`) and records when each probe went out and when its alert
    came (paho subscriber)."""

    def __init__(self, mqtt_url: str) -> None:
        import paho.mqtt.client as paho

        from occ.bus import BrokerAddress

        address = BrokerAddress.parse(mqtt_url)
        self.sent: dict[tuple[str, float], float] = {}
        self.received: dict[tuple[str, float], float] = {}
        self.pub = RawPublisher(address.host, address.port, f"bench-pub-{os.getpid()}")
        subscribed = threading.Event()
        self.sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{os.getpid()}")
        self.sub.on_connect = lambda c, u, f, rc, p: c.subscribe("occ/v1/_sys/alerts/#", 1)
        self.sub.on_subscribe = lambda c, u, mid, rc, p: subscribed.set()
        self.sub.on_message = self._on_alert
        self.sub.connect(address.host, address.port)
        self.sub.loop_start()
        subscribed.wait(10)

    def _on_alert(self, client: Any, userdata: Any, msg: Any) -> None:
        from datetime import datetime

        payload = orjson.loads(msg.payload)
        when = datetime.fromisoformat(payload["changed_at"].replace("Z", "+00:00")).timestamp()
        self.received.setdefault((payload["device_id"], round(when, 3)), time.time())

    def run(self, devices: list[str], probes: list[str], rate: float, seconds: float) -> int:
        sent = 0
        began = time.time()
        chunk = max(1, int(rate / 200))
        k = 0
        while time.time() - began < seconds:
            due = began + sent / rate
            wait = due - time.time()
            if wait > 0:
                time.sleep(wait)
            now = time.time()
            frames: list[bytes] = []
            chunk_probes: list[tuple[str, float]] = []
            for _ in range(chunk):
                ts = round(now, 3)
                if probes and k % 100 == 0:
                    device = probes[(k // 100) % len(probes)]
                    value = 20.0 if (k // 100 // len(probes)) % 2 == 0 else 0.0
                    chunk_probes.append((device, ts))
                else:
                    device = devices[k % len(devices)]
                    value = 0.0
                frames.append(self.pub.frame(f"occ/v1/hydromet/{device}/telemetry",
                                             orjson.dumps({"ts": ts, "values": {"rain_mm": value}})))
                k += 1
                sent += 1
            stamp = time.time()
            for key in chunk_probes:
                self.sent[key] = stamp
            self.pub.send(frames)
        return sent

    def latencies_ms(self) -> list[float]:
        return [(self.received[key] - t) * 1000 for key, t in self.sent.items() if key in self.received]

    def close(self) -> None:
        self.pub.close()
        self.sub.disconnect()
        self.sub.loop_stop()


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (and its reaped children: none here), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int | None) -> float:
    """CPU seconds of a process and its live children (PostgreSQL's backends), from /proc."""
    if pid is None:
        return math.nan
    total = process_cpu_s(pid)
    for child in Path("/proc").glob("[0-9]*"):
        try:
            if child.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1] == str(pid):
                total += process_cpu_s(int(child.name))
        except (OSError, IndexError):
            continue
    return total


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent not idle (all cores), from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def received_total(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("occ_alerts_messages_acked_total"):
                    return float(line.split()[-1])
    except OSError:
        pass
    return 0.0


def bench_e2e(args: argparse.Namespace) -> dict[str, Any]:
    from occ.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
    from occ.store import Store

    work = Path(tempfile.mkdtemp(prefix="occ-bench-alerts-", dir="/tmp"))
    work.chmod(0o755)
    pg = EmbeddedPostgres(work / "pg", durable=True)
    broker = EmbeddedBroker(work / "broker", kind="auto")
    proc: subprocess.Popen[bytes] | None = None
    probes: Probes | None = None
    try:
        base = pg.start()
        broker.start()
        url = base
        rules_dir = work / "rules"
        rules_dir.mkdir()
        # Every device sends rain_mm (25 of the 200 rules read it); probes flip a ladder, the others send 0.
        (rules_dir / "bench.yaml").write_text(rules_text(args.rules // 5, catalog=True))
        devices = [Device(d.id, d.kind, area=d.area, attributes={**d.attributes, "metric": "rain_mm"})
                   for d in make_devices(args.devices, 1)]

        async def seed() -> None:
            store = await Store.connect(url, pool_size=1, timescaledb="off")
            try:
                await store.upsert_devices(devices)
            finally:
                await store.close()

        asyncio.run(seed())
        port = free_port()
        env = {**os.environ, "OCC_DATABASE_URL": url, "OCC_MQTT_URL": broker.services_url,
               "OCC_ALERTS__RULES_DIR": str(rules_dir), "OCC_ALERTS__HTTP_PORT": str(port),
               "OCC_ALERTS__CLIENT_ID": "bench-alerts", "OCC_DATABASE__TIMESCALEDB": "off",
               "OCC_LOG_LEVEL": "WARNING"}
        proc = subprocess.Popen([sys.executable, "-m", "occ.cli", "alerts"], env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        probes = Probes(broker.url)
        ids = [d.id for d in devices]
        probe_ids = ids[:50]
        others = ids[50:]
        # Warm-up (not measured): every device reports once — the engine builds each (device, metric) route
        # on its first reading — and the service catches up.
        warm = probes.run(ids, [], args.rate, len(ids) / args.rate)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and received_total(port) < warm:
            time.sleep(0.5)
        probes.sent.clear()
        log(f"e2e: {args.rate:,.0f} msg/s for {args.seconds:.0f} s into occ alerts ({len(devices)} devices)")
        acked0, cpu0, busy0, wall0 = received_total(port), process_cpu_s(proc.pid), machine_busy_s(), time.time()
        # The load generator is this process alone (its own threads); the service, the broker and PostgreSQL are
        # its children, counted apart (PostgreSQL with its backends).
        helpers0 = [process_cpu_s(os.getpid()), tree_cpu_s(broker.pid), tree_cpu_s(pg.pid)]
        sent = probes.run(others, probe_ids, args.rate, args.seconds)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (len(probes.received) < len(probes.sent) * 0.99
                                               or received_total(port) < acked0 + sent):
            time.sleep(0.2)
        acked1, cpu1, busy1, wall1 = received_total(port), process_cpu_s(proc.pid), machine_busy_s(), time.time()
        helpers = [round((c1 - c0) / (wall1 - wall0), 3) for c1, c0 in zip(
            (process_cpu_s(os.getpid()), tree_cpu_s(broker.pid), tree_cpu_s(pg.pid)), helpers0, strict=True)]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            for line in text.splitlines():
                if line.startswith(("occ_alerts_messages_received_total", "occ_alerts_published_total",
                                    "occ_alerts_messages_rejected_total", "occ_alerts_transitions_total")):
                    log(f"e2e: {line}")
        except OSError as exc:
            log(f"e2e: metrics unavailable: {exc}")
        lat = probes.latencies_ms()
        handled = acked1 - acked0
        result = {"e2e_rate_msg_s": args.rate, "e2e_sent": sent, "e2e_handled": int(handled),
                  "e2e_handled_msg_s": round(handled / (wall1 - wall0)),
                  "e2e_service_cpu_us_per_msg": round((cpu1 - cpu0) / max(1.0, handled) * 1e6, 1),
                  "e2e_service_cpu_share": round((cpu1 - cpu0) / (wall1 - wall0), 3),
                  "e2e_machine_busy_cores": round((busy1 - busy0) / (wall1 - wall0), 2),
                  "e2e_load_generator_cpu_share": helpers[0], "e2e_broker_cpu_share": helpers[1],
                  "e2e_postgres_cpu_share": helpers[2],
                  "e2e_probes": len(probes.sent),
                  "e2e_alerts_matched": len(lat), "e2e_p50_ms": round(percentile(lat, 50), 1),
                  "e2e_p99_ms": round(percentile(lat, 99), 1), "e2e_max_ms": round(max(lat), 1) if lat else None}
        log(f"e2e: {len(lat)}/{len(probes.sent)} probes answered; p50 {result['e2e_p50_ms']} ms, "
            f"p99 {result['e2e_p99_ms']} ms; handled {handled:,.0f} of {sent:,} messages in {wall1 - wall0:.1f} s; "
            f"service {result['e2e_service_cpu_us_per_msg']} µs CPU per message "
            f"({result['e2e_service_cpu_share']:.0%} of a core); "
            f"machine busy {result['e2e_machine_busy_cores']} cores, "
            f"of which load generator {helpers[0]:.0%}, broker {helpers[1]:.0%}, PostgreSQL {helpers[2]:.0%} of a core")
        return result
    finally:
        if probes is not None:
            probes.close()
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        broker.stop()
        pg.stop(mode="immediate")
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.alerts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--rules", type=int, default=200, help="a multiple of 5 (5 rules per metric)")
    parser.add_argument("--warmup-h", type=float, default=72.0, help="event-time hours of warm-up (windows full)")
    parser.add_argument("--steps", type=int, default=60, help="timed 10-minute steps of every device (core)")
    parser.add_argument("--baseline-steps", type=int, default=6, help="timed steps for the baseline")
    parser.add_argument("--rate", type=float, default=5000.0, help="end-to-end messages per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="end-to-end duration")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--skip-core", action="store_true", help="only the end-to-end part")
    parser.add_argument("--quick", action="store_true", help="smaller run (rough figures)")
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup_h, args.steps, args.baseline_steps, args.seconds = 24.0, 20, 3, 8.0
    report: dict[str, Any] = {"benchmark": "alerts", **machine_info()}
    if not args.skip_core:
        report.update(bench_core(args))
    if not args.skip_e2e:
        report.update(bench_e2e(args))
    else:
        report["e2e_p99_ms"] = None
    if not args.skip_core:
        print(f"core {report['core_readings_per_s']:,} readings/s vs baseline {report['baseline_readings_per_s']:,} "
              f"(×{report['ratio']}); state {report['state_bytes_per_instance']} B/instance")
    print(f"e2e p99 {report.get('e2e_p99_ms')} ms")
    print(json.dumps(report, ensure_ascii=False))
    return 0 if not math.isnan(float(report.get("e2e_p99_ms") or 0)) else 1


if __name__ == "__main__":
    sys.exit(main())
