"""Receive-path benchmark: CPU per message of the native MQTT receive path (occ.mqtt) against paho (occ.bus),
fed the same PUBLISH stream over loopback, in one run.

    python -m bench.receive                 # 200,000 single-reading QoS 1 messages per path
    python -m bench.receive --messages 50000

Why in isolation: the ingest benchmark measures the whole process (decode, COPY, acks), and on a shared box
its absolute figures swing with other people's load. Here a child process plays the broker (CONNACK, SUBACK,
then the stream, honouring the client's receive maximum, counting PUBACKs), and the measured process does
nothing but receive and acknowledge, so `time.process_time()` of this process is the receive path's CPU cost,
whatever else runs on the machine. The last line of the output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import select
import socket
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.common import PayloadMaker, device_ids, machine_info
from occ.mqtt.protocol import encode_varint

WINDOW = 20_000  # messages the fake broker keeps unacknowledged at most (below any receive maximum used here)
CHUNK = 2_000  # packets per send()


def _packets(n: int) -> list[bytes]:
    """MQTT 5 QoS 1 PUBLISH packets of the ingest benchmark's single-reading shape (packet ids cycle)."""
    maker = PayloadMaker("single", device_ids("BENCH-R", 1000), prefix="occ/v1", base_ms=int(time.time() * 1000))
    out = []
    for k in range(n):
        topic, payload = maker.payload(k)
        body = struct.pack("!H", len(topic)) + topic + struct.pack("!H", k % 65535 + 1) + b"\x00" + payload
        out.append(b"\x32" + encode_varint(len(body)) + body)
    return out


def _broker(listener: socket.socket, packets: list[bytes], rounds: int) -> None:
    """The fake broker (child process): per connection, the handshake, then the stream within a window."""
    for _ in range(rounds):
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.recv(65536)  # CONNECT
        conn.sendall(b"\x20\x03\x00\x00\x00")
        subscribe = conn.recv(65536)
        conn.sendall(b"\x90\x04" + subscribe[2:4] + b"\x00\x01")
        sent = acked = 0
        pending = b""
        n = len(packets)
        while acked < n:
            if sent < n and sent - acked < WINDOW:
                batch = packets[sent : min(n, sent + CHUNK, acked + WINDOW)]
                conn.sendall(b"".join(batch))
                sent += len(batch)
            readable, _, _ = select.select([conn], [], [], 0 if sent < n and sent - acked < WINDOW else 5)
            if readable:
                data = conn.recv(1 << 20)
                if not data:
                    break
                pending += data
                # PUBACKs are 4 bytes (no reason code, no properties); PINGREQs 2 bytes
                while pending:
                    if pending[0] == 0x40 and len(pending) >= 4:
                        acked += 1
                        pending = pending[4:]
                    elif pending[0] == 0xC0 and len(pending) >= 2:
                        conn.sendall(b"\xd0\x00")
                        pending = pending[2:]
                    else:
                        break
        conn.close()


async def _native(url: str, n: int) -> tuple[float, float]:
    from occ.mqtt.transport import MqttSubscriber, handle

    done = asyncio.Event()
    count = 0
    sub: MqttSubscriber

    def on_publishes(publishes: list[Any], generation: int) -> None:
        nonlocal count
        base = generation << 16
        for p in publishes:
            bytes(p.payload)  # what ingest does: keep the payload
            sub.ack(base | p.packet_id)
        count += len(publishes)
        if count >= n:
            done.set()

    sub = MqttSubscriber(url, client_id="bench-receive-native", on_publishes=on_publishes)
    sub.subscribe("occ/v1/+/+/+", 1)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await sub.start()
    await done.wait()
    await asyncio.sleep(0)  # the last acks' write
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    _ = handle  # the int handle ingest uses (inlined above, as in ingest/service.py)
    await sub.close()
    return cpu, wall


async def _paho(url: str, n: int) -> tuple[float, float]:
    from occ.bus import Delivery, MqttClient

    done = asyncio.Event()
    count = 0
    client: MqttClient

    def on_message(message: Any, delivery: Delivery) -> None:
        nonlocal count
        bytes(message.payload)
        client.ack(delivery)
        count += 1
        if count >= n:
            done.set()

    client = MqttClient(url, client_id="bench-receive-paho", on_message=on_message, manual_ack=True)
    client.subscribe("occ/v1/+/+/+", 1)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await client.start()
    await done.wait()
    await asyncio.sleep(0)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await client.close()
    return cpu, wall


def run(messages: int, transports: Sequence[str] = ("native", "paho")) -> dict[str, Any]:
    """Both paths against the same stream; CPU µs and wall-clock rate per path, and the ratio."""
    packets = _packets(messages)
    listener = socket.create_server(("127.0.0.1", 0))
    url = f"mqtt://127.0.0.1:{listener.getsockname()[1]}"
    child = multiprocessing.get_context("fork").Process(target=_broker, args=(listener, packets, len(transports)),
                                                        daemon=True)
    child.start()
    listener.close()
    result: dict[str, Any] = {"messages": messages}
    try:
        for name in transports:
            cpu, wall = asyncio.run(_native(url, messages) if name == "native" else _paho(url, messages))
            result[f"{name}_cpu_us_per_msg"] = round(1e6 * cpu / messages, 2)
            result[f"{name}_msgs_per_s"] = round(messages / wall)
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
    native, paho = result.get("native_cpu_us_per_msg"), result.get("paho_cpu_us_per_msg")
    result["paho_vs_native_cpu"] = round(paho / native, 2) if native and paho else None
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.receive", description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=200_000)
    a = p.parse_args(argv)
    info = machine_info()
    result = run(a.messages)
    result.update(cpu_model=info["cpu_model"], cores=info["cores"])
    print(f"receive path, {a.messages:,} QoS 1 messages, acked one by one (CPU of this process only):\n"
          f"  native (occ.mqtt): {result['native_cpu_us_per_msg']} µs/msg, {result['native_msgs_per_s']:,} msg/s\n"
          f"  paho (occ.bus):    {result['paho_cpu_us_per_msg']} µs/msg, {result['paho_msgs_per_s']:,} msg/s\n"
          f"  paho / native CPU: {result['paho_vs_native_cpu']}×")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
