"""Scenarios: YAML files under `config/scenarios/` that script what happens on top of the models.

A scenario is a list of effects, each with a target (devices by id pattern, kind, area, attribute), a start
(`at`: an offset from the run start such as `6h` or `1d6h`, a local time of day `17:00` / `1d 17:00`, or an
ISO-8601 timestamp) and a length (`for`). Scenarios compose: several may be given at once and a scenario may
`include` others; their effects simply add up. A file is validated whole before anything runs and a bad one
is rejected with its path, line and reason (ConfigError); a target that matches no device is an error too.

Effect kinds (`do:`): rain, weather, traffic, offline, fault, store_forward, event (see simulators/README.md).

Repeats: `repeat: 1d` in a scenario's header makes its own effects recur every day after their first start,
for as long as the run lasts; an include can set it for the scenario it includes
(`include: [{scenario: camera-outage-storm, repeat: 6h}]`), so a one-off incident file can recur inside a
long-running one such as the demo. Each occurrence is the same effect on the same devices, shifted by a whole
number of periods; `expect:` windows are checked in every occurrence that the run covers.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np

from occ.errors import ConfigError
from occ.models import Device
from occ.yamlfile import Lines, load_yaml, require_keys
from simulators.fleet import Fleet, MetricSpec, area_and_children
from simulators.timeutil import DAY_S, LOCAL_OFFSET_S, LOCAL_TZ, parse_duration, parse_timestamp

EFFECT_COMMON = ("do", "name", "target", "at", "for")
FAULTS = ("stuck", "spike", "drift", "out_of_range", "clock_offset", "duplicate", "malformed")
VALUE_FAULTS = ("stuck", "spike", "drift", "out_of_range")
MALFORMED_STYLES = ("truncated", "nan", "garbage")
EVENT_TYPES = ("incident", "vehicle_count", "road_flooding", "tamper")
TARGET_KEYS = ("ids", "kind", "area", "where", "limit", "sample")
EXPECT_KEYS = ("device", "metric", "crosses", "recedes_below", "sum_24h_above", "between", "name")

EFFECT_PARAMS: dict[str, tuple[str, ...]] = {
    "rain": ("intensity_mm_h", "background", "jitter"),
    "weather": ("rain_scale",),
    "traffic": ("demand", "capacity", "severity"),
    "offline": ("spread", "return_spread"),
    "fault": ("fault", "metric", "magnitude", "count", "rate_per_h", "value", "offset", "style"),
    "store_forward": ("announce",),
    "event": ("type", "data", "confidence", "every"),
}
_CLOCK_AT = re.compile(r"^(?:(\d+)d\s+)?(\d{1,2}):(\d{2})$")


# ---- specs (what the file says) -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class At:
    """When an effect starts: `offset` seconds after the run start, a local `clock` time, or `absolute`."""

    mode: str
    value: float = 0.0
    days: int = 0
    minute_of_day: int = 0

    def resolve(self, start: float) -> float:
        if self.mode == "offset":
            return start + self.value
        if self.mode == "absolute":
            return self.value
        local_midnight = math.floor((start + LOCAL_OFFSET_S) / DAY_S) * DAY_S - LOCAL_OFFSET_S
        t = local_midnight + self.days * DAY_S + self.minute_of_day * 60.0
        if t < start and self.days == 0:
            t += DAY_S
        return t


@dataclass(frozen=True, slots=True)
class TargetSpec:
    ids: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    areas: tuple[str, ...] = ()
    where: tuple[tuple[str, Any], ...] = ()
    limit: int | None = None
    sample: int | None = None
    line: int | None = None


@dataclass(frozen=True, slots=True)
class EffectSpec:
    do: str
    name: str
    target: TargetSpec
    at: At
    duration: float
    params: dict[str, Any]
    path: str
    line: int | None

    def error(self, reason: str) -> ConfigError:
        return ConfigError(f"effect {self.name!r}: {reason}", path=self.path, line=self.line)


@dataclass(frozen=True, slots=True)
class ExpectSpec:
    device: str
    metric: str
    check: str  # crosses | recedes_below | sum_24h_above
    level: Any
    between: tuple[At, At] | None
    name: str
    path: str
    line: int | None


@dataclass(slots=True)
class ScenarioSpec:
    name: str
    path: str
    description: str = ""
    duration: float | None = None
    repeat: float | None = None
    """Period (seconds) after which the scenario's own effects (and expectations) recur; None: once."""
    effects: list[EffectSpec] = field(default_factory=list)
    expects: list[ExpectSpec] = field(default_factory=list)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _parse_at(value: Any, lines: Lines, *keys: str | int) -> At:
    if isinstance(value, bool):
        raise lines.error("`at` must be an offset (6h), a local time (17:00, 1d 06:30) or a timestamp", *keys)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=LOCAL_TZ)
        return At("absolute", value.timestamp())
    if isinstance(value, date):
        return At("absolute", datetime(value.year, value.month, value.day, tzinfo=LOCAL_TZ).timestamp())
    if isinstance(value, (int, float)):
        if value == 0:
            return At("offset", 0.0)
        # YAML 1.1 reads an unquoted 17:00 as the number 1020: insist on units or quotes
        raise lines.error("`at` needs a unit (90s, 6h, 1d6h) or a quoted local time such as \"17:00\"", *keys)
    if not isinstance(value, str):
        raise lines.error("`at` must be an offset (6h), a local time (17:00, 1d 06:30) or a timestamp", *keys)
    text = value.strip()
    m = _CLOCK_AT.match(text)
    if m:
        hh, mm = int(m.group(2)), int(m.group(3))
        if hh > 23 or mm > 59:
            raise lines.error(f"invalid time of day {text!r}", *keys)
        return At("clock", days=int(m.group(1) or 0), minute_of_day=hh * 60 + mm)
    try:
        return At("offset", parse_duration(text))
    except ValueError:
        pass
    try:
        return At("absolute", parse_timestamp(text))
    except ValueError:
        raise lines.error(
            f"invalid `at` {text!r} (an offset like 6h or 1d6h, a local time like 17:00 or 1d 06:30, "
            "or an ISO-8601 timestamp)", *keys
        ) from None


def _duration(value: Any, lines: Lines, *keys: str | int, signed: bool = False) -> float:
    try:
        if signed and isinstance(value, str) and value.strip().startswith("-"):
            return -parse_duration(value.strip()[1:])
        if signed and isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            return float(value)
        return parse_duration(value)
    except ValueError as exc:
        raise lines.error(str(exc), *keys) from None


def _number(value: Any, lines: Lines, *keys: str | int, lo: float | None = None, hi: float | None = None,
            integer: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if integer:
        ok = ok and float(value).is_integer()
    if not ok:
        raise lines.error(f"{keys[-1]} must be {'an integer' if integer else 'a number'}", *keys)
    v = float(value)
    if lo is not None and v < lo:
        raise lines.error(f"{keys[-1]} must be ≥ {lo:g}", *keys)
    if hi is not None and v > hi:
        raise lines.error(f"{keys[-1]} must be ≤ {hi:g}", *keys)
    return v


def _parse_target(raw: Any, lines: Lines, *keys: str | int) -> TargetSpec:
    if raw is None:
        raise lines.error("effect needs a `target` (ids, kind, area, where, limit, sample)", *keys)
    if not isinstance(raw, dict):
        raise lines.error("target must be a mapping with ids, kind, area, where, limit or sample", *keys)
    require_keys(raw, TARGET_KEYS, lines, *keys)
    if not any(k in raw for k in ("ids", "kind", "area", "where")):
        raise lines.error("target must name ids, kind, area or where", *keys)
    for key in ("ids", "kind", "area"):
        for item in _as_list(raw.get(key)):
            if not isinstance(item, str) or not item:
                raise lines.error(f"target {key} must be a string or a list of strings", *keys, key)
    where = raw.get("where") or {}
    if not isinstance(where, dict):
        raise lines.error("target where must be a mapping of attribute: value", *keys, "where")
    limit = raw.get("limit")
    sample = raw.get("sample")
    if limit is not None:
        limit = int(_number(limit, lines, *keys, "limit", lo=1, integer=True))
    if sample is not None:
        sample = int(_number(sample, lines, *keys, "sample", lo=1, integer=True))
    if limit is not None and sample is not None:
        raise lines.error("target takes limit or sample, not both", *keys, "sample")
    return TargetSpec(
        ids=tuple(_as_list(raw.get("ids"))),
        kinds=tuple(_as_list(raw.get("kind"))),
        areas=tuple(_as_list(raw.get("area"))),
        where=tuple(sorted(where.items())),
        limit=limit,
        sample=sample,
        line=lines.of(*keys),
    )


def _parse_intensity(value: Any, lines: Lines, *keys: str | int) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _number(value, lines, *keys, lo=0)
    if not isinstance(value, list) or not value:
        raise lines.error("intensity_mm_h must be a number or a list of [offset, mm/h] points", *keys)
    points: list[tuple[float, float]] = []
    for i, point in enumerate(value):
        if not isinstance(point, list) or len(point) != 2:
            raise lines.error("each intensity point must be [offset, mm/h], e.g. [6h, 12.5]", *keys, i)
        offset = _duration(point[0], lines, *keys, i)
        rate = _number(point[1], lines, *keys, i, lo=0)
        if points and offset < points[-1][0]:
            raise lines.error("intensity points must be in time order", *keys, i)
        points.append((offset, rate))
    return tuple(points)


def _parse_effect(raw: Any, lines: Lines, path: str, i: int,
                  metrics: dict[str, MetricSpec] | None) -> EffectSpec:
    keys: tuple[str | int, ...] = ("effects", i)
    if not isinstance(raw, dict):
        raise lines.error("each effect must be a mapping with do, target, at and for", *keys)
    do = raw.get("do")
    if do not in EFFECT_PARAMS:
        raise lines.error(f"unknown effect {do!r} (expected one of: {', '.join(EFFECT_PARAMS)})", *keys, "do")
    require_keys(raw, EFFECT_COMMON + EFFECT_PARAMS[do], lines, *keys)
    name = str(raw.get("name", f"{do} #{i + 1}"))
    target = _parse_target(raw.get("target"), lines, *keys, "target")
    at = _parse_at(raw.get("at", 0), lines, *keys, "at")
    needs_for = do not in ("event",)
    if "for" not in raw and needs_for:
        raise lines.error(f"effect {do!r} needs `for` (how long it lasts, e.g. 20m or 3d)", *keys)
    duration = _duration(raw.get("for", 0), lines, *keys, "for")
    p: dict[str, Any] = {}
    if do == "rain":
        if "intensity_mm_h" not in raw:
            raise lines.error("rain needs intensity_mm_h", *keys)
        p["intensity_mm_h"] = _parse_intensity(raw["intensity_mm_h"], lines, *keys, "intensity_mm_h")
        background = raw.get("background", "keep")
        if background not in ("keep", "off"):
            raise lines.error("background must be keep or off", *keys, "background")
        p["background"] = background
        p["jitter"] = _number(raw.get("jitter", 0.3), lines, *keys, "jitter", lo=0, hi=1)
    elif do == "weather":
        p["rain_scale"] = _number(raw.get("rain_scale", 1.0), lines, *keys, "rain_scale", lo=0)
    elif do == "traffic":
        p["demand"] = _number(raw.get("demand", 1.0), lines, *keys, "demand", lo=0)
        p["capacity"] = _number(raw.get("capacity", 1.0), lines, *keys, "capacity", lo=0.01)
        p["severity"] = _number(raw.get("severity", 0.0), lines, *keys, "severity", lo=0, hi=1)
    elif do == "offline":
        p["spread"] = _duration(raw.get("spread", 0), lines, *keys, "spread")
        p["return_spread"] = _duration(raw.get("return_spread", 0), lines, *keys, "return_spread")
    elif do == "store_forward":
        announce = raw.get("announce", True)
        if not isinstance(announce, bool):
            raise lines.error("announce must be true or false", *keys, "announce")
        p["announce"] = announce
    elif do == "event":
        etype = raw.get("type")
        if etype not in EVENT_TYPES:
            raise lines.error(f"event type must be one of: {', '.join(EVENT_TYPES)}", *keys, "type")
        data = raw.get("data", {}) or {}
        if not isinstance(data, dict) or any(k in ("ts", "type", "confidence") for k in data):
            raise lines.error("event data must be a mapping without ts, type or confidence", *keys, "data")
        p["type"] = etype
        p["data"] = data
        p["confidence"] = _number(raw.get("confidence", 0.9), lines, *keys, "confidence", lo=0, hi=1)
        p["every"] = _duration(raw["every"], lines, *keys, "every") if "every" in raw else None
        if p["every"] is not None and p["every"] <= 0:
            raise lines.error("every must be positive", *keys, "every")
    elif do == "fault":
        _parse_fault(raw, lines, keys, p, metrics)
    return EffectSpec(do, name, target, at, duration, p, path, lines.of(*keys))


def _parse_fault(raw: dict[str, Any], lines: Lines, keys: tuple[str | int, ...], p: dict[str, Any],
                 metrics: dict[str, MetricSpec] | None) -> None:
    fault = raw.get("fault")
    if fault not in FAULTS:
        raise lines.error(f"unknown fault {fault!r} (expected one of: {', '.join(FAULTS)})", *keys, "fault")
    p["fault"] = fault
    allowed = {
        "stuck": ("metric",),
        "spike": ("metric", "magnitude", "count"),
        "drift": ("metric", "rate_per_h"),
        "out_of_range": ("metric", "value"),
        "clock_offset": ("offset",),
        "duplicate": ("count",),
        "malformed": ("style", "count"),
    }[fault]
    for key in EFFECT_PARAMS["fault"]:
        if key != "fault" and key in raw and key not in allowed:
            raise lines.error(f"fault {fault} does not take {key!r} (it takes: {', '.join(allowed)})", *keys, key)
    if "metric" in allowed:
        metric = raw.get("metric")
        if not isinstance(metric, str):
            raise lines.error(f"fault {fault} needs a metric", *keys)
        if metrics and metric not in metrics:
            raise lines.error(f"unknown metric {metric!r} (see config/metrics.yaml)", *keys, "metric")
        p["metric"] = metric
    if fault == "spike":
        if "magnitude" not in raw:
            raise lines.error("spike needs a magnitude (added to the value)", *keys)
        p["magnitude"] = _number(raw["magnitude"], lines, *keys, "magnitude")
        p["count"] = int(_number(raw.get("count", 1), lines, *keys, "count", lo=1, integer=True))
    elif fault == "drift":
        if "rate_per_h" not in raw:
            raise lines.error("drift needs rate_per_h", *keys)
        p["rate_per_h"] = _number(raw["rate_per_h"], lines, *keys, "rate_per_h")
    elif fault == "out_of_range":
        if "value" in raw:
            p["value"] = _number(raw["value"], lines, *keys, "value")
        elif metrics and p["metric"] in metrics:
            known = metrics[p["metric"]]
            p["value"] = known.max + max(known.max - known.min, 1.0)
        else:
            raise lines.error("out_of_range needs a value", *keys)
        spec = (metrics or {}).get(p["metric"])
        if spec is not None and spec.min <= p["value"] <= spec.max:
            raise lines.error(f"value {p['value']:g} is inside the plausible range of {p['metric']} "
                              f"[{spec.min:g}, {spec.max:g}]", *keys, "value")
    elif fault == "clock_offset":
        p["offset"] = _duration(raw.get("offset", "1h"), lines, *keys, "offset", signed=True)
    elif fault == "malformed":
        style = raw.get("style", "truncated")
        if style not in MALFORMED_STYLES:
            raise lines.error(f"style must be one of: {', '.join(MALFORMED_STYLES)}", *keys, "style")
        p["style"] = style
    if fault in ("duplicate", "malformed"):
        p["count"] = int(_number(raw["count"], lines, *keys, "count", lo=1, integer=True)) if "count" in raw \
            else None


def _parse_expect(raw: Any, lines: Lines, path: str, i: int) -> ExpectSpec:
    keys: tuple[str | int, ...] = ("expect", i)
    if not isinstance(raw, dict):
        raise lines.error("each expectation must be a mapping", *keys)
    require_keys(raw, EXPECT_KEYS, lines, *keys)
    checks = [k for k in ("crosses", "recedes_below", "sum_24h_above") if k in raw]
    if len(checks) != 1:
        raise lines.error("an expectation needs exactly one of crosses, recedes_below, sum_24h_above", *keys)
    for key in ("device", "metric"):
        if not isinstance(raw.get(key), str):
            raise lines.error(f"expectation needs {key}", *keys)
    between = None
    if "between" in raw:
        b = raw["between"]
        if not isinstance(b, list) or len(b) != 2:
            raise lines.error("between must be [from, to]", *keys, "between")
        between = (_parse_at(b[0], lines, *keys, "between"), _parse_at(b[1], lines, *keys, "between"))
    check = checks[0]
    return ExpectSpec(raw["device"], raw["metric"], check, raw[check], between,
                      str(raw.get("name", f"{raw['device']} {check} {raw[check]}")), path, lines.of(*keys))


@dataclass(frozen=True, slots=True)
class Include:
    """One `include:` entry: a scenario name or file, and optionally the period it recurs with."""

    name: str
    repeat: float | None = None
    line: int | None = None


def _parse_repeat(value: Any, lines: Lines, *keys: str | int) -> float:
    period = _duration(value, lines, *keys)
    if period < 60:
        raise lines.error("repeat must be at least 1m (a period such as 6h or 1d)", *keys)
    return period


def _parse_include(raw: Any, lines: Lines, i: int) -> Include:
    keys: tuple[str | int, ...] = ("scenario", "include", i)
    if isinstance(raw, str) and raw:
        return Include(raw, None, lines.of(*keys))
    if isinstance(raw, dict):
        require_keys(raw, ("scenario", "repeat"), lines, *keys)
        name = raw.get("scenario")
        if not isinstance(name, str) or not name:
            raise lines.error("an include mapping needs `scenario: NAME`", *keys)
        repeat = _parse_repeat(raw["repeat"], lines, *keys, "repeat") if "repeat" in raw else None
        return Include(name, repeat, lines.of(*keys))
    raise lines.error("include entries are scenario names or {scenario: NAME, repeat: PERIOD}", *keys)


def check_repeat(spec: ScenarioSpec, lines_path: str | None = None) -> None:
    """An effect longer than the period would overlap its own next occurrence: reject it."""
    if spec.repeat is None:
        return
    for e in spec.effects:
        if e.duration > spec.repeat:
            raise ConfigError(
                f"effect {e.name!r} lasts {e.duration / 3600:g} h, longer than the scenario's repeat period "
                f"({spec.repeat / 3600:g} h): its occurrences would overlap", path=lines_path or e.path, line=e.line)


def parse_scenario(data: Any, lines: Lines, metrics: dict[str, MetricSpec] | None = None) -> tuple[ScenarioSpec,
                                                                                                  list[Include]]:
    """Validate a parsed scenario file; returns the spec and its `include` list."""
    path = lines.path
    if not isinstance(data, dict):
        raise lines.error("a scenario file is a mapping with `scenario:` and `effects:`")
    require_keys(data, ("scenario", "effects", "expect"), lines)
    head = data.get("scenario")
    if not isinstance(head, dict):
        raise lines.error("missing `scenario:` header (name, description, duration, include)")
    require_keys(head, ("name", "description", "duration", "include", "repeat"), lines, "scenario")
    name = head.get("name")
    if not isinstance(name, str) or not name:
        raise lines.error("scenario needs a name", "scenario")
    duration = _duration(head["duration"], lines, "scenario", "duration") if "duration" in head else None
    repeat = _parse_repeat(head["repeat"], lines, "scenario", "repeat") if "repeat" in head else None
    includes = [_parse_include(x, lines, i) for i, x in enumerate(_as_list(head.get("include")))]
    effects_raw = data.get("effects", []) or []
    if not isinstance(effects_raw, list):
        raise lines.error("effects must be a list", "effects")
    effects = [_parse_effect(e, lines, path, i, metrics) for i, e in enumerate(effects_raw)]
    expects_raw = data.get("expect", []) or []
    if not isinstance(expects_raw, list):
        raise lines.error("expect must be a list", "expect")
    expects = [_parse_expect(e, lines, path, i) for i, e in enumerate(expects_raw)]
    spec = ScenarioSpec(name, path, str(head.get("description", "")).strip(), duration, repeat, effects, expects)
    check_repeat(spec)
    return spec, includes


def scenario_path(name_or_path: str, config_dir: str | Path = "config") -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or "/" in name_or_path:
        return p
    return Path(config_dir) / "scenarios" / f"{name_or_path}.yaml"


def available_scenarios(config_dir: str | Path = "config") -> list[str]:
    return sorted(p.stem for p in (Path(config_dir) / "scenarios").glob("*.yaml"))


def load_scenarios(names: Sequence[str], config_dir: str | Path = "config",
                   metrics: dict[str, MetricSpec] | None = None) -> list[ScenarioSpec]:
    """Load scenarios by name (config/scenarios/NAME.yaml) or path, with their includes, each file once."""
    out: list[ScenarioSpec] = []
    seen: dict[Path, ScenarioSpec] = {}

    def visit(name: str, stack: tuple[Path, ...], include: Include | None = None,
              includer: str | None = None) -> None:
        path = scenario_path(name, config_dir)
        if not path.exists():
            known = ", ".join(available_scenarios(config_dir)) or "none"
            raise ConfigError(f"no scenario {name!r} (known: {known})",
                              path=includer or str(path), line=include.line if include else None)
        key = path.resolve()
        if key in stack:
            raise ConfigError(f"scenario include cycle: {' -> '.join(p.name for p in (*stack, key))}", path=str(path))
        wanted = include.repeat if include is not None else None
        if key in seen:
            if wanted is not None and seen[key].repeat != wanted:
                raise ConfigError(f"scenario {name!r} is included twice with different repeat periods",
                                  path=includer, line=include.line if include else None)
            return
        data, lines = load_yaml(path)
        spec, includes = parse_scenario(data, lines, metrics)
        if wanted is not None:
            spec.repeat = wanted  # the includer's period wins over the file's own
            check_repeat(spec, includer)
        for inc in includes:
            visit(inc.name, (*stack, key), inc, str(path))
        seen[key] = spec
        out.append(spec)

    for n in names:
        visit(n, ())
    return out


# ---- binding to a fleet and a start time ----------------------------------------------------------------------


@dataclass(slots=True)
class BoundEffect:
    spec: EffectSpec
    start: float
    end: float
    devices: list[Device]
    period: float | None = None
    """The effect recurs every `period` seconds (its scenario's repeat); None: once."""
    occurrence: int = 0

    def nth(self, k: int) -> BoundEffect:
        """The k-th occurrence (0 is this one) of a repeating effect: same devices, shifted by k periods."""
        if self.period is None:
            raise ValueError(f"effect {self.spec.name!r} does not repeat")
        shift = k * self.period
        return BoundEffect(self.spec, self.start + shift, self.end + shift, self.devices, self.period, k)


def select(fleet: Fleet, target: TargetSpec, rng: np.random.Generator) -> list[Device]:
    """Devices matching every criterion of the target (ids match any of the patterns), in fleet order."""
    areas: set[str] | None = None
    if target.areas:
        areas = set()
        for a in target.areas:
            areas |= area_and_children(fleet.areas, a) if fleet.areas else {a}
    chosen = []
    for d in fleet.devices:
        if target.ids and not any(fnmatch.fnmatchcase(d.id, pat) for pat in target.ids):
            continue
        if target.kinds and d.kind not in target.kinds:
            continue
        if areas is not None and d.area not in areas:
            continue
        if target.where and not all(_attr_matches(d.attributes.get(k), v) for k, v in target.where):
            continue
        chosen.append(d)
    if target.limit is not None:
        chosen = chosen[: target.limit]
    elif target.sample is not None and target.sample < len(chosen):
        pick = np.sort(rng.choice(len(chosen), size=target.sample, replace=False))
        chosen = [chosen[int(i)] for i in pick]
    return chosen


def _attr_matches(actual: Any, wanted: Any) -> bool:
    if isinstance(actual, list):
        return wanted in actual or actual == wanted
    return bool(actual == wanted)


def bind(specs: Sequence[ScenarioSpec], fleet: Fleet, start: float, seed: int,
         reports: Callable[[Device, str], bool] | None = None) -> list[BoundEffect]:
    """Resolve every effect's targets and times. `reports(device, metric) -> bool` says whether a device
    reports a metric (so a fault on a metric the device never sends is rejected, not silently ignored)."""
    rng = np.random.default_rng([seed, 7])
    bound: list[BoundEffect] = []
    for spec in specs:
        for e in spec.effects:
            devices = select(fleet, e.target, rng)
            if not devices:
                raise ConfigError(f"effect {e.name!r}: target matches no device", path=e.path, line=e.target.line)
            kinds = {d.kind for d in devices}
            if e.do == "rain" or e.do == "weather":
                if kinds - {"hydromet"}:
                    raise e.error(f"{e.do} applies to hydromet stations, target also has {sorted(kinds)}")
            if e.do == "event" and kinds - {"camera"}:
                raise e.error("events come from cameras; target other kinds with a fault or offline effect")
            if e.do == "traffic" and kinds - {"traffic", "camera"}:
                raise e.error("traffic applies to traffic counters and cameras")
            if e.do == "fault" and "metric" in e.params:
                metric = e.params["metric"]
                spec_m = fleet.metrics.get(metric)
                if spec_m is not None and spec_m.kinds and kinds - set(spec_m.kinds):
                    raise e.error(f"metric {metric} is not reported by {sorted(kinds - set(spec_m.kinds))} devices")
                if reports is not None:
                    silent = [d.id for d in devices if not reports(d, metric)]
                    if silent:
                        raise e.error(f"{', '.join(silent[:5])} do not report {metric}")
            begin = e.at.resolve(start)
            bound.append(BoundEffect(e, begin, begin + e.duration, devices, spec.repeat))
    return bound


def check_expectations(specs: Sequence[ScenarioSpec], start: float,
                       series: dict[tuple[str, str], list[tuple[float, float]]],
                       fleet: Fleet) -> list[tuple[ExpectSpec, bool, str]]:
    """Evaluate each `expect:` entry against recorded (time, value) series; returns (spec, ok, detail).

    In a repeating scenario every occurrence whose window the recording covers is checked on its own cycle
    (from its start to the next one's): a river that has not receded before the next flood fails there."""
    by_id = fleet.by_id()
    results: list[tuple[ExpectSpec, bool, str]] = []
    for spec in specs:
        period = spec.repeat
        for x in spec.expects:
            points = series.get((x.device, x.metric), [])
            if not points:
                results.append((x, False, "no data recorded"))
                continue
            ts = np.array([p[0] for p in points])
            vs = np.array([p[1] for p in points])
            lo0, hi0 = (x.between[0].resolve(start), x.between[1].resolve(start)) if x.between else (-np.inf, np.inf)
            k = 0
            while True:
                shift = k * period if period else 0.0
                lo, hi = lo0 + shift, hi0 + shift
                if k > 0 and (not np.isfinite(hi) or ts[-1] < hi):
                    break  # the recording does not cover this occurrence's window
                cycle = (start + shift, start + shift + period) if period else (-np.inf, np.inf)
                ok, detail = _check_one(x, ts, vs, lo, hi, cycle, start + shift, by_id)
                results.append((x, ok, detail if k == 0 else f"occurrence {k + 1}: {detail}"))
                if not period:
                    break
                k += 1
    return results


def _check_one(x: ExpectSpec, ts: np.ndarray, vs: np.ndarray, lo: float, hi: float, cycle: tuple[float, float],
               origin: float, by_id: dict[str, Device]) -> tuple[bool, str]:
    inside = (ts >= cycle[0]) & (ts < cycle[1])
    if x.check == "sum_24h_above":
        threshold = float(x.level)
        csum = np.concatenate(([0.0], np.cumsum(vs)))
        j = np.searchsorted(ts, ts - 86400.0, side="right")
        sums = csum[1:] - csum[j]
        hit = np.flatnonzero((sums > threshold) & inside)
        when = ts[hit[0]] if hit.size else None
        ok = when is not None and lo <= when <= hi
        detail = "never" if when is None else f"at +{(when - origin) / 3600.0:.1f} h"
        top = sums[inside].max() if inside.any() else float("nan")
        return ok, f"24 h sum > {threshold:g}: {detail}, max {top:.1f}"
    device = by_id.get(x.device)
    levels = (device.attributes.get("alarm_levels_m") or {}) if device else {}
    level = float(levels[x.level]) if isinstance(x.level, str) and x.level in levels else float(x.level)
    cts, cvs = ts[inside], vs[inside]
    when = None
    if x.check == "crosses":
        hit = np.flatnonzero(cvs >= level)
        when = cts[hit[0]] if hit.size else None
    elif cvs.size:
        peak = int(np.argmax(cvs))
        after = np.flatnonzero(cvs[peak:] < level)
        when = cts[peak + after[0]] if after.size and cvs[peak] >= level else None
    ok = when is not None and lo <= when <= hi
    detail = "never" if when is None else f"at +{(when - origin) / 3600.0:.1f} h"
    window = "" if not np.isfinite(hi) else f" (window +{(lo - origin) / 3600:.1f} h … +{(hi - origin) / 3600:.1f} h)"
    return ok, f"{x.check} {level:g}: {detail}{window}"
