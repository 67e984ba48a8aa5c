"""The per-(rule, device) alert state machine: ok → pending → firing → recovering → resolved.

Fed conditions (a level index, -1 = condition clear) in event time and ticked by a clock; every change is
appended to `out` as (instance, from_state, from_severity, ts, reason) for the engine to turn into a
`Transition`. Rules of the road (issue 6 §4–5):

* `for`: the condition must hold that long before firing (pending); a pending episode that clears is resolved
  without ever firing. The firing time is exactly `pending_since + for`, whether a reading or a tick found it.
* Severity rises at once and falls only after `deescalate_after` at the lower level, in the same episode.
* `keep_firing_for`: a cleared condition is `recovering` that long before `resolved`; it returning in between
  goes back to `firing` in the same episode.
* Flapping: `flap_threshold` openings/clearings (ok→active, firing↔recovering) within `flap_window` mark the
  episode flapping (muted); it then resolves only after a whole quiet `flap_window`.
* An operator's manual resolve makes the instance stand down until its condition clears.
* Late: an episode opened by old data (backfill) is `late` for its whole life: stored and shown, never
  announced as new. A rise in severity that live data causes is announced (that is new information).
"""

from __future__ import annotations

from typing import Any

from alerts.rules import Rule

Change = tuple["Instance", str, int, float, str, "Snap"]
# What the instance looked like right after a change: (state, severity, level_idx, value, threshold, late,
# started, fired, peak, flapping, trigger_late). Several changes can happen before the engine collects them.
Snap = tuple[str, int, int, "float | None", "float | None", bool, float, "float | None", int, bool, bool]


class Instance:
    __slots__ = (
        "active",
        "area",
        "clear_since",
        "device_id",
        "fingerprint",
        "fired",
        "flapping",
        "flaps",
        "hold_until",
        "idx",
        "key",
        "ladder",
        "last_ts",
        "late",
        "level_idx",
        "lower_since",
        "muted",
        "out",
        "peak",
        "pending_since",
        "rule",
        "severity",
        "sevs",
        "started",
        "state",
        "suppressed",
        "threshold",
        "trig_late",
        "value",
        "x",
    )

    def __init__(self, rule: Rule, fingerprint: str, device_id: str | None, area: str | None,
                 out: list[Change]) -> None:
        self.rule = rule
        self.fingerprint = fingerprint
        self.key = "i:" + fingerprint
        self.device_id = device_id
        self.area = area
        self.out = out
        self.sevs = tuple(lv.severity for lv in rule.levels)
        self.state = "ok"
        self.active = False
        self.idx = -1          # evaluator's level (hysteresis state); -1 = clear
        self.level_idx = 0     # the episode's level (lags idx while a lower severity dwells)
        self.severity = 0
        self.peak = 0
        self.started = 0.0
        self.pending_since = 0.0
        self.fired: float | None = None
        self.clear_since = 0.0
        self.lower_since: float | None = None
        self.last_ts = float("-inf")
        self.value: float | None = None
        self.threshold: float | None = None
        self.late = False
        self.trig_late = False  # whether the data behind the current change was old
        self.muted: str | None = None
        self.flapping = False
        self.flaps: list[float] = []
        self.suppressed = False
        self.hold_until: float | None = None
        self.x: Any = None     # evaluator state (rate tracker, z-score, ...)
        self.ladder: Any = None  # alerts.ladder.Ladder for threshold, accumulation and rate rules

    # -- transitions -------------------------------------------------------------------------------------
    def _emit(self, from_state: str, from_sev: int, ts: float, reason: str) -> None:
        snap: Snap = (self.state, self.severity, self.level_idx, self.value, self.threshold, self.late,
                      self.started, self.fired, self.peak, self.flapping, self.trig_late)
        self.out.append((self, from_state, from_sev, ts, reason, snap))

    def _fire(self, ts: float, reason: str) -> None:
        prev, prev_sev = self.state, self.severity
        self.state = "firing"
        self.fired = ts
        self.lower_since = None
        self._emit(prev, prev_sev, ts, reason)

    def _flap(self, ts: float) -> None:
        rule = self.rule
        flaps = self.flaps
        flaps.append(ts)
        horizon = ts - rule.flap_window_s
        while flaps and flaps[0] < horizon:
            flaps.pop(0)
        self.flapping = len(flaps) >= rule.flap_threshold

    def observe(self, ts: float, idx: int, value: float | None, threshold: float | None, late: bool) -> None:
        """The condition at event time `ts`: level `idx` (-1 = clear). Timers due before `ts` run first."""
        if ts > self.last_ts:
            self.last_ts = ts
        if self.state != "ok":
            self.advance(ts)
        self.trig_late = late
        self.idx = idx
        self.value = value
        self.threshold = threshold
        active = idx >= 0
        self.active = active
        if self.suppressed:
            if not active:
                self.suppressed = False
            return
        if self.rule.internal:
            return
        state = self.state
        if active:
            sev = self.sevs[idx]
            if state == "ok":
                self.started = ts
                self.late = late
                self.peak = sev
                self.severity = sev
                self.level_idx = idx
                self.fired = None
                self._flap(ts)
                if self.rule.for_s > 0:
                    self.state = "pending"
                    self.pending_since = ts
                    self._emit("ok", 0, ts, "condition met; pending for " + _dur(self.rule.for_s))
                else:
                    self._fire(ts, "condition met")
            elif state == "pending":
                if sev > self.severity:
                    self.severity = sev
                    self.level_idx = idx
                    self.peak = max(self.peak, sev)
            elif state == "firing":
                if sev > self.severity:
                    prev_sev = self.severity
                    self.severity = sev
                    self.level_idx = idx
                    self.peak = max(self.peak, sev)
                    self.lower_since = None
                    self._emit("firing", prev_sev, ts, f"severity rose to level {self.rule.levels[idx].name}")
                elif sev < self.severity:
                    if self.rule.deescalate_after_s <= 0:
                        prev_sev = self.severity
                        self.severity = sev
                        self.level_idx = idx
                        self.lower_since = None
                        self._emit("firing", prev_sev, ts, f"severity fell to level {self.rule.levels[idx].name}")
                    elif self.lower_since is None:
                        self.lower_since = ts
                else:
                    self.lower_since = None
                    self.level_idx = idx
            elif state == "recovering":
                prev_sev = self.severity
                self.state = "firing"
                self.severity = sev
                self.level_idx = idx
                self.peak = max(self.peak, sev)
                self.lower_since = None
                self._flap(ts)
                self._emit("recovering", prev_sev, ts, "condition returned")
        else:
            if state == "pending":
                self.state = "resolved"
                self._emit("pending", self.severity, ts, "condition cleared before `for` elapsed")
                self._reset()
            elif state == "firing":
                self.clear_since = ts
                self.lower_since = None
                self._flap(ts)
                if self.rule.keep_firing_for_s <= 0 and not self.flapping:
                    self.state = "resolved"
                    self._emit("firing", self.severity, ts, "condition cleared")
                    self._reset()
                else:
                    self.state = "recovering"
                    self._emit("firing", self.severity, ts, "condition cleared")

    def advance(self, now: float) -> None:
        """Run the timers due at or before `now` (event time or the engine clock), in the order they fell due."""
        rule = self.rule
        self.trig_late = False
        state = self.state
        if state == "pending":
            due = self.pending_since + rule.for_s
            if self.active and now >= due and not self.suppressed:
                self._fire(due, f"condition held for {_dur(rule.for_s)}")
                state = "firing"
        if state == "firing" and self.lower_since is not None:
            due = self.lower_since + rule.deescalate_after_s
            if now >= due:
                prev_sev = self.severity
                self.lower_since = None
                if self.idx >= 0:
                    self.severity = self.sevs[self.idx]
                    self.level_idx = self.idx
                    self._emit("firing", prev_sev, due, f"severity fell to level {rule.levels[self.idx].name} "
                               f"after {_dur(rule.deescalate_after_s)}")
        if state == "recovering":
            hold = rule.keep_firing_for_s
            if self.flapping:
                hold = max(hold, rule.flap_window_s)
            due = self.clear_since + hold
            if now >= due:
                self.state = "resolved"
                self._emit("recovering", self.severity, due, f"clear for {_dur(hold)}")
                self._reset()

    def _reset(self) -> None:
        """After `resolved` (already emitted) the instance is ok again, ready for a new episode."""
        self.state = "ok"
        self.severity = 0
        self.fired = None
        self.lower_since = None
        self.pending_since = self.clear_since = 0.0  # set again before any use; reset so state is canonical
        self.late = False
        self.flapping = False  # the change history (flaps) stays: an episode that reopens at once counts

    def operator_resolved(self) -> None:
        """An operator resolved the episode: stand down until the condition clears."""
        self.state = "ok"
        self.severity = 0
        self.fired = None
        self.lower_since = None
        self.pending_since = self.clear_since = 0.0
        self.late = False
        self.flapping = False
        self.suppressed = self.active

    @property
    def has_timer(self) -> bool:
        return self.state in ("pending", "recovering") or self.lower_since is not None or \
            self.hold_until is not None

    # -- snapshot ------------------------------------------------------------------------------------------
    def dump(self) -> dict[str, Any]:
        d: dict[str, Any] = {"s": self.state, "i": self.idx, "a": self.active, "t": self.last_ts}
        if self.last_ts == float("-inf"):
            d["t"] = None
        if self.state != "ok":
            d.update(sv=self.severity, li=self.level_idx, pk=self.peak, st=self.started, ps=self.pending_since,
                     f=self.fired, c=self.clear_since, lo=self.lower_since, l=self.late, m=self.muted,
                     fl=self.flapping)
        if self.flaps:
            d["fs"] = self.flaps  # kept after `resolved` too: an episode that reopens soon still counts them
        if self.value is not None:
            d["v"] = self.value
        if self.threshold is not None:
            d["th"] = self.threshold
        if self.suppressed:
            d["su"] = True
        if self.hold_until is not None:
            d["h"] = self.hold_until
        x = self.x
        if x is not None and hasattr(x, "dump"):
            d["x"] = x.dump()
        return d

    def load(self, d: dict[str, Any]) -> None:
        self.state = d["s"]
        self.idx = d["i"]
        self.active = d["a"]
        self.last_ts = float("-inf") if d.get("t") is None else d["t"]
        if self.state != "ok":
            self.severity = d["sv"]
            self.level_idx = d["li"]
            self.peak = d["pk"]
            self.started = d["st"]
            self.pending_since = d["ps"]
            self.fired = d["f"]
            self.clear_since = d["c"]
            self.lower_since = d["lo"]
            self.late = d["l"]
            self.muted = d["m"]
            self.flapping = d["fl"]
        self.flaps = list(d.get("fs", ()))
        self.value = d.get("v")
        self.threshold = d.get("th")
        self.suppressed = d.get("su", False)
        self.hold_until = d.get("h")
        if "x" in d and self.x is not None and hasattr(self.x, "load"):
            self.x.load(d["x"])


def _dur(seconds: float) -> str:
    from alerts.model import fmt_duration

    return fmt_duration(seconds)
