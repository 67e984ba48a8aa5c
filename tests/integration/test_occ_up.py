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
from occ.embedded import EmbeddedBroker, EmbeddedPostgres
from occ.embedded.broker import mosquitto_path
from occ.embedded.net import free_port, port_open
from occ.embedded.proc import die_with_parent
from tests.alerts.helpers import Recorder
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
    """One `occ up` child process on its own var/ folder (`flags`: global flags, before the command)."""

    def __init__(self, var: Path, *args: str, flags: tuple[str, ...] = (), closed: bool = False) -> None:
        """`closed`: the broker as `occ up` starts it by default (accounts and ACLs, issue 7); these tests
        publish anonymously otherwise (tests/security covers the closed broker)."""
        self.var = var
        self.log_path = var.parent / f"up-{uuid.uuid4().hex[:6]}.log"
        auth = () if closed else ("--set", "mqtt.auth=false")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "occ.cli", "--set", f"var_dir={var}", *auth, *flags, "up", *args], cwd=ROOT,
                # A port of its own for `occ web`: other stacks on this machine may hold or grab 8080.
                env=clean_env(OCC_WEB__PORT=str(free_port())), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent(),
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
                    endpoints = dict(json.loads(path.read_text()))
                except ValueError:
                    endpoints = {}  # being written
                if endpoints.get("pid") == self.process.pid:  # not a file an earlier, killed run left
                    return endpoints
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


def stack_processes(up: Up) -> dict[int, str]:
    """Every process of a running `occ up`: its descendants (servers included) and anything naming its var/."""
    tracked = {**descendants(up.process.pid), **mentioning(str(up.var))}
    for pid in list(tracked):  # e.g. PostgreSQL's own workers
        tracked.update(descendants(pid))
    return tracked


def wait_all_gone(tracked: dict[int, str], ports: set[int], timeout: float = 10) -> None:
    """Within `timeout`, none of the processes is alive and none of the ports accepts a connection."""
    deadline = time.monotonic() + timeout
    while True:
        left = {pid: c for pid, c in tracked.items() if alive(pid, c)}
        held = [p for p in ports if port_open("127.0.0.1", p)]
        if not left and not held:
            return
        assert time.monotonic() < deadline, f"left running: {left}; ports still open: {held}"
        time.sleep(0.1)


def stop_and_check_nothing_left(up: Up, endpoints: dict[str, Any], timeout: float = 20) -> float:
    """SIGTERM `occ up`; it must exit 0 within `timeout` leaving no process, port or endpoints file."""
    tracked = stack_processes(up)
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


HAZARD_RULES = ("flood-level", "river-rising-fast", "rain-24h", "rain-3h-intense", "district-heavy-rain")
"""The shipped flood and rain rules (config/rules/hagiang-hydromet.yaml)."""


async def test_occ_up_demo_stores_simulated_readings_and_raises_real_alerts(up_dir: Path) -> None:
    """`occ up --demo` as `make run` composes it (demo scenario, alerts on the event clock), faster: at 300× the
    demo's flash flood rains over 15 mm in 24 h at a Bắc Quang gauge about 12 s after the start, and the real
    alerts service must publish and store that alert as new (not `late`: the replayed day is hours old)."""
    if mosquitto_path() is None:
        pytest.skip("mosquitto is not installed")
    # As `make run` runs it: a closed broker (issue 7), the simulator on its own account.
    up = Up(up_dir / "var", "--demo", "--workers", "1", "--broker", "mosquitto", "--speed", "300", closed=True)
    recorder = None
    try:
        endpoints = await asyncio.to_thread(up.wait_endpoints)
        assert endpoints["mqtt_auth"] == "closed"
        recorder = Recorder(endpoints["mqtt_service_urls"]["occ-web"], "occ/v1/_sys/alerts/#")
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

        def hazard(published: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [p for p in published if p.get("rule") in HAZARD_RULES and p.get("state") == "firing"]

        assert await asyncio.to_thread(recorder.wait_for, lambda published: bool(hazard(published)), 60), (
            f"no flood or rain alert published; saw {[(p.get('rule'), p.get('state')) for p in recorder.unique()]}"
            f"\n{up.log()}")
        first = hazard(recorder.unique())[0]
        assert first["device_id"] in catalog and not first["late"], first
        episodes = await fetch(endpoints["database_url"],
                               "SELECT rule, device_id, late FROM alert_episodes WHERE fired_at IS NOT NULL")
        assert (first["rule"], first["device_id"], False) in {(e["rule"], e["device_id"], e["late"])
                                                             for e in episodes}, episodes
        recorder.close()
        recorder = None
        await asyncio.to_thread(stop_and_check_nothing_left, up, endpoints)
    finally:
        if recorder is not None:
            recorder.close()
        up.cleanup()


# -- whatever kills it, nothing is left (issue 11 item 1) -------------------------------------------------
async def execute(database_url: str, sql: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def need_mosquitto() -> None:
    if mosquitto_path() is None:
        pytest.skip("mosquitto is not installed")


@pytest.mark.parametrize("how", ["sigterm-to-the-group", "sigkill-of-occ-up"])
async def test_whatever_ends_occ_up_leaves_nothing_and_the_next_one_keeps_the_data(how: str, up_dir: Path) -> None:
    """`kill -TERM -- -<group>` (docker stop, systemd, a closed terminal) or `kill -9` of `occ up` alone: within
    seconds no process of the stack is left and no port is held; `occ up` again on the same var/ starts cleanly
    on the same pinned ports, with the data. Before: PostgreSQL (daemonized by pg_ctl) and Mosquitto survived."""
    need_mosquitto()
    var = up_dir / "var"
    args = ("--workers", "1", "--broker", "mosquitto", "--db-port", str(free_port()), "--mqtt-port", str(free_port()))
    up = Up(var, *args)
    try:
        endpoints = await asyncio.to_thread(up.wait_endpoints)
        assert urlsplit(endpoints["database_url"]).port == int(args[5])
        assert urlsplit(endpoints["mqtt_url"]).port == int(args[7])
        await execute(endpoints["database_url"], "CREATE TABLE kept (note text); INSERT INTO kept VALUES ('before')")
        tracked = stack_processes(up)
        commands = " | ".join(tracked.values())
        assert "occ.cli ingest" in commands and "postgres" in commands and "mosquitto" in commands, commands
        if how == "sigterm-to-the-group":
            os.killpg(up.process.pid, signal.SIGTERM)
            assert up.process.wait(20) == 0, up.log()
        else:
            up.process.kill()
            up.process.wait(5)
        await asyncio.to_thread(wait_all_gone, tracked, ports_of(endpoints))

        again = Up(var, *args)
        try:
            second = await asyncio.to_thread(again.wait_endpoints)
            assert ports_of(second) & ports_of(endpoints) >= {int(args[5]), int(args[7])}
            rows = await fetch(second["database_url"], "SELECT note FROM kept")
            assert [r["note"] for r in rows] == ["before"]
            assert "left running" not in again.log(), again.log()  # nothing was left to clean up
            await asyncio.to_thread(stop_and_check_nothing_left, again, second)
        finally:
            again.cleanup()
    finally:
        up.cleanup()


async def test_servers_an_earlier_run_left_on_var_are_stopped_before_starting(up_dir: Path) -> None:
    """A PostgreSQL and a Mosquitto still running on var/ (say, from a version of OCC that daemonized them):
    `occ up` stops both before starting its own, so two brokers never share var/broker, and keeps the data."""
    need_mosquitto()
    var = up_dir / "var"
    var.mkdir()
    var.chmod(0o711)
    old_pg = EmbeddedPostgres(var / "postgres")
    old_broker = EmbeddedBroker(var / "broker", kind="mosquitto")
    up: Up | None = None
    try:
        old_pg.start()
        await execute(old_pg.url, "CREATE DATABASE occ")
        await execute(old_pg.url.rsplit("/", 1)[0] + "/occ",
                      "CREATE TABLE kept (note text); INSERT INTO kept VALUES ('x')")
        old_broker.start()
        old = {pid: cmdline(pid) for pid in (old_pg.pid, old_broker.pid) if pid}
        assert len(old) == 2

        up = Up(var, "--workers", "1", "--broker", "mosquitto")
        endpoints = await asyncio.to_thread(up.wait_endpoints)
        assert not [pid for pid, command in old.items() if alive(pid, command)], old
        log = up.log()
        assert "stopping a PostgreSQL left running" in log and "stopping a broker left running" in log, log
        rows = await fetch(endpoints["database_url"], "SELECT note FROM kept")
        assert [r["note"] for r in rows] == ["x"]
        brokers = [pid for pid, c in mentioning(str(var / "broker")).items() if "mosquitto" in c]
        assert brokers == [endpoints["servers"]["broker"]["pid"]], brokers
        await asyncio.to_thread(stop_and_check_nothing_left, up, endpoints)
    finally:
        if up is not None:
            up.cleanup()
        old_broker.stop()  # reaps the old children (already stopped by `occ up`)
        old_pg.stop()


# -- an honest `occ up` (issue 9 item 2) ----------------------------------------------------------------
async def test_occ_up_says_which_part_failed_and_leaves_nothing(up_dir: Path) -> None:
    """Before: with a broker that does not answer, `occ up` printed "OCC is up" while its workers crashed."""
    var = up_dir / "var"
    nobody = free_port()
    cases = [
        (("--mqtt-url", f"mqtt://127.0.0.1:{nobody}"), "occ: up: broker failed: mqtt://127.0.0.1:%d does not answer"),
        (("--database-url", f"postgresql://occ:pw-xyz@127.0.0.1:{nobody}/occ"),
         "occ: up: database failed: postgresql://occ:***@127.0.0.1:%d/occ does not answer"),
    ]
    for flags, expected in cases:
        result = await asyncio.to_thread(run_occ, var, *flags, "up", "--workers", "1")
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        assert expected % nobody in result.stderr, output
        assert "OCC is up" not in output and "Traceback" not in output and "pw-xyz" not in output, output
        assert not (var / "endpoints.json").exists()
        assert not mentioning(str(var)), mentioning(str(var))


def listening_on_all_interfaces(port: int) -> bool:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port and set(address) == {"0"}:
                return True
    return False


async def test_bind_secrets_and_a_service_stopped_on_purpose(up_dir: Path, database_url: str) -> None:
    """--bind/--mqtt-port reach the broker with a warning (no authentication); a database password shows
    nowhere but in endpoints.json (0600, var/ closed to others); a worker stopped with SIGTERM (exit 0) stays
    stopped (issue 12 item 5: it used to be restarted)."""
    need_mosquitto()
    var = up_dir / "var"
    secret = urlsplit(database_url).password  # the test server takes passwords only (issue 7)
    assert secret
    url = database_url
    port = free_port()
    up = Up(var, "--workers", "1", "--broker", "mosquitto", "--bind", "0.0.0.0", "--mqtt-port", str(port),
            flags=("--database-url", url))
    try:
        endpoints = await asyncio.to_thread(up.wait_endpoints)
        log = up.log()
        assert secret not in log and "postgres:***@" in log, log
        assert "no authentication" in log, log
        lines = log.splitlines()
        assert any(line.split()[:2] == ["ingest-1", "health"] and line.endswith("/healthz") for line in lines), log
        assert any(line.split()[:2] == ["ingest-1", "metrics"] and line.endswith("/metrics") for line in lines), log
        assert "mqtt_services_url" in log
        assert endpoints["database_url"] == url  # the file keeps what other commands need
        assert (var / "endpoints.json").stat().st_mode & 0o777 == 0o600
        assert var.stat().st_mode & 0o077 in (0, 0o011)  # 0700, or 0711 as root (servers traverse it)
        assert urlsplit(endpoints["mqtt_url"]).port == port and listening_on_all_interfaces(port)

        worker = endpoints["services"]["ingest-1"]["pid"]
        os.kill(worker, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while "not restarting" not in up.log():
            assert time.monotonic() < deadline, up.log()
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # longer than the first restart delay
        assert not [c for c in descendants(up.process.pid).values() if "occ.cli ingest" in c]
        assert up.process.poll() is None
        up.process.send_signal(signal.SIGTERM)
        assert up.process.wait(20) == 0
        assert not mentioning(str(var)) and not port_open("127.0.0.1", port)
    finally:
        up.cleanup()


# -- the embedded servers are supervised too (issue 11 item 2) ------------------------------------------
def wait_new_server_pid(up: Up, name: str, old: int, timeout: float = 30) -> int:
    """Until endpoints.json names a live replacement for server `name` (the supervisor rewrites it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert up.process.poll() is None, up.log()
        endpoints = read_endpoints_file(up.var)
        pid = (endpoints.get("servers", {}).get(name) or {}).get("pid")
        if pid and pid != old and _proc_stat(pid) is not None:
            return int(pid)
        time.sleep(0.1)
    raise AssertionError(f"the {name} was not restarted within {timeout} s:\n{up.log()}")


def read_endpoints_file(var: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((var / "endpoints.json").read_text()))
    except (OSError, ValueError):
        return {}


async def test_killed_servers_are_restarted_and_every_reading_is_stored_once(up_dir: Path) -> None:
    """Under a steady stream, `kill -9` of the embedded Mosquitto, then of the PostgreSQL postmaster, then of the
    ingest worker: `occ up` restarts each (servers on the same port with the same data), logs each once, ingest
    reconnects to the servers by itself, and every reading is stored exactly once. Before: nothing restarted the
    servers and `occ up` carried on as if healthy."""
    from tests.integration.fault_helpers import (
        PublisherProcess,
        stream_t0,
        verify_exactly_once,
        wait_for_readings,
    )
    from tests.integration.ingest_helpers import seed_devices

    need_mosquitto()
    messages, rate = 8000, 400
    up = Up(up_dir / "var", "--workers", "1", "--broker", "mosquitto")
    publisher: PublisherProcess | None = None
    try:
        endpoints = await asyncio.to_thread(up.wait_endpoints)
        database = endpoints["database_url"]
        await seed_devices(database)
        ingest_pid = endpoints["services"]["ingest-1"]["pid"]
        t0 = stream_t0(messages)
        publisher = PublisherProcess(endpoints["mqtt_url"], start=0, stop=messages, t0=t0, rate=rate,
                                     client_id=f"pub-{uuid.uuid4().hex[:8]}", persistent=True)
        assert await wait_for_readings(database, 600, 60, alive=publisher.running) >= 600, up.log()

        broker = endpoints["servers"]["broker"]
        os.kill(broker["pid"], signal.SIGKILL)
        await asyncio.to_thread(wait_new_server_pid, up, "broker", broker["pid"])
        assert port_open("127.0.0.1", broker["port"])
        stored = await wait_for_readings(database, 0, 1)
        assert await wait_for_readings(database, stored + 600, 60, alive=publisher.running) >= stored + 600, up.log()

        postgres = endpoints["servers"]["database"]
        assert publisher.running() and publisher.progress() < messages, "the stream ended before the kills"
        os.kill(postgres["pid"], signal.SIGKILL)
        await asyncio.to_thread(wait_new_server_pid, up, "database", postgres["pid"])
        # Ingest reconnected to both by itself: it is the same process.
        assert read_endpoints_file(up.var)["services"]["ingest-1"]["pid"] == ingest_pid

        stored = await wait_for_readings(database, 0, 1)
        assert await wait_for_readings(database, stored + 400, 60, alive=publisher.running) >= stored + 400, up.log()
        os.kill(ingest_pid, signal.SIGKILL)  # a crash: restarted, and the broker redelivers what it held
        deadline = time.monotonic() + 30
        while read_endpoints_file(up.var)["services"]["ingest-1"]["pid"] in (ingest_pid, None):
            assert time.monotonic() < deadline, up.log()
            await asyncio.sleep(0.1)

        report = await asyncio.to_thread(publisher.wait, 120)
        assert report["acked"] == messages
        assert await wait_for_readings(database, 2 * messages, 90) == 2 * messages, up.log()
        await verify_exactly_once(database, messages, t0)
        log = up.log()
        assert log.count("embedded broker exited") == 1 and log.count("embedded database exited") == 1, log
        assert log.count("is back on port") == 2, log
        assert "ingest-1 exited with code -9" in log, log
        await asyncio.to_thread(stop_and_check_nothing_left, up, read_endpoints_file(up.var))
    finally:
        if publisher is not None:
            publisher.close()
        up.cleanup()
