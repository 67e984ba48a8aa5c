"""The closed broker (issue 7 items 1, 2 and 6), through a real Mosquitto, a real store and a real ingest:
credentials per device, topic ACLs, gateways held to their devices, rotate and revoke reaching the running
broker, and the `occ devices credentials` commands."""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import orjson
import pytest

from occ.broker_auth import verify_password
from occ.cli_credentials import read_credentials_file
from occ.models import Device
from tests.integration.ingest_helpers import running_ingest, seed_devices
from tests.security.conftest import Client, ClosedStack, connack

ROOT = Path(__file__).resolve().parents[2]
DEVICES = [Device("SEC-A", "hydromet", "A", area="bac-quang"),
           Device("SEC-B", "hydromet", "B", area="bac-quang"),
           Device("SEC-C", "hydromet", "C", area="bac-quang", attributes={"gateway": "SEC-GW"})]


def occ(capsys: pytest.CaptureFixture[str], database_url: str, *args: str) -> tuple[int, str]:
    """`occ …` as an operator runs it (its own process: the CLI sets up logging of its own)."""
    result = subprocess.run([sys.executable, "-m", "occ.cli", "--database-url", database_url, *args],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    return result.returncode, result.stdout + (result.stderr if result.returncode else "")


async def issue(capsys: pytest.CaptureFixture[str], stack: ClosedStack, *args: str) -> dict[str, str]:
    code, out = await asyncio.to_thread(occ, capsys, stack.database_url, "devices", "credentials", *args)
    assert code == 0, out
    return {line.split()[0]: line.split()[2] for line in out.splitlines()}


async def wait_synced(stack: ClosedStack, renders: int, timeout: float = 10) -> None:
    """Until AuthSync has rendered the change (it polls every 0.2 s here)."""
    deadline = time.monotonic() + timeout
    while stack.sync.renders <= renders:
        assert time.monotonic() < deadline, "the broker files were not re-rendered"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # SIGHUP handled by Mosquitto's next loop iteration


async def readings(database_url: str, device_id: str) -> list[float]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT value FROM readings WHERE device_id = $1 ORDER BY value", device_id)
    finally:
        await conn.close()
    return [r["value"] for r in rows]


async def dead_letters(database_url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch("SELECT topic, code, reason FROM dead_letters ORDER BY id")
    finally:
        await conn.close()


def payload(value: float, age_s: int = 60) -> bytes:
    return orjson.dumps({"ts": int(time.time()) - age_s, "values": {"rain_mm": value}})


async def test_anonymous_and_wrong_passwords_are_refused(closed_stack: ClosedStack,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    await seed_devices(closed_stack.database_url, DEVICES)
    before = closed_stack.sync.renders
    passwords = await issue(capsys, closed_stack, "issue", "SEC-A")
    await wait_synced(closed_stack, before)
    for v5 in (True, False):
        url = closed_stack.broker.url
        assert connack(url, v5=v5).is_failure
        assert connack(url, username="SEC-A", password="not-" + passwords["SEC-A"], v5=v5).is_failure
        assert not connack(url, username="SEC-A", password=passwords["SEC-A"], v5=v5).is_failure


async def test_devices_speak_only_for_themselves(closed_stack: ClosedStack,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A on B's topic, a device under _sys/, a gateway for a device not assigned to it: refused by the broker
    (PUBACK "not authorized"), never delivered to ingest, never stored; the allowed ones are stored."""
    stack = closed_stack
    await seed_devices(stack.database_url, DEVICES)
    before = stack.sync.renders
    passwords = await issue(capsys, stack, "issue", "SEC-A", "SEC-B", "SEC-C")
    passwords |= await issue(capsys, stack, "issue", "--gateway", "SEC-GW")
    passwords |= await issue(capsys, stack, "issue", "--gateway", "SEC-GW0")  # a gateway no device names
    await wait_synced(stack, before)
    tap = Client(stack.service_url("occ-web"))  # sees every device topic and _sys/
    a = Client(stack.broker.url, username="SEC-A", password=passwords["SEC-A"])
    gw = Client(stack.broker.url, username="SEC-GW", password=passwords["SEC-GW"])
    gw0 = Client(stack.broker.url, username="SEC-GW0", password=passwords["SEC-GW0"])
    alerts = Client(stack.service_url("occ-alerts"))
    try:
        tap.client.subscribe([("occ/v1/#", 1)])
        assert tap.subscribed.wait(10)
        assert not a.wait_connack().is_failure and not gw.wait_connack().is_failure
        assert not gw0.wait_connack().is_failure
        async with running_ingest(stack.database_url, stack.service_url("occ-ingest")):
            assert str(a.publish("occ/v1/hydromet/SEC-B/telemetry", payload(66.0))) == "Not authorized"
            assert str(a.publish("occ/v1/_sys/alerts/bac-quang/SEC-B", b'{"fake": true}')) == "Not authorized"
            assert str(a.publish("occ/v1/camera/SEC-A/telemetry", payload(67.0))) == "Not authorized"
            assert str(gw.publish("occ/v1/hydromet/SEC-B/telemetry", payload(68.0))) == "Not authorized"
            assert str(a.publish("occ/v1/hydromet/SEC-A/telemetry", payload(1.0))) == "Success"
            assert str(gw.publish("occ/v1/hydromet/SEC-C/telemetry", payload(2.0))) == "Success"
            assert str(alerts.publish("occ/v1/_sys/alerts/bac-quang/SEC-A", b'{"real": true}')) == "Success"
            # Its own gateway topic the broker lets through; ingest keeps only the devices assigned to it.
            mixed = orjson.dumps({"SEC-C": orjson.loads(payload(3.0, 90)), "SEC-B": orjson.loads(payload(69.0, 90))})
            assert str(gw.publish("occ/v1/gateway/SEC-GW/telemetry", mixed)) == "Success"
            # A credentialed gateway that no device names speaks for nobody, even for a registered device.
            foreign = orjson.dumps({"SEC-A": orjson.loads(payload(70.0, 120))})
            assert str(gw0.publish("occ/v1/gateway/SEC-GW0/telemetry", foreign)) == "Success"
            deadline = time.monotonic() + 30
            while (await readings(stack.database_url, "SEC-A"), await readings(stack.database_url, "SEC-C"),
                   len(await dead_letters(stack.database_url))) != ([1.0], [2.0, 3.0], 2):
                assert time.monotonic() < deadline, "the allowed readings / dead letters were not stored"
                await asyncio.sleep(0.1)
        assert await readings(stack.database_url, "SEC-B") == []
        topics = [t for t, _ in tap.messages]
        assert "occ/v1/hydromet/SEC-B/telemetry" not in topics
        assert "occ/v1/camera/SEC-A/telemetry" not in topics
        assert [p for t, p in tap.messages if t.startswith("occ/v1/_sys/")] == [b'{"real": true}']
        # The refused messages never reached ingest; the dead letters are the gateways' foreign entries.
        dead = {r["topic"]: r for r in await dead_letters(stack.database_url)}
        assert sorted((t, r["code"]) for t, r in dead.items()) == [
            ("occ/v1/gateway/SEC-GW/telemetry", "device_mismatch"),
            ("occ/v1/gateway/SEC-GW0/telemetry", "device_mismatch")]
        assert "SEC-A is not assigned to gateway SEC-GW0" in dead["occ/v1/gateway/SEC-GW0/telemetry"]["reason"]
    finally:
        for client in (tap, a, gw, gw0, alerts):
            client.close()


async def test_rotate_and_revoke_reach_the_running_broker(closed_stack: ClosedStack,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    stack = closed_stack
    await seed_devices(stack.database_url, DEVICES)
    before = stack.sync.renders
    first = await issue(capsys, stack, "issue", "SEC-A", "SEC-B")
    await wait_synced(stack, before)

    before = stack.sync.renders
    rotated = await issue(capsys, stack, "rotate", "SEC-A")
    assert rotated["SEC-A"] != first["SEC-A"]
    await wait_synced(stack, before)
    assert connack(stack.broker.url, username="SEC-A", password=first["SEC-A"]).is_failure
    assert not connack(stack.broker.url, username="SEC-A", password=rotated["SEC-A"]).is_failure

    live = Client(stack.broker.url, username="SEC-B", password=first["SEC-B"])
    try:
        assert not live.wait_connack().is_failure
        code, out = await asyncio.to_thread(occ, capsys, stack.database_url, "devices", "credentials", "revoke",
                                            "SEC-B")
        assert code == 0 and "revoked    SEC-B" in out
        # The issue's bound: the live connection is dropped within 5 s of the revoke.
        assert await asyncio.to_thread(live.disconnected.wait, 5.0), "a revoked device stayed connected"
    finally:
        live.close()
    assert connack(stack.broker.url, username="SEC-B", password=first["SEC-B"]).is_failure


async def test_credentials_commands(database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Passwords shown once, stored only as a hash that verifies; JSON output; refusals; import writes a 0600
    file for the new devices only."""
    await seed_devices(database_url, DEVICES[:1])
    code, out = await asyncio.to_thread(occ, capsys, database_url, "devices", "credentials", "issue", "SEC-A",
                                        "--json")
    assert code == 0
    [entry] = json.loads(out)
    assert entry["device_id"] == entry["username"] == "SEC-A" and len(entry["password"]) >= 32
    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetchval("SELECT password_hash FROM mqtt_accounts WHERE username = 'SEC-A'")
    finally:
        await conn.close()
    assert entry["password"] not in stored and verify_password(entry["password"], stored)

    assert await asyncio.to_thread(occ, capsys, database_url, "devices", "credentials", "issue", "SEC-A") != (0, "")
    assert (await asyncio.to_thread(occ, capsys, database_url, "devices", "credentials", "issue", "NOPE"))[0] != 0

    devices = tmp_path / "devices.yaml"
    name = f"SEC-NEW-{uuid.uuid4().hex[:4]}"
    devices.write_text(f"devices:\n  - {{id: SEC-A, kind: hydromet, name: A, area: bac-quang}}\n"
                       f"  - {{id: {name}, kind: hydromet, name: N}}\n")
    out_file = tmp_path / "creds.txt"
    code, out = await asyncio.to_thread(occ, capsys, database_url, "devices", "import", str(devices),
                                        "--issue-credentials", str(out_file))
    assert code == 0 and "1 credential(s) issued" in out, out
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    assert set(read_credentials_file(out_file)) == {name}

    code, out = await asyncio.to_thread(occ, capsys, database_url, "devices", "credentials", "list")
    assert code == 0 and "SEC-A" in out and name in out and "2 account(s), 2 active" in out


@pytest.mark.parametrize("transport", ["raw", "paho"])
async def test_simulators_connect_with_their_credentials(closed_stack: ClosedStack, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str], transport: str) -> None:
    """Per-device connections each with the device's own credentials (a `--credentials` file); a pool with the
    occ-sim service account; without credentials the closed broker refuses them."""
    from occ.errors import ServiceError
    from simulators.publisher import MqttOutput, parse_mqtt_url

    stack = closed_stack
    await seed_devices(stack.database_url, DEVICES)
    before = stack.sync.renders
    code, out = await asyncio.to_thread(occ, capsys, stack.database_url, "devices", "credentials", "issue",
                                        "SEC-A", "SEC-B", "--out", str(tmp_path / "creds.txt"))
    assert code == 0 and out == ""
    await wait_synced(stack, before)
    ids = ["SEC-A", "SEC-B"]
    status = [f"occ/v1/hydromet/{i}/status" for i in ids]

    def run(address_url: str, mode: str, credentials: dict[str, tuple[str, str]] | None) -> None:
        output = MqttOutput(parse_mqtt_url(address_url), mode=mode, device_ids=ids, device_status_topics=status,
                            transport=transport, client_prefix=f"sec-sim-{uuid.uuid4().hex[:6]}",
                            credentials=credentials, connections=1)
        try:
            output.start(timeout=10)
        finally:
            output.close()

    await asyncio.to_thread(run, stack.broker.url, "device", read_credentials_file(tmp_path / "creds.txt"))
    await asyncio.to_thread(run, stack.service_url("occ-sim"), "pool", None)
    with pytest.raises(ServiceError):
        await asyncio.to_thread(run, stack.broker.url, "device", None)
