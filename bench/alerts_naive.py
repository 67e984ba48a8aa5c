"""The baseline of `bench.alerts`: the same rules and the same state machine, but every rolling window is
recomputed from scratch on every reading from the raw samples kept per series — what an evaluator without
shared incremental windows does. Semantics match `alerts.engine` (same buckets, same ladders, same lifecycle),
so both produce the same transitions; `bench.alerts` checks that before timing them."""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from alerts.engine import Engine
from alerts.lifecycle import Change, Instance
from alerts.rate import RateTracker
from alerts.rules import Rule, RuleSet, bound
from occ.models import Device


class NaiveEngine:
    def __init__(self, rules: RuleSet, devices: list[Device]) -> None:
        self.rules = [r for r in rules.rules if r.metric]
        self.devices = {d.id: d for d in devices}
        self.changes: list[Change] = []
        self.samples: dict[tuple[str, str], deque[tuple[float, float]]] = {}
        self.last_ts: dict[tuple[str, str], float] = {}
        self.instances: dict[tuple[str, str], Instance] = {}
        self.horizon = max((r.window_s for r in self.rules if r.kind == "accumulation"), default=0.0)
        self.by_metric: dict[str, list[Rule]] = {}
        for r in self.rules:
            self.by_metric.setdefault(r.metric or "", []).append(r)

    def _instance(self, rule: Rule, device: Device) -> Instance:
        key = (rule.name, device.id)
        inst = self.instances.get(key)
        if inst is None:
            inst = Instance(rule, f"{rule.name}|{device.id}", device.id, device.area, self.changes)
            inst.ladder = Engine._ladder(rule, device)
            if rule.kind == "rate":
                inst.x = RateTracker(rule.window_s)
            self.instances[key] = inst
        return inst

    def feed_reading(self, device_id: str, metric: str, ts: float, value: float) -> None:
        device = self.devices.get(device_id)
        if device is None:
            return
        key = (device_id, metric)
        if ts <= self.last_ts.get(key, -math.inf):
            return
        self.last_ts[key] = ts
        samples = self.samples.setdefault(key, deque())
        samples.append((ts, value))
        for rule in self.by_metric.get(metric, ()):
            if not bound(rule, device):
                continue
            inst = self._instance(rule, device)
            if rule.kind == "threshold":
                v = value
            elif rule.kind == "accumulation":
                # From scratch: every sample whose bucket lies inside the window ending at the newest bucket.
                res = rule.resolution_s
                head = math.floor(ts / res)
                first = head - round(rule.window_s / res)
                q = 0
                for t, x in samples:
                    if math.floor(t / res) > first:
                        q += round(x * 1_000_000)  # the same fixed-point units as alerts.windows
                v = q / 1_000_000
            else:
                rate = inst.x.add(ts, value)
                if rate is None:
                    continue
                v = rate
            idx = inst.ladder.step(inst.idx, v)
            if idx < 0 and inst.idx < 0 and inst.state == "ok":
                continue
            inst.observe(ts, idx, v, inst.ladder.enter[idx] if idx >= 0 else None, False)
        # Keep only what the longest window can still need.
        horizon = ts - self.horizon - 3600
        while samples and samples[0][0] < horizon:
            samples.popleft()

    def take(self) -> list[Any]:
        out, self.changes[:] = list(self.changes), []
        return out
