"""What the closed broker costs (issue 7): the same Mosquitto 2.0 configuration with and without accounts and ACLs.

Two measurements per side, in the same run (compare ratios, not absolute figures, on a shared machine):

1. connect: `--devices` per-device connections (the simulator's device mode), each CONNECT checked against its
   PBKDF2-SHA512 hash (occ.broker_auth.ITERATIONS rounds) on the closed side — time to connect all, and the
   broker's CPU per CONNECT;
2. publish: the load generator (pooled, QoS 0, as fast as possible) — the closed side as `occ-sim`, whose
   publishes Mosquitto holds to its ACL (a deny for _sys/ and three writes) — messages/s and the broker's CPU
   per message.

    flock /work/notes/bench.lock .venv/bin/python -m bench.broker_auth [--devices 200] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from occ.broker_auth import AccountRow, DeviceRow, hash_password, render
from occ.embedded import EmbeddedBroker
from simulators.load import LoadConfig, run_load
from simulators.publisher import MqttOutput, parse_mqtt_url


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def side(closed: bool, devices: int, seconds: float, work: Path) -> dict[str, float]:
    prefix = "occ/v1"
    ids = [f"BENCH-{i:05d}" for i in range(devices)]
    passwords = {i: uuid.uuid4().hex for i in ids} | {"occ-sim": uuid.uuid4().hex}
    broker = EmbeddedBroker(work / ("closed" if closed else "open"), kind="mosquitto", auth=closed)
    if closed:
        accounts = [AccountRow(i, "device", hash_password(passwords[i])) for i in ids]
        accounts.append(AccountRow("occ-sim", "service", hash_password(passwords["occ-sim"])))
        files = render(accounts, [DeviceRow(i, "hydromet") for i in ids], prefix=prefix)
        broker.set_auth(files.passwd, files.acl)
    broker.start()
    try:
        assert broker.pid is not None
        address = parse_mqtt_url(broker.url)
        credentials = {i: (i, passwords[i]) for i in ids} if closed else None
        before, t0 = cpu_s(broker.pid), time.perf_counter()
        output = MqttOutput(address, mode="device", device_ids=ids,
                            device_status_topics=[f"{prefix}/hydromet/{i}/status" for i in ids],
                            credentials=credentials, client_prefix=f"bench-{uuid.uuid4().hex[:6]}")
        output.start(timeout=120)
        connect_s, connect_cpu = time.perf_counter() - t0, cpu_s(broker.pid) - before
        output.close()
        pooled = parse_mqtt_url(broker.url, "occ-sim" if closed else None, passwords["occ-sim"] if closed else None)
        cfg = LoadConfig(devices=1000, qos=0, duration=seconds, topic_prefix=prefix,
                         client_prefix=f"bench-load-{uuid.uuid4().hex[:6]}", per_run_ids=True)
        before = cpu_s(broker.pid)
        result = run_load(cfg, pooled)
        publish_cpu = cpu_s(broker.pid) - before
        return {"connect_s": connect_s, "connect_cpu_ms": 1000 * connect_cpu / devices,
                "msgs_per_s": result.msgs_per_s, "broker_us_per_msg": 1e6 * publish_cpu / max(1, result.messages)}
    finally:
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.broker_auth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=200, help="per-device connections (default 200)")
    parser.add_argument("--seconds", type=float, default=10.0, help="publishing time per side (default 10)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="occ-bench-auth-", dir="/tmp"))
    work.chmod(0o755)
    try:
        print(f"load average before: {os.getloadavg()[0]:.2f}", file=sys.stderr)
        results = {name: side(name == "closed", args.devices, args.seconds, work) for name in ("open", "closed")}
        print(f"load average after: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    o, c = results["open"], results["closed"]
    print(f"connect {args.devices} devices: open {o['connect_s']:.2f} s ({o['connect_cpu_ms']:.2f} ms broker CPU "
          f"each), closed {c['connect_s']:.2f} s ({c['connect_cpu_ms']:.2f} ms each)")
    print(f"publish QoS 0 pooled: open {o['msgs_per_s']:,.0f} msg/s ({o['broker_us_per_msg']:.1f} µs broker CPU "
          f"each), closed {c['msgs_per_s']:,.0f} msg/s ({c['broker_us_per_msg']:.1f} µs each); "
          f"ratio closed/open {c['msgs_per_s'] / o['msgs_per_s']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
