"""`occ broker-auth --watch` (the docker-compose `broker-auth` service) against a Mosquitto it does not own,
started from the compose mosquitto.conf and entrypoint.sh with their /mosquitto paths moved to a temporary
folder: the rendered files close the broker, a credential issued afterwards reaches it by SIGHUP, and the
monitor account passes the compose healthcheck's round trip."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from occ.embedded.broker import mosquitto_path
from occ.embedded.net import free_port, wait_for_port
from occ.embedded.proc import die_with_parent
from occ.embedded.tls import ensure_tls_files
from occ.store import Store
from tests.integration.ingest_helpers import seed_devices
from tests.security.conftest import Client, connack
from tests.security.test_closed_broker import DEVICES

ROOT = Path(__file__).resolve().parents[2]
SERVICE_PASSWORD = "compose-services-secret-0123456789"


def compose_broker(folder: Path, port: int, tls_port: int) -> subprocess.Popen[bytes]:
    """Mosquitto as the compose service runs it: entrypoint.sh, then mosquitto -c mosquitto.conf (with the
    certificates `occ tls` makes mounted)."""
    base = str(folder / "mosquitto")
    config = folder / "mosquitto" / "config"
    config.mkdir(parents=True)
    ensure_tls_files(folder / "mosquitto" / "certs")
    for name in ("mosquitto.conf", "entrypoint.sh"):
        text = (ROOT / "config" / "mosquitto" / name).read_text().replace("/mosquitto/", f"{base}/")
        text = text.replace("=/mosquitto/", f"={base}/").replace("listener 8883", f"listener {tls_port} 127.0.0.1")
        (config / name).write_text(text)
    conf = config / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1" if line.startswith("listener ") else line
             for line in conf.read_text().splitlines()]
    lines = [line for line in lines if not line.startswith(("log_dest", "log_type", "log_timestamp"))]
    conf.write_text("\n".join([*lines, "log_dest stderr", "user root" if os.geteuid() == 0 else ""]) + "\n")
    script = f'sed "s/chown -R mosquitto:mosquitto/true/" {config}/entrypoint.sh > {folder}/ep.sh && ' \
             f'exec sh {folder}/ep.sh {mosquitto_path()} -c {conf}'
    with open(folder / "broker.log", "wb") as log:
        return subprocess.Popen(["sh", "-c", script], stdout=subprocess.DEVNULL, stderr=log,
                                preexec_fn=die_with_parent())


def start_broker_auth(database_url: str, folder: Path) -> subprocess.Popen[bytes]:
    """`occ broker-auth --out … --watch` as the compose service runs it."""
    with open(folder / "broker-auth.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "occ.cli", "--database-url", database_url, "broker-auth", "--out",
             str(folder / "mosquitto" / "auth"), "--watch"],
            env={**os.environ, "MQTT_SERVICE_PASSWORD": SERVICE_PASSWORD}, stdout=subprocess.DEVNULL, stderr=log,
            preexec_fn=die_with_parent())


async def test_broker_auth_command_closes_and_updates_a_broker_it_does_not_own(
        database_url: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    if mosquitto_path() is None or shutil.which("sh") is None:
        pytest.skip("mosquitto is not installed")
    folder = tmp_path_factory.mktemp("compose-broker")
    port, tls_port = free_port(), free_port()
    store = await Store.connect(database_url, pool_size=1)
    await store.close()
    await seed_devices(database_url, DEVICES)
    broker = compose_broker(folder, port, tls_port)
    renderer = None
    try:
        assert await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 15), (folder / "broker.log").read_text()
        # Before broker-auth: empty files, nobody gets in.
        assert connack(f"mqtt://occ-monitor:{SERVICE_PASSWORD}@127.0.0.1:{port}").is_failure
        renderer = start_broker_auth(database_url, folder)
        monitor = await _connect_eventually(f"mqtt://occ-monitor:{SERVICE_PASSWORD}@127.0.0.1:{port}")
        monitor.client.subscribe("$SYS/broker/uptime", 0)
        deadline = time.monotonic() + 10
        while not monitor.messages:
            assert time.monotonic() < deadline, "no $SYS message for the healthcheck's account"
            await asyncio.sleep(0.05)
        monitor.close()
        result = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "occ.cli", "--database-url",
                                         database_url, "devices", "credentials", "issue", "SEC-A"],
                                         capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        password = result.stdout.split()[2]
        ca = quote(str(folder / "mosquitto" / "certs" / "ca.pem"))
        over_tls = await _connect_eventually(f"mqtts://SEC-A:{password}@localhost:{tls_port}?cafile={ca}")
        over_tls.close()
        device = await _connect_eventually(f"mqtt://SEC-A:{password}@127.0.0.1:{port}")
        assert str(device.publish("occ/v1/hydromet/SEC-B/telemetry", b"{}")) == "Not authorized"
        assert str(device.publish("occ/v1/hydromet/SEC-A/telemetry", b"{}")) in ("Success", "No matching subscribers")
        result = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "occ.cli", "--database-url",
                                         database_url, "devices", "credentials", "revoke", "SEC-A"],
                                         capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert await asyncio.to_thread(device.disconnected.wait, 5.0), (folder / "broker-auth.log").read_text()
        device.close()
    finally:
        if renderer is not None:
            renderer.send_signal(signal.SIGTERM)
            assert renderer.wait(15) == 0, (folder / "broker-auth.log").read_text()
        broker.terminate()
        broker.wait(10)


async def _connect_eventually(url: str, timeout: float = 15) -> Client:
    """broker-auth renders within about a second of starting (or of a change)."""
    deadline = time.monotonic() + timeout
    while True:
        reason = await asyncio.to_thread(connack, url)
        if not reason.is_failure:
            client = Client(url)
            assert not (await asyncio.to_thread(client.wait_connack)).is_failure
            return client
        assert time.monotonic() < deadline, f"still refused: {reason}"
        await asyncio.sleep(0.3)
