"""Simulator benchmark: publish throughput in load mode and the CPU cost of the full catalog × 100 in real time,
each measured side by side with a naive baseline in the same run (absolute numbers vary on shared machines;
the ratios are what to compare).

1. Load mode, QoS 0, object payloads with 5 readings, 1,000 devices, as fast as possible, for `--seconds`.
   Baseline: a per-message Python loop that draws each value with `random.gauss`, formats the timestamp with
   `datetime.isoformat`, encodes with `json.dumps` and calls paho `publish` on a client with its network thread
   (`loop_start`), which is how a first simulator is usually written.
2. The Hà Giang catalog × `--scale` (default 100: 13,500 devices) at their real report intervals, in real time,
   for `--fleet-seconds` of steady state (initial statuses excluded), QoS 1 as in production; we report the
   process CPU time (all threads) divided by wall time. Baseline: one Python object per device, a loop every
   second over all of them that checks which are due, computes the values one by one in Python and publishes
   each message with paho.

Broker: `--mqtt-url` / `$OCC_MQTT_URL`, else an embedded broker (Mosquitto if installed, else rumqttd) is
started in a temporary folder. The last line of output is a JSON object.

    python -m bench.simulate [--seconds 10] [--fleet-seconds 60] [--scale 100] [--mqtt-url URL]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from bench.common import machine_info
from simulators.clock import Pacer
from simulators.engine import Simulation
from simulators.fleet import Fleet, interval_of, load_fleet
from simulators.load import LOAD_METRICS, LoadConfig, run_load
from simulators.publisher import BrokerAddress, MqttOutput, parse_mqtt_url
from simulators.runner import deliver

LOCAL = timezone(timedelta(hours=7))


def machine() -> dict[str, Any]:
    info = machine_info()
    return {"cpu": info["cpu_model"] or platform.processor(), "cores": info["cores"], "python": info["python"],
            "system": f"{platform.system()} {platform.release()}"}


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---- 1. publish throughput --------------------------------------------------------------------------------------


def naive_publish(address: BrokerAddress, devices: int, readings: int, seconds: float, prefix: str) -> dict[str, float]:
    """The baseline: per-message Python value generation + json.dumps + paho publish (threaded client)."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-naive-{uuid.uuid4().hex[:6]}")
    client.connect(address.host, address.port)
    client.loop_start()
    spec = LOAD_METRICS["hydromet"][:readings]
    ids = [f"LOAD-hydromet-{i:05d}" for i in range(devices)]
    sent = 0
    cpu0, t0 = time.process_time(), time.monotonic()
    try:
        while time.monotonic() - t0 < seconds:
            for _ in range(200):
                device = ids[sent % devices]
                values = {name: round(random.gauss(mean, sd), 2) for name, _, mean, sd in spec}
                payload = json.dumps({"ts": datetime.now(LOCAL).isoformat(timespec="seconds"), "values": values})
                client.publish(f"{prefix}/hydromet/{device}/telemetry", payload, qos=0)
                sent += 1
        while client.want_write():  # let the network thread drain what was queued
            time.sleep(0.01)
            if time.monotonic() - t0 > seconds + 30:
                break
    finally:
        elapsed = time.monotonic() - t0
        cpu = time.process_time() - cpu0
        client.disconnect()
        client.loop_stop()
    return {"messages": sent, "elapsed_s": elapsed, "msgs_per_s": sent / elapsed, "cpu_s": cpu}


# ---- 2. the catalog × scale in real time ------------------------------------------------------------------------


def fleet_real_time(address: BrokerAddress, fleet: Fleet, seconds: float, prefix: str) -> dict[str, float]:
    """Our simulator over the fleet at real report intervals; CPU fraction over the steady-state window."""
    now = float(round(time.time()))
    sim = Simulation(fleet, start=now, seed=1, qos=1, prefix=prefix)
    out = MqttOutput(address, connections=4, client_prefix=f"bench-sim-{uuid.uuid4().hex[:6]}", topic_prefix=prefix,
                     device_ids=[d.id for d in sim.devices], device_status_topics=sim.status_topics)
    out.start()
    out.send(sim.initial_messages())
    out.flush(60.0)
    stop = threading.Event()
    pacer = Pacer(now, 1.0)
    sent = 0
    cpu0, t0 = time.process_time(), time.monotonic()
    threading.Timer(seconds, stop.set).start()
    while not stop.is_set():
        sent += deliver(sim.step(), pacer, [out], stop)
    elapsed = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    out.send(sim.final_messages())
    out.close()
    return {"messages": sent, "elapsed_s": elapsed, "cpu_s": cpu, "cpu_fraction_of_core": cpu / elapsed}


@dataclass
class NaiveDevice:
    id: str
    kind: str
    topic: str
    interval: float
    next_due: float
    altitude: float
    state: float = 0.0


def naive_fleet(address: BrokerAddress, fleet: Fleet, seconds: float, prefix: str) -> dict[str, float]:
    """The baseline: a Python object per device, checked every second, values computed one device at a time."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-naivefleet-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(1000)
    client.connect(address.host, address.port)
    client.loop_start()
    now = time.time()
    rnd = random.Random(1)
    devices = [
        NaiveDevice(d.id, d.kind, f"{prefix}/{d.kind}/{d.id}/telemetry", interval_of(d),
                    now + rnd.uniform(0, interval_of(d)), float(d.attributes.get("altitude_m", 100)))
        for d in fleet.devices
    ]
    sent = 0
    cpu0, t0 = time.process_time(), time.monotonic()
    try:
        while time.monotonic() - t0 < seconds:
            t = time.time()
            hour = (t / 3600.0 + 7) % 24
            for d in devices:
                if t < d.next_due:
                    continue
                d.next_due += d.interval
                if d.kind == "hydromet":
                    d.state = max(0.0, d.state * 0.9 + rnd.gauss(0, 0.5))
                    values: dict[str, float] = {
                        "rain_mm": round(d.state, 1),
                        "temperature_c": round(28 - 0.0065 * d.altitude + 4 * math.cos(2 * math.pi * (hour - 14.5) / 24)
                                               + rnd.gauss(0, 0.5), 1),
                        "humidity_pct": round(min(100.0, 85 + rnd.gauss(0, 5))),
                        "battery_v": round(12.6 + rnd.gauss(0, 0.1), 2),
                        "signal_dbm": round(-85 + rnd.gauss(0, 4)),
                    }
                elif d.kind == "traffic":
                    base = 20 + 15 * math.exp(-((hour - 7.5) ** 2)) + 15 * math.exp(-((hour - 17.5) ** 2))
                    values = {"vehicles_motorbike": max(0, round(rnd.gauss(base * 0.8, 3))),
                              "vehicles_car": max(0, round(rnd.gauss(base * 0.15, 1))),
                              "vehicles_truck": max(0, round(rnd.gauss(base * 0.05, 1))),
                              "speed_kmh": round(rnd.gauss(45, 4), 1), "occupancy_pct": round(rnd.uniform(2, 10), 1)}
                else:
                    values = {"fps": round(25 - abs(rnd.gauss(0, 0.3)), 1), "bitrate_kbps": round(rnd.gauss(3500, 300))}
                payload = json.dumps({"ts": datetime.fromtimestamp(t, LOCAL).isoformat(timespec="seconds"),
                                      "values": values})
                client.publish(d.topic, payload, qos=1)
                sent += 1
            time.sleep(max(0.0, 1.0 - (time.time() - t)))
    finally:
        elapsed = time.monotonic() - t0
        cpu = time.process_time() - cpu0
        client.disconnect()
        client.loop_stop()
    return {"messages": sent, "elapsed_s": elapsed, "cpu_s": cpu, "cpu_fraction_of_core": cpu / elapsed}


# ---- main ---------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.simulate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mqtt-url", default=os.environ.get("OCC_MQTT_URL"), help="broker (default: embedded)")
    parser.add_argument("--seconds", type=float, default=10.0, help="load-mode publishing time per side")
    parser.add_argument("--fleet-seconds", type=float, default=60.0,
                        help="real-time fleet window per side (60 s covers one whole simulation tick)")
    parser.add_argument("--scale", type=int, default=100, help="copies of the catalog (default 100)")
    parser.add_argument("--devices", type=int, default=1000, help="load-mode devices")
    parser.add_argument("--readings", type=int, default=5, help="readings per load-mode message")
    parser.add_argument("--config-dir", default="config")
    args = parser.parse_args(argv)

    broker = None
    tmp: str | None = None
    if args.mqtt_url:
        url = args.mqtt_url
        broker_kind = "external"
    else:
        from occ.embedded import EmbeddedBroker

        tmp = tempfile.mkdtemp(prefix="occ-bench-sim-", dir="/tmp")
        os.chmod(tmp, 0o755)
        broker = EmbeddedBroker(Path(tmp) / "broker")
        broker.start()
        url = broker.url
        broker_kind = broker.kind
    address = parse_mqtt_url(url)
    prefix = f"bench/{uuid.uuid4().hex[:8]}/v1"
    try:
        say(f"broker: {broker_kind} {address}")
        say(f"1/4 load mode: {args.devices} devices, object form, {args.readings} readings, QoS 0, {args.seconds:g} s")
        cfg = LoadConfig(devices=args.devices, rate=0, form="object", readings=args.readings, qos=0,
                         duration=args.seconds, topic_prefix=prefix, client_prefix=f"bench-load-{uuid.uuid4().hex[:6]}")
        ours = run_load(cfg, address, progress=sys.stderr)
        say(f"    {ours.msgs_per_s:,.0f} msg/s ({ours.readings_per_s:,.0f} readings/s), "
            f"{ours.cpu_s / ours.elapsed_s:.2f} of a core")
        say(f"2/4 naive baseline: per-message random.gauss + json.dumps + paho publish, {args.seconds:g} s")
        naive = naive_publish(address, args.devices, args.readings, args.seconds, prefix)
        say(f"    {naive['msgs_per_s']:,.0f} msg/s")

        fleet = load_fleet(config_dir=args.config_dir).replicate(args.scale)
        say(f"3/4 catalog × {args.scale} = {len(fleet.devices):,} devices at real report intervals, QoS 1, "
            f"{args.fleet_seconds:g} s")
        sim_fleet = fleet_real_time(address, fleet, args.fleet_seconds, prefix)
        say(f"    {sim_fleet['messages']:,} messages, {sim_fleet['cpu_fraction_of_core']:.1%} of one core")
        say(f"4/4 naive fleet baseline: one Python object per device, checked every second, {args.fleet_seconds:g} s")
        naive_f = naive_fleet(address, fleet, args.fleet_seconds, prefix)
        say(f"    {naive_f['messages']:,} messages, {naive_f['cpu_fraction_of_core']:.1%} of one core")
    finally:
        if broker is not None:
            broker.stop()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    publish_ratio = ours.msgs_per_s / naive["msgs_per_s"] if naive["msgs_per_s"] else math.inf
    cpu_ratio = naive_f["cpu_fraction_of_core"] / sim_fleet["cpu_fraction_of_core"] if sim_fleet[
        "cpu_fraction_of_core"] else math.inf
    per_msg_ours = sim_fleet["cpu_s"] / max(sim_fleet["messages"], 1) * 1e6
    per_msg_naive = naive_f["cpu_s"] / max(naive_f["messages"], 1) * 1e6
    print(f"publish rate: {ours.msgs_per_s:,.0f} msg/s vs naive {naive['msgs_per_s']:,.0f} msg/s "
          f"= {publish_ratio:.2f}x")
    print(f"fleet of {len(fleet.devices):,} devices in real time: {sim_fleet['cpu_fraction_of_core']:.1%} of a core "
          f"vs naive {naive_f['cpu_fraction_of_core']:.1%} = {cpu_ratio:.2f}x less CPU "
          f"({per_msg_ours:.0f} vs {per_msg_naive:.0f} µs per message)")
    result = {
        "publish_msgs_per_s": round(ours.msgs_per_s, 1),
        "publish_readings_per_s": round(ours.readings_per_s, 1),
        "baseline_publish_msgs_per_s": round(naive["msgs_per_s"], 1),
        "publish_ratio": round(publish_ratio, 2),
        "devices": len(fleet.devices),
        "cpu_fraction_of_core": round(sim_fleet["cpu_fraction_of_core"], 4),
        "fleet_msgs_per_s": round(sim_fleet["messages"] / sim_fleet["elapsed_s"], 1),
        "baseline_cpu_fraction_of_core": round(naive_f["cpu_fraction_of_core"], 4),
        "cpu_ratio": round(cpu_ratio, 2),
        "fleet_seconds": args.fleet_seconds,
        "broker": broker_kind,
        "machine": machine(),
    }
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
