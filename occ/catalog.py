"""The metric catalog: which metrics exist, their canonical unit and plausible range, and the device kinds.

Loaded from `config/metrics.yaml`. A bad file is rejected whole with the line at fault, so a typo can never
make the platform quietly accept (or drop) a metric. Every consumer decodes against the same catalog, so a
reading means the same thing to ingest, alerts and the live map.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from occ.errors import DecodeError
from occ.models import ID_PATTERN
from occ.yamlfile import Lines, load_yaml, parse_yaml, require_keys

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "config" / "metrics.yaml"

_TOP_KEYS = ("kinds", "units", "metrics")
_KIND_KEYS = ("report_interval_s", "description")
_UNIT_KEYS = ("dimension", "factor", "offset")
_METRIC_KEYS = ("unit", "min", "max", "kinds", "description")


@dataclass(frozen=True, slots=True)
class KindSpec:
    """A device kind (the `{kind}` topic level) and how often its devices are expected to report."""

    name: str
    report_interval_s: float
    description: str = ""


@dataclass(frozen=True, slots=True)
class UnitSpec:
    """A unit and how it maps to its dimension's base unit: `base = value * factor + offset`."""

    name: str
    dimension: str
    factor: float = 1.0
    offset: float = 0.0


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A metric: canonical unit, plausible range (None = unbounded) and the kinds allowed to report it."""

    name: str
    unit: str
    min: float | None
    max: float | None
    kinds: tuple[str, ...]
    description: str = ""

    def in_range(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


class Catalog:
    """Immutable metric catalog: `Catalog.load(path)`, `Catalog.parse(text)` or `Catalog.default()`."""

    __slots__ = ("_kinds", "_metrics", "_units", "path")

    def __init__(
        self,
        kinds: Mapping[str, KindSpec],
        units: Mapping[str, UnitSpec],
        metrics: Mapping[str, MetricSpec],
        *,
        path: str | None = None,
    ) -> None:
        for metric in metrics.values():
            if metric.unit not in units:
                raise ValueError(f"metric {metric.name!r}: unknown unit {metric.unit!r}")
            for kind in metric.kinds:
                if kind not in kinds:
                    raise ValueError(f"metric {metric.name!r}: unknown kind {kind!r}")
        self._kinds: Mapping[str, KindSpec] = MappingProxyType(dict(kinds))
        self._units: Mapping[str, UnitSpec] = MappingProxyType(dict(units))
        self._metrics: Mapping[str, MetricSpec] = MappingProxyType(dict(metrics))
        self.path = path

    def __repr__(self) -> str:
        return (
            f"Catalog(path={self.path!r}, kinds={len(self._kinds)}, units={len(self._units)}, "
            f"metrics={len(self._metrics)})"
        )

    @property
    def kinds(self) -> Mapping[str, KindSpec]:
        return self._kinds

    @property
    def units(self) -> Mapping[str, UnitSpec]:
        return self._units

    @property
    def metrics(self) -> Mapping[str, MetricSpec]:
        return self._metrics

    def metric(self, name: str) -> MetricSpec | None:
        return self._metrics.get(name)

    def kind(self, name: str) -> KindSpec | None:
        return self._kinds.get(name)

    def unit(self, name: str) -> UnitSpec | None:
        return self._units.get(name)

    def metrics_for_kind(self, kind: str) -> list[MetricSpec]:
        return [m for m in self._metrics.values() if kind in m.kinds]

    def conversion(self, from_unit: str, to_unit: str) -> tuple[float, float]:
        """`(scale, shift)` with `value_in_to_unit = value * scale + shift`; DecodeError if impossible."""
        if from_unit == to_unit:
            if from_unit not in self._units:
                raise DecodeError(f"unknown unit {from_unit!r}")
            return 1.0, 0.0
        src = self._units.get(from_unit)
        if src is None:
            raise DecodeError(f"unknown unit {from_unit!r}")
        dst = self._units.get(to_unit)
        if dst is None:
            raise DecodeError(f"unknown unit {to_unit!r}")
        if src.dimension != dst.dimension:
            raise DecodeError(
                f"unit {from_unit!r} ({src.dimension}) cannot be converted to {to_unit!r} ({dst.dimension})"
            )
        # base = v * f1 + o1 and base = w * f2 + o2  =>  w = v * (f1 / f2) + (o1 - o2) / f2
        return src.factor / dst.factor, (src.offset - dst.offset) / dst.factor

    def convert(self, value: float, from_unit: str, to_unit: str) -> float:
        """Convert between two units of the same dimension (DecodeError for unknown or incompatible units)."""
        scale, shift = self.conversion(from_unit, to_unit)
        if scale == 1.0 and shift == 0.0:
            return float(value)
        return value * scale + shift

    # -- loading ------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> Catalog:
        data, lines = load_yaml(path)
        return cls.from_data(data, lines)

    @classmethod
    def parse(cls, text: str, path: str = "<string>") -> Catalog:
        data, lines = parse_yaml(text, path)
        return cls.from_data(data, lines)

    @classmethod
    def default(cls) -> Catalog:
        """The catalog shipped in the repository's `config/metrics.yaml` (loaded once, it is immutable)."""
        return _load_default()

    @classmethod
    def from_data(cls, data: Any, lines: Lines) -> Catalog:
        """Validate parsed YAML; raise ConfigError with the line at fault for the first problem."""
        if not isinstance(data, dict):
            raise lines.error("catalog must be a mapping with kinds, units and metrics")
        require_keys(data, _TOP_KEYS, lines)
        for key in _TOP_KEYS:
            if key not in data:
                raise lines.error(f"missing section {key!r}")
            if not isinstance(data[key], dict) or not data[key]:
                raise lines.error(f"{key!r} must be a non-empty mapping", key)

        kinds: dict[str, KindSpec] = {}
        for name, raw in data["kinds"].items():
            at = ("kinds", name)
            _check_name(name, "kind", lines, *at)
            if not isinstance(raw, dict):
                raise lines.error(f"kind {name!r} must be a mapping", *at)
            require_keys(raw, _KIND_KEYS, lines, *at)
            if "report_interval_s" not in raw:
                raise lines.error(f"kind {name!r}: missing 'report_interval_s'", *at)
            interval = _number(raw["report_interval_s"], "report_interval_s", lines, *at, "report_interval_s")
            if interval <= 0:
                raise lines.error(f"kind {name!r}: report_interval_s must be > 0", *at, "report_interval_s")
            kinds[name] = KindSpec(name, interval, _text(raw, "description", lines, *at))

        units: dict[str, UnitSpec] = {}
        for name, raw in data["units"].items():
            at = ("units", name)
            if not isinstance(name, str) or not name or name != name.strip():
                raise lines.error(f"invalid unit name {name!r}", *at)
            if not isinstance(raw, dict):
                raise lines.error(f"unit {name!r} must be a mapping", *at)
            require_keys(raw, _UNIT_KEYS, lines, *at)
            dimension = raw.get("dimension")
            if not isinstance(dimension, str) or not dimension:
                raise lines.error(f"unit {name!r}: 'dimension' must be a non-empty string", *at, "dimension")
            factor = _number(raw.get("factor", 1.0), "factor", lines, *at, "factor")
            if factor == 0:
                raise lines.error(f"unit {name!r}: factor must not be 0", *at, "factor")
            offset = _number(raw.get("offset", 0.0), "offset", lines, *at, "offset")
            units[name] = UnitSpec(name, dimension, factor, offset)

        metrics: dict[str, MetricSpec] = {}
        for name, raw in data["metrics"].items():
            at = ("metrics", name)
            _check_name(name, "metric", lines, *at)
            if not isinstance(raw, dict):
                raise lines.error(f"metric {name!r} must be a mapping", *at)
            require_keys(raw, _METRIC_KEYS, lines, *at)
            unit = raw.get("unit")
            if not isinstance(unit, str):
                raise lines.error(f"metric {name!r}: missing or invalid 'unit'", *at, "unit")
            if unit not in units:
                raise lines.error(f"metric {name!r}: unknown unit {unit!r} (not in units)", *at, "unit")
            lo = _number(raw["min"], "min", lines, *at, "min") if raw.get("min") is not None else None
            hi = _number(raw["max"], "max", lines, *at, "max") if raw.get("max") is not None else None
            if lo is not None and hi is not None and lo > hi:
                raise lines.error(f"metric {name!r}: min {lo:g} is greater than max {hi:g}", *at, "min")
            metric_kinds = raw.get("kinds")
            if not isinstance(metric_kinds, list) or not metric_kinds:
                raise lines.error(f"metric {name!r}: 'kinds' must be a non-empty list", *at, "kinds")
            for i, kind in enumerate(metric_kinds):
                if kind not in kinds:
                    reason = f"metric {name!r}: unknown kind {kind!r} (not in kinds)"
                    raise lines.error(reason, *at, "kinds", i)
            if len(set(metric_kinds)) != len(metric_kinds):
                raise lines.error(f"metric {name!r}: duplicate kind in 'kinds'", *at, "kinds")
            metrics[name] = MetricSpec(
                name, unit, lo, hi, tuple(metric_kinds), _text(raw, "description", lines, *at)
            )
        return cls(kinds, units, metrics, path=lines.path)


@functools.cache
def _load_default() -> Catalog:
    return Catalog.load(DEFAULT_PATH)


def _check_name(name: Any, what: str, lines: Lines, *at: str | int) -> None:
    # kinds are topic levels and metric names end SenML names, so neither may hold '/', ':' or spaces
    if not isinstance(name, str) or not ID_PATTERN.fullmatch(name):
        raise lines.error(f"invalid {what} name {name!r} (expected [A-Za-z0-9_.-]{{1,64}})", *at)


def _number(value: Any, what: str, lines: Lines, *at: str | int) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise lines.error(f"{what} must be a finite number, got {value!r}", *at)
    return float(value)


def _text(raw: dict[str, Any], key: str, lines: Lines, *at: str | int) -> str:
    value = raw.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise lines.error(f"{key!r} must be a string", *at, key)
    return value
