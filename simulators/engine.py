"""The simulation engine: models + scenario effects + faults → time-ordered MQTT messages. No I/O.

Time advances in fixed simulated ticks (60 s by default) whatever the pacing, so a run is a pure function of
(fleet, scenarios, start, seed, tick): real-time, accelerated and as-fast-as-possible runs with the same seed
produce the same stream. Each tick returns the messages due in it, each stamped with the simulated time at
which a real device would send it (reports at their own phase within the interval, status changes and
events at their exact moment); the runner paces them against the wall clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, NamedTuple

import numpy as np
import orjson

from occ.models import Device
from simulators.encode import (
    DECIMALS,
    Values,
    array_payload,
    malformed,
    object_payload,
    round_values,
    rows,
    senml_payload,
    senml_series,
)
from simulators.fleet import Fleet, interval_of
from simulators.models.camera import CameraEvent, CameraModel
from simulators.models.hydromet import SPINUP_S, HydrometModel
from simulators.models.schedule import ReportSchedule, phases
from simulators.models.traffic import TrafficModel
from simulators.scenario import BoundEffect, ScenarioSpec, bind
from simulators.timeutil import iso_local, iso_local_many

LWT_DELAY_S = 90.0  # a broker notices a dead link after 1.5 × a 60 s keepalive and publishes the Last Will
FORMS = ("object", "senml")
REPEAT_LOOKAHEAD_S = 86400.0
"""Occurrences of repeating effects are bound this far ahead of the simulation's time, a day at a time."""


class Message(NamedTuple):
    """One MQTT publish. `t` is the simulated time at which the device sends it."""

    t: float
    device: int  # index in Simulation.devices, -1 for none
    topic: str
    payload: bytes
    qos: int
    retain: bool
    device_id: str
    channel: str


@dataclass(slots=True)
class KindState:
    kind: str
    model: Any
    devices: list[Device]
    gidx: np.ndarray
    interval: np.ndarray
    schedule: ReportSchedule
    telemetry_topics: list[str]
    event_topics: list[str]
    faults: list[FaultRuntime] = field(default_factory=list)
    sf_windows: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    sf_buffer: dict[int, list[tuple[float, str, Values]]] = field(default_factory=dict)


class FaultRuntime:
    """One `fault` effect on one device kind: which reports it touches and how."""

    def __init__(self, effect: BoundEffect, local: np.ndarray, intervals: np.ndarray) -> None:
        self.effect = effect
        self.fault: str = effect.spec.params["fault"]
        self.params = effect.spec.params
        self.a = effect.start
        self.b = effect.end
        self.targets = np.sort(local)
        n = self.targets.size
        self.metric: str | None = self.params.get("metric")
        self.captured = np.full(n, np.nan)
        self.remaining = np.full(n, self.params.get("count") or np.iinfo(np.int64).max, dtype=np.int64)
        self.pointer = np.zeros(n, dtype=np.int64)
        if self.fault == "spike":
            count = int(self.params["count"])
            width = (self.b - self.a) / count
            if width < float(intervals[self.targets].max(initial=0.0)):
                raise effect.spec.error(
                    f"{count} spikes in {(self.b - self.a) / 60:g} min are closer than the report interval"
                )
            self.spike_times = self.a + (np.arange(count) + 0.5) * width

    def select(self, idx: np.ndarray, ts: np.ndarray, to_end: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Positions k in (idx, ts) this fault touches, and each one's position in `targets`."""
        if self.targets.size == 0 or idx.size == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.targets, idx), self.targets.size - 1)
        hit = (self.targets[pos] == idx) & (ts >= self.a)
        if to_end:
            hit &= ts < self.b
        k = np.flatnonzero(hit)
        return k, pos[k]

    def apply_values(self, idx: np.ndarray, ts: np.ndarray, values: dict[str, np.ndarray],
                     ts_payload: np.ndarray) -> None:
        fault = self.fault
        if fault == "clock_offset":
            k, _ = self.select(idx, ts)
            ts_payload[k] += self.params["offset"]
            return
        if self.metric is None or fault not in ("stuck", "spike", "drift", "out_of_range"):
            return
        column = values[self.metric]
        if fault == "spike":
            k_all, p_all = self.select(idx, ts, to_end=False)
            for k, p in zip(k_all.tolist(), p_all.tolist(), strict=False):
                ptr = int(self.pointer[p])
                if ptr < self.spike_times.size and self.spike_times[ptr] <= ts[k]:
                    column[k] += self.params["magnitude"]
                    self.pointer[p] = ptr + 1
        else:
            k_all, p_all = self.select(idx, ts)
            if fault == "stuck":
                for k, p in zip(k_all.tolist(), p_all.tolist(), strict=False):
                    if math.isnan(self.captured[p]):
                        self.captured[p] = column[k]
                    else:
                        column[k] = self.captured[p]
            elif fault == "drift":
                column[k_all] += self.params["rate_per_h"] * (ts[k_all] - self.a) / 3600.0
            elif fault == "out_of_range":
                column[k_all] = self.params["value"]
        values[self.metric] = np.round(column, DECIMALS.get(self.metric, 3))

    def message_faults(self, idx: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Positions of reports that get this message-level fault (duplicate / malformed), honouring `count`."""
        k_all, p_all = self.select(idx, ts)
        chosen = []
        for k, p in zip(k_all.tolist(), p_all.tolist(), strict=False):
            if self.remaining[p] > 0:
                self.remaining[p] -= 1
                chosen.append(k)
        return np.array(chosen, dtype=np.int64)


class Simulation:
    """Drives every model one tick at a time; `step()` returns that tick's messages in send order."""

    def __init__(
        self,
        fleet: Fleet,
        *,
        start: float,
        seed: int = 0,
        scenarios: Sequence[ScenarioSpec] = (),
        tick_s: float = 60.0,
        qos: int = 1,
        form: str = "object",
        prefix: str = "occ/v1",
        spinup_s: float = SPINUP_S,
        watch: Iterable[tuple[str, str]] | None = None,
    ) -> None:
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}")
        self.fleet = fleet
        self.devices = fleet.devices
        self.start = float(start)
        self.t = float(start)
        self.seed = seed
        self.tick_s = float(tick_s)
        self.qos = qos
        self.form = form
        self.prefix = prefix
        self.index = {d.id: g for g, d in enumerate(self.devices)}
        self.status_topics = [f"{prefix}/{d.kind}/{d.id}/status" for d in self.devices]
        self.units = {m: spec.unit for m, spec in fleet.metrics.items()}
        r_hyd, r_tra, r_cam, self._rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
        self.kinds: dict[str, KindState] = {}
        for kind, make in (
            ("hydromet", lambda devs: HydrometModel(devs, r_hyd, start, spinup_s=spinup_s)),
            ("traffic", lambda devs: TrafficModel(devs, r_tra, start)),
            ("camera", lambda devs: CameraModel(devs, r_cam, start, seed)),
        ):
            devs = fleet.of_kind(kind)
            if not devs:
                continue
            ids = [d.id for d in devs]
            interval = np.array([interval_of(d) for d in devs], dtype=np.float64)
            self.kinds[kind] = KindState(
                kind=kind,
                model=make(devs),
                devices=devs,
                gidx=np.array([self.index[i] for i in ids], dtype=np.int64),
                interval=interval,
                schedule=ReportSchedule(interval, phases(ids, interval, seed), start),
                telemetry_topics=[f"{prefix}/{kind}/{i}/telemetry" for i in ids],
                event_topics=[f"{prefix}/{kind}/{i}/event" for i in ids],
            )
        self.local = {}  # global index → local index in its kind
        for ks in self.kinds.values():
            for j, g in enumerate(ks.gidx.tolist()):
                self.local[g] = j
        self._nearest_gauge = self._camera_gauges()
        self.online = np.ones(len(self.devices), dtype=bool)
        self.watch: dict[tuple[str, str], list[tuple[float, float]]] = {k: [] for k in (watch or ())}
        self.templates = bind(scenarios, fleet, self.start, seed, reports=self.reports)
        """Every effect's first occurrence; a repeating one recurs every `period` (added as time goes on)."""
        self.effects: list[BoundEffect] = []
        """Occurrences bound so far (a repeating effect's are added a day ahead of the simulation)."""
        self.rain_effects: list[tuple[BoundEffect, np.ndarray]] = []
        self.weather_effects: list[tuple[BoundEffect, np.ndarray]] = []
        self.traffic_effects: list[tuple[BoundEffect, np.ndarray, np.ndarray]] = []
        self._windows: list[tuple[int, float, float, bool]] = []
        self.scripted_events: list[tuple[float, int, dict[str, Any], float]] = []
        self._event_ptr = 0
        self._next_occurrence = [0] * len(self.templates)
        self._bound_until = -math.inf
        self._bind_occurrences(self.start + REPEAT_LOOKAHEAD_S)

    # ---- setup ---------------------------------------------------------------------------------------------

    def reports(self, device: Device, metric: str) -> bool:
        """Whether `device` sends `metric` at all (faults on metrics a device never sends are rejected)."""
        ks = self.kinds.get(device.kind)
        if ks is None or metric not in ks.model.metrics:
            return False
        j = self.local[self.index[device.id]]
        m = ks.model
        if ks.kind == "hydromet":
            if metric == "rain_mm":
                return bool(m.has_rain[j])
            if metric == "water_level_m":
                return bool(m.has_level[j])
            if metric in ("battery_v", "signal_dbm"):
                return True
            return bool(m.has_met[j])
        if ks.kind == "camera":
            if metric == "signal_dbm":
                return bool(m.is_4g[j])
            if metric == "battery_v":
                return bool(m.solar[j])
        return True

    def _camera_gauges(self) -> np.ndarray | None:
        cam = self.kinds.get("camera")
        hyd = self.kinds.get("hydromet")
        if cam is None or hyd is None:
            return None
        gauges = np.flatnonzero(hyd.model.has_rain)
        if gauges.size == 0:
            return None
        lat = np.array([d.lat or 0.0 for d in cam.devices])
        lon = np.array([d.lon or 0.0 for d in cam.devices])
        glat = np.array([hyd.devices[i].lat or 0.0 for i in gauges])
        glon = np.array([hyd.devices[i].lon or 0.0 for i in gauges])
        nearest = np.empty(lat.size, dtype=np.int64)
        for start in range(0, lat.size, 2048):  # bounded memory for very large fleets
            sl = slice(start, start + 2048)
            d2 = (lat[sl, None] - glat[None, :]) ** 2 + ((lon[sl, None] - glon[None, :]) * 0.92) ** 2
            nearest[sl] = gauges[np.argmin(d2, axis=1)]
        return nearest

    def _locals(self, devices: list[Device], kind: str) -> np.ndarray:
        return np.array(sorted(self.local[self.index[d.id]] for d in devices if d.kind == kind), dtype=np.int64)

    def _bind_occurrences(self, until: float) -> None:
        """Add every occurrence that starts before `until` and is not bound yet, and drop the ended ones."""
        new: list[BoundEffect] = []
        for i, template in enumerate(self.templates):
            k = self._next_occurrence[i]
            if template.period is None:
                if k == 0:
                    new.append(template)
                    self._next_occurrence[i] = 1
                continue
            while template.start + k * template.period < until:
                new.append(template.nth(k))
                k += 1
            self._next_occurrence[i] = k
        self._bound_until = until
        t = self.t
        self.effects = [e for e in self.effects if e.period is None or e.end > t] + new
        self.rain_effects = [x for x in self.rain_effects if x[0].end > t]
        self.weather_effects = [x for x in self.weather_effects if x[0].end > t]
        self.traffic_effects = [x for x in self.traffic_effects if x[0].end > t]
        for ks in self.kinds.values():
            # a spike may land on the first report after its window: keep a fault one more period
            ks.faults = [f for f in ks.faults if f.effect.period is None or f.b + f.effect.period > t]
            for g, spans in ks.sf_windows.items():
                ks.sf_windows[g] = [w for w in spans if w[1] > t]
        self._windows = [w for w in self._windows if w[2] > t]
        self.scripted_events = self.scripted_events[self._event_ptr:]
        self._event_ptr = 0
        self._prepare_effects(new)

    def _prepare_effects(self, effects: list[BoundEffect]) -> None:
        windows = self._windows
        events: list[tuple[float, int, dict[str, Any], float]] = []
        rng = self._rng
        for e in effects:
            do = e.spec.do
            if do == "rain":
                self.rain_effects.append((e, self._locals(e.devices, "hydromet")))
            elif do == "weather":
                self.weather_effects.append((e, self._locals(e.devices, "hydromet")))
            elif do == "traffic":
                self.traffic_effects.append((e, self._locals(e.devices, "traffic"), self._locals(e.devices, "camera")))
            elif do == "offline":
                n = len(e.devices)
                off = e.start + rng.uniform(0.0, e.spec.params["spread"], n)
                on = off + e.spec.duration + rng.uniform(0.0, e.spec.params["return_spread"], n)
                for d, a, b in zip(e.devices, off.tolist(), on.tolist(), strict=False):
                    windows.append((self.index[d.id], a, max(b, a), True))
            elif do == "store_forward":
                for d in e.devices:
                    ks = self.kinds[d.kind]
                    ks.sf_windows.setdefault(self.index[d.id], []).append((e.start, e.end))
                    if e.spec.params["announce"] and e.end - e.start > LWT_DELAY_S:
                        windows.append((self.index[d.id], e.start + LWT_DELAY_S, e.end, False))
            elif do == "fault":
                for kind, ks in self.kinds.items():
                    local = self._locals(e.devices, kind)
                    if local.size:
                        ks.faults.append(FaultRuntime(e, local, ks.interval))
            elif do == "event":
                every = e.spec.params["every"]
                times = [e.start]
                if every:
                    times = list(np.arange(e.start, max(e.end, e.start + 1e-9), every))
                body = {"type": e.spec.params["type"], **e.spec.params["data"]}
                for t in times:
                    for d in e.devices:
                        events.append((float(t), self.index[d.id], body, e.spec.params["confidence"]))
        windows.sort(key=itemgetter(1, 0))
        self.win_dev = np.array([w[0] for w in windows], dtype=np.int64)
        self.win_off = np.array([w[1] for w in windows], dtype=np.float64)
        self.win_on = np.array([w[2] for w in windows], dtype=np.float64)
        self.win_silent = np.array([w[3] for w in windows], dtype=bool)
        self.silent_devices = np.unique(self.win_dev[self.win_silent])
        self.scripted_events = sorted([*self.scripted_events, *events], key=itemgetter(0, 1))
        self._event_ptr = 0

    # ---- messages ------------------------------------------------------------------------------------------

    def status_message(self, g: int, t: float, online: bool) -> Message:
        d = self.devices[g]
        return Message(t, g, self.status_topics[g], b"online" if online else b"offline", 1, True, d.id, "status")

    def initial_messages(self) -> list[Message]:
        """Retained `online` for every device, at the start."""
        return [self.status_message(g, self.start, True) for g in range(len(self.devices)) if self.online[g]]

    def final_messages(self) -> list[Message]:
        """Retained `offline` for every device that is online, for a clean shutdown."""
        return [self.status_message(g, self.t, False) for g in range(len(self.devices)) if self.online[g]]

    def step(self) -> list[Message]:
        """Advance one tick and return its messages, ordered by send time."""
        t0, t1 = self.t, self.t + self.tick_s
        if t1 >= self._bound_until:
            self._bind_occurrences(t1 + REPEAT_LOOKAHEAD_S)
        out: list[Message] = []
        self._apply_forcing(t0, t1)
        hyd = self.kinds.get("hydromet")
        if hyd is not None:
            hyd.model.advance(t1)
        tra = self.kinds.get("traffic")
        if tra is not None:
            tra.model.advance(t1)
        cam_events: list[CameraEvent] = []
        cam = self.kinds.get("camera")
        if cam is not None:
            if hyd is not None and self._nearest_gauge is not None:
                cam.model.local_rain_mm_h = hyd.model.rain_ema[self._nearest_gauge]
            cam_events = cam.model.advance(t1, self.online[cam.gidx])
        self._status_changes(t0, t1, out)
        for ks in self.kinds.values():
            self._telemetry(ks, t1, out)
        if cam is not None:
            self._events(cam, cam_events, t0, t1, out)
        out.sort(key=itemgetter(0))
        self.t = t1
        return out

    def run_until(self, t_end: float) -> Iterable[list[Message]]:
        while self.t < t_end - 1e-9:
            yield self.step()

    def _apply_forcing(self, t0: float, t1: float) -> None:
        t_mid = (t0 + t1) / 2.0
        hyd = self.kinds.get("hydromet")
        if hyd is not None and (self.rain_effects or self.weather_effects):
            m = hyd.model
            extra = np.zeros(m.n)
            scale = np.ones(m.n)
            for e, local in self.rain_effects:
                if e.start <= t_mid < e.end:
                    spec = e.spec.params["intensity_mm_h"]
                    if isinstance(spec, tuple):
                        xs = [p[0] for p in spec]
                        ys = [p[1] for p in spec]
                        rate = float(np.interp(t_mid - e.start, xs, ys))
                    else:
                        rate = float(spec)
                    jitter = e.spec.params["jitter"]
                    factor = np.exp(jitter * m.gust[local] - (jitter * 0.5) ** 2 / 2.0) if jitter else 1.0
                    extra[local] += rate * factor
                    if e.spec.params["background"] == "off":
                        scale[local] = 0.0
            for e, local in self.weather_effects:
                if e.start <= t_mid < e.end:
                    scale[local] *= e.spec.params["rain_scale"]
            m.extra_rain_mm_h = extra
            m.rain_scale = scale
        if self.traffic_effects:
            tra = self.kinds.get("traffic")
            cam = self.kinds.get("camera")
            if tra is not None:
                tra.model.demand_mult = np.ones(tra.model.n)
                tra.model.capacity_mult = np.ones(tra.model.n)
                tra.model.forced_severity = np.zeros(tra.model.n)
            if cam is not None:
                cam.model.demand_mult = np.ones(cam.model.n)
                cam.model.forced_severity = np.zeros(cam.model.n)
            for e, t_local, c_local in self.traffic_effects:
                if not e.start <= t_mid < e.end:
                    continue
                p = e.spec.params
                if tra is not None and t_local.size:
                    tra.model.demand_mult[t_local] *= p["demand"]
                    tra.model.capacity_mult[t_local] *= p["capacity"]
                    tra.model.forced_severity[t_local] = np.maximum(tra.model.forced_severity[t_local], p["severity"])
                if cam is not None and c_local.size:
                    cam.model.demand_mult[c_local] *= min(p["demand"], p["capacity"] * 1.1)
                    jam = max(p["severity"], min(1.0, p["demand"] / p["capacity"] - 1.0))
                    cam.model.forced_severity[c_local] = np.maximum(cam.model.forced_severity[c_local], jam)

    def _status_changes(self, t0: float, t1: float, out: list[Message]) -> None:
        n = len(self.devices)
        offline = np.zeros(n, dtype=bool)
        boundary = np.full(n, -np.inf)
        if self.win_dev.size:
            active = (self.win_off <= t1) & (t1 < self.win_on)
            offline[self.win_dev[active]] = True
            for b in (self.win_off, self.win_on):
                m = (b > t0) & (b <= t1)
                if m.any():
                    np.maximum.at(boundary, self.win_dev[m], b[m])
        cam = self.kinds.get("camera")
        if cam is not None:
            model = cam.model
            active = (model.down_from <= t1) & (t1 < model.down_until)
            offline[cam.gidx[active]] = True
            for b in (model.down_from, model.down_until):
                m = (b > t0) & (b <= t1)
                if m.any():
                    np.maximum.at(boundary, cam.gidx[m], b[m])
        changed = np.flatnonzero(offline == self.online)
        for g in changed.tolist():
            t = float(boundary[g]) if np.isfinite(boundary[g]) else t1
            self.online[g] = not offline[g]
            out.append(self.status_message(g, t, bool(self.online[g])))

    def _silent(self, ks: KindState, idx: np.ndarray, g: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Reports that are not sent: the device is off (scenario outage or a random camera outage)."""
        silent = np.zeros(idx.size, dtype=bool)
        if self.silent_devices.size:
            for k in np.flatnonzero(np.isin(g, self.silent_devices)).tolist():
                w = (self.win_dev == g[k]) & self.win_silent & (self.win_off <= ts[k]) & (ts[k] < self.win_on)
                silent[k] = bool(w.any())
        if ks.kind == "camera":
            m = ks.model
            silent |= (m.down_from[idx] <= ts) & (ts < m.down_until[idx])
        return silent

    def _telemetry(self, ks: KindState, t1: float, out: list[Message]) -> None:
        idx, ts = ks.schedule.due(t1)
        if idx.size == 0:
            return
        model = ks.model
        raw = model.report(idx, ks.interval[idx]) if ks.kind == "traffic" else model.report(idx)
        values = round_values(raw)
        ts_payload = ts.copy()
        dup: set[int] = set()
        bad: dict[int, str] = {}
        for f in ks.faults:
            if f.fault in ("duplicate", "malformed"):
                for k in f.message_faults(idx, ts).tolist():
                    if f.fault == "duplicate":
                        dup.add(k)
                    else:
                        bad[k] = f.params["style"]
            else:
                f.apply_values(idx, ts, values, ts_payload)
        g = ks.gidx[idx]
        silent = self._silent(ks, idx, g, ts)
        vals = rows(values, idx.size)
        iso = iso_local_many(ts_payload)
        buffering = np.isin(g, np.fromiter(ks.sf_windows, dtype=np.int64)) if ks.sf_windows else None
        watch = self.watch
        topics = ks.telemetry_topics
        qos = self.qos
        senml = self.form == "senml"
        for k in range(idx.size):
            if silent[k]:
                continue
            gi = int(g[k])
            j = int(idx[k])
            device_id = self.devices[gi].id
            if watch:
                for metric, v in vals[k].items():
                    series = watch.get((device_id, metric))
                    if series is not None:
                        series.append((float(ts[k]), float(v)))
            backlog = None
            if buffering is not None and buffering[k]:
                held, backlog = self._store_forward(ks, gi, float(ts[k]), float(ts_payload[k]), iso[k], vals[k])
                if held:
                    continue
            if backlog:
                payload = senml_series([(t, v) for t, _, v in backlog], self.units) if senml else array_payload(
                    (s, v) for _, s, v in backlog)
            elif senml:
                payload = senml_payload(float(ts_payload[k]), vals[k], self.units)
            else:
                payload = object_payload(iso[k], vals[k])
            if k in bad:
                payload = malformed(payload, bad[k])
            msg = Message(float(ts[k]), gi, topics[j], payload, qos, False, device_id, "telemetry")
            out.append(msg)
            if k in dup:
                out.append(msg)

    def _store_forward(self, ks: KindState, g: int, t: float, t_payload: float, iso: str,
                       values: Values) -> tuple[bool, list[tuple[float, str, Values]] | None]:
        """Hold readings during a link outage (returns held=True); after it, returns the backlog plus this
        reading, to be sent as one array."""
        buffer = ks.sf_buffer.setdefault(g, [])
        if any(a <= t < b for a, b in ks.sf_windows[g]):
            buffer.append((t_payload, iso, values))
            return True, None
        if not buffer:
            return False, None
        held = [*buffer, (t_payload, iso, values)]
        buffer.clear()
        return False, held

    def _event_ts(self, cam: KindState, j: int, t: float) -> float:
        """Event timestamp as the device's (possibly wrong) clock writes it."""
        for f in cam.faults:
            if f.fault == "clock_offset":
                k, _ = f.select(np.array([j]), np.array([t]))
                if k.size:
                    return t + float(f.params["offset"])
        return t

    def _events(self, cam: KindState, cam_events: list[CameraEvent], t0: float, t1: float,
                out: list[Message]) -> None:
        pending: list[tuple[float, int, dict[str, Any], float | None]] = []
        for ev in cam_events:
            body = {"type": ev.type, **ev.data}
            pending.append((ev.t, int(cam.gidx[ev.index]), body, ev.confidence))
        scripted = self.scripted_events
        while self._event_ptr < len(scripted) and scripted[self._event_ptr][0] <= t1:
            t, g, body, conf = scripted[self._event_ptr]
            self._event_ptr += 1
            if t > t0 or (t == t0 == self.start):
                pending.append((t, g, body, conf))
        if not pending:
            return
        pending.sort(key=itemgetter(0, 1))
        g_arr = np.array([p[1] for p in pending], dtype=np.int64)
        t_arr = np.array([p[0] for p in pending])
        local = np.array([self.local[g] for g in g_arr.tolist()], dtype=np.int64)
        silent = self._silent(cam, local, g_arr, t_arr)
        for k, (te, ge, body_e, conf_e) in enumerate(pending):
            if silent[k]:
                continue
            j = self.local[ge]
            doc: dict[str, Any] = {"ts": iso_local(self._event_ts(cam, j, te)), **body_e}
            if conf_e is not None:
                doc["confidence"] = conf_e
            out.append(Message(te, ge, cam.event_topics[j], orjson.dumps(doc), 1, False, self.devices[ge].id, "event"))
