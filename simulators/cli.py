"""`occ simulate`: drive the Hà Giang device catalog (or a load test) into MQTT and/or a JSON-lines file.

    occ simulate [run] --scenario flash-flood-bac-quang --fast --start 2026-07-14T00:00 --seed 7
    occ simulate --speed 60                    # a day in 24 minutes, ending at the present
    occ simulate --scenario normal-day --scenario sensor-faults --out day.jsonl --no-mqtt --fast
    occ simulate --replay day.jsonl --speed 10
    occ simulate load --devices 1000 --rate 20000 --form object --readings 5 --qos 0 --duration 10
    occ simulate scenarios [validate FILE ...]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import orjson

from occ.config import default_config_dir, require_config_dir
from occ.errors import ConfigError, OccError
from occ.logs import setup_logging
from simulators.clock import Pacer
from simulators.engine import FORMS as SIM_FORMS
from simulators.engine import Simulation
from simulators.fleet import KINDS, Fleet, load_fleet
from simulators.load import FORMS as LOAD_FORMS
from simulators.load import LOAD_METRICS, LoadConfig, run_load, write_device_file
from simulators.publisher import MODES, PROTOCOLS, TRANSPORTS, JsonlOutput, MqttOutput, parse_mqtt_url, read_jsonl
from simulators.runner import Output, Progress, replay, run
from simulators.scenario import (
    ScenarioSpec,
    available_scenarios,
    check_expectations,
    load_scenarios,
)
from simulators.timeutil import iso_local, parse_duration, parse_start

log = logging.getLogger("simulators")

DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"
COMMANDS = ("run", "load", "scenarios")
DEMO_SCENARIO = "demo"
"""config/scenarios/demo.yaml (normal days plus the demo incidents); occ.supervisor.demo_simulate_args matches."""
DEMO_SPEED = 60.0


RUN_ID = os.urandom(3).hex()
"""Six hex digits unique to this process, in every default client id (issue 9: `occ simulate` next to
`occ up --demo` shared client ids and the broker kicked one off for the other hundreds of times)."""


def host_id(kind: str = "sim") -> str:
    """`occ-<kind>-<host>`: stable per host (the gateway id of gateway mode)."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40] or "host"
    return f"occ-{kind}-{host}"


def default_client_prefix(kind: str = "sim") -> str:
    """`occ-<kind>-<host>-<run id>`: unique per run, so two simulators never take each other's connections. A
    clean stop deletes the retained link status these ids leave (MqttOutput `per_run_ids`)."""
    return f"{host_id(kind)}-{RUN_ID}"


def _default_url() -> str:
    return os.environ.get("OCC_MQTT_URL") or DEFAULT_MQTT_URL


def _credentials(args: argparse.Namespace) -> dict[str, tuple[str, str]] | None:
    if not getattr(args, "credentials", None):
        return None
    from occ.cli_credentials import read_credentials_file

    return read_credentials_file(args.credentials)


def _add_broker_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("broker")
    g.add_argument("--mqtt-url", default=None,
                   help="broker URL, mqtt[s]://[user[:pass]@]host[:port] "
                        f"(default: $OCC_MQTT_URL or {DEFAULT_MQTT_URL})")
    g.add_argument("--username", default=os.environ.get("OCC_MQTT_USERNAME"), help="MQTT user name")
    g.add_argument("--password", default=os.environ.get("OCC_MQTT_PASSWORD"), help="MQTT password")
    g.add_argument("--credentials", metavar="FILE", default=None,
                   help="credentials from `occ devices credentials issue` (device_id username password per line, "
                        "or its --json): each device connects as itself in --mode device, the gateway as itself "
                        "in --mode gateway; pool mode uses --username/--password or the URL's (a service account)")
    g.add_argument("--topic-prefix", default="occ/v1", help="topic prefix (default occ/v1)")
    g.add_argument("--client-prefix", default=None, help="client id prefix of the connections")
    g.add_argument("--link-status-prefix", default="occ/sim",
                   help="where each connection says online/offline (its Last Will): PREFIX/CLIENT_ID/status "
                        "(default occ/sim, outside the device tree)")
    g.add_argument("--mqtt-version", choices=PROTOCOLS, default="3.1.1",
                   help="MQTT protocol version of the simulated devices (default 3.1.1)")
    g.add_argument("--transport", choices=TRANSPORTS, default="raw",
                   help="raw: packets built and batched by the simulator (default); paho: through paho-mqtt")
    g.add_argument("--qos", type=int, choices=(0, 1), default=None,
                   help="QoS of telemetry (status and events are always QoS 1); run default 1, load default 0")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="occ simulate",
        description="Simulate Hà Giang's hydromet stations, traffic counters and cameras over MQTT.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Without a command, `run` is assumed.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{run,load,scenarios}")

    r = sub.add_parser("run", help="simulate the device catalog (default)", prog="occ simulate [run]",
                       description="Simulate the device catalog with scenarios; output to MQTT and/or JSON lines.",
                       epilog="Other commands: `occ simulate load --help` (benchmark load), "
                              "`occ simulate scenarios [validate FILE …]`. See simulators/README.md.")
    _add_broker_options(r)
    c = r.add_argument_group("catalog and scenarios")
    c.add_argument("--config-dir", default=default_config_dir(),
                   help="configuration folder (default $OCC_CONFIG_DIR, else ./config, else the source tree's)")
    c.add_argument("--devices", nargs="+", action="extend", default=None, metavar="FILE",
                   help="device files (default CONFIG/devices/*.yaml)")
    c.add_argument("--areas", default=None, metavar="FILE", help="areas file (default CONFIG/areas.yaml)")
    c.add_argument("--kinds", default=",".join(KINDS), help=f"device kinds to simulate (default {','.join(KINDS)})")
    c.add_argument("--scale", type=int, default=1, metavar="N",
                   help="simulate N copies of the catalog (ids suffixed .r001 …) for load tests")
    c.add_argument("--scenario", action="append", default=[], metavar="NAME|FILE",
                   help="scenario name (CONFIG/scenarios/NAME.yaml) or file; repeat to compose")
    c.add_argument("--check", action="store_true",
                   help="evaluate the scenarios' `expect:` windows at the end; exit 1 if one fails")
    t = r.add_argument_group("time")
    pace = t.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=None, help="simulated seconds per wall second (default 1)")
    pace.add_argument("--fast", action="store_true", help="as fast as possible, simulated timestamps")
    t.add_argument("--start", default=None,
                   help="simulated start: ISO-8601 (local +07:00 if no offset), 'now', or before now as "
                        "--start=-2d or --start '2d ago'")
    t.add_argument("--duration", default=None,
                   help="simulated length (90s, 6h, 3d, or 'forever'); default: the scenarios' duration")
    t.add_argument("--seed", type=int, default=None, help="random seed: the same seed gives the same stream")
    t.add_argument("--tick", default="60s", help="simulation step (default 60s; part of what --seed reproduces)")
    t.add_argument("--allow-future", action="store_true",
                   help="let simulated time run ahead of the present (default: catch up, then real time)")
    o = r.add_argument_group("output")
    o.add_argument("--out", default=None, metavar="FILE.jsonl", help="also write every message as JSON lines")
    o.add_argument("--no-mqtt", action="store_true", help="do not connect to a broker (use with --out)")
    o.add_argument("--replay", default=None, metavar="FILE.jsonl", help="play back a file written with --out")
    o.add_argument("--form", choices=SIM_FORMS, default="object", help="telemetry payload form (default object)")
    o.add_argument("--connections", type=int, default=4, help="connections in the shared pool (default 4)")
    o.add_argument("--mode", choices=MODES, default="pool",
                   help="pool: devices share a few connections; device: a real connection (client id, Last Will)"
                        " per device; gateway: one connection, gateway telemetry messages")
    o.add_argument("--keepalive", type=int, default=60, help="MQTT keepalive seconds (default 60)")
    o.add_argument("--quiet", action="store_true", help="no progress line")

    ld = sub.add_parser("load", help="load test: N devices × rate, payload form, readings per message",
                        description="Publish synthetic telemetry as fast as asked and report the achieved rate.")
    _add_broker_options(ld)
    ld.add_argument("--devices", type=int, default=1000, help="number of devices (default 1000)")
    ld.add_argument("--rate", type=float, default=0.0, help="messages/s over all devices (default 0 = maximum)")
    ld.add_argument("--form", choices=LOAD_FORMS, default="object", help="payload form (default object)")
    ld.add_argument("--readings", type=int, default=5, help="readings per message (default 5)")
    ld.add_argument("--per-entry", type=int, default=5, help="metrics per timestamp in array/gateway (default 5)")
    ld.add_argument("--duration", default="10s", help="how long to publish (default 10s)")
    ld.add_argument("--connections", type=int, default=4, help="connections (default 4)")
    ld.add_argument("--kind", choices=sorted(LOAD_METRICS), default="hydromet", help="device kind (default hydromet)")
    ld.add_argument("--ts", choices=("iso", "s", "ms"), default="iso", help="timestamp format (default iso)")
    ld.add_argument("--seed", type=int, default=0)
    ld.add_argument("--write-devices", default=None, metavar="FILE",
                    help="write a device file for the load devices (for `occ devices import`) and exit")
    ld.add_argument("--json", action="store_true", help="print the result as a JSON object on stdout")

    sc = sub.add_parser("scenarios", help="list scenarios, or validate scenario files against the catalog")
    sc.add_argument("validate", nargs="?", choices=("validate",), help="validate the given files")
    sc.add_argument("files", nargs="*", help="scenario names or files")
    sc.add_argument("--config-dir", default=default_config_dir(),
                    help="configuration folder (default $OCC_CONFIG_DIR, else ./config, else the source tree's)")
    sc.add_argument("--devices", nargs="+", action="extend", default=None, metavar="FILE")
    return parser


def _setup_logging(quiet: bool) -> None:
    """logfmt on stderr like every OCC service, unless the host process (a test, `occ up`) set logging up."""
    if not logging.getLogger().handlers:
        setup_logging("WARNING" if quiet else "INFO", service="simulate")


def _stop_on_signals(stop: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _load_fleet(args: argparse.Namespace) -> Fleet:
    kinds = [k.strip() for k in str(getattr(args, "kinds", ",".join(KINDS))).split(",") if k.strip()]
    fleet = load_fleet(args.devices, config_dir=args.config_dir, areas_file=getattr(args, "areas", None), kinds=kinds)
    scale = getattr(args, "scale", 1)
    return fleet.replicate(scale) if scale > 1 else fleet


def resolve_times(args: argparse.Namespace, scenarios: Sequence[ScenarioSpec], now: float) -> tuple[float, float | None,
                                                                                                     float | None]:
    """(start, end or None, speed or None for fast) from --start/--duration/--speed/--fast and the scenarios."""
    speed: float | None = None if args.fast else (args.speed if args.speed is not None else 1.0)
    duration: float | None
    if args.duration is not None and str(args.duration).strip() in ("forever", "0", "inf"):
        duration = None
    elif args.duration is not None:
        duration = parse_duration(args.duration)
    else:
        durations = [s.duration for s in scenarios if s.duration]
        duration = max(durations) if durations else None
    if args.start is not None:
        start = parse_start(args.start, now)
    elif speed is None:
        start = now - (duration if duration is not None else 86400.0)
    elif speed > 1.0:
        # accelerated: replay the recent past so the run ends at the present (no future timestamps)
        start = now - (duration * (1.0 - 1.0 / speed) if duration is not None else 86400.0)
    else:
        start = now
    start = float(round(start))
    end = start + duration if duration is not None else None
    if speed is None and end is None:
        if start >= now:
            raise ValueError("--fast needs --duration when --start is not in the past")
        end = float(round(now))
    return start, end, speed


def cmd_run(args: argparse.Namespace) -> int:
    _setup_logging(args.quiet)
    stop = threading.Event()
    _stop_on_signals(stop)
    if args.no_mqtt and not args.out:
        print("error: --no-mqtt needs --out FILE.jsonl", file=sys.stderr)
        return 2
    if args.replay and args.mode == "device":
        print("error: --replay publishes over a pool or gateway, not per-device connections", file=sys.stderr)
        return 2
    outputs: list[Output] = []
    progress = Progress(enabled=not args.quiet)
    try:
        if args.replay:
            messages = list(read_jsonl(args.replay))
            if not args.no_mqtt:
                address = parse_mqtt_url(args.mqtt_url or _default_url(), args.username, args.password)
                mqtt_out = MqttOutput(address, mode=args.mode, connections=args.connections,
                                      client_prefix=args.client_prefix or default_client_prefix("replay"),
                                      per_run_ids=args.client_prefix is None,
                                      gateway_id=args.client_prefix or host_id("replay"),
                                      topic_prefix=args.topic_prefix, keepalive=args.keepalive,
                                      protocol=args.mqtt_version, transport=args.transport,
                                  link_status_prefix=args.link_status_prefix,
                                  credentials=_credentials(args))
                mqtt_out.stop = stop
                mqtt_out.start()
                outputs.append(mqtt_out)
            if args.out:
                outputs.append(JsonlOutput(args.out))
            pacer = Pacer(messages[0].t if messages else 0.0, None if args.fast else (args.speed or 1.0),
                          allow_future=True)
            stats = replay(messages, pacer, outputs, stop=stop, progress=progress)
            print(f"replayed {stats.messages:,} messages in {stats.wall_s:.1f} s", file=sys.stderr)
            return 0

        fleet = _load_fleet(args)
        scenarios = load_scenarios(args.scenario, args.config_dir, fleet.metrics)
        now = time.time()
        start, end, speed = resolve_times(args, scenarios, now)
        seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
        watch = [(x.device, x.metric) for s in scenarios for x in s.expects] if args.check else None
        qos = 1 if args.qos is None else args.qos
        sim = Simulation(fleet, start=start, seed=seed, scenarios=scenarios, tick_s=parse_duration(args.tick),
                         qos=qos, form=args.form, prefix=args.topic_prefix, watch=watch)
        if not args.no_mqtt:
            address = parse_mqtt_url(args.mqtt_url or _default_url(), args.username, args.password)
            mqtt_out = MqttOutput(address, mode=args.mode, connections=args.connections,
                                  client_prefix=args.client_prefix or default_client_prefix("sim"),
                                  per_run_ids=args.client_prefix is None,
                                  gateway_id=args.client_prefix or host_id("sim"),
                                  topic_prefix=args.topic_prefix, keepalive=args.keepalive,
                                  device_ids=[d.id for d in sim.devices], device_status_topics=sim.status_topics,
                                  protocol=args.mqtt_version, transport=args.transport,
                                  link_status_prefix=args.link_status_prefix, credentials=_credentials(args))
            mqtt_out.stop = stop
            mqtt_out.start()
            outputs.append(mqtt_out)
        if args.out:
            outputs.append(JsonlOutput(args.out))
        pacer = Pacer(start, speed, allow_future=args.allow_future)
        names = ", ".join(s.name for s in scenarios) or "none"
        log.info("simulating %d devices from %s (%s) with seed %d, scenarios: %s", len(sim.devices),
                 iso_local(start), "fast" if speed is None else f"{speed:g}x", seed, names)
        stats = run(sim, pacer, outputs, end=end, stop=stop, progress=progress)
        hours = (stats.sim_end - stats.sim_start) / 3600.0
        rate = stats.messages / stats.wall_s if stats.wall_s else 0.0
        print(f"simulated {hours:.1f} h in {stats.wall_s:.1f} s: {stats.messages:,} messages ({rate:,.0f} msg/s), "
              f"seed {seed}", file=sys.stderr)
        if args.check:
            results = check_expectations(scenarios, start, sim.watch, fleet)
            for x, ok, detail in results:
                print(f"{'PASS' if ok else 'FAIL'} {x.name}: {detail}")
            if not all(ok for _, ok, _ in results):
                return 1
        return 0
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OccError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for o in outputs:
            o.close()


def cmd_load(args: argparse.Namespace) -> int:
    _setup_logging(False)
    qos = 0 if args.qos is None else args.qos
    try:
        cfg = LoadConfig(devices=args.devices, rate=args.rate, form=args.form, readings=args.readings,
                         per_entry=args.per_entry, qos=qos, duration=parse_duration(args.duration),
                         kind=args.kind, connections=args.connections,
                         client_prefix=args.client_prefix or default_client_prefix("load"),
                         per_run_ids=args.client_prefix is None,
                         topic_prefix=args.topic_prefix, seed=args.seed, ts_format=args.ts,
                         protocol=args.mqtt_version, transport=args.transport,
                         link_status_prefix=args.link_status_prefix)
        if args.write_devices:
            write_device_file(cfg, args.write_devices)
            print(f"wrote {cfg.devices} devices to {args.write_devices}", file=sys.stderr)
            return 0
        address = parse_mqtt_url(args.mqtt_url or _default_url(), args.username, args.password)
        stop = threading.Event()
        _stop_on_signals(stop)
        result = run_load(cfg, address, stop=stop, progress=sys.stderr)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OccError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    summary = {
        "publish_msgs_per_s": round(result.msgs_per_s, 1),
        "readings_per_s": round(result.readings_per_s, 1),
        "messages": result.messages,
        "devices": cfg.devices,
        "form": cfg.form,
        "readings_per_message": result.readings // max(result.messages, 1),
        "qos": qos,
        "elapsed_s": round(result.elapsed_s, 3),
        "cpu_fraction_of_core": round(result.cpu_s / result.elapsed_s, 3) if result.elapsed_s else None,
    }
    if args.json:
        print(orjson.dumps(summary).decode())
    else:
        print(f"published {result.messages:,} messages in {result.elapsed_s:.1f} s: "
              f"{result.msgs_per_s:,.0f} msg/s, {result.readings_per_s:,.0f} readings/s "
              f"({cfg.devices} devices, {cfg.form}, qos {qos})")
    return 0


def cmd_scenarios(args: argparse.Namespace) -> int:
    try:
        require_config_dir(args.config_dir, needs="scenarios")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.validate:
        for name in available_scenarios(args.config_dir):
            try:
                spec = load_scenarios([name], args.config_dir)[-1]
                print(f"{name:32s} {spec.description}")
            except ConfigError as exc:
                print(f"{name:32s} INVALID: {exc}")
        return 0
    status = 0
    try:
        fleet = load_fleet(args.devices, config_dir=args.config_dir)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name in args.files or available_scenarios(args.config_dir):
        try:
            specs = load_scenarios([name], args.config_dir, fleet.metrics)
            Simulation(fleet, start=time.time(), seed=0, scenarios=specs, spinup_s=0)
            print(f"ok      {name}")
        except ConfigError as exc:
            print(f"invalid {exc}")
            status = 2
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for `occ simulate …` (the lead's CLI passes the remaining arguments)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] not in COMMANDS:
        args_list = ["run", *args_list]  # `run` is the default command, `occ simulate --help` shows its options
    args = build_parser().parse_args(args_list)
    if args.command == "load":
        return cmd_load(args)
    if args.command == "scenarios":
        return cmd_scenarios(args)
    return cmd_run(args)


def demo_argv(mqtt_url: str | None = None, *, speed: float = DEMO_SPEED, config_dir: str = "config") -> list[str]:
    """Arguments for `occ up --demo`: the demo scenario over the catalog, accelerated, forever.

    The run starts a day in the past and plays it at `speed` (a day in 24 minutes at 60×) until it catches up
    with the present, then continues in real time, so the wall display fills at once and never shows
    timestamps from the future."""
    argv = ["run", "--scenario", DEMO_SCENARIO, "--speed", f"{speed:g}", "--start=-1d", "--duration", "forever",
            "--config-dir", config_dir, "--quiet"]
    if mqtt_url:
        argv += ["--mqtt-url", mqtt_url]
    return argv


def demo_main(mqtt_url: str | None = None, *, speed: float = DEMO_SPEED, config_dir: str = "config") -> int:
    """Run the demo in this process until SIGINT/SIGTERM (for `occ up --demo`)."""
    return main(demo_argv(mqtt_url, speed=speed, config_dir=config_dir))


if __name__ == "__main__":
    raise SystemExit(main())
