"""Live feed benchmark: `python -m bench.ws` (issue 10).

1,000 websocket clients (in separate processes, `websockets` asyncio client) watch the whole province while
5,000 devices report (one reading each per 10 s on average, MQTT QoS 0) and a storm of 200 alert changes
arrives within one second. Measured: delivery latency from MQTT publish to client receipt (p50/p99, readings
and alerts), server CPU and RSS. Phases, all in the same run on the same machine:

  occ        `occ web` (real gateway, coalescing, per-client writers), all clients fast
  occ+slow   the same with 50 clients that read slowly (their sockets fill up); latency of the others
  naive      bench/ws_naive.py: one frame per message, awaited send to each client in turn
  naive+slow the naive server with the same slow clients

The last line is a JSON object (clients, p50_ms, p99_ms, p99_ms_with_slow, naive_p99_ms, server_rss_mb, …).
Everything runs on loopback, bounded in time, and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from websockets.frames import Frame, Opcode
from websockets.http11 import Response

from bench.common import machine_busy_s, machine_info, percentile, status_kb, tree_cpu_s

ROOT = Path(__file__).resolve().parents[1]


def log(message: str) -> None:
    print(f"[bench.ws {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- client worker (one process, many websocket clients) -------------------------------------------------
#
# Two client implementations, both `websockets`:
#   sansio (default)  websockets' sans-I/O ClientProtocol under a plain asyncio.Protocol. Every frame is
#                     timestamped when its bytes come off the socket, before any decoding; frames are kept
#                     raw and decoded after the run, so timing one frame never delays the next one's stamp.
#   connection        websockets' asyncio connection (`ws.recv()` per frame, decoded as it arrives), the
#                     client of the first runs; kept to compare the measuring cost.
# A slow client (both kinds) takes one frame a second and stops reading the socket while two are waiting.


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _new_out(count: int) -> dict[str, Any]:
    return {"clients": count, "ready": 0, "frames": 0, "readings": [], "alerts": [], "reading_pub": [],
            "readings_unsampled": 0, "snapshots": 0, "errors": {}}


def _record_error(out: dict[str, Any], exc: BaseException) -> None:
    code = getattr(getattr(exc, "rcvd", None), "code", None)
    key = f"closed_{code}" if code else type(exc).__name__
    out["errors"][key] = out["errors"].get(key, 0) + 1
    if not out.get("first_error"):
        out["first_error"] = repr(exc)[:300]


def _measure(out: dict[str, Any], received: float, data: bytes, sample: bool) -> None:
    """Latencies of one delta frame received at `received` (epoch seconds)."""
    frame = orjson.loads(data)
    for alert in frame["alerts"]:
        out["alerts"].append(received - _epoch(alert["changed_at"]))
    if sample:
        for item in frame["readings"]:
            published = _epoch(item["ts"])
            out["readings"].append(received - published)
            out["reading_pub"].append(published)
    else:
        out["readings_unsampled"] += len(frame["readings"])


class _SansIOClient(asyncio.Protocol):
    """One websocket client: websockets' ClientProtocol fed straight from the socket."""

    def __init__(self, url: str, token: str, slow: bool, sample: bool, out: dict[str, Any],
                 ready: asyncio.Event) -> None:
        from websockets.client import ClientProtocol
        from websockets.uri import parse_uri

        self.protocol = ClientProtocol(parse_uri(url), max_size=2**25)
        self.token = token
        self.slow = slow
        self.sample = sample
        self.out = out
        self.ready = ready
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.got_snapshot = False
        self.kept: list[tuple[float, bytes]] = []
        """(receipt time, raw frame) to decode after the run: sampled clients keep every delta, the others
        only the frames that carry alerts."""
        self.waiting: list[bytes] = []
        self.closed = asyncio.get_running_loop().create_future()
        self.pacer: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        request = self.protocol.connect()
        if self.token:
            request.headers["Authorization"] = f"Bearer {self.token}"
        self.protocol.send_request(request)
        self._flush()

    def _flush(self) -> None:
        assert self.transport is not None
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.transport.write(chunk)
            else:
                self.transport.write_eof() if self.transport.can_write_eof() else None

    def data_received(self, data: bytes) -> None:
        received = time.time()  # stamped before anything is parsed
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Response):  # the handshake
                self.open = True
                if event.status_code != 101:
                    _record_error(self.out, RuntimeError(f"handshake {event.status_code}"))
                    continue
                self.protocol.send_text(b'{"type": "subscribe"}')
                continue
            if not isinstance(event, Frame) or event.opcode is not Opcode.TEXT:
                continue
            self.on_frame(received, bytes(event.data))
        self._flush()

    def on_frame(self, received: float, data: bytes) -> None:
        out = self.out
        out["frames"] += 1
        if not self.got_snapshot:
            if data.startswith(b'{"type":"snapshot"'):
                self.got_snapshot = True
                out["ready"] += 1
                if out["ready"] == out["clients"]:
                    self.ready.set()
            return
        if self.slow:
            self.waiting.append(data)
            if len(self.waiting) >= 2 and self.transport is not None:
                self.transport.pause_reading()
            return
        if not data.startswith(b'{"type":"delta"'):
            if data.startswith(b'{"type":"snapshot"'):
                out["snapshots"] += 1
            return
        if self.sample or b'"alerts":[]' not in data:
            self.kept.append((received, data))
        else:
            out["readings_unsampled"] += data.count(b'"values"')

    def take_one_slowly(self) -> None:
        """A wall display on a bad link: one frame a second."""
        if self.waiting:
            self.waiting.pop(0)
        if len(self.waiting) < 2 and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            _record_error(self.out, exc)
        elif self.protocol.close_code not in (None, 1000, 1001):
            _record_error(self.out, RuntimeError(f"closed {self.protocol.close_code}"))
            self.out["errors"][f"closed_{self.protocol.close_code}"] = \
                self.out["errors"].pop("RuntimeError", 0)
        if not self.closed.done():
            self.closed.set_result(None)

    def decode(self) -> None:
        for received, data in self.kept:
            _measure(self.out, received, data, self.sample)
        self.kept.clear()


async def _sansio_client(url: str, token: str, slow: bool, sample: bool, ready: asyncio.Event,
                         stop: asyncio.Event, out: dict[str, Any]) -> _SansIOClient | None:
    from urllib.parse import urlsplit

    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    try:
        _, client = await asyncio.wait_for(loop.create_connection(
            lambda: _SansIOClient(url, token, slow, sample, out, ready), parts.hostname or "127.0.0.1",
            parts.port or 80), 120)
    except Exception as exc:
        _record_error(out, exc)
        return None
    if slow:
        async def pace() -> None:
            while not stop.is_set() and not client.closed.done():
                await asyncio.sleep(1.0)
                client.take_one_slowly()
        client.pacer = loop.create_task(pace())
    return client


async def _connection_client(url: str, token: str, slow: bool, sample: bool, ready: asyncio.Event,
                             stop: asyncio.Event, out: dict[str, Any]) -> None:
    import websockets

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with websockets.connect(url, additional_headers=headers, compression=None, max_size=2**25,
                                      open_timeout=120, max_queue=2 if slow else 64, ping_interval=None) as ws:
            await ws.send('{"type": "subscribe"}')
            got_snapshot = False
            while not stop.is_set():
                try:
                    raw = await asyncio.wait_for(ws.recv(decode=False), 0.5)
                except TimeoutError:
                    continue
                data = raw.encode() if isinstance(raw, str) else raw
                now = time.time()
                out["frames"] += 1
                if not got_snapshot:
                    if data.startswith(b'{"type":"snapshot"'):
                        got_snapshot = True
                        out["ready"] += 1
                        if out["ready"] == out["clients"]:
                            ready.set()
                    continue
                if slow:
                    await asyncio.sleep(1.0)  # a wall display on a bad link: reads a frame a second
                    continue
                if not data.startswith(b'{"type":"delta"'):
                    if data.startswith(b'{"type":"snapshot"'):
                        out["snapshots"] += 1
                    continue
                if not sample and b'"alerts":[]' in data:
                    out["readings_unsampled"] += data.count(b'"values"')
                    continue  # nothing to time in this frame: keep the client cheap
                _measure(out, now, data, sample)
    except Exception as exc:  # a benchmark client reports, it does not crash its siblings
        _record_error(out, exc)


async def _loop_lag(stop: asyncio.Event, lags: list[float], period: float = 0.01) -> None:
    """How late this process's event loop wakes up: the clients' own scheduling delay."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        due = loop.time() + period
        await asyncio.sleep(period)
        lags.append(loop.time() - due)


async def client_worker(url: str, token: str, count: int, slow: int, first_index: int, sample_every: int,
                        impl: str = "sansio") -> None:
    out = _new_out(count)
    ready = asyncio.Event()
    stop = asyncio.Event()
    measuring = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, measuring.set)
    tasks = []
    for i in range(count):
        index = first_index + i
        out["sampled"] = out.get("sampled", 0) + (1 if i >= slow and index % sample_every == 0 else 0)
        make = _sansio_client if impl == "sansio" else _connection_client
        tasks.append(asyncio.create_task(make(url, token, i < slow, index % sample_every == 0, ready, stop, out)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)  # do not SYN-flood the listen backlog
    try:
        await asyncio.wait_for(ready.wait(), 180)
    except TimeoutError:
        pass
    print(json.dumps({"ready": out["ready"]}), flush=True)
    lags: list[float] = []
    lag_task: asyncio.Task[None] | None = None
    await asyncio.wait([asyncio.create_task(measuring.wait()), asyncio.create_task(stop.wait())],
                       return_when=asyncio.FIRST_COMPLETED)
    if not stop.is_set():
        lag_task = asyncio.create_task(_loop_lag(stop, lags))
    await stop.wait()
    if lag_task is not None:
        await lag_task
    done, pending = await asyncio.wait(tasks, timeout=5)
    for task in pending:
        task.cancel()
    for task in done:
        client = task.result() if not task.cancelled() and task.exception() is None else None
        if isinstance(client, _SansIOClient):
            if client.transport is not None:
                client.transport.abort()
            client.decode()
    out["slow"] = slow
    out["loop_lag_ms"] = {"p50": round(percentile(lags, 50) * 1000, 1), "p99": round(percentile(lags, 99) * 1000, 1),
                          "max": round(max(lags) * 1000, 1)} if lags else None
    print(json.dumps(out), flush=True)


# --- publisher worker -------------------------------------------------------------------------------------

def publisher_worker(url: str, devices: int, interval: float, duration: float, storm: int, storm_at: float) -> None:
    import paho.mqtt.client as paho

    from occ.bus import BrokerAddress

    address = BrokerAddress.parse(url)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-ws-pub-{os.getpid()}",
                         protocol=paho.MQTTv311)
    client.connect(address.host, address.port)
    client.loop_start()
    rate = devices / interval
    ids = [f"BW{i:05d}" for i in range(devices)]
    rng = random.Random(7)
    start = time.time()
    sent = 0
    storm_sent = 0
    order = list(range(devices))
    rng.shuffle(order)
    while True:
        now = time.time()
        elapsed = now - start
        if elapsed >= duration:
            break
        due = int(elapsed * rate)
        while sent < due:
            device = ids[order[sent % devices]]
            payload = orjson.dumps({"ts": datetime.now(UTC).isoformat(),
                                    "values": {"water_level_m": 100 + rng.random(), "rain_mm": rng.random() * 5}})
            client.publish(f"occ/v1/hydromet/{device}/telemetry", payload, qos=0)
            sent += 1
        if elapsed >= storm_at and storm_sent < storm:
            due_storm = min(storm, int((elapsed - storm_at) * storm) + 1)
            while storm_sent < due_storm:
                device = ids[rng.randrange(devices)]
                severity = 1 + storm_sent % 5
                alert = {"v": 1, "seq": storm_sent + 1, "id": 900_000 + storm_sent, "device_id": device,
                         "area": "bench", "state": "firing", "previous_state": "pending", "severity": severity,
                         "changed_at": datetime.now(UTC).isoformat(), "late": False, "muted": None, "acked": None}
                client.publish(f"occ/v1/_sys/alerts/bench/{device}", orjson.dumps(alert), qos=1)
                storm_sent += 1
        time.sleep(0.005)
    time.sleep(0.5)
    client.loop_stop()
    client.disconnect()
    print(json.dumps({"readings": sent, "alerts": storm_sent}), flush=True)


# --- the pure core alone ----------------------------------------------------------------------------------

def core_cost(clients: int = 1000, devices: int = 5000, seconds: int = 10, per_flush: int = 50) -> dict[str, Any]:
    """CPU of the feed core (hub + batch + every session's offer/take) without sockets, in this process."""
    from web.feed import DeltaBatch, DeviceInfo, FeedSession, Hub

    hub = Hub()
    hub.set_devices([DeviceInfo(f"D{i}", "hydromet", f"n{i}", "a", 22.5, 104.9) for i in range(devices)])
    sessions = [FeedSession(hub, now=0.0) for _ in range(clients)]
    for s in sessions:
        s.receive('{"type":"subscribe"}', 0.0)
        s.take(0.0, 0.0)
    started = time.process_time()
    frames = 0
    flushes = seconds * 10
    for tick in range(flushes):
        now = tick * 0.1
        deltas = []
        for k in range(per_flush):
            deltas += hub.reading(f"D{(tick * per_flush + k) % devices}", 1.8e9 + now,
                                  {"water_level_m": 100.0, "rain_mm": 1.0}, now)
        batch = DeltaBatch(deltas)
        for s in sessions:
            s.offer(batch, now)
            frames += len(s.take(now, 0.0))
    cpu = time.process_time() - started
    return {"bench": "ws-core", "clients": clients, "frames": frames,
            "us_per_client_frame": round(cpu / frames * 1e6, 2),
            "core_cpu_pct_at_10_batches_per_s": round(100 * cpu / seconds, 2)}


# --- orchestration ----------------------------------------------------------------------------------------

@dataclass
class Options:
    clients: int = 1000
    procs: int = 4
    devices: int = 5000
    interval: float = 10.0
    duration: float = 20.0
    slow: int = 50
    storm: int = 200
    sample_every: int = 10
    client_impl: str = "sansio"
    phases: tuple[str, ...] = ("occ", "occ+slow", "naive", "naive+slow")


async def setup_store(database_url: str, devices: int) -> str:
    from occ.models import Device
    from occ.store import Store
    from web.auth import new_token, token_hash

    store = await Store.connect(database_url, pool_size=2, timescaledb="off")
    rng = random.Random(3)
    await store.upsert_devices([
        Device(f"BW{i:05d}", "hydromet", f"Bench station {i}", 22.2 + rng.random() * 1.1, 104.4 + rng.random() * 1.1,
               "bench", {"alarm_levels_m": {"I": 100.5, "II": 101.0, "III": 102.0}})
        for i in range(devices)
    ])
    user, _ = await store.users.upsert("bench", "viewer", None)
    token = new_token()
    from datetime import timedelta

    await store.users.add_token(user.id, token_hash(token), kind="kiosk",
                                expires_at=datetime.now(UTC) + timedelta(hours=2))
    await store.close()
    return token


def start_server(kind: str, port: int, database_url: str, mqtt_url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OCC_DATABASE_URL": database_url, "OCC_MQTT_URL": mqtt_url, "OCC_LOG_LEVEL": "WARNING",
           "OCC_WEB__CLIENT_MAX_LAG_S": "30"}
    if kind == "occ":
        argv = [sys.executable, "-m", "occ.cli", "web", "--port", str(port)]
    else:
        argv = [sys.executable, "-m", "bench.ws_naive", "--port", str(port), "--mqtt-url", mqtt_url,
                "--database-url", database_url]
    return subprocess.Popen(argv, env=env, cwd=ROOT)


def scrape_metrics(port: int, token: str) -> dict[str, Any]:
    """The gateway's own view: fan-out cost per batch and how long changes waited in it (from /metrics)."""
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"})
    try:
        text = urllib.request.urlopen(request, timeout=10).read().decode()
    except OSError as exc:
        return {"error": repr(exc)[:200]}
    out: dict[str, Any] = {}
    for name in ("occ_web_feed_dispatch_seconds", "occ_web_feed_delay_seconds"):
        buckets: list[tuple[float, float]] = []
        total = count = 0.0
        for line in text.splitlines():
            if line.startswith(name + "_bucket"):
                bound = line.split('le="', 1)[1].split('"', 1)[0]
                buckets.append((float(bound), float(line.rsplit(" ", 1)[1])))
            elif line.startswith(name + "_sum "):
                total = float(line.rsplit(" ", 1)[1])
            elif line.startswith(name + "_count "):
                count = float(line.rsplit(" ", 1)[1])
        short = name.removeprefix("occ_web_feed_").removesuffix("_seconds")
        out[f"{short}_count"] = int(count)
        out[f"{short}_mean_ms"] = round(1000 * total / count, 2) if count else None
        # the smallest bucket bound that holds 99 % of the observations (an upper bound of the p99)
        p99 = next((b for b, c in buckets if count and c >= 0.99 * count), None)
        out[f"{short}_p99_le_ms"] = None if p99 is None else (round(1000 * p99, 1) if p99 != float("inf") else "inf")
    for line in text.splitlines():
        if line.startswith("occ_web_ws_frames_total "):
            out["frames_sent"] = int(float(line.rsplit(" ", 1)[1]))
    return out


def wait_port(port: int, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server did not listen on {port}")


def run_phase(name: str, opts: Options, database_url: str, mqtt_url: str, device_mqtt_url: str,
              token: str) -> dict[str, Any]:
    from occ.embedded import free_port

    kind = "occ" if name.startswith("occ") else "naive"
    slow_total = opts.slow if name.endswith("+slow") else 0
    port = free_port()
    server = start_server(kind, port, database_url, mqtt_url)
    workers: list[subprocess.Popen[str]] = []
    try:
        wait_port(port)
        time.sleep(1.0)  # MQTT subscriptions in place
        url = f"ws://127.0.0.1:{port}/ws"
        per = opts.clients // opts.procs
        for p in range(opts.procs):
            count = per if p < opts.procs - 1 else opts.clients - per * (opts.procs - 1)
            slow = slow_total // opts.procs + (1 if p < slow_total % opts.procs else 0)
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "bench.ws", "--client-worker", url, token if kind == "occ" else "",
                 str(count), str(slow), str(p * per), str(opts.sample_every), opts.client_impl],
                stdout=subprocess.PIPE, text=True, cwd=ROOT))
        ready = 0
        for w in workers:
            assert w.stdout is not None
            line = w.stdout.readline()
            ready += json.loads(line)["ready"] if line.strip() else 0
        log(f"{name}: {ready}/{opts.clients} clients have their snapshot")
        for w in workers:
            w.send_signal(signal.SIGUSR1)  # start measuring loop lag
        cpu0, t0 = tree_cpu_s(server.pid), time.monotonic()
        wcpu0 = sum(tree_cpu_s(w.pid) for w in workers)
        busy0 = machine_busy_s()
        storm_epoch = time.time() + opts.duration / 2
        publisher = subprocess.run(
            [sys.executable, "-m", "bench.ws", "--publisher", device_mqtt_url, str(opts.devices), str(opts.interval),
             str(opts.duration), str(opts.storm), str(opts.duration / 2)],
            capture_output=True, text=True, cwd=ROOT, timeout=opts.duration + 60)
        time.sleep(1.5)  # let the last frames arrive
        cpu1, t1 = tree_cpu_s(server.pid), time.monotonic()
        wcpu1 = sum(tree_cpu_s(w.pid) for w in workers)
        busy1 = machine_busy_s()
        server_metrics = scrape_metrics(port, token) if kind == "occ" else {}
        rss_kb = status_kb(server.pid, "VmRSS") or 0
        hwm_kb = status_kb(server.pid, "VmHWM") or 0
        results = []
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            out, _ = w.communicate(timeout=60)
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            results.append(json.loads(lines[-1]))
        readings = [x for r in results for x in r["readings"]]
        published = [x for r in results for x in r["reading_pub"]]
        # readings published from 1 s before the storm to 3 s after it, and the rest
        in_storm = [lat for lat, pub in zip(readings, published, strict=True)
                    if storm_epoch - 1.0 <= pub <= storm_epoch + 3.0]
        calm = [lat for lat, pub in zip(readings, published, strict=True)
                if not storm_epoch - 1.0 <= pub <= storm_epoch + 3.0]
        alerts = [x for r in results for x in r["alerts"]]
        errors: dict[str, int] = {}
        for r in results:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        sent = json.loads(publisher.stdout.strip().splitlines()[-1]) if publisher.stdout.strip() else {}
        fast_clients = opts.clients - slow_total
        expected_alerts = fast_clients * sent.get("alerts", 0)
        expected_readings = sum(r.get("sampled", 0) for r in results) * (sent.get("readings") or 0)
        return {
            "phase": name, "clients": opts.clients, "slow_clients": slow_total, "ready": ready,
            "published_readings": sent.get("readings"), "published_alerts": sent.get("alerts"),
            "reading_samples": len(readings),
            "readings_delivered_pct": round(100 * len(readings) / expected_readings, 1) if expected_readings else None,
            "p50_ms": round(percentile(readings, 50) * 1000, 1) if readings else None,
            "p99_ms": round(percentile(readings, 99) * 1000, 1) if readings else None,
            "alert_p50_ms": round(percentile(alerts, 50) * 1000, 1) if alerts else None,
            "alert_p99_ms": round(percentile(alerts, 99) * 1000, 1) if alerts else None,
            "alerts_delivered_pct": round(100 * len(alerts) / expected_alerts, 1) if expected_alerts else None,
            "frames": sum(r["frames"] for r in results), "snapshots_after_start": sum(r["snapshots"] for r in results),
            "client_errors": errors,
            "p99_ms_outside_storm": round(percentile(calm, 99) * 1000, 1) if calm else None,
            "p99_ms_storm_window": round(percentile(in_storm, 99) * 1000, 1) if in_storm else None,
            "client_impl": opts.client_impl,
            "client_cpu_pct": round(100 * (wcpu1 - wcpu0) / (t1 - t0), 1),
            "machine_cpu_pct": round(100 * (busy1 - busy0) / (t1 - t0), 1),
            "client_loop_lag_ms_p99": max((r["loop_lag_ms"] or {}).get("p99", 0) for r in results),
            "server": server_metrics,
            "server_cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 1), "server_rss_mb": round(rss_kb / 1024, 1),
            "server_peak_rss_mb": round(hwm_kb / 1024, 1),
        }
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()


def run(opts: Options) -> dict[str, Any]:
    from occ.embedded import EmbeddedBroker, EmbeddedPostgres
    from occ.supervisor import _ensure_database

    base = Path(tempfile.mkdtemp(prefix="occ-bench-ws-", dir="/tmp"))
    base.chmod(0o755)
    postgres = EmbeddedPostgres(base / "pg", durable=False)
    broker = EmbeddedBroker(base / "broker", kind="auto")
    try:
        admin = postgres.start()
        _ensure_database(admin, "occ")
        database_url = admin.rsplit("/", 1)[0] + "/occ"
        broker.start()
        token = asyncio.run(setup_store(database_url, opts.devices))
        log(f"{opts.devices} devices, {opts.clients} clients in {opts.procs} processes, broker {broker.kind}")
        phases = []
        for name in opts.phases:
            result = run_phase(name, opts, database_url, broker.services_url, broker.url, token)
            log(json.dumps(result))
            phases.append(result)
    finally:
        broker.stop()
        postgres.stop(mode="immediate")
    by = {p["phase"]: p for p in phases}
    occ, slow = by.get("occ", {}), by.get("occ+slow", {})
    naive, naive_slow = by.get("naive", {}), by.get("naive+slow", {})
    summary = {
        "bench": "ws", "clients": opts.clients, "devices": opts.devices, "readings_per_s": opts.devices / opts.interval,
        "storm_alerts": opts.storm, "slow_clients": opts.slow,
        "p50_ms": occ.get("p50_ms"), "p99_ms": occ.get("p99_ms"), "alert_p99_ms": occ.get("alert_p99_ms"),
        "p99_ms_with_slow": slow.get("p99_ms"), "alert_p99_ms_with_slow": slow.get("alert_p99_ms"),
        "slow_degradation_pct": round(100 * (slow["p99_ms"] / occ["p99_ms"] - 1), 1)
        if slow.get("p99_ms") and occ.get("p99_ms") else None,
        "naive_p50_ms": naive.get("p50_ms"), "naive_p99_ms": naive.get("p99_ms"),
        "naive_p99_ms_with_slow": naive_slow.get("p99_ms"),
        "naive_alert_p99_ms_with_slow": naive_slow.get("alert_p99_ms"),
        "delivered_pct": occ.get("readings_delivered_pct"),
        "naive_delivered_pct": naive.get("readings_delivered_pct"),
        "ratio_naive_over_occ_p99_with_slow": round(naive_slow["p99_ms"] / slow["p99_ms"], 1)
        if naive_slow.get("p99_ms") and slow.get("p99_ms") else None,
        "server_cpu_pct": occ.get("server_cpu_pct"), "naive_server_cpu_pct": naive.get("server_cpu_pct"),
        "server_rss_mb": max((p.get("server_peak_rss_mb") or 0) for p in (occ, slow)) or None,
        "machine": machine_info(),
        "phases": phases,
    }
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--client-worker":
        url, token, count, slow, first, sample, impl = argv[1:8]
        asyncio.run(client_worker(url, token, int(count), int(slow), int(first), int(sample), impl))
        return 0
    if argv and argv[0] == "--core":
        print(json.dumps(core_cost()))
        return 0
    if argv and argv[0] == "--publisher":
        url, devices, interval, duration, storm, storm_at = argv[1:7]
        publisher_worker(url, int(devices), float(interval), float(duration), int(storm), float(storm_at))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.ws", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=4, help="client processes")
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--interval", type=float, default=10.0, help="mean seconds between readings per device")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of publishing per phase")
    parser.add_argument("--slow", type=int, default=50)
    parser.add_argument("--storm", type=int, default=200)
    parser.add_argument("--phases", default="occ,occ+slow,naive,naive+slow")
    parser.add_argument("--client", choices=("sansio", "connection"), default="sansio",
                        help="benchmark client: websockets sans-I/O protocol stamped on receipt (default) or "
                             "websockets' asyncio connection")
    parser.add_argument("--out", help="also write the final JSON object to this file")
    args = parser.parse_args(argv)
    opts = Options(clients=args.clients, procs=args.procs, devices=args.devices, interval=args.interval,
                   duration=args.duration, slow=args.slow, storm=args.storm,
                   phases=tuple(p for p in args.phases.split(",") if p), client_impl=args.client)
    result = run(opts)
    line = json.dumps({k: v for k, v in result.items() if k != "phases"} | {"phases": result["phases"]})
    if args.out:
        Path(args.out).write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
