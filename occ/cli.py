"""`occ` command line: `occ up`, `occ ingest`, `occ alerts [ack|resolve|list]`, `occ rules validate|list`,
`occ db migrate|status`, `occ devices import|list`, `occ simulate`.

Global flags come before the command: `--config FILE` (repeatable), `--set section.key=value` (repeatable),
`--database-url`, `--mqtt-url`, `--log-level`. Commands that need the database or broker and have none
configured use the endpoints of a running `occ up` (var/endpoints.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from occ.config import Config, load_config
from occ.errors import AlreadyRunning, ConfigError, OccError
from occ.logs import setup_logging

log = logging.getLogger("occ.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="occ", description="OCC operations-center backend")
    parser.add_argument("--config", action="append", default=None, metavar="FILE",
                        help="YAML config file (default config/occ.yaml when present)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set ingest.batch_max=2000")
    parser.add_argument("--database-url", help="PostgreSQL URL (database.url)")
    parser.add_argument("--mqtt-url", help="MQTT broker URL (mqtt.url)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole stack on this machine (embedded database and broker)")
    up.add_argument("--demo", action="store_true", help="import the Hà Giang catalog and run the simulators")
    up.add_argument("--workers", type=int, default=2, help="ingest workers on the shared subscription (default 2)")
    up.add_argument("--broker", choices=("auto", "mosquitto", "iotcore"), default="auto",
                    help="embedded broker (auto: Mosquitto when installed, else rumqttd from iotcore)")
    up.add_argument("--speed", type=float, default=60.0, help="demo simulation speed (default 60×)")

    ingest = sub.add_parser(
        "ingest", help="run one ingest worker",
        description="Run one ingest worker. SIGINT/SIGTERM: write and acknowledge what it holds, keep its MQTT "
                    "session, exit 0. SIGUSR1: drain — leave the share group (unsubscribe), write and acknowledge "
                    "everything held or still queued for it, end its session (expiry 0), exit 0. Exit 1 when a "
                    "task crashed (restart it: the broker redelivers what was not acknowledged).")
    ingest.add_argument("--drain", action="store_true",
                        help="drain the session of this client id (a worker that is gone) and exit")
    ingest.add_argument("--transport", choices=("native", "paho"),
                        help="MQTT receive path (ingest.transport; default native, paho is the fallback)")

    db = sub.add_parser("db", help="database schema and status")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("migrate", help="apply pending migrations")
    status = db_sub.add_parser("status", help="versions, TimescaleDB or plain path, sizes")
    status.add_argument("--json", action="store_true")
    db_sub.add_parser("maintain", help="create partitions ahead, refresh rollups, apply retention (plain path)")

    devices = sub.add_parser("devices", help="device registry")
    dev_sub = devices.add_subparsers(dest="devices_command", required=True)
    imp = dev_sub.add_parser("import", help="import (upsert) devices from YAML files")
    imp.add_argument("files", nargs="+")
    lst = dev_sub.add_parser("list", help="list devices")
    lst.add_argument("--kind")
    lst.add_argument("--area")
    lst.add_argument("--format", choices=("table", "yaml", "json"), default="table")

    from alerts.cli import register as register_alerts

    register_alerts(sub)

    from web.cli import add_parsers as add_web_parsers

    add_web_parsers(sub)  # `occ web`, `occ users …`

    sim = sub.add_parser("simulate", help="device simulators (see `occ simulate --help`)", add_help=False)
    sim.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _flags(args: argparse.Namespace) -> dict[str, str]:
    flags: dict[str, str] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}", path="command line")
        flags[key.strip()] = value
    if args.database_url:
        flags["database.url"] = args.database_url
    if args.mqtt_url:
        flags["mqtt.url"] = args.mqtt_url
    if args.log_level:
        flags["log_level"] = args.log_level
    if getattr(args, "transport", None):
        flags["ingest.transport"] = args.transport
    return flags


def _with_running_stack(config: Config) -> Config:
    """Fill in database/broker URLs from a running `occ up` when none are configured."""
    from occ.config import apply_overrides
    from occ.supervisor import read_endpoints

    if config.database.url and config.mqtt.url:
        return config
    endpoints = read_endpoints(config.var_path) or {}
    values: dict[str, Any] = {}
    if not config.database.url and endpoints.get("database_url"):
        values["database.url"] = endpoints["database_url"]
    if not config.mqtt.url and endpoints.get("mqtt_services_url"):
        values["mqtt.url"] = endpoints["mqtt_services_url"]
    return apply_overrides(config, values, source=str(config.var_path / "endpoints.json")) if values else config


def _require_database(config: Config) -> str:
    if not config.database.url:
        raise ConfigError("no database configured: set OCC_DATABASE_URL or --database-url, or start `occ up`")
    return config.database.url


async def _open_store(config: Config, *, migrate: bool = True) -> Any:
    from occ.store import Store

    db = config.database
    return await Store.connect(
        _require_database(config), pool_size=2, migrate=migrate, timescaledb=db.timescaledb,
        retention_days=db.retention_days, compress_after_days=db.compress_after_days,
        partition_days=db.partition_days, partitions_ahead=db.partitions_ahead, timezone=config.site.timezone,
    )


async def _db_command(config: Config, args: argparse.Namespace) -> int:
    store = await _open_store(config, migrate=args.db_command == "migrate")
    try:
        if args.db_command == "migrate":
            result = store.migration
            applied = getattr(result, "applied", None) if result else None
            print(f"database migrated ({store.mode} path); applied: {applied or 'nothing new'}")
        elif args.db_command == "maintain":
            print(await store.maintain())
        else:
            info = await store.status()
            if args.json:
                print(json.dumps(info, default=str, indent=2))
            else:
                _print_status(info)
    finally:
        await store.close()
    return 0


def _print_status(info: dict[str, Any]) -> None:
    ts = info.get("timescaledb_version")
    print(f"mode:        {info['mode']}" + (f" (TimescaleDB {ts})" if ts else " (plain PostgreSQL)"))
    print(f"server:      PostgreSQL {info.get('server_version')}")
    migrations = info.get("migrations", [])
    print("migrations:  " + ", ".join(f"{m['version']}:{m['name']}({m['variant']})" for m in migrations))
    print(f"readings:    oldest {info.get('oldest_reading')}  newest {info.get('newest_reading')}")
    print("tables:")
    for name, size in sorted(info.get("tables", {}).items()):
        rows, about = size.get("rows", size.get("rows_estimate", 0)), "" if size.get("exact") else "~"
        print(f"  {name:<28} {about:>1}{rows:>11} rows  {size.get('bytes', 0) / 1e6:>10.1f} MB")


async def _devices_command(config: Config, args: argparse.Namespace) -> int:
    from pathlib import Path

    from occ.catalog import Catalog
    from occ.devices import dump_devices, load_areas, load_devices

    if args.devices_command == "import":
        catalog_path = config.config_path / "metrics.yaml"
        catalog = Catalog.load(catalog_path) if catalog_path.exists() else Catalog.default()
        areas_path = config.config_path / "areas.yaml"
        areas = load_areas(areas_path) if areas_path.exists() else None
        devices = []
        for file in args.files:  # every file is validated before anything is written
            devices.extend(load_devices(Path(file), catalog, areas=areas))
        store = await _open_store(config)
        try:
            count = await store.upsert_devices(devices)
        finally:
            await store.close()
        print(f"imported {count} devices from {len(args.files)} file(s)")
        return 0
    store = await _open_store(config, migrate=False)
    try:
        devices = await store.list_devices(kind=args.kind, area=args.area)
    finally:
        await store.close()
    if args.format == "yaml":
        print(dump_devices(devices), end="")
    elif args.format == "json":
        print(json.dumps([{"id": d.id, "kind": d.kind, "name": d.name, "lat": d.lat, "lon": d.lon, "area": d.area,
                           "attributes": d.attributes, "provisioned": d.provisioned} for d in devices],
                         ensure_ascii=False, indent=2))
    else:
        for d in devices:
            flag = "" if d.provisioned else "  (unprovisioned)"
            print(f"{d.id:<20} {d.kind:<9} {d.area or '-':<14} {d.name}{flag}")
        print(f"{len(devices)} devices")
    return 0


async def _ingest(config: Config, *, drain_only: bool = False) -> int:
    from ingest.service import run

    stop, drain = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, drain.set)
    return await run(config, stop=stop, drain=drain, drain_only=drain_only)


def _up(config: Config, args: argparse.Namespace) -> int:
    from occ.supervisor import Supervisor

    supervisor = Supervisor(config, demo=args.demo, workers=args.workers, broker=args.broker, speed=args.speed)
    def request_stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM takes the same clean path as Ctrl-C

    signal.signal(signal.SIGTERM, request_stop)
    try:
        endpoints = supervisor.start()
        print("OCC is up:", flush=True)
        for key in ("database_url", "mqtt_url", "mqtt_services_url", "ingest_metrics", "alerts_metrics", "web_url",
                    "web_login"):
            if key in endpoints:
                print(f"  {key:<18} {endpoints.get(key)}", flush=True)
        print(f"  endpoints file     {config.var_path / 'endpoints.json'}\nPress Ctrl-C to stop.", flush=True)
        supervisor.watch()
    except KeyboardInterrupt:
        print("stopping…", flush=True)
    finally:
        if supervisor.holds_lock:
            supervisor.stop()
    return 0


def _simulate(args: argparse.Namespace, rest: list[str]) -> int:
    import os

    from occ.supervisor import read_endpoints
    from simulators.cli import main as simulate_main

    config = load_config(args.config, flags=_flags(args))
    url = config.mqtt.url or (read_endpoints(config.var_path) or {}).get("mqtt_url")
    if url and "--mqtt-url" not in rest:
        os.environ["OCC_MQTT_URL"] = url
    os.environ.setdefault("OCC_CONFIG_DIR", config.config_dir)
    return simulate_main(rest)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if "simulate" in argv:
        # The simulator has its own parser; global flags before the command still apply.
        at = argv.index("simulate")
        args = parser.parse_args([*argv[:at], "simulate"])
        return _simulate(args, argv[at + 1 :])
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, flags=_flags(args))
        setup_logging(config.log_level, service=args.command)
        if args.command == "up":
            return _up(config, args)
        config = _with_running_stack(config)
        if args.command == "ingest":
            return asyncio.run(_ingest(config, drain_only=args.drain))
        if args.command == "db":
            return asyncio.run(_db_command(config, args))
        if args.command == "devices":
            return asyncio.run(_devices_command(config, args))
        if args.command in ("alerts", "rules"):
            from alerts.cli import main as alerts_main

            return alerts_main(config, args)
        if hasattr(args, "handler"):
            return int(args.handler(config, args))
    except AlreadyRunning as exc:
        print(f"occ: {exc}", file=sys.stderr)
        return 3
    except OccError as exc:
        print(f"occ: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
