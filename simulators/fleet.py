"""The simulated fleet: devices and areas from `config/`, plus the metric catalog the models must respect.

Device and area files are the same ones `occ devices import` loads (ARCHITECTURE §7). When the shared loaders
in `occ.devices` / `occ.catalog` are present they are used, so the simulator and the platform read a device
file the same way; otherwise a strict local parser with the same format and line-numbered errors is used.
"""

from __future__ import annotations

import glob
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from occ.errors import ConfigError
from occ.models import ID_PATTERN, Device
from occ.yamlfile import Lines, load_yaml, require_keys

log = logging.getLogger(__name__)

KINDS = ("hydromet", "traffic", "camera")
DEFAULT_INTERVAL_S = {"hydromet": 600.0, "traffic": 60.0, "camera": 60.0}
DEVICE_KEYS = ("id", "kind", "name", "lat", "lon", "area", "attributes", "provisioned")
AREA_KEYS = ("id", "name", "name_en", "kind", "lat", "lon", "parent")


@dataclass(frozen=True, slots=True)
class Area:
    id: str
    name: str
    kind: str
    lat: float | None = None
    lon: float | None = None
    parent: str | None = None
    name_en: str = ""


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    unit: str
    min: float
    max: float
    kinds: tuple[str, ...]


@dataclass(slots=True)
class Fleet:
    """Every simulated device, in a stable order (the order of the files), with its area and metrics."""

    devices: list[Device]
    areas: dict[str, Area] = field(default_factory=dict)
    metrics: dict[str, MetricSpec] = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[Device]:
        return [d for d in self.devices if d.kind == kind]

    def by_id(self) -> dict[str, Device]:
        return {d.id: d for d in self.devices}

    def replicate(self, copies: int) -> Fleet:
        """`copies` copies of the fleet with ids suffixed `.r001` …, for load tests at scale (the first copy
        keeps the original ids); station links (`upstream`) are rewritten to point within the same copy."""
        if copies <= 1:
            return self
        out: list[Device] = []
        for k in range(copies):
            suffix = "" if k == 0 else f".r{k:03d}"
            for d in self.devices:
                attrs = dict(d.attributes)
                if suffix and isinstance(attrs.get("upstream"), list):
                    attrs["upstream"] = [f"{u}{suffix}" for u in attrs["upstream"]]
                out.append(replace(d, id=f"{d.id}{suffix}", attributes=attrs))
        return Fleet(out, self.areas, self.metrics)


def interval_of(device: Device) -> float:
    value = device.report_interval_s
    return float(value) if value else DEFAULT_INTERVAL_S.get(device.kind, 60.0)


def default_device_files(config_dir: str | Path = "config") -> list[Path]:
    return sorted(Path(p) for p in glob.glob(str(Path(config_dir) / "devices" / "*.yaml")))


def _number(value: Any, lines: Lines, *keys: str | int) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise lines.error(f"{keys[-1]} must be a number", *keys)
    return float(value)


def parse_device_file(path: str | Path, seen: set[str] | None = None) -> list[Device]:
    """Strict local parser for the device file format (used when `occ.devices` is not available)."""
    data, lines = load_yaml(path)
    seen = set() if seen is None else seen
    if not isinstance(data, dict) or not isinstance(data.get("devices"), list):
        raise lines.error("expected a mapping with a `devices:` list")
    require_keys(data, ("devices",), lines)
    devices: list[Device] = []
    for i, raw in enumerate(data["devices"]):
        if not isinstance(raw, dict):
            raise lines.error("each device must be a mapping", "devices", i)
        require_keys(raw, DEVICE_KEYS, lines, "devices", i)
        device_id = raw.get("id")
        if not isinstance(device_id, str) or not ID_PATTERN.match(device_id):
            raise lines.error("id must match [A-Za-z0-9_.-]{1,64}", "devices", i, "id")
        if device_id in seen:
            raise lines.error(f"duplicate device id {device_id!r}", "devices", i, "id")
        seen.add(device_id)
        kind = raw.get("kind")
        if not isinstance(kind, str) or not ID_PATTERN.match(kind):
            raise lines.error("kind must be an identifier such as hydromet, traffic or camera", "devices", i)
        lat = _number(raw["lat"], lines, "devices", i, "lat") if "lat" in raw else None
        lon = _number(raw["lon"], lines, "devices", i, "lon") if "lon" in raw else None
        if lat is not None and not -90 <= lat <= 90:
            raise lines.error("lat must be within [-90, 90]", "devices", i, "lat")
        if lon is not None and not -180 <= lon <= 180:
            raise lines.error("lon must be within [-180, 180]", "devices", i, "lon")
        attributes = raw.get("attributes", {}) or {}
        if not isinstance(attributes, dict):
            raise lines.error("attributes must be a mapping", "devices", i, "attributes")
        interval = attributes.get("report_interval_s")
        if interval is not None and (isinstance(interval, bool) or not isinstance(interval, (int, float))
                                     or interval <= 0):
            raise lines.error("report_interval_s must be a positive number", "devices", i, "attributes")
        devices.append(
            Device(
                id=device_id,
                kind=kind,
                name=str(raw.get("name", "")),
                lat=lat,
                lon=lon,
                area=str(raw["area"]) if raw.get("area") is not None else None,
                attributes=attributes,
                provisioned=bool(raw.get("provisioned", True)),
            )
        )
    return devices


def parse_area_file(path: str | Path) -> dict[str, Area]:
    data, lines = load_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("areas"), list):
        raise lines.error("expected a mapping with an `areas:` list")
    areas: dict[str, Area] = {}
    for i, raw in enumerate(data["areas"]):
        if not isinstance(raw, dict):
            raise lines.error("each area must be a mapping", "areas", i)
        require_keys(raw, AREA_KEYS, lines, "areas", i)
        area_id = raw.get("id")
        if not isinstance(area_id, str) or not ID_PATTERN.match(area_id):
            raise lines.error("id must match [A-Za-z0-9_.-]{1,64}", "areas", i, "id")
        if area_id in areas:
            raise lines.error(f"duplicate area id {area_id!r}", "areas", i, "id")
        areas[area_id] = Area(
            id=area_id,
            name=str(raw.get("name", area_id)),
            kind=str(raw.get("kind", "district")),
            lat=float(raw["lat"]) if raw.get("lat") is not None else None,
            lon=float(raw["lon"]) if raw.get("lon") is not None else None,
            parent=raw.get("parent"),
            name_en=str(raw.get("name_en", "")),
        )
    for i, area in enumerate(areas.values()):
        if area.parent is not None and area.parent not in areas:
            raise lines.error(f"unknown parent area {area.parent!r}", "areas", i, "parent")
    return areas


def parse_metric_catalog(path: str | Path) -> dict[str, MetricSpec]:
    data, lines = load_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise lines.error("expected a `metrics:` mapping")
    out: dict[str, MetricSpec] = {}
    for name, spec in data["metrics"].items():
        if not isinstance(spec, dict):
            raise lines.error("each metric must be a mapping", "metrics", name)
        out[name] = MetricSpec(
            name=name,
            unit=str(spec.get("unit", "")),
            min=float(spec.get("min", -math.inf)),
            max=float(spec.get("max", math.inf)),
            kinds=tuple(spec.get("kinds", ())),
        )
    return out


def _shared_device_loader() -> Any:
    """`occ.devices.load_devices` and a catalog when both exist (written by another issue)."""
    try:
        from occ import catalog as occ_catalog  # type: ignore[attr-defined, unused-ignore]
        from occ import devices as occ_devices  # type: ignore[attr-defined, unused-ignore]
    except ImportError:
        return None
    loader = getattr(occ_devices, "load_devices", None)
    catalog_loader = getattr(occ_catalog, "load_catalog", None)
    if loader is None or catalog_loader is None:
        return None
    return loader, catalog_loader


def load_fleet(
    device_files: Sequence[str | Path] | None = None,
    *,
    config_dir: str | Path = "config",
    areas_file: str | Path | None = None,
    metrics_file: str | Path | None = None,
    kinds: Iterable[str] = KINDS,
) -> Fleet:
    """Load devices (default `config/devices/*.yaml`), areas and the metric catalog; unknown kinds are
    skipped with a note, unknown areas are a ConfigError."""
    config = Path(config_dir)
    files = [Path(f) for f in device_files] if device_files else default_device_files(config)
    if not files:
        raise ConfigError("no device files found", path=str(config / "devices"))
    metrics_path = Path(metrics_file) if metrics_file else config / "metrics.yaml"
    metrics = parse_metric_catalog(metrics_path) if metrics_path.exists() else {}
    areas_path = Path(areas_file) if areas_file else config / "areas.yaml"
    areas = parse_area_file(areas_path) if areas_path.exists() else {}

    shared = _shared_device_loader()
    devices: list[Device] = []
    if shared is not None:
        loader, catalog_loader = shared
        catalog = catalog_loader(metrics_path)
        for f in files:
            devices.extend(loader(f, catalog))
        ids = [d.id for d in devices]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ConfigError(f"device id {dup!r} appears in more than one file")
    else:
        seen: set[str] = set()
        for f in files:
            devices.extend(parse_device_file(f, seen))

    wanted = set(kinds)
    skipped = sorted({d.kind for d in devices if d.kind not in wanted})
    if skipped:
        log.info("not simulating device kinds: %s", ", ".join(skipped))
    devices = [d for d in devices if d.kind in wanted]
    if areas:
        for d in devices:
            if d.area is not None and d.area not in areas:
                raise ConfigError(f"device {d.id} refers to unknown area {d.area!r}", path=str(areas_path))
    return Fleet(devices, areas, metrics)


def area_and_children(areas: dict[str, Area], area_id: str) -> set[str]:
    """An area id plus every area below it (so targeting the province selects all districts)."""
    out = {area_id}
    changed = True
    while changed:
        changed = False
        for a in areas.values():
            if a.parent in out and a.id not in out:
                out.add(a.id)
                changed = True
    return out
