"""The few MQTT packets a publisher needs (3.1.1 and 5), as bytes in and bytes out. No I/O.

A simulated device only connects, publishes, pings and disconnects, and reads CONNACK, PUBACK and PINGRESP.
Building PUBLISH packets here and writing many of them with one `send()` costs a few µs per message, against
~40 µs through paho's per-message machinery (PUBACK callbacks, message-info objects, a syscall per packet);
at the fleet sizes of a load test the MQTT client, not the models, would otherwise be the simulator's cost.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

CONNECT = 0x10
CONNACK = 0x20
PUBLISH = 0x30
PUBACK = 0x40
PINGREQ = 0xC0
PINGRESP = 0xD0
DISCONNECT = 0xE0

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"
DUP_FLAG = 0x08

CONNACK_REASONS_311 = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


def varint(n: int) -> bytes:
    """MQTT variable byte integer (remaining length)."""
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _str(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value


def connect(client_id: str, *, keepalive: int, v5: bool = False, clean: bool = True,
            will: tuple[str, bytes, int, bool] | None = None, username: str | None = None,
            password: str | None = None) -> bytes:
    """CONNECT with an optional Last Will (topic, payload, qos, retain) and credentials."""
    flags = 0x02 if clean else 0
    if will is not None:
        flags |= 0x04 | (will[2] << 3) | (0x20 if will[3] else 0)
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = bytearray(_str(b"MQTT"))
    body.append(5 if v5 else 4)
    body.append(flags)
    body += struct.pack("!H", keepalive)
    if v5:
        body.append(0)  # no CONNECT properties
    body += _str(client_id.encode())
    if will is not None:
        if v5:
            body.append(0)  # no will properties
        body += _str(will[0].encode())
        body += _str(will[1])
    if username is not None:
        body += _str(username.encode())
    if password is not None:
        body += _str(password.encode())
    return bytes((CONNECT,)) + varint(len(body)) + bytes(body)


def topic_field(topic: str) -> bytes:
    raw = topic.encode()
    if not raw or len(raw) > 65535 or b"+" in raw or b"#" in raw or b"\x00" in raw:
        raise ValueError(f"invalid topic for PUBLISH: {topic!r}")
    return _str(raw)


def publish(topic: bytes, payload: bytes, qos: int, retain: bool, packet_id: int = 0, v5: bool = False) -> bytes:
    """A PUBLISH packet; `topic` is the length-prefixed field from `topic_field`."""
    head = PUBLISH | (qos << 1) | (1 if retain else 0)
    if qos:
        mid = struct.pack("!H", packet_id) + (b"\x00" if v5 else b"")
    else:
        mid = b"\x00" if v5 else b""
    length = len(topic) + len(mid) + len(payload)
    if length < 128:
        return bytes((head, length)) + topic + mid + payload
    return bytes((head,)) + varint(length) + topic + mid + payload


def packets(buffer: bytearray) -> Iterator[tuple[int, bytes]]:
    """Complete packets (first byte, body) at the start of `buffer`; consumed bytes are removed from it."""
    pos = 0
    end = len(buffer)
    view = memoryview(buffer)
    try:
        while end - pos >= 2:
            first = buffer[pos]
            length = 0
            shift = 0
            i = pos + 1
            while True:
                if i >= end:
                    return
                byte = buffer[i]
                length |= (byte & 0x7F) << shift
                i += 1
                if not byte & 0x80:
                    break
                shift += 7
                if shift > 21:
                    raise ValueError("malformed remaining length from broker")
            if end - i < length:
                return
            yield first, bytes(view[i:i + length])
            pos = i + length
    finally:
        view.release()
        if pos:
            del buffer[:pos]
