"""The alerts engine core: pure, no I/O, no clock of its own (issue 6 §9, docs/architecture.md §5).

Contract:

    engine = Engine(rules, devices, late_after_s=900)
    engine.restore(snapshot)                        # optional: state from the store after a restart
    engine.tick(now)                                # the clock: timers, deadman, silences (epoch seconds)
    engine.feed_reading(device, metric, ts, value)  # event time; also feed_rows / feed_status / feed_event
    out = engine.take()                             # Output: transitions + incident changes, in order
    state = engine.snapshot()                       # {key: bytes | None}: what changed since the last call
    engine.record_inputs(); ...; engine.take_journal()  # the inputs since the last call, to replay after a restart

* Never raises on input: unknown devices, metrics no rule uses, and duplicates are counted and skipped.
* Idempotent per series: a reading at or before the newest timestamp already applied to its (device, metric)
  is a duplicate (redelivery, device retry) and changes nothing. Backfill newer than that updates windows.
* Event time decides every timestamp in a transition; `tick(now)` supplies processing time, which only runs
  timers with no data (deadman, pending `for` with a silent device, holds, keep_firing_for) and decides
  lateness: data older than `now - late_after_s` opens `late` episodes that are not announced.
* `snapshot()` + `restore()` carry every pending timer, window, hysteresis level and open episode across a
  restart. Snapshots are costly (every instance a reading touched), so the adapter takes one every few
  seconds (a checkpoint) and, with every step, commits the step's *inputs* instead (`record_inputs()`,
  `take_journal()`: ticks, readings, statuses, events, takes, operator resolves, in call order). After a
  restart `restore(checkpoint)` then `replay(journal since)` rebuilds exactly the state of the last committed
  step: the engine is deterministic given its inputs and its configuration (rules, devices, silences), and the
  adapter checkpoints before it changes the configuration, so a journal is always replayed under the
  configuration it was recorded with.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson

from alerts.anomaly import ZScore
from alerts.ladder import Ladder
from alerts.lifecycle import Change, Instance, Snap
from alerts.messages import render
from alerts.model import ACTIVE, IncidentChange, Output, Transition, fmt_duration
from alerts.rate import RateTracker
from alerts.rules import LADDER_KINDS, Rule, RuleSet, bound
from alerts.storm import Incidents, Muting, SilenceRule, Window, inhibited, windows_from_rules
from alerts.windows import SeriesWindows
from occ.models import Device

_THRESHOLD, _ACCUM, _RATE, _ANOMALY = 0, 1, 2, 3
_NEG_INF = float("-inf")


class _Series:
    """Per (device, metric): the newest timestamp applied and the shared rolling windows."""

    __slots__ = ("device_id", "handlers", "key", "last_ts", "volatile", "windows", "wins")

    def __init__(self, key: str, device_id: str) -> None:
        self.key = key
        self.device_id = device_id
        self.last_ts = _NEG_INF
        self.windows: dict[float, SeriesWindows] = {}
        self.wins: list[SeriesWindows] = []
        self.handlers: list[tuple[int, Instance, Any, Any, tuple[float, float]]] = []
        self.volatile: tuple[str, ...] = ()
        """Keys of the instances every reading changes (rate and anomaly: their history); the others are
        marked dirty only when a reading changes them."""

    def dump(self) -> dict[str, Any]:
        return {"t": None if self.last_ts == _NEG_INF else self.last_ts,
                "w": {str(res): w.dump() for res, w in self.windows.items()}}


def _fingerprint(inst: Instance) -> str:
    return inst.fingerprint


def _strip(rule: Rule) -> Rule:
    return dataclasses.replace(rule, path="", line=None)


class Engine:
    def __init__(
        self,
        rules: RuleSet,
        devices: Iterable[Device] = (),
        *,
        late_after_s: float = 900.0,
        timezone: str = "Asia/Ho_Chi_Minh",
        area_names: Mapping[str, str] | None = None,
        units: Mapping[str, str] | None = None,
        kind_intervals: Mapping[str, float] | None = None,
        default_interval_s: float = 600.0,
        event_clock: bool = False,
    ) -> None:
        self.late_after_s = late_after_s
        self.event_clock = event_clock
        """Lateness follows the watermark as it moves within a batch (replays), not only at ticks."""
        self.area_names = dict(area_names or {})
        self.units = dict(units or {})
        self.kind_intervals = dict(kind_intervals or {})
        self.default_interval_s = default_interval_s
        self.muting = Muting(timezone=timezone)
        self.now: float | None = None
        self.started: float | None = None
        self.watermark: float | None = None
        self._saved_watermark: float | None = None
        """Newest event time fed (the clock of replays: `alerts.clock: event`)."""
        self._late_before = _NEG_INF
        self._changes: list[Change] = []
        self._incident_changes: list[IncidentChange] = []
        self._instances: dict[str, Instance] = {}
        self._by_device: dict[str, list[Instance]] = {}
        self._live: set[Instance] = set()   # not ok (open episodes) or holding: muting is refreshed for these
        self._timed: set[Instance] = set()  # with a timer that can fall due: the clock visits only these
        self._series: dict[str, _Series] = {}
        self._routes: dict[tuple[str, str], _Series | None] = {}
        self._status_routes: dict[str, list[Instance]] = {}
        self._event_routes: dict[tuple[str, str], list[Instance]] = {}
        self._deadman: list[tuple[Instance, str, float]] = []
        self._last_seen: dict[str, float] = {}
        self._watched: set[str] = set()  # devices a deadman rule watches: only their last-seen time is state
        self._journal: list[tuple[Any, ...]] | None = None
        self._restored_clock: dict[str, Any] = {}
        self._cow: dict[str, list[str]] = {}
        """A checkpoint in progress: per device, its keys not captured yet (see `start_checkpoint`)."""
        self._cow_out: dict[str, bytes | None] | None = None
        self._comp_members: dict[str, set[tuple[str, str]]] = {}
        self._refs: dict[str, list[Rule]] = {}
        self._per_rule: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._touched: set[_Series] = set()
        self._seen: set[str] = set()
        self._stored: set[str] = set()
        self.n_readings = 0
        self._stash: dict[str, dict[str, Any]] = {}
        self.incidents = Incidents()
        self._db_windows: list[Window] = []
        self.stats = {"duplicates": 0, "unknown_device": 0, "too_old": 0, "capped": 0}
        self.devices: dict[str, Device] = {}
        self.rules = RuleSet()
        self._by_metric: dict[str, list[Rule]] = {}
        self._status_rules: list[Rule] = []
        self._event_rules: dict[str, list[Rule]] = {}
        self.set_devices(devices, _rebind=False)
        self.set_rules(rules)

    # -- configuration -------------------------------------------------------------------------------------
    def set_devices(self, devices: Iterable[Device], *, _rebind: bool = True) -> None:
        self._capture_all()
        self.devices = {d.id: d for d in devices}
        if _rebind:
            self._clear_routes()
            self._bind_deadman()

    def set_rules(self, rules: RuleSet) -> None:
        """Swap the rule set. Instances of unchanged rules keep their state; instances of changed rules keep
        their episode but re-bind; removed rules resolve their open episodes."""
        self._capture_all()
        old = self.rules.by_name()
        new = rules.by_name()
        self.rules = rules
        for fp, inst in list(self._instances.items()):
            rule = new.get(inst.rule.name)
            if rule is None:
                if inst.state in ACTIVE and not inst.rule.internal:
                    from_state, sev = inst.state, inst.severity
                    inst.state = "resolved"
                    ts = self.now if self.now is not None else inst.last_ts
                    inst._emit(from_state, sev, ts, "rule removed")
                    inst._reset()
                self._drop(fp)
            elif _strip(rule) != _strip(old.get(rule.name, rule)):
                inst.rule = rule
                inst.sevs = tuple(lv.severity for lv in rule.levels)
                if inst.idx >= len(rule.levels):
                    inst.idx = len(rule.levels) - 1
                inst.level_idx = min(inst.level_idx, len(rule.levels) - 1)
            else:
                inst.rule = rule
        self._by_metric = {}
        self._status_rules = []
        self._event_rules = {}
        self._refs = {}
        for rule in rules.rules:
            if rule.kind in ("threshold", "accumulation", "rate", "anomaly") and rule.metric:
                self._by_metric.setdefault(rule.metric, []).append(rule)
            elif rule.kind == "offline":
                self._status_rules.append(rule)
            elif rule.kind == "event" and rule.event:
                self._event_rules.setdefault(rule.event, []).append(rule)
            for ref in rule.of:
                self._refs.setdefault(ref, []).append(rule)
        self.muting.windows = windows_from_rules(rules.maintenance) + self._db_windows
        self._clear_routes()
        self._bind_deadman()

    def set_silences(self, silences: list[SilenceRule]) -> None:
        self._capture_all()
        self.muting.silences = silences

    def set_maintenance(self, windows: list[Window]) -> None:
        """Maintenance windows from the database (operators), in addition to those in rule files."""
        self._capture_all()
        self._db_windows = list(windows)
        self.muting.windows = windows_from_rules(self.rules.maintenance) + self._db_windows

    def _clear_routes(self) -> None:
        self._routes = {}
        self._status_routes = {}
        self._event_routes = {}
        for series in self._series.values():
            series.handlers = []
            series.volatile = ()

    def _drop(self, fp: str) -> None:
        inst = self._instances.pop(fp)
        self._live.discard(inst)
        self._timed.discard(inst)
        self._per_rule[inst.rule.name] = self._per_rule.get(inst.rule.name, 1) - 1
        if inst.device_id is not None:
            group = self._by_device.get(inst.device_id)
            if group and inst in group:
                group.remove(inst)
        self._dirty.add(inst.key)

    # -- instances -----------------------------------------------------------------------------------------
    def _instance(self, rule: Rule, device_id: str | None, area: str | None, fp: str | None = None) -> Instance | None:
        fp = fp or (f"{rule.name}|{device_id}" if device_id is not None else f"{rule.name}|area:{area}")
        inst = self._instances.get(fp)
        if inst is not None:
            return inst
        count = self._per_rule.get(rule.name, 0)
        if count >= rule.max_instances:
            self.stats["capped"] += 1
            return None
        self._per_rule[rule.name] = count + 1
        inst = Instance(rule, fp, device_id, area, self._changes)
        device = self.devices.get(device_id) if device_id else None
        if rule.kind in LADDER_KINDS and device is not None:
            inst.ladder = self._ladder(rule, device)
        if rule.kind == "rate":
            inst.x = RateTracker(rule.window_s)
        elif rule.kind == "anomaly":
            inst.x = ZScore(rule.samples, rule.min_samples)
        stashed = self._stash.pop(inst.key, None)
        if stashed is not None:
            inst.load(stashed)
        self._instances[fp] = inst
        if device_id is not None:
            self._by_device.setdefault(device_id, []).append(inst)
        self._track(inst)
        return inst

    @staticmethod
    def _ladder(rule: Rule, device: Device) -> Ladder:
        attrs = device.attributes
        enter = [lv.enter.resolve(attrs) for lv in rule.levels]
        exit_ = [lv.exit.resolve(attrs) if lv.exit is not None else None for lv in rule.levels]
        return Ladder([e if e is not None else math.inf for e in enter], exit_, above=rule.direction == "above",
                      strict=rule.strict)

    def _track(self, inst: Instance) -> None:
        if inst.state != "ok" or inst.hold_until is not None:
            self._live.add(inst)
        else:
            self._live.discard(inst)
        if inst.has_timer:
            self._timed.add(inst)
        else:
            self._timed.discard(inst)

    def _route(self, device_id: str, metric: str) -> _Series | None:
        device = self.devices.get(device_id)
        rules = self._by_metric.get(metric)
        if device is None or not rules:
            if device is None:
                self.stats["unknown_device"] += 1
            self._routes[(device_id, metric)] = None
            return None
        key = f"s:{device_id}|{metric}"
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(key, device_id)
            stashed = self._stash.pop(key, None)
        else:
            stashed = None
        wanted: dict[float, set[float]] = {}
        for rule in rules:
            if rule.kind == "accumulation" and bound(rule, device):
                wanted.setdefault(rule.resolution_s, set()).add(rule.window_s)
        for res, spans in wanted.items():
            existing = series.windows.get(res)
            if existing is None or existing.spans != SeriesWindows(res, sorted(spans)).spans:
                series.windows[res] = SeriesWindows(res, sorted(spans))
        if stashed is not None:
            if stashed.get("t") is not None:
                series.last_ts = stashed["t"]
            for res_text, data in stashed.get("w", {}).items():
                win = series.windows.get(float(res_text))
                if win is not None:
                    win.load(data)
        handlers: list[tuple[int, Instance, Any, Any, tuple[float, float]]] = []
        for rule in rules:
            if not bound(rule, device):
                continue
            inst = self._instance(rule, device_id, device.area)
            if inst is None:
                continue
            if inst.ladder is None and rule.kind in LADDER_KINDS:
                inst.ladder = self._ladder(rule, device)
            lo = inst.ladder.quiet_below() if inst.ladder is not None else (1.0, math.inf)
            if rule.kind == "threshold":
                handlers.append((_THRESHOLD, inst, inst.ladder, None, lo))
            elif rule.kind == "accumulation":
                win = series.windows[rule.resolution_s]
                handlers.append((_ACCUM, inst, inst.ladder, (win, win.index(rule.window_s)), lo))
            elif rule.kind == "rate":
                handlers.append((_RATE, inst, inst.ladder, None, lo))
            else:
                handlers.append((_ANOMALY, inst, rule.z, None, lo))
        series.handlers = handlers
        series.volatile = tuple(h[1].key for h in handlers if h[0] in (_RATE, _ANOMALY))
        series.wins = list(series.windows.values())
        self._routes[(device_id, metric)] = series if handlers else None
        return series if handlers else None

    def _bind_deadman(self) -> None:
        self._deadman = []
        watched = self._watched
        self._watched = set()
        for rule in self.rules.rules:
            if rule.kind != "deadman":
                continue
            for device in self.devices.values():
                if not rule.select.matches(device):
                    continue
                interval = rule.interval_s or device.report_interval_s or self.kind_intervals.get(
                    device.kind, self.default_interval_s)
                inst = self._instance(rule, device.id, device.area)
                if inst is not None:
                    self._deadman.append((inst, device.id, rule.after * interval))
                    self._watched.add(device.id)
        # Newly watched devices: their last-seen time becomes state; no longer watched ones are dropped.
        self._seen |= {d for d in self._watched - watched if d in self._last_seen}
        self._seen |= {d for d in watched - self._watched if d in self._stored_devices()}

    def _stored_devices(self) -> set[str]:
        return {k[2:] for k in self._stored if k.startswith("d:")}

    # -- input ---------------------------------------------------------------------------------------------
    def feed_rows(self, rows: Iterable[tuple[str, str, datetime, float, int]]) -> None:
        """Readings as decoded by occ.codecs (ReadingRow tuples), sorted per series by event time first."""
        feed = self.feed_reading
        ordered = sorted(rows, key=lambda r: r[2])
        for device_id, metric, ts, value, _quality in ordered:
            feed(device_id, metric, ts.timestamp(), value)

    def feed_reading(self, device_id: str, metric: str, ts: float, value: float) -> None:
        """The hot path (bench.alerts): one dict lookup, the shared windows, then per rule a comparison with
        the lowest level unless the instance is already active. State is marked dirty per series; the
        instances behind a touched series are resolved at snapshot time."""
        self.n_readings += 1
        journal = self._journal
        if journal is not None:
            journal.append(("r", device_id, metric, ts, value))
        if self._cow and device_id in self._cow:
            self._capture(device_id)
        seen = self._last_seen.get(device_id, _NEG_INF)
        if ts > seen:
            self._last_seen[device_id] = ts
            if device_id in self._watched:
                self._seen.add(device_id)
            if self.watermark is None or ts > self.watermark:
                self.watermark = ts
                if self.event_clock:
                    self._late_before = ts - self.late_after_s
        try:
            series = self._routes[(device_id, metric)]
        except KeyError:
            series = self._route(device_id, metric)
        if series is None:
            return
        if ts <= series.last_ts:
            self.stats["duplicates"] += 1
            return
        series.last_ts = ts
        self._touched.add(series)
        for win in series.wins:
            if not win.add(ts, value):
                self.stats["too_old"] += 1
        late = ts < self._late_before
        for kind, inst, ladder, extra, lo in series.handlers:
            if kind == _THRESHOLD:
                v: float = value
            elif kind == _ACCUM:
                v = extra[0].sums[extra[1]] / 1_000_000  # SeriesWindows.total, inlined
            elif kind == _RATE:
                rate = inst.x.add(ts, value)
                if rate is None:
                    continue
                v = rate
            else:
                z = inst.x.add(value)
                v = value
                inst.threshold = z
                idx = 0 if z is not None and abs(z) >= ladder else -1
                if idx < 0 and inst.idx < 0 and inst.state == "ok":
                    continue
                self._observe(inst, ts, idx, v, z, late)
                continue
            if inst.idx < 0 and inst.state == "ok" and v * lo[0] < lo[1]:
                continue  # the common case: below the lowest level and nothing open
            idx = ladder.step(inst.idx, v)
            if idx < 0 and inst.idx < 0 and inst.state == "ok":
                continue
            if idx == inst.idx and idx == inst.level_idx and inst.state == "firing" and inst.lower_since is None:
                # Steady while firing: no timer can be due and nothing changes but the value.
                inst.value = v
                if ts > inst.last_ts:
                    inst.last_ts = ts
                self._dirty.add(inst.key)
                continue
            self._observe(inst, ts, idx, v, ladder.enter[idx] if idx >= 0 else None, late)

    def _observe(self, inst: Instance, ts: float, idx: int, value: float | None, threshold: float | None,
                 late: bool) -> None:
        was = inst.active
        inst.observe(ts, idx, value, threshold, late)
        self._dirty.add(inst.key)
        self._track(inst)
        if inst.active != was and inst.rule.name in self._refs:
            self._composites(inst, ts, late)

    def feed_status(self, device_id: str, status: str, ts: float, *, clock: bool = True) -> None:
        """`clock=False`: the time is not an event time (a bare status stamped on receipt); it must not move
        the event-time watermark."""
        if self._journal is not None:
            self._journal.append(("s", device_id, status, ts, clock))
        if self._cow and device_id in self._cow:
            self._capture(device_id)
        if clock and (self.watermark is None or ts > self.watermark):
            self.watermark = ts
            if self.event_clock:
                self._late_before = ts - self.late_after_s
        insts = self._status_routes.get(device_id)
        if insts is None:
            device = self.devices.get(device_id)
            insts = []
            if device is not None:
                for rule in self._status_rules:
                    if rule.select.matches(device):
                        inst = self._instance(rule, device_id, device.area)
                        if inst is not None:
                            insts.append(inst)
            self._status_routes[device_id] = insts
        late = ts < self._late_before
        for inst in insts:
            if ts <= inst.last_ts:
                continue
            was = inst.active
            inst.observe(ts, 0 if status == "offline" else -1, None, None, late)
            self._dirty.add(inst.key)
            self._track(inst)
            if inst.active != was and inst.rule.name in self._refs:
                self._composites(inst, ts, late)

    def feed_event(self, device_id: str, ts: float, event_type: str, data: Mapping[str, Any]) -> None:
        if self._journal is not None:
            self._journal.append(("e", device_id, ts, event_type, dict(data)))
        if self._cow and device_id in self._cow:
            self._capture(device_id)
        if self.watermark is None or ts > self.watermark:
            self.watermark = ts
        rules = self._event_rules.get(event_type)
        if not rules:
            return
        key = (device_id, event_type)
        insts = self._event_routes.get(key)
        if insts is None:
            device = self.devices.get(device_id)
            insts = []
            if device is not None:
                for rule in rules:
                    if rule.select.matches(device):
                        inst = self._instance(rule, device_id, device.area)
                        if inst is not None:
                            insts.append(inst)
            self._event_routes[key] = insts
        late = ts < self._late_before
        confidence = data.get("confidence", 1.0)
        if isinstance(confidence, bool) or not isinstance(confidence, int | float):
            confidence = 0.0
        for inst in insts:
            rule = inst.rule
            if confidence < rule.min_confidence:
                continue
            if any(data.get(k) not in values for k, values in rule.data):
                continue
            if ts < inst.last_ts:
                continue
            until = ts + rule.hold_s
            if inst.hold_until is None or until > inst.hold_until:
                inst.hold_until = until
            was = inst.active
            inst.observe(ts, 0, float(confidence), rule.min_confidence or None, late)
            self._dirty.add(inst.key)
            self._track(inst)
            if inst.active != was and rule.name in self._refs:
                self._composites(inst, ts, late)

    def _composites(self, inst: Instance, ts: float, late: bool) -> None:
        for comp in self._refs.get(inst.rule.name, ()):
            if inst.device_id is None:
                continue
            device = self.devices.get(inst.device_id)
            if device is None or not comp.select.matches(device):
                continue
            if comp.scope == "area":
                if device.area is None:
                    continue
                scope_key = f"{comp.name}|area:{device.area}"
                member = (inst.rule.name, inst.device_id)
            else:
                scope_key = f"{comp.name}|{inst.device_id}"
                member = (inst.rule.name, inst.device_id)
            members = self._comp_members.setdefault(scope_key, set())
            if inst.active:
                members.add(member)
            else:
                members.discard(member)
            self._dirty.add("c:" + scope_key)
            if comp.scope == "area":
                count = len({d for _, d in members})
                need = comp.require
                target = self._instance(comp, None, device.area, scope_key)
            else:
                count = len(members)
                need = comp.require or len(comp.of)
                target = self._instance(comp, inst.device_id, device.area, scope_key)
            if target is None:
                continue
            target.observe(max(ts, target.last_ts), 0 if count >= need else -1, float(count), float(need), late)
            self._dirty.add(target.key)
            self._track(target)

    # -- clock ---------------------------------------------------------------------------------------------
    def tick(self, now: float) -> Output:
        """Advance processing time to `now`: run due timers, deadman checks and mute changes."""
        if self._journal is not None:
            self._journal.append(("t", now))
        if self.started is None:
            self.started = now
            self._dirty.add("m:engine")
        if self.now is not None and now < self.now:
            now = self.now
        self.now = now
        if self.watermark != self._saved_watermark:
            self._saved_watermark = self.watermark
            self._dirty.add("m:engine")
        self._late_before = now - self.late_after_s
        # Sorted: timers due in the same tick leave in the same order in every process (sets of objects and
        # of strings iterate in an order that differs between runs; a restarted engine must replay identically).
        cow = self._cow
        for inst in sorted(self._timed, key=_fingerprint):
            if cow and inst.device_id in cow:
                self._capture(inst.device_id)
            if inst.hold_until is not None and now >= inst.hold_until:
                until = inst.hold_until
                inst.hold_until = None
                was = inst.active
                inst.observe(max(until, inst.last_ts), -1, None, None, False)
                if inst.active != was and inst.rule.name in self._refs:
                    self._composites(inst, until, False)
            if inst.state != "ok":
                inst.advance(now)
            self._dirty.add(inst.key)
            self._track(inst)
        started = self.started
        for inst, device_id, limit in self._deadman:
            if cow and device_id in cow:
                self._capture(device_id)
            seen = self._last_seen.get(device_id)
            silent_since = (seen if seen is not None else started)
            silent = now - silent_since > limit
            if silent and not inst.active:
                if now < started + inst.rule.grace_s:
                    continue
                inst.observe(max(silent_since + limit, inst.last_ts), 0, limit, limit, False)
            elif not silent and inst.active:
                inst.observe(max(silent_since, inst.last_ts), -1, None, None, False)
            elif inst.active:
                inst.value = now - silent_since
                if inst.state != "ok":
                    inst.advance(now)
            else:
                continue
            self._dirty.add(inst.key)
            self._track(inst)
        self._refresh_mutes(now)
        return self._take()

    def _refresh_mutes(self, now: float) -> None:
        if not (self.muting.silences or self.muting.windows or self.rules.inhibit) and not any(
                inst.muted in ("silenced", "maintenance") for inst in self._live):
            # Nothing can mute an episode except flapping, which transitions decide. (Before: also when the last
            # silence or window had just been deleted, so the episodes it muted stayed muted.)
            return
        for inst in sorted(self._live, key=_fingerprint):
            if inst.state not in ACTIVE or inst.rule.internal:
                continue
            muted = self._mute(inst, self._labels(inst), now)
            if muted != inst.muted:
                self._before_change(inst)
                inst.muted = muted
                inst._emit(inst.state, inst.severity, now, f"muted: {muted}" if muted else "no longer muted")
                self._dirty.add(inst.key)

    # -- output --------------------------------------------------------------------------------------------
    def _labels(self, inst: Instance, snap: Snap | None = None) -> dict[str, Any]:
        rule = inst.rule
        level_idx = snap[2] if snap else inst.level_idx
        labels: dict[str, Any] = {
            "rule": rule.name, "kind": rule.kind, "device_id": inst.device_id, "area": inst.area,
            "level": rule.levels[level_idx].name if rule.levels else "",
            "severity": snap[1] if snap else inst.severity,
        }
        if rule.metric:
            labels["metric"] = rule.metric
            unit = self.units.get(rule.metric)
            if unit:
                labels["unit"] = unit
        for k, v in rule.labels:
            labels[k] = v
        return labels

    def _mute(self, inst: Instance, labels: dict[str, Any], now: float) -> str | None:
        if self.rules.inhibit and inst.device_id is not None:
            sources = [self._labels(o) for o in self._by_device.get(inst.device_id, ())
                       if o is not inst and o.state in ACTIVE]
            if sources and inhibited(self.rules.inhibit, labels, sources):
                return "inhibited"
        reason = self.muting.reason(labels, now)
        if reason:
            return reason
        return "flapping" if inst.flapping else None

    def take(self) -> Output:
        """Transitions and incident changes since the last call, in the order they happened."""
        if self._journal is not None:
            self._journal.append(("k",))
        return self._take()

    def _take(self) -> Output:
        out = Output()
        changes, self._changes[:] = list(self._changes), []
        now = self.now if self.now is not None else 0.0
        inhibit_devices: set[str] = set()
        for inst, from_state, from_sev, ts, reason, snap in changes:
            rule = inst.rule
            if rule.internal:
                continue
            state = snap[0]
            labels = self._labels(inst, snap)
            if not reason.startswith(("muted:", "no longer muted")):
                self._before_change(inst)
                inst.muted = self._mute(inst, labels, max(ts, now))
            out.transitions.append(self._transition(inst, labels, from_state, from_sev, snap, ts, reason))
            if self.rules.inhibit and inst.device_id is not None:
                inhibit_devices.add(inst.device_id)
            if rule.group is not None:
                joined = state in ("firing", "recovering")
                if (joined and from_state in ("ok", "pending")) or state == "resolved" or joined:
                    if state == "resolved" and from_state == "pending":
                        continue
                    key = f"{rule.group.name or rule.name}|{inst.area or '_none'}"
                    change = self.incidents.update(
                        key, rule.name, inst.area, rule.group, inst.fingerprint, joined,
                        out.transitions[-1].severity, ts, self.area_names.get(inst.area or "", inst.area or ""),
                        member=inst.device_id)
                    if change is not None:
                        out.incidents.append(change)
                        self._dirty.add("g:incidents")
        # An inhibition source that opened or closed changes the mute of its targets.
        for device_id in sorted(inhibit_devices):
            for inst in sorted(self._by_device.get(device_id, ()), key=_fingerprint):
                if inst.state not in ACTIVE or inst.rule.internal:
                    continue
                labels = self._labels(inst)
                muted = self._mute(inst, labels, now)
                if muted != inst.muted:
                    self._before_change(inst)
                    inst.muted = muted
                    reason = f"muted: {muted}" if muted else "no longer muted"
                    current: Snap = (inst.state, inst.severity, inst.level_idx, inst.value, inst.threshold,
                                     inst.late, inst.started, inst.fired, inst.peak, inst.flapping, False)
                    out.transitions.append(self._transition(inst, labels, inst.state, inst.severity, current,
                                                            max(now, inst.last_ts), reason))
                    self._dirty.add(inst.key)
        return out

    def _transition(self, inst: Instance, labels: dict[str, Any], from_state: str, from_sev: int, snap: Snap,
                    ts: float, reason: str) -> Transition:
        rule = inst.rule
        state, sev_now, level_idx, value, threshold, late, started, fired, peak, flapping, trigger_late = snap
        device = self.devices.get(inst.device_id) if inst.device_id else None
        level = rule.levels[level_idx] if rule.levels else None
        if inst.ladder is not None and level is not None and rule.kind in LADDER_KINDS:
            threshold = inst.ladder.enter[level_idx]
        context: dict[str, Any] = {
            "name": device.name if device and device.name else (inst.device_id or ""),
            "device_id": inst.device_id or "", "area": inst.area or "",
            "area_name": self.area_names.get(inst.area or "", inst.area or ""),
            "level": level.name if level else "", "value": value, "threshold": threshold,
            "excess": abs(value - threshold) if value is not None and threshold is not None else None,
            "unit": labels.get("unit", ""), "window": fmt_duration(rule.window_s) if rule.window_s else "",
            "rule": rule.name, "count": int(value) if value is not None and rule.kind == "composite" else 0,
            "need": int(threshold) if threshold is not None and rule.kind == "composite" else 0,
            "metric": rule.metric or "", "z": threshold if rule.kind == "anomaly" else None,
            "event": rule.event or "", "confidence": value if rule.kind == "event" else None,
            "silent_for": fmt_duration(value) if rule.kind == "deadman" and value else "",
            "_attrs": device.attributes if device else {},
        }
        severity = max(1, sev_now or from_sev or (level.severity if level else 1))
        announce = state == "firing" and inst.muted is None and rule.group is None and (
            (from_state in ("ok", "pending") and not late)
            or (from_state == "firing" and severity > from_sev and not trigger_late))
        return Transition(
            fingerprint=inst.fingerprint, rule=rule.name, kind=rule.kind, device_id=inst.device_id, area=inst.area,
            labels={k: v for k, v in labels.items() if k not in ("rule", "kind", "device_id", "area", "level",
                                                               "severity")},
            from_state=from_state,  # type: ignore[arg-type]
            state=state,  # type: ignore[arg-type]
            from_severity=from_sev or None, severity=severity, peak_severity=max(peak, severity),
            level=level.name if level else "", value=value, threshold=threshold,
            message_vi=render(rule.message_vi, context, vietnamese=True),
            message_en=render(rule.message_en, context, vietnamese=False),
            started_at=started, fired_at=fired, ts=ts, late=late, muted=inst.muted,
            flapping=flapping, reason=reason,
            group_key=f"{rule.group.name or rule.name}|{inst.area or '_none'}" if rule.group else None,
            announce=announce,
            device_name=device.name if device else "",
        )

    # -- operators -----------------------------------------------------------------------------------------
    def operator_resolved(self, fingerprint: str) -> None:
        if self._journal is not None:
            self._journal.append(("o", fingerprint))
        inst = self._instances.get(fingerprint)
        if inst is not None:
            self._before_change(inst)
            inst.operator_resolved()
            self._dirty.add(inst.key)
            self._track(inst)

    def open_fingerprints(self) -> set[str]:
        return {fp for fp, inst in self._instances.items() if inst.state in ACTIVE and not inst.rule.internal}

    # -- snapshot ------------------------------------------------------------------------------------------
    def snapshot(self, *, full: bool = False) -> dict[str, bytes | None]:
        """What changed since the last call ({key: bytes, or None for a key to delete}). `full=True` returns
        the whole state instead and has no side effect: the next incremental snapshot is as if it never ran."""
        if full:
            keys = {i.key for i in self._instances.values()} | {s.key for s in self._series.values()}
            keys |= {k for k in self._stash if k.startswith("s:")}
            keys |= {"d:" + d for d in self._last_seen if d in self._watched} | {"g:incidents", "m:engine"}
            keys |= {"c:" + k for k in self._comp_members}
            keys |= self._stored
            full_out = {key: self._dump(key) for key in keys}
            return {k: v for k, v in full_out.items() if v is not None or k in self._stored}
        self._capture_all()
        out: dict[str, bytes | None] = {}
        self._dump_into(self._changed_keys(), out)
        return out

    def _changed_keys(self) -> set[str]:
        keys = set(self._dirty)
        for series in self._touched:
            keys.add(series.key)
            keys.update(series.volatile)
        self._touched.clear()
        keys.update("d:" + d for d in self._seen)
        self._seen.clear()
        keys.add("m:engine")  # the clocks (now, watermark, lateness horizon) move with every step
        self._dirty.clear()
        return keys

    def _dump_into(self, keys: Iterable[str], out: dict[str, bytes | None]) -> None:
        stored = self._stored
        for key in keys:
            data = self._dump(key)
            if data is not None:
                out[key] = data
                stored.add(key)
            elif key in stored:  # was kept before: delete it
                out[key] = None
                stored.discard(key)

    # -- checkpoints without a pause: copy-on-write by device ------------------------------------------------
    def start_checkpoint(self) -> None:
        """Begin an incremental snapshot of the state *as of now*, taken piecemeal: the keys of no device (the
        clocks, incidents, area composites) are captured at once; each device's keys are captured the first
        time anything is about to change that device (`_capture`, called on every path that changes a
        device's series, instances or last-seen time), or by `continue_checkpoint`. So a checkpoint of
        30,000 changed keys does not stop the engine for the half second a whole snapshot takes."""
        self._capture_all()  # one at a time
        out: dict[str, bytes | None] = {}
        pending: dict[str, list[str]] = {}
        eager: list[str] = []
        for key in self._changed_keys():
            kind, _, rest = key.partition(":")
            device = rest.rpartition("|")[2] if kind in ("i", "s", "c") else rest if kind == "d" else ""
            if not device or device.startswith("area:") or kind == "s":
                if kind == "s":  # "s:device|metric": the device is before the bar
                    pending.setdefault(rest.partition("|")[0], []).append(key)
                    continue
                eager.append(key)
            else:
                pending.setdefault(device, []).append(key)
        self._dump_into(eager, out)
        self._cow_out = out
        self._cow = pending

    def continue_checkpoint(self, devices: int) -> bool:
        """Capture up to `devices` more devices; True once the checkpoint is whole (`take_checkpoint`)."""
        cow = self._cow
        for _ in range(min(devices, len(cow))):
            self._capture(next(iter(cow)))
        return not cow

    def take_checkpoint(self) -> dict[str, bytes | None]:
        """The checkpoint started by `start_checkpoint` (completed now if need be): {key: bytes | None}."""
        self._capture_all()
        out, self._cow_out = self._cow_out, None
        return out or {}

    @property
    def checkpointing(self) -> bool:
        return self._cow_out is not None

    def _capture(self, device_id: str | None) -> None:
        keys = self._cow.pop(device_id, None) if device_id is not None else None
        if keys and self._cow_out is not None:
            self._dump_into(keys, self._cow_out)

    def _capture_all(self) -> None:
        while self._cow:
            self._capture(next(iter(self._cow)))

    def _before_change(self, inst: Instance) -> None:
        if self._cow and inst.device_id in self._cow:
            self._capture(inst.device_id)

    def _dump(self, key: str) -> bytes | None:
        kind, _, rest = key.partition(":")
        if kind == "i":
            inst = self._instances.get(rest)
            if inst is None:
                return None
            if inst.state == "ok" and not inst.active and inst.x is None and not inst.suppressed \
                    and inst.hold_until is None and not inst.flaps:
                return None  # nothing worth keeping: a fresh instance is identical
            return orjson.dumps(inst.dump())
        if kind == "s":
            series = self._series.get(key)  # keyed by the full "s:device|metric"
            if series is None:
                stashed = self._stash.get(key)  # restored, not rebuilt yet (series are rebuilt lazily)
                return orjson.dumps(stashed) if stashed is not None else None
            return orjson.dumps(series.dump())
        if kind == "d":
            seen = self._last_seen.get(rest)
            return orjson.dumps(seen) if seen is not None and rest in self._watched else None
        if kind == "c":
            members = self._comp_members.get(rest)
            return orjson.dumps(sorted(members)) if members else None
        if kind == "g":
            return orjson.dumps(self.incidents.dump())
        if kind == "m":
            return orjson.dumps({"started": self.started, "watermark": self.watermark, "now": self.now,
                                 "late_before": None if self._late_before == _NEG_INF else self._late_before})
        return None

    def restore(self, state: Mapping[str, bytes]) -> None:
        """Load a snapshot (before the first tick). Open episodes and timers are re-created at once, so they
        run on the clock even if their device never sends again."""
        self._stored |= set(state)
        for key, raw in state.items():
            data = orjson.loads(raw)
            kind, _, rest = key.partition(":")
            if kind == "m":
                self.watermark = data.get("watermark")
                self._restored_clock = data
            elif kind == "d":
                self._last_seen[rest] = float(data)
            elif kind == "c":
                self._comp_members[rest] = {(a, b) for a, b in data}
            elif kind == "g":
                self.incidents.load(data)
            elif kind == "s":
                self._stash[key] = data
            elif kind == "i":
                self._stash[key] = data
        by_name = self.rules.by_name()
        for key in [k for k in self._stash if k.startswith("i:")]:
            if key not in self._stash:
                continue  # already loaded: building an earlier key's routes created its device's other instances
            fp = key[2:]
            rule_name, _, target = fp.partition("|")
            rule = by_name.get(rule_name)
            if rule is None:
                self._stash.pop(key)
                continue
            existing = self._instances.get(fp)
            if existing is not None:
                existing.load(self._stash.pop(key))
                self._track(existing)
                continue
            if target.startswith("area:"):
                self._instance(rule, None, target[5:], fp)
            else:
                device = self.devices.get(target)
                if device is None:
                    self._stash.pop(key)
                    continue
                if rule.kind in ("threshold", "accumulation", "rate", "anomaly") and rule.metric:
                    self._route(target, rule.metric)
                else:
                    self._instance(rule, target, device.area, fp)
        # Series whose rules exist are re-created on their next reading (lazily) from the stash.

    # -- journal -------------------------------------------------------------------------------------------
    def record_inputs(self, on: bool = True) -> None:
        """Start (or stop) recording every input call for `take_journal()`."""
        self._journal = [] if on else None

    @property
    def journal_size(self) -> int:
        return len(self._journal) if self._journal is not None else 0

    @property
    def maintenance_windows(self) -> list[Window]:
        """The windows set with `set_maintenance` (from the database)."""
        return self._db_windows

    def take_journal(self) -> list[tuple[Any, ...]]:
        """The inputs recorded since the last call (JSON-able tuples), in call order."""
        if self._journal is None:
            return []
        journal, self._journal = self._journal, []
        return journal

    def replay(self, records: Iterable[Sequence[Any]]) -> int:
        """Re-apply recorded inputs after `restore()`: the state becomes the one the recording engine had after
        them. What they produce was committed when they were recorded: transitions are discarded, nothing is
        recorded again. The clocks restored with the snapshot apply during the replay; the start-up grace of
        deadman rules then starts afresh at the next tick, as after any restart. Returns the records applied."""
        recording, self._journal = self._journal, None
        clock = self._restored_clock
        fresh_start = self.started is None
        if self.now is None and clock:
            self.started = clock.get("started")
            self.now = clock.get("now")
            late_before = clock.get("late_before")
            self._late_before = _NEG_INF if late_before is None else late_before
        n = 0
        try:
            for rec in records:
                op = rec[0]
                if op == "r":
                    self.feed_reading(rec[1], rec[2], rec[3], rec[4])
                elif op == "t":
                    self.tick(rec[1])
                elif op == "k":
                    self._take()
                elif op == "s":
                    self.feed_status(rec[1], rec[2], rec[3], clock=rec[4])
                elif op == "e":
                    self.feed_event(rec[1], rec[2], rec[3], rec[4])
                elif op == "o":
                    self.operator_resolved(rec[1])
                else:
                    raise ValueError(f"unknown journal record {rec!r}")
                n += 1
            self._take()
            self._changes.clear()
        finally:
            self._journal = recording
        if fresh_start:
            self.started = None
        return n

    def state_size(self) -> tuple[int, int]:
        """(bytes of a full snapshot, number of (rule, device) instances): the benchmark's memory figure."""
        snap = self.snapshot(full=True)
        size = sum(len(k) + len(v) for k, v in snap.items() if v is not None)
        return size, len(self._instances)
