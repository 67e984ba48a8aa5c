"""Benchmark plumbing shared by `bench.ingest` and `bench.baseline_naive`: a cheap QoS 1 load publisher that
runs in its own process, the payload shapes, and process/machine accounting read from /proc.

The publisher writes pre-built MQTT 3.1.1 PUBLISH packets straight to a socket and counts PUBACKs by size,
so one publisher costs a few µs of CPU per message. On a 2-core box the publishers share the cores with the
broker, the ingest and PostgreSQL; a paho publisher (~30 µs per QoS 1 message) would take CPU the ingest
needs and the benchmark would measure the publisher. Only stdlib is imported here, so a publisher process
starts in a few tens of milliseconds.

Run one publisher: `python -m bench.common publish --url mqtt://127.0.0.1:1883 --shape single ...`; it prints
one JSON object (sent, acked, timings, CPU) on stdout when done.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import socket
import struct
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# ---------------------------------------------------------------------------------------------------------
# payloads
# ---------------------------------------------------------------------------------------------------------

KIND = "hydromet"
LOCAL_OFFSET_S = 7 * 3600  # the operations center's zone (Asia/Ho_Chi_Minh), as devices there send it
SHAPES = ("single", "batched", "backfill", "probe")
READINGS_PER_MESSAGE = {"single": 1, "batched": 10, "backfill": 10, "probe": 1}
# (metric, typical value, spread): catalog metrics of the hydromet kind, within their plausible ranges
METRICS = (("water_level_m", 97.0, 0.8), ("rain_mm", 0.6, 0.5), ("temperature_c", 24.0, 3.0),
           ("humidity_pct", 85.0, 6.0), ("pressure_hpa", 990.0, 3.0))
LIVE_PERIOD_MS = 100  # spacing of one device's synthetic live timestamps (unique per device and metric)
BACKFILL_PERIOD_MS = 60_000  # store-and-forward records one minute apart
VALUE_RING = 997  # distinct pre-encoded value sets, cycled
PROBE_METRIC = "water_level_m"  # plausible range -20..3000 m: probe sequence numbers fit for 60 s at 50/s
RATE_TICK_S = 0.002  # fixed-rate publishers send what the bucket holds every 2 ms


def device_ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i:04d}" for i in range(count)]


class _IsoClock:
    """Epoch ms → '2026-11-27T08:00:00.123+07:00' with the per-second part cached (a few hundred ns each)."""

    def __init__(self) -> None:
        self._cache: dict[int, str] = {}

    def __call__(self, ms: int) -> str:
        sec, frac = divmod(ms, 1000)
        head = self._cache.get(sec)
        if head is None:
            if len(self._cache) > 100_000:
                self._cache.clear()
            head = self._cache[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec + LOCAL_OFFSET_S))
        return f"{head}.{frac:03d}+07:00"


def _value_sets(seed: int) -> tuple[list[str], list[str]]:
    """Pre-encoded JSON `values` objects: one metric (single) and five metrics (batched/backfill)."""
    singles: list[str] = []
    fives: list[str] = []
    for i in range(VALUE_RING):
        # a deterministic spread without importing random/numpy: a cheap LCG
        x = (seed * 7919 + i * 104729) % 1000 / 1000.0 - 0.5
        vals = [round(mean + 2 * spread * x * (1 + j / 7), 2) for j, (_, mean, spread) in enumerate(METRICS)]
        vals[1] = abs(vals[1])  # rain is never negative
        singles.append(f'{{"{METRICS[0][0]}":{vals[0]}}}')
        fives.append("{" + ",".join(f'"{name}":{v}' for (name, _, _), v in zip(METRICS, vals, strict=True)) + "}")
    return singles, fives


class PayloadMaker:
    """Builds message k of a publisher: device k % n, timestamps unique per (device, metric)."""

    def __init__(self, shape: str, devices: Sequence[str], *, prefix: str, base_ms: int, seed: int = 0) -> None:
        if shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}")
        self.shape = shape
        self.n = len(devices)
        self.topics = [f"{prefix}/{KIND}/{d}/telemetry".encode() for d in devices]
        self.base_ms = base_ms
        self.period = BACKFILL_PERIOD_MS if shape == "backfill" else LIVE_PERIOD_MS
        self.iso = _IsoClock()
        self.singles, self.fives = _value_sets(seed)
        self._last_probe_ms = 0

    def payload(self, k: int) -> tuple[bytes, bytes]:
        """(topic, payload) of message k."""
        device, round_ = k % self.n, k // self.n
        if self.shape == "probe":
            # publish→commit probe: the timestamp IS the publish time (ms), read back from the database;
            # strictly increasing, so two probes sent within one millisecond are not one reading
            # and the value is the probe's sequence number, so the reader can tell which ones it has seen
            ms = self._last_probe_ms = max(int(time.time() * 1000), self._last_probe_ms + 1)
            return self.topics[device], f'{{"ts":"{self.iso(ms)}","values":{{"{PROBE_METRIC}":{k}}}}}'.encode()
        if self.shape == "single":
            ts = self.base_ms + round_ * self.period
            return self.topics[device], f'{{"ts":"{self.iso(ts)}","values":{self.singles[k % VALUE_RING]}}}'.encode()
        # ten readings: two store-and-forward records of five metrics each (hydromet has nine metrics, so
        # one object cannot carry ten)
        ts = self.base_ms + round_ * 2 * self.period
        fives = self.fives
        return self.topics[device], (
            f'[{{"ts":"{self.iso(ts)}","values":{fives[k % VALUE_RING]}}},'
            f'{{"ts":"{self.iso(ts + self.period)}","values":{fives[(k + 1) % VALUE_RING]}}}]').encode()


# ---------------------------------------------------------------------------------------------------------
# MQTT 3.1.1 packets (only what a QoS 1 publisher needs)
# ---------------------------------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _mqtt_str(s: bytes) -> bytes:
    return struct.pack("!H", len(s)) + s


def connect_packet(client_id: str, *, clean: bool = True, keepalive: int = 0) -> bytes:
    body = _mqtt_str(b"MQTT") + bytes([4, 0x02 if clean else 0x00]) + struct.pack("!H", keepalive)
    body += _mqtt_str(client_id.encode())
    return b"\x10" + _varint(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, packet_id: int) -> bytes:
    """PUBLISH, QoS 1, not retained."""
    rest = 2 + len(topic) + 2 + len(payload)
    return b"\x32" + _varint(rest) + struct.pack("!H", len(topic)) + topic + struct.pack("!H", packet_id) + payload


def parse_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    return parts.hostname or "127.0.0.1", parts.port or 1883


@dataclass(slots=True)
class PublishResult:
    client_id: str
    shape: str
    sent: int = 0
    acked: int = 0
    started: float = 0.0  # wall clock of the first send
    send_done: float = 0.0  # wall clock after the last send
    acked_done: float = 0.0  # wall clock when the last PUBACK arrived
    cpu_s: float = 0.0
    max_rss_mb: float = 0.0
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps({k: getattr(self, k) for k in self.__slots__})


def publish(
    url: str,
    maker: PayloadMaker,
    *,
    client_id: str,
    count: int = 0,
    duration: float = 0.0,
    rate: float = 0.0,
    window: int = 20_000,
    chunk: int = 500,
    nodelay: bool = False,
    start_at: float = 0.0,
    ack_timeout: float = 120.0,
    credit_fd: int | None = None,
    credit: int = 0,
) -> PublishResult:
    """Publish `count` messages (0: unlimited) for at most `duration` s (0: unlimited) at `rate` msg/s
    (0: as fast as the broker acknowledges, with at most `window` unacknowledged), then wait for the acks.

    With `credit_fd`, the total sent never exceeds the last credit read from that descriptor (one decimal
    number per line, cumulative; `credit` until the first line): the orchestrator grants "committed so far +
    a bound", so a saturated ingest keeps a full queue while the broker's backlog stays bounded."""
    result = PublishResult(client_id, maker.shape)
    host, port = parse_url(url)
    sock = socket.create_connection((host, port), timeout=30)
    if nodelay:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    sock.sendall(connect_packet(client_id))
    connack = b""
    while len(connack) < 4:
        data = sock.recv(4 - len(connack))
        if not data:
            raise ConnectionError("broker closed the connection before CONNACK")
        connack += data
    if connack[0] != 0x20 or connack[3] != 0:
        raise ConnectionError(f"connection refused: CONNACK {connack.hex()}")
    if start_at:
        time.sleep(max(0.0, start_at - time.time()))
    cpu0 = time.process_time()
    window = min(window, 60_000)  # packet ids wrap at 65,535: never two in flight with the same id
    pending_bytes = 0  # PUBACK bytes received, not yet counted (each PUBACK is 4 bytes: 40 02 id id)
    acked = 0
    sent = 0
    t0 = time.monotonic()
    result.started = time.time()
    deadline = t0 + duration if duration else float("inf")
    watch: list[Any] = [sock] if credit_fd is None else [sock, credit_fd]
    credit_buf = b""
    # At a fixed rate, send only on tick boundaries: PUBACKs arrive all the time and each wakes the loop; sending
    # what was due at every wake-up meant a send of one or two messages per PUBACK read, which cost the
    # publisher (and the broker) ~2.6x more CPU per message than the ticks below and took it from the system
    # under test.
    tick = RATE_TICK_S if rate and rate * RATE_TICK_S >= 1 else 0.0
    next_send = 0.0
    try:
        while True:
            now = time.monotonic()
            if (count and sent >= count) or now >= deadline:
                break
            inflight = sent - acked
            room = window - inflight
            if rate:
                room = min(room, int(rate * (now - t0)) + 1 - sent) if now >= next_send else 0
            if count:
                room = min(room, count - sent)
            if credit_fd is not None:
                room = min(room, credit - sent)
            n = min(room, chunk)
            if n > 0:
                packets = []
                for k in range(sent, sent + n):
                    topic, body = maker.payload(k)
                    packets.append(publish_packet(topic, body, k % 65535 + 1))
                sock.sendall(b"".join(packets))
                sent += n
                next_send = now + tick
                timeout = 0.0
            elif rate and sent - acked < window and (credit_fd is None or sent < credit):
                # token bucket in ticks of at least RATE_TICK_S: a wake-up per message would cost more CPU
                # (publisher and broker) than the messages themselves
                # (the next message is due when rate × elapsed reaches `sent`)
                timeout = max(next_send - now, 0.0002 if not tick else 0.0,
                              min(0.05, (sent - rate * (now - t0)) / rate))
            else:
                timeout = 0.05
            # Between ticks, sleep through the PUBACKs (each arrival woke the loop, a few wake-ups per tick per
            # publisher: CPU taken from the system under test) and read them all at the tick, unless the window
            # is filling up.
            between_ticks = bool(tick) and n <= 0 and sent - acked < window // 2
            readable, _, _ = select.select([w for w in watch if w is not sock] if between_ticks else watch, [], [],
                                           timeout)
            if between_ticks and select.select([sock], [], [], 0)[0]:
                readable.append(sock)
            if credit_fd is not None and credit_fd in readable:
                chunk_in = os.read(credit_fd, 4096)
                if not chunk_in:
                    watch = [sock]  # orchestrator gone: keep the last credit
                credit_buf += chunk_in
                if b"\n" in credit_buf:
                    complete, credit_buf = credit_buf.rsplit(b"\n", 1)
                    credit = max(credit, int(complete.rsplit(b"\n", 1)[-1]))
            if sock in readable:
                data = sock.recv(1 << 18)
                if not data:
                    raise ConnectionError("broker closed the connection")
                pending_bytes += len(data)
                acked += pending_bytes // 4
                pending_bytes %= 4
        result.send_done = time.time()
        ack_deadline = time.monotonic() + ack_timeout
        while acked < sent and time.monotonic() < ack_deadline:
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable:
                data = sock.recv(1 << 18)
                if not data:
                    raise ConnectionError("broker closed the connection")
                pending_bytes += len(data)
                acked += pending_bytes // 4
                pending_bytes %= 4
        result.acked_done = time.time()
        sock.sendall(b"\xe0\x00")  # DISCONNECT
    except OSError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        sock.close()
    result.sent, result.acked = sent, acked
    result.cpu_s = time.process_time() - cpu0
    result.max_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def publisher_command(
    url: str,
    *,
    shape: str,
    client_id: str,
    id_prefix: str,
    devices: int,
    topic_prefix: str = "occ/v1",
    base_ms: int = 0,
    count: int = 0,
    duration: float = 0.0,
    rate: float = 0.0,
    start_at: float = 0.0,
    nodelay: bool = False,
    seed: int = 0,
    credit: int | None = None,
    nice: int = 0,
) -> list[str]:
    """argv of one publisher process (`credit`: read credits from stdin, starting with this many; `nice`: yield
    the CPU to the system under test, see bench.ingest.PUBLISHER_NICE)."""
    return [sys.executable, "-m", "bench.common", "publish", "--url", url, "--shape", shape,
            "--client-id", client_id, "--id-prefix", id_prefix, "--devices", str(devices),
            "--topic-prefix", topic_prefix, "--base-ms", str(base_ms), "--count", str(count),
            "--duration", str(duration), "--rate", str(rate), "--start-at", repr(start_at),
            "--seed", str(seed)] + (["--nodelay"] if nodelay else []) + (
            ["--credit", str(credit)] if credit is not None else []) + (["--nice", str(nice)] if nice else [])


# ---------------------------------------------------------------------------------------------------------
# process and machine accounting (/proc; Linux)
# ---------------------------------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from #3 (state) on; the name may contain spaces


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def tree_cpu_s(pid: int | None, children: dict[int, list[int]] | None = None) -> float:
    """CPU seconds (user + system) of a process, its reaped children and its live descendants."""
    if not pid:
        return 0.0
    children = children if children is not None else _children_map()
    total = 0
    stack = [pid]
    first = True
    while stack:
        p = stack.pop()
        fields = _stat_fields(p)
        if fields is None:
            continue
        # utime stime cutime cstime are fields 14..17 (indexes 11..14 here)
        total += int(fields[11]) + int(fields[12])
        if first:
            total += int(fields[13]) + int(fields[14])  # children already reaped (PostgreSQL backends)
            first = False
        stack.extend(children.get(p, ()))
    return total / CLK_TCK


def cpu_snapshot(pids: Mapping[str, int | None]) -> dict[str, float]:
    """CPU seconds per named process tree; our own process counts alone (its children are listed apart)."""
    children = _children_map()
    me = os.getpid()
    snapshot = {}
    for name, pid in pids.items():
        if pid == me:
            own = os.times()
            snapshot[name] = own.user + own.system
        else:
            snapshot[name] = tree_cpu_s(pid, children)
    snapshot[BUSY] = machine_busy_s()
    snapshot[STEAL] = machine_steal_s()
    return snapshot


BUSY = "_busy"  # key of the whole machine's busy CPU seconds in a snapshot
STEAL = "_steal"  # key of the CPU seconds the hypervisor gave this VM's cores to someone else


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores; /proc/stat, idle and iowait excluded)."""
    fields = _cpu_ticks()
    if len(fields) < 8:
        return 0.0
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK  # user nice system idle iowait irq softirq steal


def machine_steal_s() -> float:
    """CPU seconds stolen from this virtual machine's cores (/proc/stat `steal`): time the cores wanted to run
    and the hypervisor ran another guest instead. On a shared host it was up to 14 % of the machine under the
    benchmark's load and ~0 when idle, so it depresses every rate of a loaded run and is reported apart."""
    fields = _cpu_ticks()
    return fields[7] / CLK_TCK if len(fields) >= 8 else 0.0


def _cpu_ticks() -> list[int]:
    """The machine's CPU time by state, in clock ticks (/proc/stat's first line); [] when unreadable."""
    try:
        return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return []


def status_kb(pid: int, field: str) -> int | None:
    """A /proc/<pid>/status field in kB (VmRSS, VmHWM), or None when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def machine_info() -> dict[str, object]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_mb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_mb = int(line.split()[1]) // 1024
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {"cpu_model": model, "cores": usable, "cpu_count": os.cpu_count(), "mem_mb": mem_mb,
            "kernel": os.uname().release, "python": sys.version.split()[0], "load_avg_1m": os.getloadavg()[0]}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))
    return ordered[int(rank) - 1]


def first_json_line(lines: Iterable[str]) -> dict[str, object] | None:
    for line in lines:
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


# ---------------------------------------------------------------------------------------------------------
# publisher process entry point
# ---------------------------------------------------------------------------------------------------------


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.common")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("publish", help="publish QoS 1 load and print a JSON result")
    p.add_argument("--url", required=True)
    p.add_argument("--shape", choices=SHAPES, default="single")
    p.add_argument("--client-id", required=True)
    p.add_argument("--id-prefix", default="BENCH")
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--topic-prefix", default="occ/v1")
    p.add_argument("--base-ms", type=int, default=0, help="first synthetic timestamp (epoch ms; 0 = now - 5 min)")
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--duration", type=float, default=0.0)
    p.add_argument("--rate", type=float, default=0.0)
    p.add_argument("--start-at", type=float, default=0.0, help="wall-clock time to start sending")
    p.add_argument("--nodelay", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--credit", type=int, help="read cumulative send credits from stdin, starting with this many")
    p.add_argument("--nice", type=int, default=0, help="lower this publisher's scheduling priority by this much")
    args = parser.parse_args(argv)
    if args.nice:
        os.nice(args.nice)
    base_ms = args.base_ms or int(time.time() * 1000) - 300_000
    maker = PayloadMaker(args.shape, device_ids(args.id_prefix, args.devices), prefix=args.topic_prefix,
                         base_ms=base_ms, seed=args.seed)
    result = publish(args.url, maker, client_id=args.client_id, count=args.count, duration=args.duration,
                     rate=args.rate, start_at=args.start_at, nodelay=args.nodelay,
                     chunk=1 if args.shape == "probe" else 500,
                     credit_fd=sys.stdin.fileno() if args.credit is not None else None, credit=args.credit or 0)
    print(result.to_json(), flush=True)
    return 0 if result.error is None else 1


if __name__ == "__main__":
    sys.exit(_main())
