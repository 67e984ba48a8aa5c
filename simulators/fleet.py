"""The simulated fleet: devices and areas from `config/`, plus the metric catalog the models must respect.

Device, area and catalog files are read with the platform's own loaders (`occ.devices`, `occ.catalog`), so the
simulator and `occ devices import` agree on what a file means and reject the same mistakes with the same
file:line messages.
"""

from __future__ import annotations

import glob
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from occ.catalog import Catalog
from occ.devices import Area, load_areas, load_devices
from occ.errors import ConfigError
from occ.models import Device

log = logging.getLogger(__name__)

KINDS = ("hydromet", "traffic", "camera")
DEFAULT_INTERVAL_S = {"hydromet": 600.0, "traffic": 60.0, "camera": 60.0}

__all__ = ["KINDS", "Area", "Fleet", "MetricSpec", "area_and_children", "interval_of", "load_fleet"]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """What the simulator needs of a catalog metric (an unbounded range is ±inf)."""

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


def metric_specs(catalog: Catalog) -> dict[str, MetricSpec]:
    return {
        name: MetricSpec(
            name=name,
            unit=m.unit,
            min=-math.inf if m.min is None else float(m.min),
            max=math.inf if m.max is None else float(m.max),
            kinds=tuple(m.kinds),
        )
        for name, m in catalog.metrics.items()
    }


def load_fleet(
    device_files: Sequence[str | Path] | None = None,
    *,
    config_dir: str | Path = "config",
    areas_file: str | Path | None = None,
    metrics_file: str | Path | None = None,
    kinds: Iterable[str] = KINDS,
) -> Fleet:
    """Load devices (default `config/devices/*.yaml`), areas and the metric catalog (ConfigError with file and
    line on any problem); device kinds the simulator has no model for are skipped with a note."""
    config = Path(config_dir)
    files = [Path(f) for f in device_files] if device_files else default_device_files(config)
    if not files:
        raise ConfigError("no device files found", path=str(config / "devices"))
    metrics_path = Path(metrics_file) if metrics_file else config / "metrics.yaml"
    catalog = Catalog.load(metrics_path) if metrics_path.exists() else Catalog.default()
    areas_path = Path(areas_file) if areas_file else config / "areas.yaml"
    area_list = load_areas(areas_path) if areas_path.exists() else None
    devices: list[Device] = []
    first_file: dict[str, Path] = {}
    for f in files:
        for d in load_devices(f, catalog, areas=area_list):
            if d.id in first_file:
                raise ConfigError(f"device id {d.id!r} is also defined in {first_file[d.id]}", path=str(f))
            first_file[d.id] = f
            devices.append(d)
    wanted = set(kinds)
    skipped = sorted({d.kind for d in devices if d.kind not in wanted})
    if skipped:
        log.info("not simulating device kinds: %s", ", ".join(skipped))
    devices = [d for d in devices if d.kind in wanted]
    areas = {a.id: a for a in area_list or ()}
    return Fleet(devices, areas, metric_specs(catalog))


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
