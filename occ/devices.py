"""Device registry and administrative areas, loaded from YAML (JSON also parses) with the line at fault.

A device file is station data: id, kind, position, area and free-form attributes such as the report
interval and the flood alarm levels I/II/III of a river station (Decision 05/2020/QĐ-TTg). Levels are data,
never code. A bad file is rejected whole, so a typo cannot silently drop a station from the alarm rules.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from occ.catalog import Catalog
from occ.models import ID_PATTERN, Device
from occ.yamlfile import Lines, load_yaml, parse_yaml, require_keys

__all__ = [
    "ALARM_LEVELS",
    "Area",
    "DeviceChange",
    "diff_device",
    "dump_devices",
    "load_areas",
    "load_devices",
    "parse_areas",
    "parse_devices",
    "plan_import",
]

ALARM_LEVELS = ("I", "II", "III")
"""Flood alarm levels in rising order (Decision 05/2020/QĐ-TTg)."""

_DEVICE_KEYS = ("id", "kind", "name", "lat", "lon", "area", "attributes")
_AREA_KEYS = ("id", "name", "name_en", "kind", "lat", "lon", "parent")


@dataclass(frozen=True, slots=True)
class Area:
    """An administrative or hydrological area (province, district, commune, basin); boundaries are data."""

    id: str
    name: str
    name_en: str = ""
    kind: str = "district"
    lat: float | None = None
    lon: float | None = None
    parent: str | None = None


# -- devices -------------------------------------------------------------------------------------------------


def load_devices(path: str | Path, catalog: Catalog, *, areas: Iterable[Area] | None = None) -> list[Device]:
    """Load and validate a device file; `areas` (when given) are the only valid `area` values."""
    data, lines = load_yaml(path)
    return _devices(data, lines, catalog, areas)


def parse_devices(
    text: str, catalog: Catalog, *, areas: Iterable[Area] | None = None, path: str = "<string>"
) -> list[Device]:
    data, lines = parse_yaml(text, path)
    return _devices(data, lines, catalog, areas)


def _devices(data: Any, lines: Lines, catalog: Catalog, areas: Iterable[Area] | None) -> list[Device]:
    items = _top_list(data, lines, "devices")
    area_ids = None if areas is None else {a.id for a in areas}
    devices: list[Device] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(items):
        at: tuple[str | int, ...] = ("devices", index)
        if not isinstance(raw, dict):
            raise lines.error(f"device {index}: expected a mapping, got {_typename(raw)}", *at)
        require_keys(raw, _DEVICE_KEYS, lines, *at)
        device_id = _id(raw, "device", lines, *at)
        if device_id in seen:
            reason = f"duplicate device id {device_id!r} (first at line {seen[device_id]})"
            raise lines.error(reason, *at, "id")
        seen[device_id] = lines.of(*at, "id") or 0
        kind = raw.get("kind")
        if kind is None:
            raise lines.error(f"device {device_id}: missing 'kind'", *at)
        if not isinstance(kind, str) or catalog.kind(kind) is None:
            known = ", ".join(sorted(catalog.kinds))
            reason = f"device {device_id}: unknown kind {kind!r} (expected one of: {known})"
            raise lines.error(reason, *at, "kind")
        name = _optional_str(raw, "name", lines, *at) or ""
        lat, lon = _position(raw, f"device {device_id}", lines, *at)
        area = _optional_str(raw, "area", lines, *at)
        if area is not None and area_ids is not None and area not in area_ids:
            raise lines.error(f"device {device_id}: unknown area {area!r}", *at, "area")
        attributes = raw.get("attributes")
        if attributes is None:
            attributes = {}
        elif not isinstance(attributes, dict):
            raise lines.error(
                f"device {device_id}: attributes must be a mapping, got {_typename(attributes)}",
                *at,
                "attributes",
            )
        _check_attributes(device_id, attributes, lines, *at, "attributes")
        devices.append(Device(device_id, kind, name, lat, lon, area, dict(attributes)))
    return devices


def _check_attributes(device_id: str, attributes: dict[Any, Any], lines: Lines, *at: str | int) -> None:
    """The attributes the platform reads itself are checked; the rest is free-form station data."""
    for key in attributes:
        if not isinstance(key, str):
            raise lines.error(f"device {device_id}: attribute names must be strings, got {key!r}", *at)
    if "report_interval_s" in attributes:
        interval = attributes["report_interval_s"]
        if not _is_number(interval) or interval <= 0:
            raise lines.error(
                f"device {device_id}: report_interval_s must be a positive number, got {interval!r}",
                *at,
                "report_interval_s",
            )
    if "alarm_levels_m" in attributes:
        levels = attributes["alarm_levels_m"]
        where = (*at, "alarm_levels_m")
        if not isinstance(levels, dict) or not levels:
            raise lines.error(
                f"device {device_id}: alarm_levels_m must be a mapping of I/II/III to water levels", *where
            )
        previous: tuple[str, float] | None = None
        for key in levels:
            if key not in ALARM_LEVELS:
                raise lines.error(
                    f"device {device_id}: unknown alarm level {key!r} (expected I, II, III)", *where, key
                )
        for level in ALARM_LEVELS:
            if level not in levels:
                continue
            value = levels[level]
            if not _is_number(value):
                raise lines.error(
                    f"device {device_id}: alarm level {level} must be a number, got {value!r}", *where, level
                )
            if previous is not None and value <= previous[1]:
                raise lines.error(
                    f"device {device_id}: alarm level {level} ({value:g}) must be above level "
                    f"{previous[0]} ({previous[1]:g})",
                    *where,
                    level,
                )
            previous = (level, float(value))


def dump_devices(devices: Iterable[Device]) -> str:
    """YAML in the device file format (`occ devices list --format yaml`); `load_devices` reads it back."""
    items: list[dict[str, Any]] = []
    for device in devices:
        item: dict[str, Any] = {"id": device.id, "kind": device.kind}
        if device.name:
            item["name"] = device.name
        if device.lat is not None:
            item["lat"] = device.lat
        if device.lon is not None:
            item["lon"] = device.lon
        if device.area is not None:
            item["area"] = device.area
        if device.attributes:
            item["attributes"] = device.attributes
        items.append(item)
    return yaml.safe_dump({"devices": items}, allow_unicode=True, sort_keys=False, width=110)


# -- import planning -----------------------------------------------------------------------------------------

MISSING: Any = type("Missing", (), {"__repr__": lambda self: "(none)"})()
"""Stands for "no such attribute" on one side of a difference."""


@dataclass(frozen=True, slots=True)
class DeviceChange:
    """What importing one device does to the registry: a plain value, so `occ devices import --dry-run` and the
    real import print the same thing and tests need no database."""

    device: Device
    action: Literal["created", "updated", "unchanged"]
    differences: tuple[tuple[str, Any, Any], ...] = ()
    """(field, registry value, file value); attributes appear one key at a time as `attributes.KEY`."""
    previous_kind: str | None = None
    """The kind in the registry when the file gives another one (refused without --force)."""

    @property
    def changes_kind(self) -> bool:
        return self.previous_kind is not None


def diff_device(old: Device, new: Device) -> list[tuple[str, Any, Any]]:
    """Field-by-field differences between a registered device and its new definition, in a stable order."""
    out: list[tuple[str, Any, Any]] = []
    for name in ("kind", "name", "lat", "lon", "area"):
        before, after = getattr(old, name), getattr(new, name)
        if before != after:
            out.append((name, before, after))
    for key in sorted(set(old.attributes) | set(new.attributes)):
        before = old.attributes.get(key, MISSING)
        after = new.attributes.get(key, MISSING)
        if before != after:
            out.append((f"attributes.{key}", before, after))
    if old.provisioned != new.provisioned:
        out.append(("provisioned", old.provisioned, new.provisioned))
    return out


def plan_import(registry: Mapping[str, Device], incoming: Iterable[Device]) -> list[DeviceChange]:
    """Compare the devices of a file set with the registry: created, updated (with the differences) or
    unchanged, in the files' order. Issue 9: a re-import once turned a rain gauge into a camera and dropped its
    attributes without a word; the plan makes every such change visible before it is written."""
    plan: list[DeviceChange] = []
    for device in incoming:
        old = registry.get(device.id)
        if old is None:
            plan.append(DeviceChange(device, "created"))
            continue
        differences = diff_device(old, device)
        if not differences:
            plan.append(DeviceChange(device, "unchanged"))
            continue
        previous_kind = old.kind if old.kind != device.kind else None
        plan.append(DeviceChange(device, "updated", tuple(differences), previous_kind))
    return plan


# -- areas ---------------------------------------------------------------------------------------------------


def load_areas(path: str | Path) -> list[Area]:
    """Load and validate an areas file (parents may appear in any order; cycles are rejected)."""
    data, lines = load_yaml(path)
    return _areas(data, lines)


def parse_areas(text: str, path: str = "<string>") -> list[Area]:
    data, lines = parse_yaml(text, path)
    return _areas(data, lines)


def _areas(data: Any, lines: Lines) -> list[Area]:
    items = _top_list(data, lines, "areas")
    areas: list[Area] = []
    index_of: dict[str, int] = {}
    for index, raw in enumerate(items):
        at: tuple[str | int, ...] = ("areas", index)
        if not isinstance(raw, dict):
            raise lines.error(f"area {index}: expected a mapping, got {_typename(raw)}", *at)
        require_keys(raw, _AREA_KEYS, lines, *at)
        area_id = _id(raw, "area", lines, *at)
        if area_id in index_of:
            first = lines.of("areas", index_of[area_id], "id")
            raise lines.error(f"duplicate area id {area_id!r} (first at line {first})", *at, "id")
        index_of[area_id] = index
        name = _optional_str(raw, "name", lines, *at)
        if not name:
            raise lines.error(f"area {area_id}: missing 'name'", *at)
        kind = raw.get("kind")
        if kind is None:
            raise lines.error(f"area {area_id}: missing 'kind'", *at)
        if not isinstance(kind, str) or not ID_PATTERN.fullmatch(kind):
            reason = f"area {area_id}: invalid kind {kind!r} (e.g. province, district, commune, basin)"
            raise lines.error(reason, *at, "kind")
        lat, lon = _position(raw, f"area {area_id}", lines, *at)
        areas.append(
            Area(
                area_id,
                name,
                _optional_str(raw, "name_en", lines, *at) or "",
                kind,
                lat,
                lon,
                _optional_str(raw, "parent", lines, *at),
            )
        )
    by_id = {a.id: a for a in areas}
    for area in areas:
        at = ("areas", index_of[area.id], "parent")
        if area.parent is None:
            continue
        if area.parent not in by_id:
            raise lines.error(f"area {area.id}: unknown parent {area.parent!r}", *at)
        seen = {area.id}
        parent: str | None = area.parent
        while parent is not None:
            if parent in seen:
                raise lines.error(f"area {area.id}: parent chain loops back to {parent!r}", *at)
            seen.add(parent)
            parent = by_id[parent].parent
    return areas


# -- shared checks -------------------------------------------------------------------------------------------


def _top_list(data: Any, lines: Lines, key: str) -> Sequence[Any]:
    if data is None:
        return []
    if not isinstance(data, dict):
        raise lines.error(f"top level must be a mapping with {key!r}")
    require_keys(data, (key,), lines)
    items = data.get(key)
    if items is None:
        return []
    if not isinstance(items, list):
        raise lines.error(f"{key!r} must be a list, got {_typename(items)}", key)
    return items


def _id(raw: dict[str, Any], what: str, lines: Lines, *at: str | int) -> str:
    value = raw.get("id")
    if value is None:
        raise lines.error(f"{what}: missing 'id'", *at)
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise lines.error(f"invalid {what} id {value!r} (expected [A-Za-z0-9_.-]{{1,64}})", *at, "id")
    return value


def _optional_str(raw: dict[str, Any], key: str, lines: Lines, *at: str | int) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise lines.error(f"{key!r} must be a string, got {_typename(value)} {value!r}", *at, key)
    return value


def _position(
    raw: dict[str, Any], what: str, lines: Lines, *at: str | int
) -> tuple[float | None, float | None]:
    lat, lon = raw.get("lat"), raw.get("lon")
    if (lat is None) != (lon is None):
        missing = "lon" if lon is None else "lat"
        raise lines.error(f"{what}: 'lat' and 'lon' go together ('{missing}' missing)", *at)
    if lat is None or lon is None:
        return None, None
    if not _is_number(lat) or not -90 <= lat <= 90:
        raise lines.error(f"{what}: lat {lat!r} is not in [-90, 90]", *at, "lat")
    if not _is_number(lon) or not -180 <= lon <= 180:
        raise lines.error(f"{what}: lon {lon!r} is not in [-180, 180]", *at, "lon")
    return float(lat), float(lon)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _typename(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return type(value).__name__
