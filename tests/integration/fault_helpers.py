"""Helpers for the fault, burst and `occ up` tests: real processes, real servers, deterministic data.

* A deterministic stream: message k goes to device k % 20 with timestamp T0 + k // 20 and two readings
  (rain_mm, temperature_c) whose values are a function of k, so the exact set of stored rows is known.
* `IngestProcess`: `python -m occ.cli ingest` as a child process (it can be SIGKILLed), with its /healthz
  and /metrics.
* `PublisherProcess`: a paho QoS 1 publisher in its own process (`python -m tests.integration.fault_helpers
  publish ...`), optionally paced, that reconnects and resends unacknowledged messages by itself; it exits 0
  only when the broker has acknowledged every message.
* `verify_exactly_once`: every expected (device, metric, ts) is stored once, with its value, nothing else.

Every process started here dies with the test run (PR_SET_PDEATHSIG), even when pytest itself is SIGKILLed.
`storage_mode(url)` is the one storage mode (database.timescaledb) used with a server for the whole run, chosen
from what the server offers, so that ingest processes, `seed_devices` and `running_ingest` agree and the ingest
suite runs on the TimescaleDB path whenever the server has it (issue 11 item 14).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import asyncpg

from occ.embedded.proc import die_with_parent

ROOT = Path(__file__).resolve().parents[2]
_STORAGE: dict[tuple[str | None, int | None], str] = {}

TIMESCALEDB_USABLE = (
    "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') "
    "AND 'timescaledb' = ANY (string_to_array(replace(current_setting('shared_preload_libraries'), ' ', ''), ','))"
)
"""The extension is installed on the server and preloaded: what CREATE EXTENSION needs. (The official image also
creates it in template1, so every database made there has it already: "installed" is not the test.)"""


def storage_mode(database_url: str) -> str:
    """database.timescaledb for every test against this server: "on" when it can run TimescaleDB, else "off".

    Decided once per server and run (cached), by asking the server, never by a default that differs between
    helpers: a database migrated on one path and then opened with the other is refused, rightly."""
    parts = urlsplit(database_url)
    key = (parts.hostname, parts.port)
    if key not in _STORAGE:
        from occ.embedded.postgres import bin_dir

        result = subprocess.run([str(bin_dir() / "psql"), "-X", "-q", "-t", "-A", database_url, "-c",
                                 TIMESCALEDB_USABLE], capture_output=True, text=True, timeout=30,
                                env={**os.environ, "LC_ALL": "C"}, check=True)
        _STORAGE[key] = "on" if result.stdout.strip() == "t" else "off"
    return _STORAGE[key]
DEVICES = [f"HG-T-{i:03d}" for i in range(20)]  # registered by ingest_helpers.seed_devices
METRICS = ("rain_mm", "temperature_c")
TOPIC = "occ/v1/hydromet/{}/telemetry"


# -- the deterministic stream ---------------------------------------------------------------------------
def stream_t0(messages: int) -> int:
    """A whole-second start time such that the whole stream lies in the past (and well inside max_past)."""
    per_device = -(-messages // len(DEVICES))
    return int(time.time()) - 86400 - per_device


def message(k: int, t0: int) -> tuple[str, bytes]:
    device = DEVICES[k % len(DEVICES)]
    ts = t0 + k // len(DEVICES)
    rain, temp = values(k)
    payload = b'{"ts": %d, "values": {"rain_mm": %.1f, "temperature_c": %.1f}}' % (ts, rain, temp)
    return TOPIC.format(device), payload


def values(k: int) -> tuple[float, float]:
    return (k % 2999) / 10, -15.0 + (k % 641) / 10


def expected_rows(messages: int, t0: int) -> dict[tuple[str, str, int], float]:
    rows: dict[tuple[str, str, int], float] = {}
    n = len(DEVICES)
    for k in range(messages):
        device, ts = DEVICES[k % n], t0 + k // n
        rain, temp = values(k)
        rows[(device, "rain_mm", ts)] = rain
        rows[(device, "temperature_c", ts)] = temp
    return rows


# -- database checks ------------------------------------------------------------------------------------
async def count_readings(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM readings"))
    finally:
        await conn.close()


async def wait_for_readings(database_url: str, expected: int, timeout: float, *,
                            alive: Any = None, stall_s: float = 30.0) -> int:
    """Poll until `expected` readings are stored; give up at the timeout, when `alive()` turns False, or when
    the count has not moved for `stall_s` seconds. Returns the last count."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + timeout
        value, moved_at = -1, time.monotonic()
        while time.monotonic() < deadline:
            previous, value = value, int(await conn.fetchval("SELECT count(*) FROM readings"))
            if value != previous:
                moved_at = time.monotonic()
            if value >= expected or (alive is not None and not alive()) or time.monotonic() - moved_at > stall_s:
                return value
            await asyncio.sleep(0.2)
        return value
    finally:
        await conn.close()


async def verify_exactly_once(database_url: str, messages: int, t0: int) -> None:
    """Every reading of the stream is stored exactly once with its value; nothing else; no dead letters."""
    expected = expected_rows(messages, t0)
    conn = await asyncpg.connect(database_url)
    try:
        total, distinct = await conn.fetchrow(
            "SELECT count(*), count(DISTINCT (device_id, metric, ts)) FROM readings")
        rows = await conn.fetch(
            "SELECT device_id, metric, extract(epoch FROM ts)::bigint AS t, value, quality FROM readings")
        dead = await conn.fetchval("SELECT count(*) FROM dead_letters")
    finally:
        await conn.close()
    assert total == len(expected), f"{total} readings stored, {len(expected)} expected"
    assert distinct == len(expected), f"{distinct} distinct (device, metric, ts), {len(expected)} expected"
    stored = {(r["device_id"], r["metric"], r["t"]): r["value"] for r in rows}
    missing = expected.keys() - stored.keys()
    extra = stored.keys() - expected.keys()
    assert not missing, f"{len(missing)} readings missing, e.g. {sorted(missing)[:5]}"
    assert not extra, f"{len(extra)} unexpected readings, e.g. {sorted(extra)[:5]}"
    wrong = [key for key, value in expected.items() if abs(stored[key] - value) > 1e-9]
    assert not wrong, f"{len(wrong)} readings with a wrong value, e.g. {wrong[:5]}"
    assert all(r["quality"] == 0 for r in rows), "in-range readings were flagged"
    assert dead == 0, f"{dead} dead letters"


# -- processes ------------------------------------------------------------------------------------------
def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any OCC_* setting (a developer's shell must not leak in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCC_")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes] | None:
    """(status, body), or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
        exc.close()
        return int(exc.code), body
    except (OSError, TimeoutError):
        return None


def parse_metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


class IngestProcess:
    """`occ ingest` as a real child process with a fixed client id (its persistent session survives it)."""

    def __init__(self, log_path: Path, *, database_url: str, mqtt_url: str, client_id: str, http_port: int,
                 timescaledb: str | None = None, **settings: str) -> None:
        self.log_path = log_path
        self.argv = [sys.executable, "-m", "occ.cli", "ingest"]
        """The command; a test may replace it (e.g. `ingest --drain`, or a worker with an injected fault)."""
        self.http_port = http_port
        self.env = clean_env(
            OCC_DATABASE_URL=database_url, OCC_MQTT_URL=mqtt_url, OCC_INGEST__CLIENT_ID=client_id,
            OCC_INGEST__HTTP_PORT=str(http_port), OCC_INGEST__SHARED="false",
            OCC_DATABASE__TIMESCALEDB=timescaledb or storage_mode(database_url), OCC_CONFIG_DIR=str(ROOT / "config"),
        )
        self.env.update({f"OCC_INGEST__{k.upper()}": v for k, v in settings.items()})
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        assert not self.alive()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, cwd=ROOT, env=self.env,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            preexec_fn=die_with_parent())
        self.starts += 1

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthz(self) -> tuple[int, dict[str, Any]] | None:
        answer = http_get(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1.0)
        return None if answer is None else (answer[0], json.loads(answer[1]))

    def metric(self, name: str) -> float | None:
        answer = http_get(f"http://127.0.0.1:{self.http_port}/metrics")
        return None if answer is None else parse_metric(answer[1].decode(), name)

    def wait_ready(self, timeout: float = 60) -> None:
        """Until /healthz says OK (MQTT connected and subscribed, database up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.alive(), f"ingest exited with {self.process and self.process.returncode}:\n{self.log()}"
            health = self.healthz()
            if health is not None and health[0] == 200:
                return
            time.sleep(0.1)
        raise AssertionError(f"ingest not ready after {timeout} s:\n{self.log()}")

    def freeze(self) -> None:
        """SIGSTOP: the process holds its connections but reads, writes and acknowledges nothing."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def send_signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def peak_rss_mb(self) -> float:
        """VmHWM: the largest resident set the process has had so far."""
        assert self.process is not None
        return _status_kb(self.process.pid, "VmHWM") / 1024

    def rss_mb(self) -> float:
        assert self.process is not None
        return _status_kb(self.process.pid, "VmRSS") / 1024

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (ingest drains what it holds, then disconnects); SIGKILL if it does not exit in time."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.thaw()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


class PublisherProcess:
    """Publishes messages [start, stop) of the stream from its own process (see `_publish_main`)."""

    def __init__(self, url: str, *, start: int, stop: int, t0: int, client_id: str, rate: float = 0.0,
                 persistent: bool = False, timeout: float = 180) -> None:
        argv = [sys.executable, "-m", "tests.integration.fault_helpers", "publish", "--url", url,
                "--start", str(start), "--stop", str(stop), "--t0", str(t0), "--client-id", client_id,
                "--rate", str(rate), "--timeout", str(timeout)]
        if persistent:
            argv.append("--persistent")
        self.process = subprocess.Popen(argv, cwd=ROOT, env=clean_env(), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=die_with_parent())
        self.lines: list[dict[str, Any]] = []
        self._stdout: IO[bytes] = self.process.stdout  # type: ignore[assignment]
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in self._stdout:
            try:
                self.lines.append(json.loads(raw))
            except ValueError:
                pass

    def running(self) -> bool:
        return self.process.poll() is None

    def progress(self) -> int:
        """Messages handed to paho so far (from the process's progress lines)."""
        counts = [line.get("published", 0) for line in list(self.lines)]
        return max(counts, default=0)

    async def reached(self, count: int, timeout: float = 60) -> None:
        """Until `count` messages are handed to paho (a fault injected then lands mid-stream whatever the load:
        a trigger on stored readings alone let the stream end first on a busy machine)."""
        deadline = time.monotonic() + timeout
        while self.progress() < count:
            assert self.running() and time.monotonic() < deadline, f"publisher at {self.progress()} of {count}"
            await asyncio.sleep(0.02)

    def connects(self) -> int:
        return max((line.get("connects", 0) for line in list(self.lines)), default=0)

    def wait(self, timeout: float) -> dict[str, Any]:
        """Wait for the exit; return the final report (asserting every message was acknowledged)."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(5)
        assert self.process.stderr is not None
        err = self.process.stderr.read().decode(errors="replace")
        self.close()
        final = next((line for line in reversed(self.lines) if line.get("event") == "done"), None)
        assert self.process.returncode == 0 and final is not None, (
            f"publisher failed (exit {self.process.returncode}): {self.lines[-3:]} {err[-2000:]}")
        return final

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


# -- the publisher process ------------------------------------------------------------------------------
def _publish_main(args: argparse.Namespace) -> int:
    import paho.mqtt.client as paho

    from occ.bus import BrokerAddress

    address = BrokerAddress.parse(args.url)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=paho.MQTTv311,
                         clean_session=not args.persistent)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.reconnect_delay_set(1, 2)
    state = {"acked": 0, "connects": 0, "disconnects": 0, "published": 0}
    lock = threading.Lock()
    out = threading.Lock()

    def report(event: str, **extra: Any) -> None:
        with out:
            sys.stdout.write(json.dumps({"event": event, **state, **extra}) + "\n")
            sys.stdout.flush()

    def on_publish(client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with lock:
            state["acked"] += 1

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            state["connects"] += 1
            report("connected")

    def on_disconnect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        state["disconnects"] += 1

    client.on_publish = on_publish
    client.on_connect = on_connect
    client.on_disconnect = on_disconnect

    client.connect(address.host, address.port, keepalive=10)
    client.loop_start()
    deadline = time.monotonic() + 30
    while not state["connects"] and time.monotonic() < deadline:
        time.sleep(0.01)
    began = time.monotonic()
    total = args.stop - args.start
    chunk = 200
    for first in range(args.start, args.stop, chunk):
        for k in range(first, min(first + chunk, args.stop)):
            topic, payload = message(k, args.t0)
            info = client.publish(topic, payload, qos=1)
            if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):  # NO_CONN: queued, sent later
                report(f"publish failed rc={info.rc}")
                return 1
        done = state["published"] = min(first + chunk, args.stop) - args.start
        if args.rate > 0:
            ahead = began + done / args.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        if done % 2000 < chunk:
            report("progress")
    report("published")
    deadline = time.monotonic() + args.timeout
    while state["acked"] < total and time.monotonic() < deadline:
        time.sleep(0.02)
    seconds = time.monotonic() - began
    ok = state["acked"] >= total
    report("done" if ok else "timeout", seconds=round(seconds, 3))
    client.disconnect()
    client.loop_stop()
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fault_helpers")
    sub = parser.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("publish")
    pub.add_argument("--url", required=True)
    pub.add_argument("--start", type=int, required=True)
    pub.add_argument("--stop", type=int, required=True)
    pub.add_argument("--t0", type=int, required=True)
    pub.add_argument("--client-id", required=True)
    pub.add_argument("--rate", type=float, default=0.0, help="messages per second (0: as fast as possible)")
    pub.add_argument("--persistent", action="store_true", help="clean_session=False")
    pub.add_argument("--timeout", type=float, default=180)
    args = parser.parse_args(argv)
    return _publish_main(args)


if __name__ == "__main__":
    sys.exit(main())
