"""The embedded servers `occ up` and the tests rely on: they start, accept clients and stop cleanly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import paho.mqtt.client as mqtt

from occ.embedded import EmbeddedBroker, EmbeddedPostgres
from occ.embedded.net import port_open


async def test_embedded_postgres_restarts_and_keeps_data(work_dir: Path) -> None:
    server = EmbeddedPostgres(work_dir / "pg-restart", durable=False)
    server.start()
    try:
        conn = await asyncpg.connect(server.url)
        await conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
        await conn.close()
        server.stop()
        assert not port_open("127.0.0.1", server.port)
        server.start()
        conn = await asyncpg.connect(server.url)
        assert await conn.fetchval("SELECT x FROM kept") == 42
        await conn.close()
    finally:
        server.destroy()
    assert not port_open("127.0.0.1", server.port)


def _roundtrip(url: str, protocol: mqtt.MQTTProtocolVersion) -> bytes:
    port = int(url.rsplit(":", 1)[1])
    received: list[bytes] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-sub-{protocol}", protocol=protocol)
    sub.on_message = lambda c, u, m: received.append(bytes(m.payload))
    sub.connect("127.0.0.1", port)
    sub.subscribe("occ/test/roundtrip", qos=1)
    sub.loop_start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-pub-{protocol}", protocol=protocol)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    try:
        import time

        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            pub.publish("occ/test/roundtrip", b"hello", qos=1).wait_for_publish(5)
            time.sleep(0.2)
    finally:
        pub.loop_stop()
        sub.loop_stop()
        pub.disconnect()
        sub.disconnect()
    return received[0] if received else b""


async def test_embedded_broker_routes_v311_and_v5(broker: EmbeddedBroker) -> None:
    assert await asyncio.to_thread(_roundtrip, broker.url, mqtt.MQTTv311) == b"hello"
    assert await asyncio.to_thread(_roundtrip, broker.services_url, mqtt.MQTTv5) == b"hello"
    broker.stop()
    assert not broker.running()
    assert not port_open("127.0.0.1", broker.port)
