"""`occ alerts` (the service), `occ alerts ack|resolve|list`, `occ rules validate|list`.

`register(subparsers)` adds the parsers to the `occ` command line and `main(config, args)` runs them, so
occ/cli.py only needs two lines for all of this.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alerts.model import SEVERITY_COLOURS, parse_duration
from alerts.rules import load_rules, rule_files
from occ.config import Config
from occ.errors import ConfigError


def register(sub: Any) -> None:
    alerts = sub.add_parser("alerts", help="run the alerts engine, or ack/resolve/list alerts")
    a_sub = alerts.add_subparsers(dest="alerts_command")
    ack = a_sub.add_parser("ack", help="acknowledge an alert")
    ack.add_argument("id", type=int)
    ack.add_argument("--user", required=True)
    ack.add_argument("--note", default="")
    ack.add_argument("--expires", default=None, metavar="DURATION", help="e.g. 2h: the acknowledgement lapses")
    res = a_sub.add_parser("resolve", help="resolve an alert by hand")
    res.add_argument("id", type=int)
    res.add_argument("--user", required=True)
    res.add_argument("--note", default="")
    lst = a_sub.add_parser("list", help="list alerts (open by default)")
    lst.add_argument("--state", default="open",
                     help="open (default), active, all, pending, firing, recovering, resolved")
    lst.add_argument("--area")
    lst.add_argument("--device")
    lst.add_argument("--min-severity", type=int)
    lst.add_argument("--limit", type=int, default=100)
    lst.add_argument("--json", action="store_true")

    rules = sub.add_parser("rules", help="alert rule files")
    r_sub = rules.add_subparsers(dest="rules_command", required=True)
    val = r_sub.add_parser("validate", help="check rule files; non-zero exit naming file, line and problem")
    val.add_argument("files", nargs="+")
    rl = r_sub.add_parser("list", help="the rules in config/rules (and the devices each covers)")
    rl.add_argument("--json", action="store_true")


def rules_dir(config: Config) -> Path:
    return Path(config.alerts.rules_dir) if config.alerts.rules_dir else config.config_path / "rules"


def main(config: Config, args: argparse.Namespace) -> int:
    if args.command == "rules":
        return _rules(config, args)
    if getattr(args, "alerts_command", None) is None:
        return asyncio.run(_serve(config))
    return asyncio.run(_operate(config, args))


def _rules(config: Config, args: argparse.Namespace) -> int:
    if args.rules_command == "validate":
        total = 0
        for file in args.files:  # each file on its own, so every bad file is named
            ruleset = load_rules([file])
            total += len(ruleset.rules)
            print(f"{file}: ok ({len(ruleset.rules)} rules)")
        load_rules(args.files)  # and together (names unique across files, references resolve)
        print(f"{total} rules valid")
        return 0
    files = rule_files(rules_dir(config))
    if not files:
        raise ConfigError(f"no rule files in {rules_dir(config)}")
    ruleset = load_rules(files)
    devices = _catalog_devices(config)
    described = ruleset.describe(devices)
    if args.json:
        print(json.dumps(described, ensure_ascii=False, indent=2))
        return 0
    for r in described:
        levels = ", ".join(f"{lv['name']}({lv['severity']})" for lv in r["levels"])
        covered = f"{r.get('devices', '-'):>4}" if devices else "   -"
        flag = " internal" if r["internal"] else ""
        print(f"{r['name']:<26} {r['kind']:<13} {covered} devices  {levels}{flag}")
    print(f"{len(described)} rules from {len(files)} file(s)")
    return 0


def _catalog_devices(config: Config) -> list[Any]:
    from occ.catalog import Catalog
    from occ.devices import load_devices

    metrics = config.config_path / "metrics.yaml"
    catalog = Catalog.load(metrics) if metrics.exists() else Catalog.default()
    files = sorted((config.config_path / "devices").glob("*.yaml"))
    return [d for f in files for d in load_devices(f, catalog)]


async def _serve(config: Config) -> int:
    from alerts.service import run

    stop = asyncio.Event()
    reload = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    return await run(config, stop=stop, reload=reload)


async def _operate(config: Config, args: argparse.Namespace) -> int:
    from occ.store import Store

    if not config.database.url:
        raise ConfigError("no database configured: set OCC_DATABASE_URL or --database-url, or start `occ up`")
    store = await Store.connect(config.database.url, pool_size=1, migrate=False)
    try:
        if args.alerts_command == "ack":
            expires = None
            if args.expires:
                try:
                    expires = datetime.now(UTC) + timedelta(seconds=parse_duration(args.expires))
                except ValueError as exc:
                    raise ConfigError(f"--expires: {exc}", path="command line") from None
            episode = await store.acknowledge_alert(args.id, user=args.user, note=args.note, expires_at=expires)
            print(f"alert {episode.id} acknowledged by {args.user}: {episode.message_vi or episode.fingerprint}")
        elif args.alerts_command == "resolve":
            episode = await store.resolve_alert(args.id, user=args.user, note=args.note)
            print(f"alert {episode.id} resolved by {args.user}: {episode.message_vi or episode.fingerprint}")
        else:
            episodes = await store.list_alerts(state=args.state, area=args.area, device_id=args.device,
                                               min_severity=args.min_severity, limit=args.limit)
            if args.json:
                print(json.dumps([e.to_json() for e in episodes], ensure_ascii=False, indent=2))
            else:
                for e in episodes:
                    flags = "".join((" late" if e.late else "", f" muted:{e.muted}" if e.muted else "",
                                     f" acked:{e.acked_by}" if e.acked_by else ""))
                    print(f"{e.id:>6} {e.state:<10} sev {e.severity} {SEVERITY_COLOURS[e.severity]} "
                          f"{e.changed_at:%Y-%m-%d %H:%M}Z {e.rule:<20} {e.device_id or e.area or '-':<14} "
                          f"{e.message_vi}{flags}")
                print(f"{len(episodes)} alerts")
    finally:
        await store.close()
    return 0
