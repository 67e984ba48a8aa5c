"""`occ devices import|list|show|remove`: the device registry from the command line.

Import shows what it does to every device (created / updated with the differences / unchanged), refuses to
change a registered device's kind unless asked (`--force`), and `--dry-run` shows the same plan without
writing. Filters that name a kind or an area that does not exist say so and list the valid values, instead of
printing an empty list (issue 9).
"""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from occ.catalog import Catalog
from occ.config import Config
from occ.devices import MISSING, Area, DeviceChange, dump_devices, load_areas, load_devices, plan_import
from occ.errors import ConfigError, UsageError
from occ.models import Device

# --- shared -------------------------------------------------------------------------------------------------


async def open_store(config: Config, *, migrate: bool = False) -> Any:
    from occ.store import Store

    if not config.database.url:
        raise ConfigError("no database configured: set OCC_DATABASE_URL or --database-url, or start `occ up`")
    db = config.database
    return await Store.connect(
        config.database.url, pool_size=2, migrate=migrate, timescaledb=db.timescaledb,
        retention_days=db.retention_days, compress_after_days=db.compress_after_days,
        partition_days=db.partition_days, partitions_ahead=db.partitions_ahead, timezone=config.site.timezone,
    )


def load_catalog(config: Config) -> Catalog:
    path = config.config_path / "metrics.yaml"
    return Catalog.load(path) if path.exists() else Catalog.default()


def load_area_file(config: Config) -> list[Area] | None:
    path = config.config_path / "areas.yaml"
    return load_areas(path) if path.exists() else None


def show_value(value: Any) -> str:
    if value is MISSING:
        return "(none)"
    return json.dumps(value, ensure_ascii=False, default=str)


def local_time(ts: datetime, tz: ZoneInfo) -> str:
    return ts.astimezone(tz).isoformat(sep=" ", timespec="seconds")


# --- import -------------------------------------------------------------------------------------------------


async def import_devices(config: Config, files: Sequence[str], *, force: bool, dry_run: bool,
                         verbose: bool, issue_credentials: str | None = None) -> int:
    catalog = load_catalog(config)
    areas = load_area_file(config)
    devices: list[Device] = []
    origin: dict[str, str] = {}
    files = device_files(files)
    for file in files:  # every file is validated before anything is read from or written to the database
        for device in load_devices(Path(file), catalog, areas=areas):
            if device.id in origin:
                raise ConfigError(f"device {device.id} is defined again (first in {origin[device.id]})", path=file)
            origin[device.id] = file
            devices.append(device)
    store = await open_store(config, migrate=not dry_run)
    try:
        registry = {d.id: d for d in await store.list_devices()}
        plan = plan_import(registry, devices)
        kind_changes = [c for c in plan if c.changes_kind]
        if kind_changes and not force:
            for change in kind_changes:
                print(f"occ: {change.device.id} is registered as {change.previous_kind}; "
                      f"{origin[change.device.id]} makes it {change.device.kind}", file=sys.stderr)
            raise UsageError(
                f"refused to change the kind of {len(kind_changes)} device(s); nothing was imported. Fix the "
                "file, or re-run with --force if the change is intended (--dry-run shows every difference)")
        for line in describe_plan(plan, verbose=verbose):
            print(line)
        to_write = [c.device for c in plan if c.action != "unchanged"]
        if to_write and not dry_run:
            await store.upsert_devices(to_write)
        issued = 0
        if issue_credentials and not dry_run:  # issue 7: new devices get credentials in the same step
            from occ.cli_credentials import issue_for, write_credentials_file

            active = {a.username for a in await store.credentials.accounts(active_only=True)}
            new = [d.id for d in devices if d.id not in active]
            if new:
                write_credentials_file(Path(issue_credentials), await issue_for(store, new, "device"))
            issued = len(new)
    finally:
        await store.close()
    counts = {action: sum(1 for c in plan if c.action == action) for action in ("created", "updated", "unchanged")}
    summary = (f"{len(plan)} devices from {len(files)} file(s): {counts['created']} created, "
               f"{counts['updated']} updated, {counts['unchanged']} unchanged")
    if issue_credentials and not dry_run:
        summary += f"; {issued} credential(s) issued into {issue_credentials}"
    print(summary + (" (dry run: nothing was written)" if dry_run else ""))
    return 0


def device_files(paths: Sequence[str]) -> list[str]:
    """Files as given; a folder stands for its *.yaml, *.yml and *.json files, sorted (compose mounts
    config/devices/ and imports the folder)."""
    files: list[str] = []
    for path in paths:
        folder = Path(path)
        if folder.is_dir():
            found = sorted(str(p) for p in folder.iterdir() if p.suffix in (".yaml", ".yml", ".json") and p.is_file())
            if not found:
                raise ConfigError("no device files (*.yaml, *.yml, *.json) in this folder", path=path)
            files.extend(found)
        else:
            files.append(path)
    return files


def describe_plan(plan: Iterable[DeviceChange], *, verbose: bool = False) -> list[str]:
    """One line per created or updated device (and per unchanged one with `verbose`), differences indented."""
    lines: list[str] = []
    for change in plan:
        if change.action == "unchanged" and not verbose:
            continue
        device = change.device
        lines.append(f"{change.action:<10} {device.id} ({device.kind})")
        for name, before, after in change.differences:
            lines.append(f"    {name}: {show_value(before)} → {show_value(after)}")
    return lines


# --- list ---------------------------------------------------------------------------------------------------


async def list_devices(config: Config, *, kind: str | None, area: str | None, fmt: str) -> int:
    store = await open_store(config)
    try:
        devices = await store.list_devices(kind=kind, area=area)
        if not devices and (kind is not None or area is not None):
            everything = await store.list_devices()
            check_filters(kind, area, everything, catalog=load_catalog(config), areas=load_area_file(config))
    finally:
        await store.close()
    if fmt == "yaml":
        print(dump_devices(devices), end="")
    elif fmt == "json":
        print(json.dumps([device_json(d) for d in devices], ensure_ascii=False, indent=2))
    else:
        for d in devices:
            flag = "" if d.provisioned else "  (unprovisioned)"
            print(f"{d.id:<20} {d.kind:<9} {d.area or '-':<14} {d.name}{flag}")
        print(f"{len(devices)} devices")
    return 0


def device_json(d: Device) -> dict[str, Any]:
    return {"id": d.id, "kind": d.kind, "name": d.name, "lat": d.lat, "lon": d.lon, "area": d.area,
            "attributes": d.attributes, "provisioned": d.provisioned}


def _folded(text: str) -> str:
    """Lower case without accents or separators: 'Bắc Quang' and 'bac-quang' fold to the same 'bacquang'."""
    text = text.replace("đ", "d").replace("Đ", "D")
    plain = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return "".join(c for c in plain.lower() if c.isalnum())


def check_filters(kind: str | None, area: str | None, registry: Sequence[Device], *, catalog: Catalog,
                  areas: Sequence[Area] | None) -> None:
    """Raise UsageError when a filter names a kind or area that does not exist (an empty answer would look like
    "no such devices" when the question itself was wrong)."""
    if kind is not None:
        kinds = sorted(set(catalog.kinds) | {d.kind for d in registry})
        if kind not in kinds:
            raise UsageError(f"no device kind {kind!r}; kinds are: {', '.join(kinds)}")
    if area is not None:
        names = {a.id: a.name for a in areas or ()}
        for d in registry:
            if d.area is not None:
                names.setdefault(d.area, "")
        if area not in names:
            folded = _folded(area)
            guesses = [i for i, name in sorted(names.items())
                       if folded and (folded == _folded(i) or (name and folded in _folded(name)))]
            hint = f" — did you mean {' or '.join(guesses)}?" if guesses else "."
            raise UsageError(f"no area {area!r}: areas are ids{hint} Areas: {', '.join(sorted(names))}")


# --- show ---------------------------------------------------------------------------------------------------


async def show_device(config: Config, device_id: str, *, fmt: str) -> int:
    tz = ZoneInfo(config.site.timezone)
    store = await open_store(config)
    try:
        device = await store.get_device(device_id)
        if device is None:
            registry = await store.list_devices()
            raise UsageError(unknown_device_message(device_id, [d.id for d in registry]))
        statuses = await store.device_status([device_id])
        latest = await store.latest([device_id])
    finally:
        await store.close()
    catalog = load_catalog(config)
    areas = {a.id: a for a in load_area_file(config) or ()}
    status = statuses[0] if statuses else None
    if fmt == "json":
        out = device_json(device)
        out["status"] = ({"status": status.status, "since": status.since.astimezone(tz).isoformat()}
                         if status else None)
        out["latest"] = [{"metric": v.metric, "value": v.value, "unit": _unit(catalog, v.metric),
                          "ts": v.ts.astimezone(tz).isoformat(), "quality": v.quality,
                          "received_at": v.received_at.astimezone(tz).isoformat()} for v in latest]
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    area = device.area or "-"
    if device.area in areas:
        area = f"{device.area} ({areas[device.area].name})"
    print(f"{device.id}  {device.kind}  {device.name}".rstrip())
    print(f"  area:        {area}")
    print(f"  position:    {'-' if device.lat is None else f'{device.lat}, {device.lon}'}")
    print(f"  provisioned: {'yes' if device.provisioned else 'no (registered by ingest.auto_register)'}")
    if status is None:
        print("  status:      unknown (no status message yet)")
    else:
        print(f"  status:      {status.status} since {local_time(status.since, tz)}")
    print("  attributes:" + ("" if device.attributes else " none"))
    for key, value in device.attributes.items():
        print(f"    {key}: {show_value(value)}")
    print("  latest values:" + ("" if latest else " none yet"))
    width = max((len(v.metric) for v in latest), default=0)
    for v in latest:
        flag = f"  quality {v.quality}" if v.quality else ""
        print(f"    {v.metric:<{width}}  {v.value:g} {_unit(catalog, v.metric)}".rstrip()
              + f"  at {local_time(v.ts, tz)}{flag}")
    return 0


def _unit(catalog: Catalog, metric: str) -> str:
    spec = catalog.metric(metric)
    return spec.unit if spec else ""


def unknown_device_message(device_id: str, known: Sequence[str]) -> str:
    folded = device_id.upper()
    close = [i for i in known if folded in i.upper()][:5]
    hint = f" — similar: {', '.join(close)}" if close else ""
    return f"no device {device_id!r} in the registry{hint} (`occ devices list` shows them)"


# --- remove -------------------------------------------------------------------------------------------------


async def remove_devices(config: Config, device_ids: Sequence[str]) -> int:
    store = await open_store(config)
    try:
        registry = {d.id for d in await store.list_devices()}
        unknown = [i for i in device_ids if i not in registry]
        if unknown:
            raise UsageError(f"not registered: {', '.join(unknown)}; nothing was removed")
        removed = await store.remove_devices(device_ids)
    finally:
        await store.close()
    for device_id in removed:
        print(f"removed    {device_id}")
    print(f"{len(removed)} device(s) removed; their readings stay, and ingest refuses new ones within 30 s")
    return 0
