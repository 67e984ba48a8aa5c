"""Load mode for benchmarks: N synthetic devices publishing at a target rate in a chosen payload form.

`readings` is the number of (metric, time, value) readings per message, the unit ingest counts:
object = one timestamp with that many metrics (at most the kind's metric count), array = entries of up to
`per_entry` metrics at successive timestamps, SenML = one record per reading, gateway = one entry per device
with up to `per_entry` metrics, as many devices as it takes. Values are drawn in vectorised chunks; each
message costs one orjson call and one paho publish.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
import orjson

from simulators.engine import Message
from simulators.publisher import BrokerAddress, MqttOutput
from simulators.timeutil import iso_local_many

log = logging.getLogger(__name__)

FORMS = ("object", "array", "senml", "gateway")
# (metric, unit, typical value, spread) per kind, for plausible-looking load
LOAD_METRICS: dict[str, list[tuple[str, str, float, float]]] = {
    "hydromet": [
        ("rain_mm", "mm", 0.6, 0.5), ("water_level_m", "m", 97.0, 0.8), ("temperature_c", "Cel", 24.0, 3.0),
        ("humidity_pct", "%RH", 85.0, 6.0), ("wind_speed_ms", "m/s", 1.8, 0.7), ("wind_dir_deg", "deg", 140.0, 40.0),
        ("pressure_hpa", "hPa", 990.0, 3.0), ("battery_v", "V", 12.8, 0.3), ("signal_dbm", "dBm", -85.0, 6.0),
    ],
    "traffic": [
        ("vehicles_motorbike", "veh", 60.0, 15.0), ("vehicles_car", "veh", 12.0, 4.0),
        ("vehicles_truck", "veh", 4.0, 2.0), ("speed_kmh", "km/h", 38.0, 6.0), ("occupancy_pct", "%", 9.0, 3.0),
        ("battery_v", "V", 13.6, 0.05), ("signal_dbm", "dBm", -80.0, 5.0),
    ],
    "camera": [
        ("fps", "fps", 24.8, 0.3), ("bitrate_kbps", "kbit/s", 3500.0, 300.0), ("signal_dbm", "dBm", -80.0, 5.0),
        ("battery_v", "V", 12.6, 0.2),
    ],
}


@dataclass(slots=True)
class LoadConfig:
    devices: int = 1000
    rate: float = 0.0  # messages/s over all devices; 0 = as fast as possible
    form: str = "object"
    readings: int = 5
    per_entry: int = 5
    qos: int = 0
    duration: float = 10.0
    kind: str = "hydromet"
    connections: int = 4
    client_prefix: str = "occ-load"
    topic_prefix: str = "occ/v1"
    id_prefix: str = "LOAD"
    seed: int = 0
    ts_format: str = "iso"  # iso | s | ms
    interval_s: float = 60.0  # spacing of the timestamps inside one array / SenML message
    protocol: str = "3.1.1"
    transport: str = "raw"
    link_status_prefix: str = "occ/sim"
    per_run_ids: bool = False
    """The client ids are unique to this run: a clean stop deletes their retained link status."""

    def device_ids(self) -> list[str]:
        return [f"{self.id_prefix}-{self.kind}-{i:05d}" for i in range(self.devices)]


@dataclass(slots=True)
class LoadResult:
    messages: int = 0
    readings: int = 0
    elapsed_s: float = 0.0
    cpu_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def msgs_per_s(self) -> float:
        return self.messages / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def readings_per_s(self) -> float:
        return self.readings / self.elapsed_s if self.elapsed_s > 0 else 0.0


class PayloadFactory:
    """Builds chunks of (device index, topic, payload) for load mode, vectorised per chunk."""

    def __init__(self, cfg: LoadConfig) -> None:
        if cfg.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}")
        if cfg.kind not in LOAD_METRICS:
            raise ValueError(f"kind must be one of {sorted(LOAD_METRICS)}")
        self.cfg = cfg
        spec = LOAD_METRICS[cfg.kind]
        self.readings = max(1, cfg.readings)
        if cfg.form == "object" and self.readings > len(spec):
            log.warning("object form carries at most %d readings for %s (one per metric); using %d",
                        len(spec), cfg.kind, len(spec))
            self.readings = len(spec)
        self.per_entry = max(1, min(cfg.per_entry, len(spec), self.readings))
        if cfg.form == "object":
            self.per_entry = self.readings
        self.spec = spec
        self.names = [s[0] for s in spec]
        self.units = {s[0]: s[1] for s in spec}
        self.mean = np.array([s[2] for s in spec])
        self.sd = np.array([s[3] for s in spec])
        self.rng = np.random.default_rng(cfg.seed)
        self.ids = cfg.device_ids()
        self.topics = [f"{cfg.topic_prefix}/{cfg.kind}/{i}/telemetry" for i in self.ids]
        self.gateway_topic = f"{cfg.topic_prefix}/gateway/{cfg.client_prefix}/telemetry"
        self.next_device = 0
        # slot j of a message: metric index j % per_entry, entry j // per_entry
        self.entries = math.ceil(self.readings / self.per_entry)

    def _values(self, n: int) -> list[list[float]]:
        m = len(self.names)
        raw = self.mean[None, :] + self.sd[None, :] * self.rng.standard_normal((n, m))
        raw = np.maximum(raw, 0.0) if self.cfg.kind != "hydromet" else raw
        raw[:, self.names.index("signal_dbm")] = np.minimum(raw[:, self.names.index("signal_dbm")], -40.0)
        if "rain_mm" in self.names:
            col = self.names.index("rain_mm")
            raw[:, col] = np.maximum(raw[:, col], 0.0)
        result: list[list[float]] = np.round(raw, 2).tolist()
        return result

    def _stamps(self, now: float, count: int) -> list[Any]:
        times = now - self.cfg.interval_s * np.arange(count)[::-1]
        if self.cfg.ts_format == "s":
            return [int(t) for t in times]
        if self.cfg.ts_format == "ms":
            return [int(t * 1000) for t in times]
        return iso_local_many(times)

    def chunk(self, n: int, now: float) -> tuple[list[int], list[str], list[bytes]]:
        """n messages (device index, topic, payload) for the next devices in round-robin order."""
        cfg = self.cfg
        form = cfg.form
        entries = self.entries
        per = self.per_entry
        devices_per_msg = entries if form == "gateway" else 1
        rows_needed = n * entries
        vals = self._values(rows_needed)
        stamps = self._stamps(now, 1 if form == "gateway" else entries)
        names = self.names[:per]
        total = len(self.ids)
        dev_out: list[int] = []
        topics: list[str] = []
        payloads: list[bytes] = []
        r = 0
        last_entry_metrics = self.readings - per * (entries - 1)
        for _ in range(n):
            d = self.next_device
            self.next_device = (d + devices_per_msg) % total
            if form == "object":
                doc: Any = {"ts": stamps[0], "values": dict(zip(names, vals[r], strict=False))}
                r += 1
            elif form == "array":
                doc = []
                for e in range(entries):
                    k = per if e < entries - 1 else last_entry_metrics
                    doc.append({"ts": stamps[e], "values": dict(zip(names[:k], vals[r], strict=False))})
                    r += 1
            elif form == "senml":
                doc = []
                base = round(now - cfg.interval_s * (entries - 1), 3)
                for e in range(entries):
                    k = per if e < entries - 1 else last_entry_metrics
                    row = vals[r]
                    r += 1
                    for j in range(k):
                        rec: dict[str, Any] = {"n": names[j], "u": self.units[names[j]], "v": row[j]}
                        if not doc:
                            rec = {"bt": base, **rec}
                        elif e:
                            rec["t"] = cfg.interval_s * e
                        doc.append(rec)
            else:  # gateway: one entry per device, `entries` devices
                doc = {}
                for e in range(entries):
                    k = per if e < entries - 1 else last_entry_metrics
                    doc[self.ids[(d + e) % total]] = [{"ts": stamps[0],
                                                       "values": dict(zip(names[:k], vals[r], strict=False))}]
                    r += 1
            dev_out.append(d)
            topics.append(self.gateway_topic if form == "gateway" else self.topics[d])
            payloads.append(orjson.dumps(doc))
        return dev_out, topics, payloads


def run_load(
    cfg: LoadConfig,
    address: BrokerAddress,
    *,
    stop: threading.Event | None = None,
    progress: TextIO | None = None,
    progress_every_s: float = 1.0,
    wall: Callable[[], float] = time.time,
) -> LoadResult:
    """Publish for `cfg.duration` seconds at `cfg.rate`; the rate reported includes flushing QoS 1 acks."""
    stop = stop or threading.Event()
    factory = PayloadFactory(cfg)
    output = MqttOutput(address, mode="pool", connections=cfg.connections, client_prefix=cfg.client_prefix,
                        topic_prefix=cfg.topic_prefix, protocol=cfg.protocol, transport=cfg.transport,
                        link_status_prefix=cfg.link_status_prefix, per_run_ids=cfg.per_run_ids)
    output.stop = stop
    output.start()
    links = output.links
    nlinks = len(links)
    publish = output.publish
    result = LoadResult()
    chunk = 500 if cfg.rate <= 0 else int(max(1, min(500, cfg.rate / 200)))
    t0 = time.monotonic()
    cpu0 = time.process_time()
    last_progress = t0
    last_count = 0
    qos = cfg.qos
    tty = bool(progress is not None and getattr(progress, "isatty", lambda: False)())
    try:
        while not stop.is_set():
            now = time.monotonic()
            elapsed = now - t0
            if elapsed >= cfg.duration:
                break
            if cfg.rate > 0:
                behind = cfg.rate * elapsed - result.messages
                if behind < 1:
                    output.pump(min(0.01, (1 - behind) / cfg.rate))
                    continue
                n = int(min(chunk, behind))
            else:
                n = chunk
            devs, topics, payloads = factory.chunk(n, wall())
            for d, topic, payload in zip(devs, topics, payloads, strict=True):
                publish(links[d % nlinks], topic, payload, qos, False)
            result.messages += n
            output.pump(0.0)
            if progress is not None and now - last_progress >= progress_every_s:
                rate = (result.messages - last_count) / (now - last_progress)
                line = (f"load: {elapsed:5.1f} s  {result.messages:,} msgs  {rate:,.0f} msg/s  "
                        f"{rate * factory.readings:,.0f} readings/s  form {cfg.form}  qos {qos}")
                progress.write(("\r" + line) if tty else (line + "\n"))
                progress.flush()
                last_progress, last_count = now, result.messages
        output.flush(timeout=30.0)
    finally:
        result.elapsed_s = time.monotonic() - t0
        result.cpu_s = time.process_time() - cpu0
        output.close(flush_timeout=5.0)
        if progress is not None and tty:
            progress.write("\n")
    result.readings = result.messages * factory.readings
    return result


def load_messages(cfg: LoadConfig, count: int, now: float) -> list[Message]:
    """The first `count` load messages as Message objects (tests and file output)."""
    factory = PayloadFactory(cfg)
    devs, topics, payloads = factory.chunk(count, now)
    return [Message(now, d, t, p, cfg.qos, False, factory.ids[d], "telemetry")
            for d, t, p in zip(devs, topics, payloads, strict=True)]


def write_device_file(cfg: LoadConfig, path: str, stream: TextIO | None = None) -> None:
    """A device file for the load devices, so `occ devices import` can register them before a benchmark."""
    out = stream or open(path, "w", encoding="utf-8")
    try:
        out.write(f"# {cfg.devices} synthetic {cfg.kind} devices for `occ simulate load`\ndevices:\n")
        for i, device_id in enumerate(cfg.device_ids()):
            lat = 22.3 + (i % 100) * 0.01
            lon = 104.5 + (i // 100 % 100) * 0.01
            out.write(f"  - {{id: {device_id}, kind: {cfg.kind}, lat: {lat:.2f}, lon: {lon:.2f}, "
                      f"attributes: {{report_interval_s: {cfg.interval_s:g}, load_test: true}}}}\n")
    finally:
        if stream is None:
            out.close()

