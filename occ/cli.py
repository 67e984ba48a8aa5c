"""`occ` command line: `occ up`, `occ ingest`, `occ alerts [ack|resolve|list]`, `occ rules validate|list`,
`occ db migrate|status|maintain`, `occ devices import|list|show|remove`, `occ history`, `occ simulate`.

Global flags come before the command: `--config FILE` (repeatable), `--set section.key=value` (repeatable),
`--database-url`, `--mqtt-url`, `--log-level`. Commands that need the database or broker and have none
configured use the endpoints of a running `occ up` (var/endpoints.json). Everyday failures end in one line and a
non-zero exit status (occ/cli_errors.py), never a traceback.
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

from occ import cli_errors
from occ.config import Config, load_config
from occ.errors import ConfigError
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
    up.add_argument("--mqtt-port", type=_port, default=None, help="embedded broker port (default: a free one)")
    up.add_argument("--db-port", type=_port, default=None, help="embedded PostgreSQL port (default: a free one)")
    up.add_argument("--bind", default="127.0.0.1", metavar="ADDRESS",
                    help="address the embedded broker listens on (default 127.0.0.1; 0.0.0.0 lets devices on "
                         "the LAN connect; the database always stays on 127.0.0.1)")

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

    ba = sub.add_parser(
        "broker-auth", help="render Mosquitto's password and ACL files from the store (compose, a host's Mosquitto)",
        description="Write passwd and acl for a Mosquitto that `occ up` does not run (docker-compose, systemd): "
                    "every device, gateway and service account from the store, with its topics (issue 7). The "
                    "service accounts (occ-ingest, occ-alerts, occ-web, occ-sim, occ-monitor) are ensured first, "
                    "all with the password in $MQTT_SERVICE_PASSWORD. Every visible Mosquitto process gets "
                    "SIGHUP when the files change (compose: share its pid namespace).")
    ba.add_argument("--out", required=True, metavar="DIR", help="folder of passwd and acl (the broker's)")
    ba.add_argument("--watch", action="store_true", help="keep the files current (polls the store every second)")
    tls = sub.add_parser("tls", help="make a CA and a server certificate for a broker's TLS listener")
    tls.add_argument("folder", metavar="DIR", help="writes ca.pem, ca.key, server.pem, server.key (keys 0600)")
    tls.add_argument("--host", action="append", default=[], metavar="NAME",
                     help="a name or address devices use to reach the broker (repeatable; localhost is included)")
    db = sub.add_parser("db", help="database schema and status")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("migrate", help="apply pending migrations")
    status = db_sub.add_parser("status", help="versions, TimescaleDB or plain path, sizes")
    status.add_argument("--json", action="store_true")
    db_sub.add_parser("maintain", help="create partitions ahead, refresh rollups, apply retention (plain path)")

    devices = sub.add_parser("devices", help="device registry")
    dev_sub = devices.add_subparsers(dest="devices_command", required=True)
    imp = dev_sub.add_parser("import", help="import devices from YAML files: created / updated / unchanged each")
    imp.add_argument("files", nargs="+")
    imp.add_argument("--dry-run", action="store_true", help="show what would change, write nothing")
    imp.add_argument("--force", action="store_true", help="allow changing the kind of a registered device")
    imp.add_argument("-v", "--verbose", action="store_true", help="also list the unchanged devices")
    lst = dev_sub.add_parser("list", help="list devices")
    lst.add_argument("--kind")
    lst.add_argument("--area", help="area id, e.g. bac-quang (config/areas.yaml)")
    lst.add_argument("--format", choices=("table", "yaml", "json"), default="table")
    show = dev_sub.add_parser("show", help="one device: attributes, status, latest values")
    show.add_argument("device_id", metavar="ID")
    show.add_argument("--format", choices=("table", "json"), default="table")
    rm = dev_sub.add_parser("remove", help="unregister devices (their readings stay; new ones are refused)")
    rm.add_argument("device_ids", nargs="+", metavar="ID")
    imp.add_argument("--issue-credentials", metavar="FILE",
                     help="issue MQTT credentials to the devices that have none and append them to FILE (0600)")
    from occ.cli_credentials import add_parsers as add_credentials_parsers

    add_credentials_parsers(dev_sub)

    hist = sub.add_parser("history", help="a device's metric over time, bucketed and aggregated",
                          description="Read history through the store's query (rollups where they fit, raw "
                                      "readings elsewhere). Times are in the site time zone (site.timezone).")
    hist.add_argument("device_id", metavar="DEVICE")
    hist.add_argument("metric", metavar="METRIC")
    hist.add_argument("--from", dest="start", default="-24h",
                      help="start: ISO time (site time zone unless it has an offset), a date, 'now', or "
                           "relative like -6h, -7d (default -24h)")
    hist.add_argument("--to", dest="end", default="now", help="end (exclusive), same forms (default now)")
    hist.add_argument("--bucket", default="1h", help="15m, 1h, 1d …, day, week, month or raw (default 1h)")
    hist.add_argument("--agg", default="avg", choices=("avg", "min", "max", "sum", "count", "first", "last"))
    hist.add_argument("--fill", choices=("null", "previous", "linear", "zero"), default=None,
                      help="fill empty buckets (default: only buckets with data)")
    hist.add_argument("--hydro-day", action="store_true",
                      help="days start at site.hydro_day_start_hour (07:00) instead of midnight")
    hist.add_argument("--format", choices=("table", "csv", "json"), default="table")

    from alerts.cli import register as register_alerts

    register_alerts(sub)

    from web.cli import add_parsers as add_web_parsers

    add_web_parsers(sub)  # `occ web`, `occ users …`

    sim = sub.add_parser("simulate", help="device simulators (see `occ simulate --help`)", add_help=False)
    sim.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (1-65535)")
    return value


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


async def _open_store(config: Config, *, migrate: bool = True) -> Any:
    from occ.cli_devices import open_store

    return await open_store(config, migrate=migrate)


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
    from occ import cli_devices

    if args.devices_command == "credentials":
        from occ.cli_credentials import credentials_command

        return await credentials_command(config, args)
    if args.devices_command == "import":
        return await cli_devices.import_devices(config, args.files, force=args.force, dry_run=args.dry_run,
                                                issue_credentials=args.issue_credentials,
                                                verbose=args.verbose)
    if args.devices_command == "list":
        return await cli_devices.list_devices(config, kind=args.kind, area=args.area, fmt=args.format)
    if args.devices_command == "show":
        return await cli_devices.show_device(config, args.device_id, fmt=args.format)
    return await cli_devices.remove_devices(config, args.device_ids)


async def _history_command(config: Config, args: argparse.Namespace) -> int:
    from occ import cli_history

    return await cli_history.history(config, args.device_id, args.metric, start=args.start, end=args.end,
                                     bucket=args.bucket, agg=args.agg, fill=args.fill, hydro_day=args.hydro_day,
                                     fmt=args.format)


async def _ingest(config: Config, *, drain_only: bool = False) -> int:
    from ingest.service import run
    from occ.lifecycle import ignore_stop_signals, stop_on_signals

    stop, drain = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    stop_on_signals(stop, name="ingest")
    loop.add_signal_handler(signal.SIGUSR1, drain.set)
    try:
        return await run(config, stop=stop, drain=drain, drain_only=drain_only)
    finally:
        ignore_stop_signals()


def _up(config: Config, args: argparse.Namespace) -> int:
    from occ.supervisor import Supervisor, is_wildcard

    supervisor = Supervisor(config, demo=args.demo, workers=args.workers, broker=args.broker, speed=args.speed,
                            bind=args.bind, mqtt_port=args.mqtt_port, db_port=args.db_port)

    def request_stop(signum: int, frame: Any) -> None:
        supervisor.request_stop(signum)  # a flag only: the supervisor stops at its next step, never half-way

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, request_stop)
    if not config.mqtt.url and args.bind != "127.0.0.1" and not config.mqtt.auth:
        exposed = "every interface" if is_wildcard(args.bind) else args.bind
        log.warning("the embedded broker listens on %s with no authentication: anyone who can reach this "
                    "machine can publish readings and read every message", exposed)
    try:
        endpoints = supervisor.start()
        if endpoints is not None:
            _print_endpoints(supervisor, endpoints, config)
            supervisor.watch()
        print("stopping…", flush=True)
    finally:
        if supervisor.holds_lock:
            supervisor.stop()
    return 0


def _print_endpoints(supervisor: Any, endpoints: dict[str, Any], config: Config) -> None:
    """The stack as a list a person can read: one URL per line, passwords masked."""
    from occ.redact import redact_url

    broker = endpoints.get("broker")
    lines = [f"OCC is up (pid {endpoints['pid']}):",
             f"  database            {redact_url(endpoints['database_url'])}"
             + ("  (embedded PostgreSQL, data in var/postgres)" if supervisor.postgres else ""),
             f"  MQTT for devices    {redact_url(endpoints['mqtt_url'])}"
             + (f"  (embedded {broker})" if broker != "external" else "")]
    if endpoints["mqtt_services_url"] != endpoints["mqtt_url"]:
        lines.append(f"  MQTT for services   {redact_url(endpoints['mqtt_services_url'])}  (MQTT 5 listener "
                     "OCC's own services use; point devices at the URL above)")
    else:
        lines.append("  MQTT for services   the same URL (mqtt_services_url: what OCC's own services use, MQTT 5)")
    if endpoints.get("mqtt_tls_url"):
        lines.append(f"  MQTT over TLS       {endpoints['mqtt_tls_url'].split('?')[0]}  (CA for devices: "
                     f"{endpoints['mqtt_ca']})")
    if endpoints.get("mqtt_auth") == "closed":
        lines.append("  MQTT accounts       closed broker: `occ devices credentials issue DEVICE` gives a device "
                     "its password")
    elif endpoints.get("mqtt_auth") == "open" and endpoints.get("broker") == "iotcore":
        lines.append("  MQTT accounts       NONE ENFORCED (rumqttd): any client may publish anything")
    if endpoints.get("bind") and endpoints["bind"] != "127.0.0.1":
        lines.append(f"  broker listens on   {endpoints['bind']} (reachable from other machines)")
    for name, service in endpoints.get("services", {}).items():
        if service.get("url"):
            lines.append(f"  {name:<19} {service['url']}")
        if service.get("health"):
            lines.append(f"  {name + ' health':<19} {service['health']}")
            lines.append(f"  {name + ' metrics':<19} {service['metrics']}")
        else:
            lines.append(f"  {name:<19} running (pid {service.get('pid')})")
    if endpoints.get("web_login"):
        lines.append(f"  web login           {endpoints['web_login']}")
    if endpoints.get("device_credentials"):
        lines.append(f"  device credentials  {endpoints['device_credentials']}")
    lines.append(f"  endpoints file      {config.var_path / 'endpoints.json'}  (other occ commands read it; "
                 "it holds the URLs unmasked)")
    lines.append("Press Ctrl-C to stop.")
    print("\n".join(lines), flush=True)


def _broker_auth(config: Config, args: argparse.Namespace) -> int:
    import os
    import threading
    from pathlib import Path

    from occ.embedded.auth_sync import serve_broker_auth

    if not config.database.url:
        raise ConfigError("no database configured (OCC_DATABASE_URL or --database-url)", path="command line")
    password = os.environ.get("MQTT_SERVICE_PASSWORD", "")
    if len(password) < 16:
        raise ConfigError("MQTT_SERVICE_PASSWORD must hold the services' MQTT password (16 characters or more)",
                          path="environment")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return serve_broker_auth(config.database.url, Path(args.out), password, watch=args.watch,
                             prefix=config.mqtt.topic_prefix, stop=stop)


def _simulate(config: Config, rest: list[str]) -> int:
    import os

    from occ.supervisor import read_endpoints
    from simulators.cli import main as simulate_main

    endpoints = read_endpoints(config.var_path) or {}
    url = config.mqtt.url or endpoints.get("mqtt_url")
    sim_url = (endpoints.get("mqtt_service_urls") or {}).get("occ-sim")
    own_credentials = any(a.split("=")[0] in ("--username", "--credentials") for a in rest)
    if not config.mqtt.url and sim_url and not own_credentials:
        # A closed `occ up`: the simulators' pooled account, on the devices' listener.
        from occ.supervisor import _with_devices_listener

        url = _with_devices_listener(sim_url, endpoints["mqtt_url"])
    if url and "--mqtt-url" not in rest:
        os.environ["OCC_MQTT_URL"] = url
    os.environ.setdefault("OCC_CONFIG_DIR", config.config_dir)
    return simulate_main(rest)


def _attach_relative_times(argv: list[str]) -> list[str]:
    """`--from -6h` as `--from=-6h`: argparse would take a value starting with '-' for an option."""
    out: list[str] = []
    items = iter(argv)
    for item in items:
        if item in ("--from", "--to") and "simulate" not in out:
            value = next(items, None)
            out.append(item if value is None else f"{item}={value}")
        else:
            out.append(item)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = _attach_relative_times(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    rest: list[str] | None = None
    if "simulate" in argv:
        # The simulator has its own parser; global flags before the command still apply.
        at = argv.index("simulate")
        args = parser.parse_args([*argv[:at], "simulate"])
        rest = argv[at + 1 :]
    else:
        args = parser.parse_args(argv)
    config: Config | None = None
    try:
        config = load_config(args.config, flags=_flags(args))
        if rest is None and args.command != "up":
            config = _with_running_stack(config)  # before anything can fail, so errors name the right server
        status = _simulate(config, rest) if rest is not None else _run(config, args)
        sys.stdout.flush()  # inside the try: a reader that went away (`| head`) is an everyday case too
        return status
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # The one place where a failure becomes what the user reads (occ/cli_errors.py); a bug keeps its traceback.
        failure = cli_errors.describe(exc, database_url=config.database.url if config else None)
        if failure is None:
            raise
        return cli_errors.report(failure)


def _run(config: Config, args: argparse.Namespace) -> int:
    setup_logging(config.log_level, service=args.command)
    if args.command == "up":
        return _up(config, args)
    if args.command == "ingest":
        status = asyncio.run(_ingest(config, drain_only=args.drain))
        # The loop restored SIGTERM's default on closing: a repeated SIGTERM (a group kill plus the supervisor)
        # arriving while the interpreter exits would turn a clean drain into death by signal. It is the same stop.
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        return status
    if args.command == "db":
        return asyncio.run(_db_command(config, args))
    if args.command == "broker-auth":
        return _broker_auth(config, args)
    if args.command == "tls":
        from pathlib import Path

        from occ.embedded.tls import ensure_tls_files

        files = ensure_tls_files(Path(args.folder), hosts=tuple(args.host))
        print(f"CA for devices: {files.ca}\nserver certificate: {files.cert}\nserver key: {files.key}")
        return 0
    if args.command == "devices":
        return asyncio.run(_devices_command(config, args))
    if args.command == "history":
        return asyncio.run(_history_command(config, args))
    if args.command in ("alerts", "rules"):
        from alerts.cli import main as alerts_main

        return alerts_main(config, args)
    if hasattr(args, "handler"):
        return int(args.handler(config, args))
    raise ConfigError(f"unknown command {args.command}", path="command line")


if __name__ == "__main__":
    sys.exit(main())
