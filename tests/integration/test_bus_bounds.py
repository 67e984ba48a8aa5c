"""The bus's outgoing queue is bounded (issue 11 item 8): past `max_outgoing`, `publish` refuses with paho's
MQTT_ERR_QUEUE_SIZE and queues nothing, whether the broker is away or the socket cannot take more."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import paho.mqtt.client as paho
import pytest

from occ.bus import MqttClient
from occ.embedded import EmbeddedBroker


async def test_publish_refuses_beyond_the_outgoing_bound_while_disconnected(mqtt_services_url: str) -> None:
    bus = MqttClient(mqtt_services_url, client_id=f"bound-{uuid.uuid4().hex[:8]}", max_outgoing=10)
    codes = [bus.publish("occ/v1/_sys/test/bound", b"x" * 100, qos=1).rc for _ in range(15)]
    assert codes[:10] == [paho.MQTT_ERR_NO_CONN] * 10  # held for sending once connected
    assert codes[10:] == [paho.MQTT_ERR_QUEUE_SIZE] * 5


@pytest.mark.parametrize("broker", ["mosquitto"], indirect=True)
async def test_publish_refuses_while_the_broker_does_not_read(broker: EmbeddedBroker) -> None:
    """The broker frozen (SIGSTOP): the socket's buffers fill, then the bound holds what waits in the process."""
    bus = MqttClient(broker.services_url, client_id=f"bound-{uuid.uuid4().hex[:8]}", max_outgoing=200)
    await bus.start(wait=True, timeout=10)
    pid = broker.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        payload = b"y" * 65536
        codes = []
        for _ in range(600):  # 37 MiB: more than loopback's socket buffers take
            codes.append(bus.publish("occ/v1/_sys/test/bound", payload, qos=0).rc)
            await asyncio.sleep(0)  # let the loop write what the socket takes
        refused = codes.count(paho.MQTT_ERR_QUEUE_SIZE)
        assert refused > 0 and bus.outgoing == 200, (refused, bus.outgoing)
        assert codes[-1] == paho.MQTT_ERR_QUEUE_SIZE
    finally:
        os.kill(pid, signal.SIGCONT)
        await bus.close()
