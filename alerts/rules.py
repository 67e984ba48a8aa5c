"""Rules as data: `config/rules/*.yaml` parsed and validated into frozen `Rule`s (issue 6, docs/architecture.md §5).

A file is accepted whole or rejected whole with `path:line: what is wrong` (occ.yamlfile keeps the lines);
`load_rules` over several files fails if any one fails, so a running service keeps the rules it has.
Every file may hold four sections: `rules`, `inhibit`, `maintenance` and `notify`. The README documents each
rule kind with an example; `Rule` is one generic record with the fields of every kind (the engine reads the
ones its kind uses), which keeps the engine's hot path free of per-kind dispatch.
"""

from __future__ import annotations

import fnmatch
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any, Final

from alerts.model import fmt_duration, parse_duration
from occ.errors import ConfigError
from occ.models import ID_PATTERN, Device
from occ.yamlfile import Lines, load_yaml, parse_yaml, require_keys

KINDS: Final = ("threshold", "accumulation", "rate", "deadman", "offline", "composite", "anomaly", "event")
LADDER_KINDS: Final = frozenset(("threshold", "accumulation", "rate"))
MESSAGE_FIELDS: Final = frozenset((
    "name", "device_id", "area", "area_name", "level", "value", "threshold", "excess", "unit", "window", "rule",
    "count", "need", "metric", "z", "event", "confidence", "silent_for",
))

_COMMON_KEYS = ("name", "kind", "description", "select", "severity", "level", "for", "keep_firing_for",
                "deescalate_after", "message_vi", "message_en", "labels", "group", "internal", "max_instances",
                "flap")
_KIND_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "threshold": ("metric", "levels", "direction", "strict", "hysteresis"),
    "accumulation": ("metric", "levels", "direction", "strict", "hysteresis", "window", "resolution"),
    "rate": ("metric", "levels", "direction", "strict", "hysteresis", "window"),
    "deadman": ("metric", "after", "grace", "interval"),
    "offline": (),
    "composite": ("of", "require", "scope"),
    "anomaly": ("metric", "samples", "min_samples", "z"),
    "event": ("event", "min_confidence", "data", "hold"),
}
_THRESHOLD_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)\s*(?:([+-])\s*(\d+(?:\.\d+)?))?\s*$")


@dataclass(frozen=True, slots=True)
class Bound:
    """A threshold: a number, or a device attribute path (`alarm_levels_m.II`) plus an optional offset."""

    value: float | None = None
    attr: str | None = None
    offset: float = 0.0

    def resolve(self, attributes: Mapping[str, Any]) -> float | None:
        if self.attr is None:
            return self.value
        found = attribute(attributes, self.attr)
        if isinstance(found, bool) or not isinstance(found, int | float):
            return None
        return float(found) + self.offset

    def __str__(self) -> str:
        if self.attr is None:
            return f"{self.value:g}"
        return self.attr + (f" {'+' if self.offset > 0 else '-'} {abs(self.offset):g}" if self.offset else "")


def attribute(attributes: Mapping[str, Any], path: str) -> Any:
    node: Any = attributes
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


@dataclass(frozen=True, slots=True)
class Level:
    name: str
    severity: int
    enter: Bound = field(default_factory=Bound)
    exit: Bound | None = None


@dataclass(frozen=True, slots=True)
class Select:
    """Which devices a rule applies to: kinds, areas, id globs, attributes that must exist (`has`) and
    attribute values (`where`; a list attribute matches when it contains the value)."""

    kinds: tuple[str, ...] = ()
    areas: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    has: tuple[str, ...] = ()
    where: tuple[tuple[str, Any], ...] = ()

    def matches(self, device: Device) -> bool:
        if self.kinds and device.kind not in self.kinds:
            return False
        if self.areas and device.area not in self.areas:
            return False
        if self.ids and not any(fnmatch.fnmatchcase(device.id, pattern) for pattern in self.ids):
            return False
        attrs = device.attributes
        for path in self.has:
            if attribute(attrs, path) is None:
                return False
        for path, wanted in self.where:
            found = attribute(attrs, path)
            if isinstance(found, list):
                if wanted not in found:
                    return False
            elif found != wanted:
                return False
        return True


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """Storm grouping: episodes of this rule form one incident per value of `by` (area)."""

    by: str = "area"
    title_vi: str = "{area_name}: {count} cảnh báo {rule}"
    title_en: str = "{area_name}: {count} × {rule}"
    name: str = ""
    """Rules sharing a group name share incidents (offline and silent cameras are one outage); counted per
    device. Empty: the rule's own name."""


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    kind: str
    select: Select
    levels: tuple[Level, ...]
    description: str = ""
    metric: str | None = None
    direction: str = "above"
    strict: bool = False
    hysteresis: float = 0.0
    for_s: float = 0.0
    keep_firing_for_s: float = 0.0
    deescalate_after_s: float = 0.0
    window_s: float = 0.0
    resolution_s: float = 60.0
    after: float = 3.0
    grace_s: float = 600.0
    interval_s: float | None = None
    of: tuple[str, ...] = ()
    require: int = 0  # composite: members needed; 0 = all
    scope: str = "device"
    samples: int = 144
    min_samples: int = 36
    z: float = 4.0
    event: str | None = None
    min_confidence: float = 0.0
    data: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    hold_s: float = 900.0
    group: GroupSpec | None = None
    internal: bool = False
    max_instances: int = 5000
    flap_window_s: float = 3600.0
    flap_threshold: int = 6
    message_vi: str = ""
    message_en: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    path: str = ""
    line: int | None = None

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}" if self.line else self.path

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "kind": self.kind, "description": self.description, "metric": self.metric,
            "levels": [{"name": lv.name, "severity": lv.severity,
                        **({"enter": str(lv.enter)} if self.kind in LADDER_KINDS else {})} for lv in self.levels],
            "for": fmt_duration(self.for_s), "keep_firing_for": fmt_duration(self.keep_firing_for_s),
            "internal": self.internal, "source": self.where,
        }
        if self.kind in ("accumulation", "rate"):
            out["window"] = fmt_duration(self.window_s)
        if self.kind == "composite":
            out.update(of=list(self.of), require=self.require or "all", scope=self.scope)
        return out


@dataclass(frozen=True, slots=True)
class Matcher:
    """Label matchers of inhibit rules and maintenance windows: `{label: value | [values]}` (equality)."""

    items: tuple[tuple[str, tuple[str, ...]], ...]

    def matches(self, labels: Mapping[str, Any]) -> bool:
        return all(str(labels.get(k)) in values for k, values in self.items)


@dataclass(frozen=True, slots=True)
class Inhibit:
    source: Matcher
    target: Matcher
    equal: tuple[str, ...] = ("device_id",)


@dataclass(frozen=True, slots=True)
class Maintenance:
    name: str
    match: Matcher
    weekdays: tuple[int, ...]
    start: time
    duration_s: float


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    name: str
    url: str
    min_severity: int = 1
    per_minute: float = 30.0
    timeout_s: float = 5.0
    max_attempts: int = 8


@dataclass(frozen=True, slots=True)
class Escalation:
    after_s: float
    min_severity: int
    targets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()
    inhibit: tuple[Inhibit, ...] = ()
    maintenance: tuple[Maintenance, ...] = ()
    targets: tuple[WebhookTarget, ...] = ()
    escalation: tuple[Escalation, ...] = ()
    files: tuple[str, ...] = ()

    def by_name(self) -> dict[str, Rule]:
        return {r.name: r for r in self.rules}

    def describe(self, devices: Iterable[Device] = ()) -> list[dict[str, Any]]:
        devs = list(devices)
        out = []
        for rule in self.rules:
            item = rule.describe()
            if devs:
                item["devices"] = sum(1 for d in devs if bound(rule, d))
            out.append(item)
        return out


def bound(rule: Rule, device: Device) -> bool:
    """True when the rule applies to the device: it is selected and every attribute threshold resolves."""
    if not rule.select.matches(device):
        return False
    if rule.kind in LADDER_KINDS:
        return all(lv.enter.resolve(device.attributes) is not None for lv in rule.levels)
    return True


# --- parsing ----------------------------------------------------------------------------------------------

def load_rules(paths: Sequence[str | Path]) -> RuleSet:
    """Parse and validate every file; any error rejects the whole set (ConfigError with file and line)."""
    parts = []
    for path in paths:
        data, lines = load_yaml(path)
        parts.append(_parse(data, lines))
    return _merge(parts, [str(p) for p in paths])


def parse_rules(text: str, path: str = "<string>") -> RuleSet:
    data, lines = parse_yaml(text, path)
    return _merge([_parse(data, lines)], [path])


def rule_files(directory: str | Path) -> list[Path]:
    return sorted(Path(directory).glob("*.yaml")) + sorted(Path(directory).glob("*.yml"))


def _merge(parts: list[tuple[RuleSet, Lines]], files: list[str]) -> RuleSet:
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    inhibit: list[Inhibit] = []
    maintenance: list[Maintenance] = []
    targets: list[WebhookTarget] = []
    escalation: list[Escalation] = []
    for part, _lines in parts:
        for rule in part.rules:
            if rule.name in seen:
                raise ConfigError(f"rule {rule.name!r} is already defined at {seen[rule.name]}", path=rule.path,
                                  line=rule.line)
            seen[rule.name] = rule.where
            rules.append(rule)
        inhibit.extend(part.inhibit)
        maintenance.extend(part.maintenance)
        targets.extend(part.targets)
        escalation.extend(part.escalation)
    by_name = {r.name: r for r in rules}
    for rule in rules:
        for ref in rule.of:
            other = by_name.get(ref)
            if other is None:
                raise ConfigError(f"rule {rule.name!r}: `of` names unknown rule {ref!r}", path=rule.path,
                                  line=rule.line)
            if other.kind == "composite":
                raise ConfigError(f"rule {rule.name!r}: a composite cannot refer to composite {ref!r}",
                                  path=rule.path, line=rule.line)
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise ConfigError(f"webhook target names must be unique: {names}", path=files[-1] if files else None)
    for esc in escalation:
        for t in esc.targets:
            if t not in names:
                raise ConfigError(f"escalation names unknown webhook target {t!r}",
                                  path=files[-1] if files else None)
    return RuleSet(tuple(rules), tuple(inhibit), tuple(maintenance), tuple(targets), tuple(escalation),
                   tuple(files))


def _parse(data: Any, lines: Lines) -> tuple[RuleSet, Lines]:
    if data is None:
        return RuleSet(), lines
    if not isinstance(data, dict):
        raise lines.error("top level must be a mapping with `rules:` (and optionally inhibit, maintenance, notify)")
    require_keys(data, ("rules", "inhibit", "maintenance", "notify"), lines)
    raw_rules = data.get("rules") or []
    if not isinstance(raw_rules, list):
        raise lines.error("`rules` must be a list", "rules")
    rules = tuple(_rule(raw, lines, i) for i, raw in enumerate(raw_rules))
    names = [r.name for r in rules]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise lines.error(f"rule {name!r} is defined twice in this file", "rules", i, "name")
    inhibit = tuple(_inhibit(x, lines, i) for i, x in enumerate(_list(data, "inhibit", lines)))
    maintenance = tuple(_maintenance(x, lines, i) for i, x in enumerate(_list(data, "maintenance", lines)))
    targets: tuple[WebhookTarget, ...] = ()
    escalation: tuple[Escalation, ...] = ()
    notify = data.get("notify")
    if notify is not None:
        if not isinstance(notify, dict):
            raise lines.error("`notify` must be a mapping with `webhooks` and `escalation`", "notify")
        require_keys(notify, ("webhooks", "escalation"), lines, "notify")
        targets = tuple(_target(x, lines, i) for i, x in enumerate(_list(notify, "webhooks", lines, "notify")))
        escalation = tuple(_escalation(x, lines, i)
                           for i, x in enumerate(_list(notify, "escalation", lines, "notify")))
    return RuleSet(rules, inhibit, maintenance, targets, escalation, (lines.path,)), lines


def _list(data: dict[str, Any], key: str, lines: Lines, *prefix: str | int) -> list[Any]:
    value = data.get(key) or []
    if not isinstance(value, list):
        raise lines.error(f"`{key}` must be a list", *prefix, key)
    return value


def _rule(raw: Any, lines: Lines, index: int) -> Rule:
    at: tuple[str | int, ...] = ("rules", index)
    if not isinstance(raw, dict):
        raise lines.error("each rule must be a mapping", *at)
    name = raw.get("name")
    if not isinstance(name, str) or not ID_PATTERN.fullmatch(name):
        raise lines.error("rule needs a `name` of letters, digits, '_', '.', '-' (at most 64)", *at, "name")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise lines.error(f"rule {name!r}: `kind` must be one of {', '.join(KINDS)}", *at, "kind")
    require_keys(raw, _COMMON_KEYS + _KIND_KEYS[kind], lines, *at)

    def err(reason: str, *keys: str | int) -> ConfigError:
        return lines.error(f"rule {name!r}: {reason}", *at, *keys)

    def duration(key: str, default: float) -> float:
        if key not in raw:
            return default
        try:
            return parse_duration(raw[key])
        except ValueError as exc:
            raise err(f"`{key}`: {exc}", key) from None

    def number(key: str, default: float, *, minimum: float | None = None) -> float:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise err(f"`{key}` must be a number", key)
        if minimum is not None and value < minimum:
            raise err(f"`{key}` must be at least {minimum:g}", key)
        return float(value)

    def boolean(key: str, default: bool) -> bool:
        value = raw.get(key, default)
        if not isinstance(value, bool):
            raise err(f"`{key}` must be true or false", key)
        return value

    def text(key: str, default: str = "") -> str:
        value = raw.get(key, default)
        if not isinstance(value, str):
            raise err(f"`{key}` must be a string", key)
        return value

    select = _select(raw.get("select"), err)
    metric = raw.get("metric")
    needs_metric = kind in ("threshold", "accumulation", "rate", "anomaly")
    if needs_metric and (not isinstance(metric, str) or not metric):
        raise err("`metric` is required for this kind", "metric")
    if metric is not None and not isinstance(metric, str):
        raise err("`metric` must be a metric name", "metric")
    direction = text("direction", "above")
    if direction not in ("above", "below"):
        raise err("`direction` must be above or below", "direction")
    if kind in LADDER_KINDS:
        if "severity" in raw or "level" in raw:
            raise err("ladder rules set severity per entry of `levels`", "severity" if "severity" in raw else "level")
        levels = _levels(raw.get("levels"), err, direction, number("hysteresis", 0.0, minimum=0.0))
    else:
        level_name = text("level", name)
        levels = (Level(level_name, _severity(raw.get("severity", 1), err, "severity")),)
    window = duration("window", 0.0)
    resolution = duration("resolution", 60.0)
    if kind in ("accumulation", "rate") and window <= 0:
        raise err("`window` is required (e.g. 3h)", "window")
    if kind == "accumulation":
        if resolution <= 0 or window % resolution:
            raise err(f"`window` ({fmt_duration(window)}) must be a whole multiple of `resolution` "
                      f"({fmt_duration(resolution)})", "window")
        if window / resolution > 20_000:
            raise err("`window` / `resolution` must be at most 20000 buckets", "resolution")
    of: tuple[str, ...] = ()
    require = 0
    scope = "device"
    if kind == "composite":
        raw_of = raw.get("of")
        if not isinstance(raw_of, list) or not raw_of or not all(isinstance(x, str) for x in raw_of):
            raise err("`of` must be a non-empty list of rule names", "of")
        of = tuple(raw_of)
        scope = text("scope", "device")
        if scope not in ("device", "area"):
            raise err("`scope` must be device or area", "scope")
        req = raw.get("require", "all")
        if req == "all":
            require = 0
        elif req == "any":
            require = 1
        elif isinstance(req, int) and not isinstance(req, bool) and req >= 1:
            require = req
        else:
            raise err("`require` must be all, any or a number (m of n)", "require")
        if scope == "area" and require == 0:
            raise err("an area composite needs `require: N` (devices that must match)", "require")
        if scope == "device" and require > len(of):
            raise err(f"`require` {require} exceeds the {len(of)} rules in `of`", "require")
    event = None
    data: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    if kind == "event":
        event = raw.get("event")
        if not isinstance(event, str) or not ID_PATTERN.fullmatch(event):
            raise err("`event` must name the event type (incident, road_flooding, tamper, ...)", "event")
        raw_data = raw.get("data") or {}
        if not isinstance(raw_data, dict):
            raise err("`data` must map event fields to a value or a list of values", "data")
        data = tuple((str(k), tuple(v) if isinstance(v, list) else (v,)) for k, v in raw_data.items())
    if kind == "deadman":
        after = number("after", 3.0, minimum=1.0)
    else:
        after = 3.0
    group = None
    if "group" in raw:
        group = _group(raw["group"], lines, at, err)
    labels_raw = raw.get("labels") or {}
    if not isinstance(labels_raw, dict) or not all(isinstance(v, str | int | float) for v in labels_raw.values()):
        raise err("`labels` must map names to strings", "labels")
    flap = raw.get("flap") or {}
    if not isinstance(flap, dict) or set(flap) - {"window", "changes"}:
        raise err("`flap` takes `window` (duration) and `changes` (count)", "flap")
    try:
        flap_window = parse_duration(flap.get("window", 3600))
    except ValueError as exc:
        raise err(f"`flap.window`: {exc}", "flap") from None
    flap_changes = flap.get("changes", 6)
    if not isinstance(flap_changes, int) or flap_changes < 2:
        raise err("`flap.changes` must be an integer ≥ 2", "flap")
    message_vi = text("message_vi")
    message_en = text("message_en")
    for key, template in (("message_vi", message_vi), ("message_en", message_en)):
        _check_template(template, err, key)
    max_instances = int(number("max_instances", 5000, minimum=1))
    interval = duration("interval", 0.0) or None
    return Rule(
        name=name, kind=kind, select=select, levels=levels, description=text("description"), metric=metric,
        direction=direction, strict=boolean("strict", False), hysteresis=number("hysteresis", 0.0, minimum=0.0),
        for_s=duration("for", 0.0), keep_firing_for_s=duration("keep_firing_for", 0.0),
        deescalate_after_s=duration("deescalate_after", 0.0), window_s=window, resolution_s=resolution,
        after=after, grace_s=duration("grace", 600.0), interval_s=interval, of=of, require=require, scope=scope,
        samples=int(number("samples", 144, minimum=4)), min_samples=int(number("min_samples", 36, minimum=3)),
        z=number("z", 4.0, minimum=0.5), event=event, min_confidence=number("min_confidence", 0.0, minimum=0.0),
        data=data, hold_s=duration("hold", 900.0), group=group, internal=boolean("internal", False),
        max_instances=max_instances, flap_window_s=flap_window, flap_threshold=flap_changes,
        message_vi=message_vi, message_en=message_en,
        labels=tuple((str(k), str(v)) for k, v in labels_raw.items()), path=lines.path, line=lines.of(*at),
    )


def _severity(value: Any, err: Any, *keys: str | int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
        raise err("severity must be a disaster-risk level 1..5 (Decision 18/2021)", *keys)
    return value


def _bound(value: Any, err: Any, *keys: str | int) -> Bound:
    if isinstance(value, bool):
        raise err("a threshold must be a number or a device attribute such as alarm_levels_m.II", *keys)
    if isinstance(value, int | float):
        return Bound(value=float(value))
    if isinstance(value, str):
        match = _THRESHOLD_RE.match(value)
        if match:
            path, sign, amount = match.groups()
            offset = float(amount or 0) * (-1 if sign == "-" else 1)
            return Bound(attr=path, offset=offset)
    raise err(f"threshold {value!r} is not a number or `attribute.path [+|- number]`", *keys)


def _levels(raw: Any, err: Any, direction: str, hysteresis: float) -> tuple[Level, ...]:
    if not isinstance(raw, list) or not raw:
        raise err("`levels` must be a non-empty list of {name, severity, enter, exit}", "levels")
    levels = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) - {"name", "severity", "enter", "exit"}:
            raise err("each level is {name, severity, enter, exit (optional)}", "levels", i)
        name = item.get("name")
        if not isinstance(name, str | int) or isinstance(name, bool) or not str(name):
            raise err("each level needs a `name` (I, II, heavy, ...)", "levels", i)
        if "enter" not in item:
            raise err(f"level {name}: `enter` is required", "levels", i)
        enter = _bound(item["enter"], err, "levels", i, "enter")
        exit_: Bound | None = _bound(item["exit"], err, "levels", i, "exit") if "exit" in item else None
        if exit_ is None and hysteresis:
            delta = -hysteresis if direction == "above" else hysteresis
            if enter.attr is None:
                assert enter.value is not None
                exit_ = Bound(value=enter.value + delta)
            else:
                exit_ = Bound(attr=enter.attr, offset=enter.offset + delta)
        if exit_ is not None and exit_.attr is None and enter.attr is None:
            assert enter.value is not None and exit_.value is not None
            if (direction == "above" and exit_.value > enter.value) or (
                    direction == "below" and exit_.value < enter.value):
                raise err(f"level {name}: `exit` must not be past `enter` (hysteresis)", "levels", i, "exit")
        levels.append(Level(str(name), _severity(item.get("severity"), err, "levels", i, "severity"), enter, exit_))
    sevs = [lv.severity for lv in levels]
    if sevs != sorted(sevs):
        raise err("levels must be listed from the mildest to the most severe", "levels")
    numeric = [lv.enter.value for lv in levels if lv.enter.value is not None]
    if len(numeric) == len(levels):
        ordered = sorted(numeric) if direction == "above" else sorted(numeric, reverse=True)
        if numeric != ordered:
            raise err("level thresholds must rise with severity (fall for direction: below)", "levels")
    return tuple(levels)


def _select(raw: Any, err: Any) -> Select:
    if raw is None:
        return Select()
    if not isinstance(raw, dict) or set(raw) - {"kind", "area", "ids", "has", "where"}:
        raise err("`select` takes kind, area, ids, has and where", "select")

    def strings(key: str) -> tuple[str, ...]:
        value = raw.get(key)
        if value is None:
            return ()
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise err(f"`select.{key}` must be a string or a list of strings", "select", key)

    where = raw.get("where") or {}
    if not isinstance(where, dict):
        raise err("`select.where` must map attribute paths to values", "select", "where")
    return Select(strings("kind"), strings("area"), strings("ids"), strings("has"),
                  tuple((str(k), v) for k, v in where.items()))


def _group(raw: Any, lines: Lines, at: tuple[str | int, ...], err: Any) -> GroupSpec:
    if raw is True:
        return GroupSpec()
    if not isinstance(raw, dict) or set(raw) - {"by", "name", "title_vi", "title_en"}:
        raise err("`group` takes by (area), name, title_vi and title_en", "group")
    name = raw.get("name", "")
    if not isinstance(name, str) or (name and not ID_PATTERN.fullmatch(name)):
        raise err("`group.name` must be an id", "group", "name")
    by = raw.get("by", "area")
    if by != "area":
        raise err("`group.by` supports area", "group", "by")
    default = GroupSpec()
    spec = GroupSpec(by, raw.get("title_vi", default.title_vi), raw.get("title_en", default.title_en), name)
    _check_template(spec.title_vi, err, "group")
    _check_template(spec.title_en, err, "group")
    return spec


def _check_template(template: str, err: Any, key: str) -> None:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise err(f"`{key}`: {exc}", key) from None
    for f in fields:
        root = f.split(".")[0].split("[")[0]
        if root != "attr" and root not in MESSAGE_FIELDS:
            raise err(f"`{key}`: unknown field {{{f}}} (known: {', '.join(sorted(MESSAGE_FIELDS))}, "
                      "attr.<attribute>)", key)


def _matcher(raw: Any, lines: Lines, *at: str | int) -> Matcher:
    if not isinstance(raw, dict) or not raw:
        raise lines.error("a matcher maps labels to a value or a list of values", *at)
    items = []
    for k, v in raw.items():
        values = tuple(str(x) for x in v) if isinstance(v, list) else (str(v),)
        items.append((str(k), values))
    return Matcher(tuple(items))


def _inhibit(raw: Any, lines: Lines, index: int) -> Inhibit:
    at = ("inhibit", index)
    if not isinstance(raw, dict):
        raise lines.error("each inhibit entry is {source, target, equal}", *at)
    require_keys(raw, ("source", "target", "equal"), lines, *at)
    equal = raw.get("equal", ["device_id"])
    if not isinstance(equal, list) or not all(isinstance(x, str) for x in equal):
        raise lines.error("`equal` must be a list of label names", *at, "equal")
    return Inhibit(_matcher(raw.get("source"), lines, *at, "source"), _matcher(raw.get("target"), lines, *at,
                                                                                "target"), tuple(equal))


def _maintenance(raw: Any, lines: Lines, index: int) -> Maintenance:
    at = ("maintenance", index)
    if not isinstance(raw, dict):
        raise lines.error("each maintenance window is {name, match, weekdays, start, duration}", *at)
    require_keys(raw, ("name", "match", "weekdays", "start", "duration"), lines, *at)
    weekdays = raw.get("weekdays", [1, 2, 3, 4, 5, 6, 7])
    if not isinstance(weekdays, list) or not all(isinstance(d, int) and 1 <= d <= 7 for d in weekdays):
        raise lines.error("`weekdays` must list ISO weekdays 1 (Monday) .. 7 (Sunday)", *at, "weekdays")
    start = raw.get("start")
    try:
        hh, mm = str(start).split(":")
        start_t = time(int(hh), int(mm))
    except ValueError:
        raise lines.error(f"`start` must be local time HH:MM, got {start!r}", *at, "start") from None
    try:
        duration = parse_duration(raw.get("duration"))
    except ValueError as exc:
        raise lines.error(f"`duration`: {exc}", *at, "duration") from None
    if duration <= 0 or duration > 7 * 86400:
        raise lines.error("`duration` must be between 1s and 7d", *at, "duration")
    return Maintenance(str(raw.get("name", f"maintenance-{index}")), _matcher(raw.get("match"), lines, *at, "match"),
                       tuple(weekdays), start_t, duration)


def _target(raw: Any, lines: Lines, index: int) -> WebhookTarget:
    at = ("notify", "webhooks", index)
    if not isinstance(raw, dict):
        raise lines.error("each webhook is {name, url, min_severity, per_minute}", *at)
    require_keys(raw, ("name", "url", "min_severity", "per_minute", "timeout", "max_attempts"), lines, *at)
    url = raw.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise lines.error("`url` must be an http(s) URL", *at, "url")
    name = raw.get("name")
    if not isinstance(name, str) or not ID_PATTERN.fullmatch(name):
        raise lines.error("`name` must be an id", *at, "name")
    per_minute = raw.get("per_minute", 30)
    if not isinstance(per_minute, int | float) or per_minute <= 0:
        raise lines.error("`per_minute` must be a positive number", *at, "per_minute")
    try:
        timeout = parse_duration(raw.get("timeout", 5))
    except ValueError as exc:
        raise lines.error(f"`timeout`: {exc}", *at, "timeout") from None
    return WebhookTarget(name, url, _severity_plain(raw.get("min_severity", 1), lines, *at, "min_severity"),
                         float(per_minute), timeout, int(raw.get("max_attempts", 8)))


def _severity_plain(value: Any, lines: Lines, *at: str | int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
        raise lines.error("severity must be 1..5", *at)
    return value


def _escalation(raw: Any, lines: Lines, index: int) -> Escalation:
    at = ("notify", "escalation", index)
    if not isinstance(raw, dict):
        raise lines.error("each escalation step is {after, min_severity, targets}", *at)
    require_keys(raw, ("after", "min_severity", "targets"), lines, *at)
    try:
        after = parse_duration(raw.get("after"))
    except ValueError as exc:
        raise lines.error(f"`after`: {exc}", *at, "after") from None
    targets = raw.get("targets")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise lines.error("`targets` must list webhook names", *at, "targets")
    return Escalation(after, _severity_plain(raw.get("min_severity", 1), lines, *at, "min_severity"), tuple(targets))
