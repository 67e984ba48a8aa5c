"""Reconnect discipline of the MQTT client (issue 11 item 10): refused and unreachable brokers are retried with
capped exponential backoff, logged once per state change, and a client stops promptly in any state."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from occ.bus import MqttClient
from occ.embedded import free_port
from occ.errors import BrokerUnavailable

REFUSED_CONNACK = bytes([0x20, 0x03, 0x00, 0x87, 0x00])  # MQTT 5 CONNACK, reason 0x87 "Not authorized"


async def test_a_refused_connect_backs_off_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """Before: every refusal was retried after 0.2 s (about 12 attempts in 2.5 s) with an error line each."""
    attempts = 0

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        await reader.read(1024)  # the CONNECT
        writer.write(REFUSED_CONNACK)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = MqttClient(f"mqtt://127.0.0.1:{port}", client_id="refused-test")
    caplog.set_level(logging.INFO, logger="occ.bus")
    try:
        await client.start(wait=False)
        await asyncio.sleep(2.5)
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
    # 0.1 · 2ⁿ with ±50 % jitter: at least 0.05 + 0.1 + 0.2 + 0.4 + 0.8 = 1.55 s for the first five waits.
    assert 2 <= attempts <= 7, attempts
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in caplog.records]
    assert not any(r.exc_info for r in caplog.records)
    assert client.last_error is not None and "Not authorized" in client.last_error


async def test_an_unreachable_broker_is_logged_once_and_start_says_why(caplog: pytest.LogCaptureFixture) -> None:
    """Before: `start` ended in a bare TimeoutError (a traceback for the user)."""
    port = free_port()
    client = MqttClient(f"mqtt://127.0.0.1:{port}", client_id="unreachable-test")
    caplog.set_level(logging.INFO, logger="occ.bus")
    try:
        with pytest.raises(BrokerUnavailable) as error:
            await client.start(wait=True, timeout=1.5)
    finally:
        await client.close()
    assert f"127.0.0.1:{port}" in str(error.value) and "refused" in str(error.value).lower()
    unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(unreachable) == 1, [r.getMessage() for r in caplog.records]


async def test_close_ends_a_client_that_is_still_connecting() -> None:
    """A TCP connect that hangs (a blackholed address) must not hold up close() or the interpreter's exit."""
    client = MqttClient("mqtt://10.255.255.1:1883", client_id="blackhole-test")
    await client.start(wait=False)
    await asyncio.sleep(0.3)
    began = time.monotonic()
    await client.close()
    assert time.monotonic() - began < 1.0
