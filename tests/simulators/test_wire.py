"""The lean MQTT publisher: packet encoding, parsing split reads, and surviving a broker restart."""

from __future__ import annotations

import struct
import time
import uuid

import pytest
from simhelpers import Subscriber, clear_retained

from occ.embedded import EmbeddedBroker
from simulators import wire
from simulators.publisher import MqttOutput, parse_mqtt_url


@pytest.mark.parametrize("n", [0, 1, 127, 128, 16383, 16384, 2097151, 2097152, 268435455])
def test_varint(n: int) -> None:
    encoded = wire.varint(n)
    value, shift = 0, 0
    for byte in encoded:
        value |= (byte & 0x7F) << shift
        shift += 7
    assert value == n and len(encoded) == (1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4)


def test_publish_packet_layout() -> None:
    field = wire.topic_field("occ/v1/hydromet/HG-BQ-RG01/telemetry")
    packet = wire.publish(field, b"x" * 200, 1, True, packet_id=513)
    assert packet[0] == 0x33  # PUBLISH, QoS 1, retain
    assert packet[1:3] == wire.varint(len(packet) - 3)
    topic_len = struct.unpack("!H", packet[3:5])[0]
    assert packet[5:5 + topic_len] == b"occ/v1/hydromet/HG-BQ-RG01/telemetry"
    assert struct.unpack("!H", packet[5 + topic_len:7 + topic_len])[0] == 513
    assert packet.endswith(b"x" * 200)
    v5 = wire.publish(field, b"{}", 0, False, v5=True)
    assert v5[0] == 0x30 and v5[2 + 2 + topic_len] == 0  # empty property length
    with pytest.raises(ValueError):
        wire.topic_field("occ/v1/+/x/telemetry")


def test_connect_packet_carries_will_and_credentials() -> None:
    packet = wire.connect("dev-1", keepalive=60, will=("a/b/status", b"offline", 1, True), username="u",
                          password="p")
    assert packet[0] == 0x10
    body = packet[2:]
    assert body[:6] == b"\x00\x04MQTT" and body[6] == 4
    assert body[7] == 0x02 | 0x04 | 0x08 | 0x20 | 0x80 | 0x40
    assert b"dev-1" in body and b"a/b/status" in body and b"offline" in body


def test_packets_from_split_reads() -> None:
    stream = b"".join(bytes((0x40, 2)) + struct.pack("!H", i) for i in range(1, 50)) + b"\xd0\x00"
    buffer = bytearray()
    seen: list[tuple[int, bytes]] = []
    for cut in range(0, len(stream), 7):  # arrive in odd-sized pieces
        buffer += stream[cut:cut + 7]
        seen.extend(wire.packets(buffer))
    assert [b for f, b in seen if f == 0x40] == [struct.pack("!H", i) for i in range(1, 50)]
    assert seen[-1] == (0xD0, b"") and not buffer


@pytest.mark.parametrize("transport", ["raw", "paho"])
def test_qos1_survives_a_broker_restart(broker: EmbeddedBroker, transport: str) -> None:
    address = parse_mqtt_url(broker.url)
    prefix = f"simtest-{uuid.uuid4().hex[:8]}"
    out = MqttOutput(address, connections=1, client_prefix=prefix, topic_prefix=prefix, transport=transport)
    out.start()
    broker.stop()
    deadline = time.monotonic() + 10
    while out.links[0].connected and time.monotonic() < deadline:
        out.pump(0.05)
    assert not out.links[0].connected
    for i in range(200):  # published while the broker is down: held, not lost
        out.publish(out.links[0], f"{prefix}/hydromet/D{i}/telemetry", b'{"values":{"rain_mm":%d}}' % i, 1, False)
    broker.start()
    sub = Subscriber(broker.url, f"{prefix}/hydromet/#")
    try:
        assert out.flush(timeout=30), "backlog not delivered after the broker came back"
        assert sub.wait_for(lambda got: len({t for t, _, _ in got}) >= 200, timeout=20)
    finally:
        sub.close()
        out.close(1.0)


def test_paho_can_read_what_the_raw_link_writes(mqtt_url: str) -> None:
    """A paho subscriber decodes our packets: retained flag, QoS 1 and large payloads survive."""
    prefix = f"simtest-{uuid.uuid4().hex[:8]}"
    out = MqttOutput(parse_mqtt_url(mqtt_url), connections=2, client_prefix=prefix, topic_prefix=prefix)
    out.start()
    sub = Subscriber(mqtt_url, f"{prefix}/x/#")
    big = b"[" + b",".join(b'{"ts":1,"values":{"rain_mm":0.2}}' for _ in range(3000)) + b"]"
    try:
        out.publish(out.links[0], f"{prefix}/x/a/telemetry", big, 1, False)
        out.publish(out.links[1], f"{prefix}/x/b/status", b"online", 1, True)
        out.publish(out.links[1], f"{prefix}/x/c/telemetry", b"{}", 0, False)
        assert out.flush(10)
        assert sub.wait_for(lambda got: len(got) == 3)
        got = {t: (p, r) for t, p, r in sub.snapshot()}
        assert got[f"{prefix}/x/a/telemetry"][0] == big
        assert got[f"{prefix}/x/b/status"] == (b"online", False)  # retained flag is cleared for live delivery
    finally:
        sub.close()
        out.close(1.0)
    clear_retained(mqtt_url, [f"{prefix}/x/b/status", f"occ/sim/{prefix}-0/status", f"occ/sim/{prefix}-1/status"])
