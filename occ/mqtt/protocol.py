"""A sans-I/O MQTT 5 client for the receive hot path: bytes in, PUBLISH frames and events out, bytes to send.

Why it exists (issue 8): paho's receive path was 45–66 % of ingest CPU (bench/README.md). It reads each packet
in several small pieces and builds a message object with a callback per packet. Here one buffer from one large
`recv()` is parsed in bulk: each PUBLISH becomes a `Publish` whose payload is a `memoryview` slice of that
buffer (no copy until a consumer needs one), and the acknowledgements for a committed batch go out as one
`bytes` object, PUBACKs in the order given.

Scope is what ingest needs and no more: CONNECT (clean start off, session expiry, receive maximum, maximum
packet size), SUBSCRIBE (shared subscriptions included), QoS 0/1 receive with manual PUBACK, PINGREQ keepalive,
server DISCONNECT with a reason, session resumption (redelivered messages carry DUP). Publishing is left to
paho (`occ.bus`), which the publishing services keep using.

Contract, in the style of `websockets.protocol`: no I/O and no clock of its own (the clock is injected).
`receive_data()` never raises: a malformed, oversized or out-of-order packet closes the protocol with an
`MqttProtocolError` in `failure`, queues a DISCONNECT with the matching MQTT 5 reason code, and returns the
valid PUBLISH frames that preceded it. The transport then sends `data_to_send()`, closes the socket and
reconnects. Section numbers below refer to the MQTT 5.0 OASIS standard.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final

from occ.errors import MqttProtocolError

log = logging.getLogger(__name__)

__all__ = [
    "PROPERTIES",
    "Closed",
    "ConnAck",
    "MqttClientProtocol",
    "MqttProtocolError",
    "Publish",
    "State",
    "SubAck",
    "UnsubAck",
    "decode_properties",
    "encode_connect",
    "encode_properties",
    "encode_subscribe",
    "encode_varint",
]

# Packet types (§2.1.2), as the high nibble of the first byte.
CONNECT: Final = 1
CONNACK: Final = 2
PUBLISH: Final = 3
PUBACK: Final = 4
SUBSCRIBE: Final = 8
SUBACK: Final = 9
UNSUBSCRIBE: Final = 10
UNSUBACK: Final = 11
PINGREQ: Final = 12
PINGRESP: Final = 13
DISCONNECT: Final = 14

# Reason codes (§2.4) this client sends or reacts to.
SUCCESS: Final = 0x00
MALFORMED_PACKET: Final = 0x81
PROTOCOL_ERROR: Final = 0x82
KEEP_ALIVE_TIMEOUT: Final = 0x8D
RECEIVE_MAXIMUM_EXCEEDED: Final = 0x93
TOPIC_ALIAS_INVALID: Final = 0x94
PACKET_TOO_LARGE: Final = 0x95

REASONS: Final = {
    0x00: "success", 0x04: "disconnect with will message", 0x80: "unspecified error",
    0x81: "malformed packet", 0x82: "protocol error", 0x83: "implementation specific error",
    0x84: "unsupported protocol version", 0x85: "client identifier not valid", 0x86: "bad user name or password",
    0x87: "not authorized", 0x88: "server unavailable", 0x89: "server busy", 0x8A: "banned",
    0x8B: "server shutting down", 0x8C: "bad authentication method", 0x8D: "keep alive timeout",
    0x8E: "session taken over", 0x8F: "topic filter invalid", 0x90: "topic name invalid",
    0x93: "receive maximum exceeded", 0x94: "topic alias invalid", 0x95: "packet too large",
    0x96: "message rate too high", 0x97: "quota exceeded", 0x98: "administrative action",
    0x99: "payload format invalid", 0x9A: "retain not supported", 0x9B: "QoS not supported",
    0x9C: "use another server", 0x9D: "server moved", 0x9E: "shared subscriptions not supported",
    0x9F: "connection rate exceeded", 0xA0: "maximum connect time", 0xA1: "subscription identifiers not supported",
    0xA2: "wildcard subscriptions not supported",
}

# Property value types (§2.2.2.2, §1.5).
BYTE: Final = "byte"
TWO: Final = "two-byte integer"
FOUR: Final = "four-byte integer"
VARINT: Final = "variable byte integer"
UTF8: Final = "UTF-8 string"
BINARY: Final = "binary data"
PAIR: Final = "UTF-8 string pair"

PROPERTIES: Final[dict[int, tuple[str, str]]] = {
    0x01: ("payload_format_indicator", BYTE),
    0x02: ("message_expiry_interval", FOUR),
    0x03: ("content_type", UTF8),
    0x08: ("response_topic", UTF8),
    0x09: ("correlation_data", BINARY),
    0x0B: ("subscription_identifier", VARINT),
    0x11: ("session_expiry_interval", FOUR),
    0x12: ("assigned_client_identifier", UTF8),
    0x13: ("server_keep_alive", TWO),
    0x15: ("authentication_method", UTF8),
    0x16: ("authentication_data", BINARY),
    0x17: ("request_problem_information", BYTE),
    0x18: ("will_delay_interval", FOUR),
    0x19: ("request_response_information", BYTE),
    0x1A: ("response_information", UTF8),
    0x1C: ("server_reference", UTF8),
    0x1F: ("reason_string", UTF8),
    0x21: ("receive_maximum", TWO),
    0x22: ("topic_alias_maximum", TWO),
    0x23: ("topic_alias", TWO),
    0x24: ("maximum_qos", BYTE),
    0x25: ("retain_available", BYTE),
    0x26: ("user_property", PAIR),
    0x27: ("maximum_packet_size", FOUR),
    0x28: ("wildcard_subscription_available", BYTE),
    0x29: ("subscription_identifier_available", BYTE),
    0x2A: ("shared_subscription_available", BYTE),
}
PROPERTY_IDS: Final = {name: pid for pid, (name, _) in PROPERTIES.items()}
REPEATABLE: Final = frozenset((0x26, 0x0B))  # user properties; subscription ids in a PUBLISH (§3.3.2.3.8)

MAX_VARINT: Final = 268_435_455  # four bytes of seven bits (§1.5.5)
MAX_PACKET_SIZE: Final = MAX_VARINT + 5
_PUBACK_BASE: Final = 0x4002_0000  # 0x40 (PUBACK), remaining length 2, then the packet id (§3.4.2.1)
_PINGREQ: Final = b"\xc0\x00"
TOPIC_CACHE_MAX: Final = 65_536
"""Decoded, validated topic names kept per connection: a fleet sends the same topics over and over, and a
dictionary hit costs less than decoding and checking the name again (cleared when full: bounded memory)."""


# -- encoding (what the client sends, plus properties for tests) --------------------------------------------------

def encode_varint(n: int) -> bytes:
    """A variable byte integer (§1.5.5): seven bits per byte, least significant first, minimal length."""
    if not 0 <= n <= MAX_VARINT:
        raise ValueError(f"variable byte integer out of range: {n}")
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _utf8(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("UTF-8 string longer than 65,535 bytes")
    return struct.pack("!H", len(raw)) + raw


def _binary(value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError("binary data longer than 65,535 bytes")
    return struct.pack("!H", len(value)) + bytes(value)


def encode_properties(properties: dict[int, Any] | None) -> bytes:
    """Properties (§2.2.2) with their length prefix; repeatable ones (user property, subscription id) take lists."""
    if not properties:
        return b"\x00"
    body = bytearray()
    for pid, value in properties.items():
        kind = PROPERTIES[pid][1]
        values = value if pid in REPEATABLE and isinstance(value, list) else [value]
        for item in values:
            body += encode_varint(pid)
            if kind == BYTE:
                body.append(item)
            elif kind == TWO:
                body += struct.pack("!H", item)
            elif kind == FOUR:
                body += struct.pack("!I", item)
            elif kind == VARINT:
                body += encode_varint(item)
            elif kind == UTF8:
                body += _utf8(item)
            elif kind == BINARY:
                body += _binary(item)
            else:
                body += _utf8(item[0]) + _utf8(item[1])
    return encode_varint(len(body)) + bytes(body)


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


def encode_connect(client_id: str, *, keepalive_s: int, clean_start: bool, session_expiry_s: int,
                   receive_maximum: int, maximum_packet_size: int, username: str | None = None,
                   password: str | None = None) -> bytes:
    """CONNECT (§3.1) for MQTT 5 with the properties a persistent, bounded receiver needs."""
    flags = (0x02 if clean_start else 0) | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    props: dict[int, Any] = {0x21: receive_maximum, 0x27: maximum_packet_size}
    if session_expiry_s:
        props[0x11] = session_expiry_s
    body = _utf8("MQTT") + bytes((5, flags)) + struct.pack("!H", keepalive_s) + encode_properties(props)
    body += _utf8(client_id)
    if username is not None:
        body += _utf8(username)
    if password is not None:
        body += _binary(password.encode("utf-8"))
    return _packet(CONNECT << 4, body)


def encode_subscribe(packet_id: int, filters: Sequence[tuple[str, int]], *, retain_handling: int = 1) -> bytes:
    """SUBSCRIBE (§3.8); retain handling 1 sends retained messages only for a new subscription, so a reconnect
    does not replay them. No Local stays 0: it is a protocol error on a shared subscription (§3.8.3.1)."""
    body = struct.pack("!H", packet_id) + b"\x00"
    for topic_filter, qos in filters:
        body += _utf8(topic_filter) + bytes((qos | (retain_handling << 4),))
    return _packet(0x82, body)


def encode_unsubscribe(packet_id: int, filters: Sequence[str]) -> bytes:
    """UNSUBSCRIBE (§3.10)."""
    return _packet(0xA2, struct.pack("!H", packet_id) + b"\x00" + b"".join(_utf8(f) for f in filters))


def encode_puback(packet_ids: Sequence[int]) -> bytes:
    """PUBACKs with reason 0 and no properties, two bytes each after the fixed header (§3.4.2.1), in order."""
    return struct.pack(f">{len(packet_ids)}I", *[_PUBACK_BASE | pid for pid in packet_ids])


def encode_disconnect(reason_code: int = SUCCESS, *, session_expiry_s: int | None = None) -> bytes:
    """DISCONNECT (§3.14); `session_expiry_s` replaces the CONNECT value (0 ends the session now)."""
    if session_expiry_s is not None:
        return _packet(0xE0, bytes((reason_code,)) + encode_properties({0x11: session_expiry_s}))
    return b"\xe0\x00" if reason_code == SUCCESS else b"\xe0\x02" + bytes((reason_code,)) + b"\x00"


# -- decoding ----------------------------------------------------------------------------------------------------

def _varint(buf: bytes | memoryview, pos: int, end: int) -> tuple[int, int]:
    """(value, position after it); value -1 when the buffer ends inside it. Raises on a malformed integer."""
    value = 0
    shift = 0
    start = pos
    while True:
        if pos >= end:
            return -1, pos
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and pos - start > 1:
                raise MqttProtocolError("variable byte integer not minimally encoded", MALFORMED_PACKET)
            return value, pos
        shift += 7
        if shift > 21:
            raise MqttProtocolError("variable byte integer longer than four bytes", MALFORMED_PACKET)


def _string(buf: memoryview, pos: int, end: int, what: str) -> tuple[str, int]:
    if pos + 2 > end:
        raise MqttProtocolError(f"{what} runs past the end of its packet", MALFORMED_PACKET)
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise MqttProtocolError(f"{what} runs past the end of its packet", MALFORMED_PACKET)
    try:
        text = str(buf[pos + 2 : stop], "utf-8")
    except UnicodeDecodeError:
        raise MqttProtocolError(f"{what} is not valid UTF-8", MALFORMED_PACKET) from None
    if "\x00" in text:
        raise MqttProtocolError(f"{what} contains U+0000", MALFORMED_PACKET)
    return text, stop


def decode_properties(buf: memoryview, pos: int, end: int) -> tuple[dict[int, Any], int]:
    """Properties at `pos` (length prefix included) → ({id: value}, position after them).

    User properties and subscription identifiers are lists (they may repeat); any other repeated property is a
    protocol error (§2.2.2.2). Raises `MqttProtocolError` on anything malformed."""
    length, pos = _varint(buf, pos, end)
    stop = pos + length
    if length < 0 or stop > end:
        raise MqttProtocolError("properties run past the end of their packet", MALFORMED_PACKET)
    props: dict[int, Any] = {}
    while pos < stop:
        pid, pos = _varint(buf, pos, stop)
        if pid < 0:
            raise MqttProtocolError("property identifier runs past the properties", MALFORMED_PACKET)
        spec = PROPERTIES.get(pid)
        if spec is None:
            raise MqttProtocolError(f"unknown property identifier 0x{pid:02x}", MALFORMED_PACKET)
        name, kind = spec
        value: Any
        if kind == BYTE:
            if pos + 1 > stop:
                raise MqttProtocolError(f"property {name} runs past the properties", MALFORMED_PACKET)
            value = buf[pos]
            pos += 1
        elif kind == TWO:
            if pos + 2 > stop:
                raise MqttProtocolError(f"property {name} runs past the properties", MALFORMED_PACKET)
            value = (buf[pos] << 8) | buf[pos + 1]
            pos += 2
        elif kind == FOUR:
            if pos + 4 > stop:
                raise MqttProtocolError(f"property {name} runs past the properties", MALFORMED_PACKET)
            value = int.from_bytes(buf[pos : pos + 4], "big")
            pos += 4
        elif kind == VARINT:
            value, pos = _varint(buf, pos, stop)
            if value < 0:
                raise MqttProtocolError(f"property {name} runs past the properties", MALFORMED_PACKET)
        elif kind == UTF8:
            value, pos = _string(buf, pos, stop, f"property {name}")
        elif kind == BINARY:
            if pos + 2 > stop or pos + 2 + ((buf[pos] << 8) | buf[pos + 1]) > stop:
                raise MqttProtocolError(f"property {name} runs past the properties", MALFORMED_PACKET)
            n = (buf[pos] << 8) | buf[pos + 1]
            value = bytes(buf[pos + 2 : pos + 2 + n])
            pos += 2 + n
        else:
            key, pos = _string(buf, pos, stop, f"property {name}")
            val, pos = _string(buf, pos, stop, f"property {name}")
            value = (key, val)
        if pid in REPEATABLE:
            props.setdefault(pid, []).append(value)
        elif pid in props:
            raise MqttProtocolError(f"property {name} appears more than once", PROTOCOL_ERROR)
        else:
            props[pid] = value
    return props, stop


# -- events ------------------------------------------------------------------------------------------------------

@dataclass(slots=True)
class Publish:
    """One received PUBLISH. `payload` is a view into the receive buffer: copy it (`bytes(p.payload)`) to keep it
    beyond the batch. `packet_id` is 0 for QoS 0. `properties` is None when the packet carried none."""

    topic: str
    payload: memoryview
    qos: int
    packet_id: int
    dup: bool
    retain: bool
    properties: dict[int, Any] | None = None


@dataclass(frozen=True, slots=True)
class ConnAck:
    session_present: bool
    reason_code: int
    properties: dict[int, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SubAck:
    packet_id: int
    reason_codes: tuple[int, ...]
    reason_string: str | None = None

    @property
    def failed(self) -> bool:
        return any(code >= 0x80 for code in self.reason_codes)


@dataclass(frozen=True, slots=True)
class UnsubAck:
    packet_id: int
    reason_codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection is over: refused, disconnected by the server, timed out, or ended by a protocol error.

    `initiator` is "server" (CONNACK refusal or DISCONNECT), "client" (our DISCONNECT, including protocol errors
    and keepalive timeouts) or "transport" (the socket closed under us)."""

    reason_code: int
    reason: str
    initiator: str
    error: MqttProtocolError | None = None


Event = ConnAck | SubAck | UnsubAck | Closed


class State(Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


# -- the protocol ------------------------------------------------------------------------------------------------

class MqttClientProtocol:
    """One MQTT 5 client connection as a state machine. Create one per TCP connection.

    Use: `connect()`, send `data_to_send()`; feed every received chunk to `receive_data()` (PUBLISH frames come
    back); read `events_received()` for CONNACK/SUBACK/close; `ack(packet_ids)` after committing; call
    `tick()` at the deadline it returns (keepalive). Nothing here blocks or reads a clock except `clock`.
    """

    def __init__(
        self,
        *,
        client_id: str,
        keepalive_s: int = 30,
        clean_start: bool = False,
        session_expiry_s: int = 0,
        receive_maximum: int = 65535,
        maximum_packet_size: int = MAX_PACKET_SIZE,
        username: str | None = None,
        password: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= receive_maximum <= 65535:
            raise ValueError("receive_maximum must be 1..65535 (§3.1.2.11.3)")
        if not 2 <= maximum_packet_size <= MAX_PACKET_SIZE:
            raise ValueError(f"maximum_packet_size must be 2..{MAX_PACKET_SIZE}")
        self.client_id = client_id
        self.keepalive_s = keepalive_s
        self.clean_start = clean_start
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        self.maximum_packet_size = maximum_packet_size
        self._username = username
        self._password = password
        self._clock = clock
        self._state = State.IDLE
        self.failure: MqttProtocolError | None = None
        self.closed: Closed | None = None
        """Why the connection ended, once it has."""
        self.session_present = False
        self.server_properties: dict[int, Any] = {}
        self.server_maximum_packet_size = MAX_PACKET_SIZE
        self.reading_paused = False
        """Set by the transport while it does not read: no bytes can arrive, so no PINGRESP timeout is judged."""
        self._out: list[bytes] = []
        self._events: list[Event] = []
        self._inflight: set[int] = set()
        self._pending_subs: set[int] = set()
        self._next_packet_id = 1
        self._topics: dict[bytes, str] = {}
        self._partial: list[bytes] = []
        self._partial_len = 0
        self._need = 0
        now = clock()
        self._last_sent = now
        self._last_received = now
        self._ping_sent_at: float | None = None

    # -- state --------------------------------------------------------------------------------------------------
    @property
    def state(self) -> State:
        return self._state

    def _set_state(self, state: State) -> None:
        if state is not self._state:
            log.debug("mqtt client=%s state=%s→%s", self.client_id, self._state.value, state.value)
            self._state = state

    @property
    def inflight(self) -> int:
        """QoS 1 messages received and not yet acknowledged on this connection."""
        return len(self._inflight)

    # -- outgoing -----------------------------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        self._out.append(data)
        self._last_sent = self._clock()

    def connect(self) -> None:
        if self._state is not State.IDLE:
            raise RuntimeError("connect() is called once per connection")
        self._send(encode_connect(
            self.client_id, keepalive_s=self.keepalive_s, clean_start=self.clean_start,
            session_expiry_s=self.session_expiry_s, receive_maximum=self.receive_maximum,
            maximum_packet_size=self.maximum_packet_size, username=self._username, password=self._password,
        ))
        self._set_state(State.CONNECTING)

    def subscribe(self, filters: Sequence[tuple[str, int]]) -> int:
        """Queue one SUBSCRIBE; returns its packet id (the SubAck event carries it)."""
        if self._state is not State.CONNECTED:
            raise RuntimeError(f"subscribe() while {self._state.value}")
        packet_id = self._next_packet_id
        self._next_packet_id = packet_id % 65535 + 1
        packet = encode_subscribe(packet_id, filters)
        if len(packet) > self.server_maximum_packet_size:
            raise ValueError("SUBSCRIBE larger than the server's maximum packet size")
        self._pending_subs.add(packet_id)
        self._send(packet)
        return packet_id

    def unsubscribe(self, filters: Sequence[str]) -> int:
        """Queue one UNSUBSCRIBE; returns its packet id (the UnsubAck event carries it)."""
        if self._state is not State.CONNECTED:
            raise RuntimeError(f"unsubscribe() while {self._state.value}")
        packet_id = self._next_packet_id
        self._next_packet_id = packet_id % 65535 + 1
        self._pending_subs.add(packet_id)
        self._send(encode_unsubscribe(packet_id, filters))
        return packet_id

    def ack(self, packet_ids: Iterable[int]) -> int:
        """Queue PUBACKs, in the order given, for packet ids received on this connection and not yet acked;
        others (already acked, or from an earlier connection) are skipped. Returns how many were queued."""
        if self._state is not State.CONNECTED:
            return 0
        inflight = self._inflight
        acked = []
        for pid in packet_ids:
            if pid in inflight:
                inflight.remove(pid)
                acked.append(pid)
        if acked:
            self._send(encode_puback(acked))
        return len(acked)

    def disconnect(self, reason_code: int = SUCCESS, *, session_expiry_s: int | None = None) -> None:
        """A client DISCONNECT. The session stays on the server for `session_expiry_s` (the CONNECT value unless
        given here; 0 ends it now). A session opened with expiry 0 cannot be extended (§3.14.2.2.2)."""
        if session_expiry_s and not self.session_expiry_s:
            raise ValueError("a session opened with expiry 0 cannot be given one at DISCONNECT")
        if self._state in (State.CONNECTING, State.CONNECTED):
            self._send(encode_disconnect(reason_code, session_expiry_s=session_expiry_s))
            self._close(Closed(reason_code, REASONS.get(reason_code, "disconnect"), "client"))

    def connection_lost(self, reason: str = "connection closed") -> None:
        """The transport lost the socket."""
        if self._state is not State.CLOSED:
            self._close(Closed(PROTOCOL_ERROR if self._state is State.CONNECTING else SUCCESS, reason, "transport"))

    def data_to_send(self) -> bytes:
        """Everything queued for the socket, as one write."""
        out = self._out
        if not out:
            return b""
        self._out = []
        return out[0] if len(out) == 1 else b"".join(out)

    @property
    def events_pending(self) -> bool:
        return bool(self._events)

    def events_received(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def tick(self) -> float | None:
        """Keepalive (§3.1.2.10): PINGREQ when nothing was sent for a keepalive period, and a close when a
        PINGRESP has not come back within another. While the transport does not read (`reading_paused`), a
        PINGRESP cannot be seen, so none is awaited, but PINGREQs still go out: the broker must keep hearing
        from us (it closes a silent connection after 1.5 keepalive periods, §3.1.2.10).
        Returns when to call again (clock time), None if never."""
        if self._state is not State.CONNECTED or not self.keepalive_s:
            return None
        now = self._clock()
        keepalive = self.keepalive_s
        if self._ping_sent_at is not None:
            if self.reading_paused:
                self._ping_sent_at = now  # judged again only once reading resumes
            elif now - self._ping_sent_at >= keepalive:
                self._fail(MqttProtocolError(f"no PINGRESP within {keepalive} s", KEEP_ALIVE_TIMEOUT))
                return None
        if now - self._last_sent >= keepalive:
            self._send(_PINGREQ)
            if self._ping_sent_at is None:
                self._ping_sent_at = now
        deadline = self._last_sent + keepalive
        if self._ping_sent_at is not None:
            deadline = min(deadline, self._ping_sent_at + keepalive)
        return deadline

    # -- incoming -----------------------------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[Publish]:
        """Parse every complete packet in `data` (plus what an earlier call left unfinished).

        Returns the PUBLISH frames in arrival order; control packets become events. Never raises."""
        if self._state is State.CLOSED or not data:
            return []
        if type(data) is not bytes:
            data = bytes(data)  # slices must be hashable (topic cache) and immutable (payload views)
        if self._partial:
            self._partial.append(data)
            self._partial_len += len(data)
            if self._partial_len < self._need:
                return []  # a large packet still arriving: join once, when it is complete
            data = b"".join(self._partial)
            self._partial = []
        out: list[Publish] = []
        try:
            pos = self._parse(data, out)
            if pos < len(data) and self._state is not State.CLOSED:
                rest = data[pos:]
                self._partial = [rest]
                self._partial_len = len(rest)
                self._need = self._needed(rest)
            else:
                self._partial_len = 0
        except MqttProtocolError as exc:
            self._fail(exc)
        return out

    def _needed(self, rest: bytes) -> int:
        """Bytes needed before the partial packet at the start of `rest` can be parsed."""
        if len(rest) < 2:
            return 2
        length, body = _varint(rest, 1, len(rest))
        return len(rest) + 1 if length < 0 else body + length

    def _parse(self, buf: bytes, out: list[Publish]) -> int:
        """The hot loop: returns the position of the first incomplete packet."""
        self._last_received = self._clock()
        view = memoryview(buf)
        end = len(buf)
        pos = 0
        maximum = self.maximum_packet_size
        inflight = self._inflight
        topics = self._topics
        receive_maximum = self.receive_maximum
        connected = self._state is State.CONNECTED
        append = out.append
        while end - pos >= 2:
            first = buf[pos]
            length = buf[pos + 1]
            if length < 128:
                body = pos + 2
            else:
                length, body = _varint(buf, pos + 1, end)
                if length < 0:
                    break
            stop = body + length
            if stop - pos > maximum:
                raise MqttProtocolError(
                    f"packet of {stop - pos} bytes exceeds the maximum packet size of {maximum}", PACKET_TOO_LARGE)
            if stop > end:
                break
            if first >> 4 == PUBLISH:
                if not connected:
                    raise MqttProtocolError("PUBLISH before CONNACK", PROTOCOL_ERROR)
                qos = (first >> 1) & 3
                if body + 2 > stop:
                    raise MqttProtocolError("PUBLISH shorter than its topic length", MALFORMED_PACKET)
                p = body + 2 + ((buf[body] << 8) | buf[body + 1])
                if p > stop:
                    raise MqttProtocolError("PUBLISH topic runs past the end of the packet", MALFORMED_PACKET)
                raw = buf[body + 2 : p]
                topic = topics.get(raw)
                if topic is None:
                    topic = self._topic(raw)
                if qos:
                    if qos == 3:
                        raise MqttProtocolError("PUBLISH with QoS 3", MALFORMED_PACKET)
                    if qos == 2:
                        raise MqttProtocolError("QoS 2 PUBLISH on a QoS 1 subscription", PROTOCOL_ERROR)
                    if p + 2 > stop:
                        raise MqttProtocolError("PUBLISH packet identifier missing", MALFORMED_PACKET)
                    pid = (buf[p] << 8) | buf[p + 1]
                    p += 2
                    if not pid:
                        raise MqttProtocolError("PUBLISH with packet identifier 0", PROTOCOL_ERROR)
                    if pid in inflight and not first & 0x08:
                        raise MqttProtocolError(f"packet identifier {pid} reused while unacknowledged",
                                                PROTOCOL_ERROR)
                    inflight.add(pid)
                    if len(inflight) > receive_maximum:
                        raise MqttProtocolError(
                            f"more than {receive_maximum} unacknowledged QoS 1 messages", RECEIVE_MAXIMUM_EXCEEDED)
                else:
                    if first & 0x08:
                        raise MqttProtocolError("DUP set on a QoS 0 PUBLISH", MALFORMED_PACKET)
                    pid = 0
                if p >= stop:
                    raise MqttProtocolError("PUBLISH properties missing", MALFORMED_PACKET)
                if buf[p] == 0:
                    props = None
                    p += 1
                else:
                    props, p = decode_properties(view, p, stop)
                    if 0x23 in props:
                        raise MqttProtocolError("topic alias sent but none allowed (maximum 0)", TOPIC_ALIAS_INVALID)
                append(Publish(topic, view[p:stop], qos, pid, bool(first & 0x08), bool(first & 0x01), props))
            else:
                self._control(first, view, body, stop)
                connected = self._state is State.CONNECTED
                if self._state is State.CLOSED:
                    return end
            pos = stop
        return pos

    def _topic(self, raw: bytes) -> str:
        """Decode and check a PUBLISH topic name (§3.3.2.1, §4.7.3), then remember it."""
        try:
            topic = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MqttProtocolError("PUBLISH topic is not valid UTF-8", MALFORMED_PACKET) from None
        if not topic:
            raise MqttProtocolError("PUBLISH with an empty topic (topic aliases are not allowed here)",
                                    TOPIC_ALIAS_INVALID)
        if "+" in topic or "#" in topic or "\x00" in topic:
            raise MqttProtocolError(f"PUBLISH topic {topic[:80]!r} contains a wildcard or U+0000", MALFORMED_PACKET)
        if len(self._topics) >= TOPIC_CACHE_MAX:
            self._topics.clear()
        self._topics[raw] = topic
        return topic

    def _control(self, first: int, view: memoryview, body: int, stop: int) -> None:
        kind = first >> 4
        if kind not in (CONNACK, SUBACK, UNSUBACK, PINGRESP, DISCONNECT):
            raise MqttProtocolError(f"unexpected packet type {kind} for a subscriber", PROTOCOL_ERROR)
        if first & 0x0F:
            raise MqttProtocolError(f"reserved flags set on packet type {kind}", MALFORMED_PACKET)
        if kind == CONNACK:
            self._connack(view, body, stop)
        elif kind == SUBACK or kind == UNSUBACK:
            self._suback(view, body, stop, kind)
        elif kind == PINGRESP:
            if stop != body:
                raise MqttProtocolError("PINGRESP with a body", MALFORMED_PACKET)
            self._ping_sent_at = None
        elif kind == DISCONNECT:
            code = view[body] if stop > body else SUCCESS
            props = decode_properties(view, body + 1, stop)[0] if stop > body + 1 else {}
            text = REASONS.get(code, f"reason 0x{code:02x}")
            if 0x1F in props:
                text = f"{text}: {props[0x1F]}"
            self._close(Closed(code, text, "server"))

    def _connack(self, view: memoryview, body: int, stop: int) -> None:
        if self._state is not State.CONNECTING:
            raise MqttProtocolError("second CONNACK", PROTOCOL_ERROR)
        if stop - body < 2:
            raise MqttProtocolError("CONNACK shorter than 2 bytes", MALFORMED_PACKET)
        flags, code = view[body], view[body + 1]
        if flags & 0xFE:
            raise MqttProtocolError("reserved CONNACK flags set", MALFORMED_PACKET)
        props = decode_properties(view, body + 2, stop)[0] if stop > body + 2 else {}
        session_present = bool(flags & 1)
        if code >= 0x80:
            text = REASONS.get(code, f"reason 0x{code:02x}")
            if 0x1F in props:
                text = f"{text}: {props[0x1F]}"
            self._events.append(ConnAck(False, code, props))
            self._close(Closed(code, f"connection refused: {text}", "server"))
            return
        if session_present and self.clean_start:
            raise MqttProtocolError("session present after a clean start", PROTOCOL_ERROR)
        self.session_present = session_present
        self.server_properties = props
        if 0x13 in props:
            self.keepalive_s = props[0x13]  # §3.2.2.3.14: the server's keep alive replaces ours
        if 0x27 in props:
            self.server_maximum_packet_size = props[0x27]
        self._set_state(State.CONNECTED)
        self._events.append(ConnAck(session_present, code, props))

    def _suback(self, view: memoryview, body: int, stop: int, kind: int) -> None:
        name = "SUBACK" if kind == SUBACK else "UNSUBACK"
        if stop - body < 3:
            raise MqttProtocolError(f"{name} too short", MALFORMED_PACKET)
        pid = (view[body] << 8) | view[body + 1]
        if pid not in self._pending_subs:
            raise MqttProtocolError(f"{name} for unknown packet identifier {pid}", PROTOCOL_ERROR)
        self._pending_subs.discard(pid)
        props, p = decode_properties(view, body + 2, stop)
        codes = tuple(view[p:stop])
        if not codes:
            raise MqttProtocolError(f"{name} without reason codes", PROTOCOL_ERROR)
        if kind == SUBACK:
            self._events.append(SubAck(pid, codes, props.get(0x1F)))
        else:
            self._events.append(UnsubAck(pid, codes))

    def _fail(self, error: MqttProtocolError) -> None:
        """Close on our side with the error's reason code (§4.13: DISCONNECT, then close the connection)."""
        self.failure = error
        if self._state in (State.CONNECTING, State.CONNECTED):
            self._out.append(encode_disconnect(error.reason_code))
        self._close(Closed(error.reason_code, str(error), "client", error))

    def _close(self, event: Closed) -> None:
        self.closed = event
        self._set_state(State.CLOSED)
        self._partial = []
        self._partial_len = 0
        self._events.append(event)
