"""The sans-I/O MQTT 5 receive core without a broker: frame parsing table by table, keepalive on a fake clock, and
property-based round trips against the PUBLISH packets `simulators/wire.py` and paho build.

Contract under test (occ/mqtt/protocol.py): `receive_data` never raises; a malformed or oversized frame closes
the protocol with an `MqttProtocolError` carrying the MQTT 5 reason code, queues a DISCONNECT with that code, and
hands back the valid frames that came before it.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import paho.mqtt.client as paho
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from occ.errors import MqttProtocolError, OccError
from occ.mqtt.protocol import (
    PROPERTIES,
    Closed,
    ConnAck,
    MqttClientProtocol,
    Publish,
    State,
    SubAck,
    UnsubAck,
    decode_properties,
    encode_properties,
    encode_subscribe,
    encode_varint,
)
from simulators import wire

TOPIC = "occ/v1/hydromet/HG-T-001/telemetry"
CONNACK_OK = b"\x20\x03\x00\x00\x00"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def connected(**options: Any) -> MqttClientProtocol:
    options.setdefault("client_id", "t")
    proto = MqttClientProtocol(**options)
    proto.connect()
    proto.data_to_send()
    assert proto.receive_data(CONNACK_OK) == []
    assert proto.state is State.CONNECTED
    assert isinstance(proto.events_received()[0], ConnAck)
    return proto


def packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


def publish(topic: str = TOPIC, payload: bytes = b'{"rain_mm": 1}', *, qos: int = 1, packet_id: int = 1,
            dup: bool = False, retain: bool = False, props: bytes = b"\x00", raw_topic: bytes | None = None) -> bytes:
    name = raw_topic if raw_topic is not None else topic.encode()
    body = struct.pack("!H", len(name)) + name + (struct.pack("!H", packet_id) if qos else b"") + props + payload
    return packet(0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0), body)


def parsed(p: Publish) -> tuple[str, bytes, int, int, bool, bool]:
    return p.topic, bytes(p.payload), p.qos, p.packet_id, p.dup, p.retain


# -- variable byte integers ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, size", [(0, 1), (127, 1), (128, 2), (16383, 2), (16384, 3), (2097151, 3),
                                     (2097152, 4), (268435455, 4)])
def test_varint_boundaries_encode_minimally(n: int, size: int) -> None:
    assert len(encode_varint(n)) == size
    assert encode_varint(n) == wire.varint(n)


@pytest.mark.parametrize("remaining", [127, 128, 16383, 16384, 2097151, 2097152])
def test_remaining_length_at_varint_boundaries(remaining: int) -> None:
    proto = connected()
    overhead = 2 + len(TOPIC) + 2 + 1
    frame = publish(payload=b"x" * (remaining - overhead))
    assert frame[1:1 + len(encode_varint(remaining))] == encode_varint(remaining)
    (p,) = proto.receive_data(frame)
    assert len(p.payload) == remaining - overhead and p.topic == TOPIC


def test_largest_remaining_length_is_waited_for_and_a_smaller_maximum_refuses_it_at_once() -> None:
    header = b"\x32" + encode_varint(268435455)
    proto = connected()
    assert proto.receive_data(header + b"\x00") == [] and proto.state is State.CONNECTED
    small = connected(maximum_packet_size=1 << 20)
    assert small.receive_data(header) == []
    assert small.failure is not None and small.failure.reason_code == 0x95


@pytest.mark.parametrize("header, code", [
    (b"\x32\xff\xff\xff\xff\x01", 0x81),  # five bytes
    (b"\x32\x80\x00", 0x81),  # not minimal
])
def test_malformed_remaining_length(header: bytes, code: int) -> None:
    proto = connected()
    assert proto.receive_data(header + b"\x00" * 8) == []
    assert proto.failure is not None and proto.failure.reason_code == code


# -- properties ---------------------------------------------------------------------------------------------------

PROPERTY_CASES = [
    ("byte", {0x01: 1}),
    ("four-byte integer", {0x02: 4_294_967_295}),
    ("UTF-8 string", {0x03: "application/json; charset=utf-8 – Hà Giang"}),
    ("UTF-8 string", {0x08: "reply/to/me"}),
    ("binary data", {0x09: b"\x00\xff" * 100}),
    ("variable byte integer", {0x0B: [268_435_455]}),
    ("variable byte integer, repeated", {0x0B: [1, 128, 16384]}),
    ("UTF-8 string pair, repeated", {0x26: [("a", "b"), ("a", "c"), ("", "")]}),
    ("all PUBLISH properties", {0x01: 0, 0x02: 60, 0x03: "text/plain", 0x08: "r", 0x09: b"id", 0x0B: [7],
                                0x26: [("k", "v")]}),
]


@pytest.mark.parametrize("kind, props", PROPERTY_CASES, ids=[c[0] for c in PROPERTY_CASES])
def test_publish_properties_of_every_type(kind: str, props: dict[int, Any]) -> None:
    proto = connected()
    p, after = proto.receive_data(publish(props=encode_properties(props)) + publish(packet_id=2))
    assert p.properties == props and after.properties is None
    assert bytes(p.payload) == bytes(after.payload) == b'{"rain_mm": 1}'


def test_connack_properties_of_every_type_are_decoded_and_applied() -> None:
    props = {0x11: 3600, 0x12: "assigned-id", 0x13: 7, 0x21: 10, 0x22: 0, 0x24: 1, 0x25: 1, 0x26: [("x", "y")],
             0x27: 100_000, 0x28: 1, 0x29: 0, 0x2A: 1, 0x1F: "welcome", 0x1A: "info", 0x1C: "other-server",
             0x15: "SCRAM", 0x16: b"\x01"}
    proto = MqttClientProtocol(client_id="t")
    proto.connect()
    proto.receive_data(packet(0x20, b"\x01\x00" + encode_properties(props)))
    (ack,) = proto.events_received()
    assert ack == ConnAck(True, 0, props)
    assert proto.session_present and proto.keepalive_s == 7 and proto.server_maximum_packet_size == 100_000


def test_every_catalogued_property_round_trips() -> None:
    samples = {"byte": 1, "two-byte integer": 65535, "four-byte integer": 1 << 31, "variable byte integer": 300,
               "UTF-8 string": "ü", "binary data": b"\x00", "UTF-8 string pair": ("k", "v")}
    for pid, (_, kind) in PROPERTIES.items():
        value = samples[kind]
        if pid in (0x26, 0x0B):
            value = [value]
        encoded = encode_properties({pid: value})
        assert decode_properties(memoryview(encoded), 0, len(encoded)) == ({pid: value}, len(encoded))


# -- fragmented and coalesced reads -------------------------------------------------------------------------------

def test_byte_by_byte_and_coalesced_reads_give_the_same_frames() -> None:
    stream = packet(0x90, b"\x00\x01\x00\x01") + b"".join(
        publish(f"occ/v1/k/d{i}/telemetry", b"p" * i * 50, packet_id=i + 1, qos=i % 2) for i in range(40)
    ) + b"\xd0\x00"
    results = []
    one_by_one = [stream[i:i + 1] for i in range(len(stream))]
    for chunks in (one_by_one, [stream], [stream[:7], stream[7:3000], stream[3000:]]):
        proto = connected()
        assert proto.subscribe([("occ/v1/+/+/+", 1)]) == 1
        frames = [parsed(p) for chunk in chunks for p in proto.receive_data(chunk)]
        events = proto.events_received()
        assert proto.failure is None
        assert [type(e) for e in events] == [SubAck]
        results.append(frames)
    assert results[0] == results[1] == results[2]
    assert len(results[0]) == 40 and results[0][3] == ("occ/v1/k/d3/telemetry", b"p" * 150, 1, 4, False, False)


def test_payloads_are_views_of_the_read_buffer_until_copied() -> None:
    proto = connected()
    data = publish() + publish(packet_id=2)
    first, _ = proto.receive_data(data)
    assert isinstance(first.payload, memoryview) and first.payload.obj is data


# -- malformed and oversized frames -------------------------------------------------------------------------------

MALFORMED = [
    ("QoS 3", publish(qos=3), 0x81),
    ("QoS 2 on a QoS 1 subscription", publish(qos=2), 0x82),
    ("packet id 0", publish(packet_id=0), 0x82),
    ("DUP on QoS 0", publish(qos=0, dup=True), 0x81),
    ("topic past the end", packet(0x32, b"\x00\x50abc"), 0x81),
    ("no room for the topic length", packet(0x30, b"\x00"), 0x81),
    ("packet id missing", packet(0x32, b"\x00\x01a\x00"), 0x81),
    ("properties missing", packet(0x30, b"\x00\x01a"), 0x81),
    ("topic not UTF-8", publish(raw_topic=b"occ/\xff/x"), 0x81),
    ("wildcard in topic", publish("occ/v1/+/x/telemetry"), 0x81),
    ("U+0000 in topic", publish("occ/v1/\x00/x"), 0x81),
    ("empty topic", publish(""), 0x94),
    ("topic alias", publish(props=encode_properties({0x23: 1})), 0x94),
    ("unknown property", publish(props=b"\x02\x7f\x00"), 0x81),
    ("property repeated", publish(props=b"\x04\x01\x00\x01\x01"), 0x82),
    ("property truncated", publish(props=b"\x03\x02\x00\x00"), 0x81),
    ("properties past the end", packet(0x30, b"\x00\x01a\x09"), 0x81),
    ("string property not UTF-8", publish(props=b"\x05\x03\x00\x02\xc3\x28"), 0x81),
    ("reserved flags on SUBACK", packet(0x91, b"\x00\x01\x00\x01"), 0x81),
    ("SUBACK for an unknown id", packet(0x90, b"\x00\x09\x00\x01"), 0x82),
    ("PINGRESP with a body", packet(0xD0, b"\x00"), 0x81),
    ("PUBREL (QoS 2 flow)", packet(0x62, b"\x00\x01"), 0x82),
    ("AUTH", packet(0xF0, b"\x00"), 0x82),
    ("PUBACK to a subscriber", packet(0x40, b"\x00\x01"), 0x82),
    ("second CONNACK", CONNACK_OK, 0x82),
    ("packet id reused without DUP", publish(packet_id=1) + publish(packet_id=1), 0x82),
    ("receive maximum exceeded", publish(packet_id=1) + publish(packet_id=2) + publish(packet_id=3), 0x93),
    ("packet larger than the maximum", publish(payload=b"x" * 2000), 0x95),
]


@pytest.mark.parametrize("case, data, code", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_frames_close_with_a_reason_code_and_keep_what_came_before(case: str, data: bytes,
                                                                              code: int) -> None:
    proto = connected(receive_maximum=2, maximum_packet_size=1024)
    good = publish(packet_id=100)
    frames = proto.receive_data(good + data + publish(packet_id=101))
    assert [f.packet_id for f in frames][:1] == [100] and 101 not in [f.packet_id for f in frames]
    assert proto.state is State.CLOSED
    error = proto.failure
    assert isinstance(error, MqttProtocolError) and isinstance(error, OccError) and isinstance(error, ValueError)
    assert error.reason_code == code, error
    assert proto.data_to_send() == b"\xe0\x02" + bytes((code,)) + b"\x00"
    (closed,) = proto.events_received()
    assert closed == Closed(code, str(error), "client", error)
    assert proto.receive_data(publish(packet_id=5)) == []  # closed: nothing more is parsed
    assert proto.ack([100]) == 0


def test_publish_before_connack_and_bad_connack() -> None:
    for data, code in [(publish(), 0x82), (b"\x20\x02\x02\x00", 0x81), (b"\x20\x01\x00", 0x81)]:
        proto = MqttClientProtocol(client_id="t")
        proto.connect()
        proto.receive_data(data)
        assert proto.failure is not None and proto.failure.reason_code == code
    clean = MqttClientProtocol(client_id="t", clean_start=True)
    clean.connect()
    clean.receive_data(b"\x20\x03\x01\x00\x00")
    assert clean.failure is not None and clean.failure.reason_code == 0x82


def test_connection_refused_is_reported_not_raised() -> None:
    proto = MqttClientProtocol(client_id="t")
    proto.connect()
    proto.receive_data(packet(0x20, b"\x00\x87" + encode_properties({0x1F: "ACL"})))
    ack, closed = proto.events_received()
    assert isinstance(ack, ConnAck) and ack.reason_code == 0x87
    assert proto.state is State.CLOSED and proto.failure is None
    assert closed == Closed(0x87, "connection refused: not authorized: ACL", "server")


def test_server_disconnect_with_a_reason() -> None:
    proto = connected()
    frames = proto.receive_data(publish() + packet(0xE0, b"\x8b" + encode_properties({0x1F: "maintenance"})))
    assert len(frames) == 1
    assert proto.events_received() == [Closed(0x8B, "server shutting down: maintenance", "server")]
    assert proto.state is State.CLOSED and proto.failure is None and proto.data_to_send() == b""
    bare = connected()
    bare.receive_data(b"\xe0\x00")
    assert bare.events_received() == [Closed(0, "success", "server")]


# -- CONNECT, SUBSCRIBE, acks -------------------------------------------------------------------------------------

def test_connect_asks_for_a_persistent_bounded_session() -> None:
    proto = MqttClientProtocol(client_id="ingest-1", keepalive_s=30, session_expiry_s=604800, receive_maximum=500,
                               maximum_packet_size=2_000_000, username="u", password="p")
    proto.connect()
    data = proto.data_to_send()
    assert data[0] == 0x10
    body = memoryview(data)[2:]
    assert bytes(body[:7]) == b"\x00\x04MQTT\x05" and body[7] == 0xC0  # user, password; clean start off
    assert struct.unpack("!H", body[8:10])[0] == 30
    props, end = decode_properties(body, 10, len(body))
    assert props == {0x11: 604800, 0x21: 500, 0x27: 2_000_000}
    assert bytes(body[end:]) == b"\x00\x08ingest-1\x00\x01u\x00\x01p"


def test_shared_subscription_and_suback() -> None:
    proto = connected()
    pid = proto.subscribe([("$share/occ-ingest/occ/v1/+/+/+", 1)])
    assert proto.data_to_send() == encode_subscribe(pid, [("$share/occ-ingest/occ/v1/+/+/+", 1)])
    assert encode_subscribe(1, [("a", 1)])[-1] == 0x11  # QoS 1, retain handling 1, No Local off
    proto.receive_data(packet(0x90, struct.pack("!H", pid) + b"\x00\x01"))
    assert proto.events_received() == [SubAck(pid, (1,))]
    second = proto.subscribe([("x", 1)])
    proto.receive_data(packet(0x90, struct.pack("!H", second) + encode_properties({0x1F: "no"}) + b"\x9e"))
    (refused,) = proto.events_received()
    assert isinstance(refused, SubAck) and refused.failed and refused.reason_string == "no"


def test_acks_are_coalesced_in_order_and_only_for_unacked_ids_of_this_connection() -> None:
    proto = connected()
    frames = proto.receive_data(b"".join(publish(packet_id=i) for i in (5, 3, 9)) + publish(qos=0))
    assert [f.packet_id for f in frames] == [5, 3, 9, 0] and proto.inflight == 3
    assert proto.ack([5, 3, 42, 9, 3]) == 3
    assert proto.data_to_send() == b"\x40\x02\x00\x05\x40\x02\x00\x03\x40\x02\x00\x09"
    assert proto.inflight == 0 and proto.ack([5]) == 0 and proto.data_to_send() == b""


def test_resumed_session_redelivery_carries_dup_and_may_repeat_an_unacked_id() -> None:
    proto = MqttClientProtocol(client_id="t")
    proto.connect()
    frames = proto.receive_data(b"\x20\x03\x01\x00\x00" + publish(packet_id=7, dup=True)
                                + publish(packet_id=7, dup=True))
    assert proto.session_present and [(f.packet_id, f.dup) for f in frames] == [(7, True), (7, True)]
    assert proto.ack([7, 7]) == 1


def test_disconnect_keeps_the_session_or_ends_it() -> None:
    proto = connected()
    proto.disconnect()
    assert proto.data_to_send() == b"\xe0\x00" and proto.state is State.CLOSED
    ending = connected(session_expiry_s=3600)
    ending.disconnect(session_expiry_s=0)
    assert ending.data_to_send() == b"\xe0\x07\x00\x05\x11\x00\x00\x00\x00"
    with pytest.raises(ValueError):
        connected(session_expiry_s=0).disconnect(session_expiry_s=60)


def test_unsubscribe_and_unsuback() -> None:
    proto = connected()
    pid = proto.unsubscribe(["$share/g/a/+"])
    assert proto.data_to_send() == packet(0xA2, struct.pack("!H", pid) + b"\x00\x00\x0c$share/g/a/+")
    proto.receive_data(packet(0xB0, struct.pack("!H", pid) + b"\x00\x00"))
    assert proto.events_received() == [UnsubAck(pid, (0,))]
    proto.receive_data(packet(0xB0, struct.pack("!H", pid) + b"\x00\x00"))
    assert proto.failure is not None and proto.failure.reason_code == 0x82  # no such UNSUBSCRIBE pending


# -- keepalive ----------------------------------------------------------------------------------------------------

def test_keepalive_pings_when_idle_and_closes_without_pingresp() -> None:
    clock = FakeClock()
    proto = connected(keepalive_s=10, clock=clock)
    assert proto.tick() == 1010.0
    clock.now = 1010.0
    assert proto.tick() == 1020.0 and proto.data_to_send() == b"\xc0\x00"
    proto.receive_data(b"\xd0\x00")
    clock.now = 1015.0
    assert proto.tick() == 1020.0 and proto.data_to_send() == b""
    proto.ack([])  # sends nothing, so it does not count as traffic
    clock.now = 1020.0
    proto.tick()
    assert proto.data_to_send() == b"\xc0\x00"
    clock.now = 1030.0
    assert proto.tick() is None
    assert proto.failure is not None and proto.failure.reason_code == 0x8D
    assert proto.data_to_send() == b"\xe0\x02\x8d\x00"


def test_acks_count_as_traffic_and_paused_reading_is_not_a_timeout() -> None:
    clock = FakeClock()
    proto = connected(keepalive_s=10, clock=clock)
    proto.receive_data(publish())
    clock.now = 1009.0
    proto.ack([1])
    proto.data_to_send()
    clock.now = 1012.0
    assert proto.tick() == 1019.0 and proto.data_to_send() == b""
    clock.now = 1019.0
    proto.tick()
    assert proto.data_to_send() == b"\xc0\x00"
    proto.reading_paused = True  # no PINGRESP can be read now: none is awaited, but pings keep going out
    for step in range(1, 10):
        clock.now = 1019.0 + 10 * step
        assert proto.tick() == clock.now + 10
        assert proto.data_to_send() == b"\xc0\x00"
    assert proto.state is State.CONNECTED
    proto.reading_paused = False
    clock.now += 5
    proto.tick()
    clock.now += 5
    assert proto.tick() is None and proto.failure is not None  # judged again once reading resumed


def test_server_keep_alive_replaces_ours_and_zero_disables() -> None:
    proto = MqttClientProtocol(client_id="t", keepalive_s=60)
    proto.connect()
    proto.receive_data(packet(0x20, b"\x00\x00" + encode_properties({0x13: 0})))
    assert proto.keepalive_s == 0 and proto.tick() is None


# -- property-based round trips -----------------------------------------------------------------------------------

topics = st.text(st.characters(blacklist_characters="+#\x00", blacklist_categories=["Cs"]), min_size=1,
                 max_size=60).filter(lambda t: len(t.encode()) <= 65535)
messages = st.lists(st.tuples(topics, st.binary(max_size=3000), st.sampled_from([0, 1]), st.booleans()),
                    min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(messages, st.lists(st.integers(1, 10_000), max_size=8))
def test_round_trip_against_wire_publish_with_any_split(batch: list[tuple[str, bytes, int, bool]],
                                                        cuts: list[int]) -> None:
    stream = b"".join(wire.publish(wire.topic_field(t), payload, qos, retain, i + 1, v5=True)
                      for i, (t, payload, qos, retain) in enumerate(batch))
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    proto = connected()
    frames = [parsed(p) for chunk in chunks for p in proto.receive_data(chunk)]
    assert proto.failure is None
    assert frames == [(t, payload, qos, i + 1 if qos else 0, False, retain)
                      for i, (t, payload, qos, retain) in enumerate(batch)]


class PahoCapture:
    """A paho MQTT 5 client connected to a socket we hold: whatever paho publishes, we read as bytes."""

    def __init__(self) -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="capture", protocol=paho.MQTTv5)
        self.client.max_inflight_messages_set(65535)
        self.client.connect("127.0.0.1", listener.getsockname()[1])
        self.server, _ = listener.accept()
        listener.close()
        self.server.settimeout(5)
        self.buffer = bytearray()
        self.next_packet()  # CONNECT
        self.server.sendall(CONNACK_OK)
        self.client.loop_read()

    def next_packet(self) -> bytes:
        while True:
            if len(self.buffer) >= 2:
                length, shift, i = 0, 0, 1
                while i < len(self.buffer):
                    length |= (self.buffer[i] & 0x7F) << shift
                    shift += 7
                    i += 1
                    if not self.buffer[i - 1] & 0x80:
                        break
                if len(self.buffer) >= i + length and not self.buffer[i - 1] & 0x80:
                    frame = bytes(self.buffer[: i + length])
                    del self.buffer[: i + length]
                    return frame
            self.buffer += self.server.recv(65536)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool, props: Properties | None) -> bytes:
        self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        while self.client.want_write():
            self.client.loop_write()
        return self.next_packet()


_capture: list[PahoCapture] = []

paho_properties = st.fixed_dictionaries({}, optional={
    "PayloadFormatIndicator": st.sampled_from([0, 1]),
    "MessageExpiryInterval": st.integers(0, 2**32 - 1),
    "ContentType": topics,
    "ResponseTopic": topics,
    "CorrelationData": st.binary(min_size=1, max_size=100),
    "UserProperty": st.lists(st.tuples(topics, topics), min_size=1, max_size=3),
})
PAHO_IDS = {"PayloadFormatIndicator": 0x01, "MessageExpiryInterval": 0x02, "ContentType": 0x03,
            "ResponseTopic": 0x08, "CorrelationData": 0x09, "UserProperty": 0x26}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topics, st.binary(max_size=5000), st.sampled_from([0, 1]), st.booleans(), paho_properties)
def test_round_trip_against_paho_publish(topic: str, payload: bytes, qos: int, retain: bool,
                                         fields: dict[str, Any]) -> None:
    if not _capture:
        _capture.append(PahoCapture())
    capture = _capture[0]
    props = None
    if fields:
        props = Properties(PacketTypes.PUBLISH)
        for name, value in fields.items():
            if name == "UserProperty":
                for pair in value:
                    props.UserProperty = pair
            else:
                setattr(props, name, value)
    frame = capture.publish(topic, payload, qos, retain, props)
    proto = connected()
    (p,) = proto.receive_data(frame)
    assert proto.failure is None
    assert (p.topic, bytes(p.payload), p.qos, p.retain, p.dup) == (topic, payload, qos, retain, False)
    assert (p.packet_id != 0) == bool(qos)
    expected = {PAHO_IDS[name]: value for name, value in fields.items()}
    if 0x26 in expected:
        expected[0x26] = [tuple(pair) for pair in expected[0x26]]
    assert (p.properties or {}) == expected


@pytest.fixture(scope="module", autouse=True)
def _close_capture() -> Any:
    yield
    for capture in _capture:
        capture.server.close()
        capture.client.socket().close()  # type: ignore[union-attr]
    _capture.clear()
