"""`occ up` as a user runs it: the whole stack from one command, found by other commands through
var/endpoints.json, refused a second time on the same var/, and gone without a trace after SIGTERM.

Each test runs the real CLI in a child process (cwd = the repository, so config/ is the shipped one) with its
own var/ folder; it starts its own embedded PostgreSQL and broker.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import paho.mqtt.client as paho
import pytest

from occ.bus import BrokerAddress
from occ.embedded import EmbeddedPostgres
from occ.embedded.broker import mosquitto_path
from occ.embedded.net import port_open
from tests.integration.fault_helpers import ROOT, clean_env, http_get

pytestmark = pytest.mark.slow

DEVICE_YAML = """\
devices:
  - id: UP-TEST-01
    kind: hydromet
    name: "occ up test station"
    lat: 22.41
    lon: 104.82
    area: bac-quang
    attributes: {report_interval_s: 600}
"""


# -- processes ------------------------------------------------------------------------------------------
def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a live process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def alive(pid: int, command: str) -> bool:
    """The same process (same command line) still exists and is not a zombie."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != "Z" and cmdline(pid) == command


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(root: int) -> dict[int, str]:
    parents = {pid: stat[1] for pid in all_pids() if (stat := _proc_stat(pid)) is not None}
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = cmdline(pid)
                frontier.append(pid)
    return found


def mentioning(text: str) -> dict[int, str]:
    """Live processes whose command line contains `text` (our var/ folder), except ourselves."""
    found = {}
    for pid in all_pids():
        command = cmdline(pid)
        if text in command and pid != os.getpid() and alive(pid, command):
            found[pid] = command
    return found


class Up:
    """One `occ up` child process on its own var/ folder."""

    def __init__(self, var: Path, *args: str) -> None:
        self.var = var
        self.log_path = var.parent / f"up-{uuid.uuid4().hex[:6]}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "occ.cli", "--set", f"var_dir={var}", "up", *args], cwd=ROOT,
                env=clean_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def wait_endpoints(self, timeout: float = 90) -> dict[str, Any]:
        path = self.var / "endpoints.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"occ up exited with {self.process.returncode}:\n{self.log()}"
            if path.exists():
                try:
                    return dict(json.loads(path.read_text()))
                except ValueError:
                    pass  # being written
            time.sleep(0.1)
        raise AssertionError(f"no {path} after {timeout} s:\n{self.log()}")

    def cleanup(self) -> None:
        """After a failure: leave nothing running (only processes this test started, by pid)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        for pid in mentioning(str(self.var)):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        pg = self.var / "postgres"
        if (pg / "postmaster.pid").exists():
            EmbeddedPostgres(pg).stop(mode="immediate")


@pytest.fixture
def up_dir(work_dir: Path) -> Iterator[Path]:
    folder = work_dir / f"up-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    folder.chmod(0o755)
    yield folder


def run_occ(var: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Another `occ` command on the same var/ (it finds the running stack there), to completion."""
    return subprocess.run([sys.executable, "-m", "occ.cli", "--set", f"var_dir={var}", *args], cwd=ROOT,
                          env=clean_env(), capture_output=True, text=True, timeout=60)


def wait_healthy(metrics_url: str, timeout: float = 60) -> None:
    url = metrics_url.rsplit("/", 1)[0] + "/healthz"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = http_get(url, timeout=1)
        if answer is not None and answer[0] == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"{url} not OK after {timeout} s: {answer}")


def publish_one(url: str, topic: str, payload: bytes) -> None:
    address = BrokerAddress.parse(url)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"up-test-{uuid.uuid4().hex[:6]}")
    client.connect(address.host, address.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


async def fetch(database_url: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


async def poll(database_url: str, sql: str, done: Any, timeout: float) -> list[asyncpg.Record]:
    deadline = time.monotonic() + timeout
    rows: list[asyncpg.Record] = []
    while time.monotonic() < deadline:
        rows = await fetch(database_url, sql)
        if done(rows):
            break
        await asyncio.sleep(0.25)
    return rows


def ports_of(endpoints: dict[str, Any]) -> set[int]:
    urls = [endpoints["database_url"], endpoints["mqtt_url"], endpoints["mqtt_services_url"],
            *endpoints["ingest_metrics"], endpoints["alerts_metrics"]]
    return {int(port) for url in urls if (port := urlsplit(url).port)}


def stop_and_check_nothing_left(up: Up, endpoints: dict[str, Any], timeout: float = 20) -> float:
    """SIGTERM `occ up`; it must exit 0 within `timeout` leaving no process, port or endpoints file."""
    tracked = {**descendants(up.process.pid), **mentioning(str(up.var))}
    for pid in list(tracked):  # e.g. PostgreSQL's own workers, under a postmaster pg_ctl detached
        tracked.update(descendants(pid))
    commands = " | ".join(tracked.values())
    assert "occ.cli ingest" in commands, commands
    assert "occ.cli alerts" in commands, commands
    assert "postgres" in commands, commands
    assert "mosquitto" in commands or "iotcore" in commands, commands
    ports = ports_of(endpoints)
    assert all(port_open("127.0.0.1", p) for p in ports), ports

    began = time.monotonic()
    up.process.send_signal(signal.SIGTERM)
    code = up.process.wait(timeout)  # TimeoutExpired fails the test
    took = time.monotonic() - began
    assert code == 0, up.log()
    assert not (up.var / "endpoints.json").exists()
    deadline = time.monotonic() + 5  # a process may take a moment to be reaped after its parent exited
    while (left := {pid: c for pid, c in tracked.items() if alive(pid, c)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"left running: {left}"
    assert not mentioning(str(up.var)), mentioning(str(up.var))
    assert not [p for p in ports if port_open("127.0.0.1", p)], "a port is still open"
    return took


# -- tests ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["mosquitto", "iotcore"])
async def test_occ_up_runs_the_stack_refuses_a_second_and_stops_clean(kind: str, up_dir: Path) -> None:
    if kind == "mosquitto" and mosquitto_path() is None:
        pytest.skip("mosquitto is not installed")
    var = up_dir / "var"
    up = Up(var, "--workers", "1", "--broker", kind)
    try:
        endpoints = await asyncio.to_thread(up.wait_endpoints)
        assert endpoints["broker"] == kind and endpoints["pid"] == up.process.pid
        assert len(endpoints["ingest_metrics"]) == 1
        await asyncio.to_thread(wait_healthy, endpoints["ingest_metrics"][0])
        await asyncio.to_thread(wait_healthy, endpoints["alerts_metrics"])
        healthy_at = time.monotonic()

        # Another command finds the running stack through var/endpoints.json (no URL given).
        devices = up_dir / "devices.yaml"
        devices.write_text(DEVICE_YAML)
        result = await asyncio.to_thread(run_occ, var, "devices", "import", str(devices))
        assert result.returncode == 0, result.stderr
        assert "1 devices from 1 file(s): 1 created" in result.stdout

        # Ingest re-reads the registry for an unknown device at most once a second (UNKNOWN_REFRESH_MIN_S),
        # counted from its last read (at start): a message within that second would be dead-lettered.
        await asyncio.sleep(max(0.0, healthy_at + 1.5 - time.monotonic()))
        ts = int(time.time()) - 120
        payload = b'{"ts": %d, "values": {"rain_mm": 2.5, "temperature_c": 19.5}}' % ts
        await asyncio.to_thread(publish_one, endpoints["mqtt_url"], "occ/v1/hydromet/UP-TEST-01/telemetry", payload)
        rows = await poll(endpoints["database_url"],
                          "SELECT metric, value, extract(epoch FROM ts)::bigint AS t FROM readings "
                          "WHERE device_id = 'UP-TEST-01' ORDER BY metric", lambda r: len(r) >= 2, 30)
        dead = await fetch(endpoints["database_url"], "SELECT topic, reason FROM dead_letters")
        assert [(r["metric"], r["value"], r["t"]) for r in rows] == [
            ("rain_mm", 2.5, ts), ("temperature_c", 19.5, ts)], (dead, up.log())

        # A second `occ up` on the same var/ is refused and disturbs nothing.
        second = await asyncio.to_thread(run_occ, var, "up", "--workers", "1", "--broker", kind)
        assert second.returncode != 0
        assert "already running" in second.stderr and str(up.process.pid) in second.stderr, second.stderr
        assert up.process.poll() is None
        assert json.loads((var / "endpoints.json").read_text()) == endpoints

        took = await asyncio.to_thread(stop_and_check_nothing_left, up, endpoints)
        assert took < 20
    finally:
        up.cleanup()


async def test_occ_up_demo_stores_simulated_readings(up_dir: Path) -> None:
    if mosquitto_path() is None:
        pytest.skip("mosquitto is not installed")
    up = Up(up_dir / "var", "--demo", "--workers", "1", "--broker", "mosquitto")
    try:
        endpoints = await asyncio.to_thread(up.wait_endpoints)
        catalog = set()
        for file in (ROOT / "config" / "devices").glob("*.yaml"):
            catalog |= {line.split("id:", 1)[1].strip() for line in file.read_text().splitlines()
                        if line.strip().startswith("- id:")}
        rows = await poll(endpoints["database_url"],
                          "SELECT device_id, count(*) AS n FROM readings GROUP BY device_id",
                          lambda r: len(r) >= 5, 45)
        stored = {r["device_id"] for r in rows}
        assert len(stored) >= 5, f"readings from {sorted(stored)} only\n{up.log()}"
        assert stored <= catalog, stored - catalog
        registered = await fetch(endpoints["database_url"], "SELECT count(*) AS n FROM devices")
        assert registered[0]["n"] == len(catalog)
        await asyncio.to_thread(stop_and_check_nothing_left, up, endpoints)
    finally:
        up.cleanup()
