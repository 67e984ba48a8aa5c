"""The TLS listener (issue 7 item 3): a CA and server certificate generated on first start; clients that trust
the CA connect (paho, the native transport) and their readings are stored; a client that does not trust it
fails the handshake; a closed broker still asks for the password over TLS."""

from __future__ import annotations

import asyncio
import ssl
import stat
import time

import orjson
import pytest

from occ.cli_credentials import issue_for
from occ.store import Store
from tests.integration.ingest_helpers import running_ingest, seed_devices
from tests.security.conftest import Client, ClosedStack, connack
from tests.security.test_closed_broker import DEVICES, readings


async def issued_password(database_url: str, device_id: str) -> str:
    store = await Store.connect(database_url, pool_size=1, migrate=False)
    try:
        [(_, _, password)] = await issue_for(store, [device_id], "device")
    finally:
        await store.close()
    return password


@pytest.mark.parametrize("transport", ["native", "paho"])
async def test_a_client_trusting_the_generated_ca_connects_and_is_stored(closed_stack: ClosedStack,
                                                                         transport: str) -> None:
    stack = closed_stack
    assert stack.broker.tls is not None and stack.broker.tls_url is not None
    tls = stack.broker.tls
    assert stat.S_IMODE(tls.key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tls.ca.parent / "ca.key").stat().st_mode) == 0o600
    await seed_devices(stack.database_url, DEVICES)
    before = stack.sync.renders
    password = await issued_password(stack.database_url, "SEC-A")
    deadline = time.monotonic() + 10
    while stack.sync.renders <= before:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    # ingest itself over TLS with its own account, through either receive path
    async with running_ingest(stack.database_url, stack.service_url("occ-ingest", stack.broker.tls_url),
                              transport=transport):
        device = Client(stack.broker.tls_url, username="SEC-A", password=password)
        try:
            assert not device.wait_connack().is_failure
            body = orjson.dumps({"ts": int(time.time()) - 30, "values": {"rain_mm": 4.5}})
            assert str(device.publish("occ/v1/hydromet/SEC-A/telemetry", body)) == "Success"
            deadline = time.monotonic() + 30
            while await readings(stack.database_url, "SEC-A") != [4.5]:
                assert time.monotonic() < deadline, "the reading sent over TLS was not stored"
                await asyncio.sleep(0.1)
        finally:
            device.close()


async def test_a_client_that_does_not_trust_the_ca_fails(closed_stack: ClosedStack) -> None:
    stack = closed_stack
    assert stack.broker.tls_port is not None
    context = ssl.create_default_context()  # the system's CAs only: our CA is not among them
    with pytest.raises(ssl.SSLCertVerificationError):
        _, writer = await asyncio.wait_for(
            asyncio.open_connection("localhost", stack.broker.tls_port, ssl=context), 10)
        writer.close()
    # With the CA it verifies (same host name), so the failure above is the trust and nothing else.
    trusted = ssl.create_default_context(cafile=str(stack.broker.tls.ca if stack.broker.tls else ""))
    _, writer = await asyncio.wait_for(asyncio.open_connection("localhost", stack.broker.tls_port, ssl=trusted), 10)
    writer.close()
    await writer.wait_closed()


async def test_tls_does_not_replace_the_password(closed_stack: ClosedStack) -> None:
    assert closed_stack.broker.tls_url is not None
    assert connack(closed_stack.broker.tls_url).is_failure


def test_the_plain_listener_can_be_turned_off(tmp_path_factory: pytest.TempPathFactory) -> None:
    from occ.embedded import EmbeddedBroker
    from occ.embedded.broker import mosquitto_path
    from occ.embedded.net import port_open
    from occ.embedded.tls import ensure_tls_files

    if mosquitto_path() is None:
        pytest.skip("mosquitto is not installed")
    folder = tmp_path_factory.mktemp("tls-only")
    folder.chmod(0o755)
    broker = EmbeddedBroker(folder / "broker", kind="mosquitto", tls=ensure_tls_files(folder / "tls"), plain=False)
    broker.start()
    try:
        assert broker.url.startswith("mqtts://") and broker.url == broker.tls_url
        conf = (broker.data_dir / "mosquitto.conf").read_text()
        assert [line for line in conf.splitlines() if line.startswith("listener")] == [
            f"listener {broker.tls_port} 127.0.0.1"]
        assert not port_open("127.0.0.1", broker.port)
    finally:
        broker.stop()
