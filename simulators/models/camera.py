"""Cameras, vectorised: stream health (fps, bitrate, link), random outages and analytics events.

Events: periodic `vehicle_count` (same demand curves as the traffic counters), random `incident` and `tamper`,
and `road_flooding` whose hazard rises with the last hour's rain at the nearest rain gauge (the engine passes
it in), so the flood scenario makes Bắc Quang's cameras see water on the road without being told to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from occ.models import Device
from simulators.models.schedule import ReportSchedule, ar1, phases
from simulators.models.traffic import CLASSES, PROFILES, demand_factor, road_settings
from simulators.timeutil import local_hours

METRICS = ("fps", "bitrate_kbps", "signal_dbm", "battery_v")
INCIDENT_SUBTYPES = ("stopped_vehicle", "accident", "congestion", "wrong_way", "landslide")
TAMPER_SUBTYPES = ("covered", "moved", "defocus")


@dataclass(slots=True)
class CameraEvent:
    index: int
    t: float
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    confidence: float | None = None


def _analytics(attrs: dict[str, Any]) -> set[str]:
    value = attrs.get("analytics", ["vehicle_count", "incident", "road_flooding", "tamper"])
    if value is True:
        return {"vehicle_count", "incident", "road_flooding", "tamper"}
    if not value:
        return set()
    return {str(v) for v in value}


class CameraModel:
    kind = "camera"
    metrics = METRICS

    def __init__(self, devices: Sequence[Device], rng: np.random.Generator, start: float, seed: int) -> None:
        self.devices = list(devices)
        self.ids = [d.id for d in self.devices]
        self.rng = rng
        n = self.n = len(self.devices)
        attrs = [d.attributes for d in self.devices]
        self.is_4g = np.array([str(a.get("link", "fiber")) == "4g" for a in attrs], dtype=bool)
        self.solar = np.array([str(a.get("power", "mains")) == "solar" for a in attrs], dtype=bool)
        self.fps_nominal = np.array(
            [float(a.get("fps", 15.0 if l4 else 25.0)) for a, l4 in zip(attrs, self.is_4g, strict=True)]
        )
        self.bitrate_nominal = np.array(
            [float(a.get("bitrate_kbps", 1536.0 if l4 else 4096.0)) for a, l4 in zip(attrs, self.is_4g, strict=False)]
        )
        analytics = [_analytics(a) for a in attrs]
        self.counts_vehicles = np.array(["vehicle_count" in s for s in analytics], dtype=bool)
        self.detects_incidents = np.array(["incident" in s for s in analytics], dtype=bool)
        self.detects_flooding = np.array(["road_flooding" in s for s in analytics], dtype=bool)
        self.detects_tamper = np.array(["tamper" in s for s in analytics], dtype=bool)
        settings = [road_settings(d.attributes, d.area) for d in self.devices]
        self.profile = np.array([PROFILES.index(s["profile"]) if s["profile"] in PROFILES else 0
                                 for s in settings], dtype=np.int64)
        self.peak = np.array([s["peak_veh_h"] for s in settings], dtype=np.float64) * 0.5  # one direction
        self.mix = np.array([s["mix"] for s in settings], dtype=np.float64).reshape(n, 3)
        count_interval = np.array([float(a.get("count_interval_s", 300.0)) for a in attrs])
        self.count_schedule = ReportSchedule(count_interval, phases(self.ids, count_interval, seed, "count"), start)
        self.bitrate_noise = rng.normal(0.0, 0.1, n)
        self.signal = np.where(self.is_4g, rng.uniform(-100.0, -72.0, n), np.nan)
        self.signal_noise = np.zeros(n)
        self.soc = rng.uniform(0.7, 1.0, n)
        self.down_from = np.full(n, -math.inf)
        self.down_until = np.full(n, -math.inf)
        self.flood_quiet_until = np.full(n, -math.inf)
        self.local_rain_mm_h = np.zeros(n)  # set by the engine from the nearest rain gauge
        self.demand_mult = np.ones(n)  # set by the engine from traffic scenarios on the same road
        self.forced_severity = np.zeros(n)
        self.outage_rate_per_s = 1.0 / (25 * 86400.0)
        self.incident_rate_per_s = 1.0 / (20 * 86400.0)
        self.tamper_rate_per_s = 1.0 / (250 * 86400.0)
        self.t = start

    def advance(self, t1: float, online: np.ndarray) -> list[CameraEvent]:
        """Advance to t1; returns events detected by cameras that are online, in time order."""
        dt = t1 - self.t
        if dt <= 0:
            return []
        rng = self.rng
        t0 = self.t
        n = self.n
        self.bitrate_noise = ar1(self.bitrate_noise, dt, 900.0, 0.1, rng)
        self.signal_noise = ar1(self.signal_noise, dt, 1800.0, 2.5, rng)
        hour = float(local_hours(t1))
        sun = max(0.0, math.sin(math.pi * (hour - 6.0) / 12.0))
        self.soc = np.clip(self.soc + (0.1 * sun - 0.03) * (dt / 3600.0), 0.05, 1.0)
        # random outages (power, link): the engine turns these into offline/online status changes
        fail = (rng.random(n) < self.outage_rate_per_s * dt) & (self.down_until <= t0)
        if fail.any():
            k = int(fail.sum())
            self.down_from[fail] = t0 + rng.uniform(0.0, dt, k)
            self.down_until[fail] = self.down_from[fail] + rng.exponential(20 * 60.0, k) + 120.0

        events: list[CameraEvent] = []
        u = rng.random((4, n))
        when = t0 + u[3] * dt
        hazard = self.incident_rate_per_s * dt * (1.0 + 4.0 * self.forced_severity)
        for i in np.flatnonzero(online & self.detects_incidents & (u[0] < hazard)):
            subtype = INCIDENT_SUBTYPES[int(rng.integers(0, len(INCIDENT_SUBTYPES)))]
            if self.forced_severity[i] > 0.3:
                subtype = "congestion"
            events.append(CameraEvent(int(i), float(when[i]), "incident",
                                      {"subtype": subtype, "lane": int(rng.integers(1, 3))},
                                      round(float(rng.uniform(0.62, 0.98)), 2)))
        for i in np.flatnonzero(online & self.detects_tamper & (u[1] < self.tamper_rate_per_s * dt)):
            subtype = TAMPER_SUBTYPES[int(rng.integers(0, len(TAMPER_SUBTYPES)))]
            events.append(CameraEvent(int(i), float(when[i]), "tamper", {"subtype": subtype},
                                      round(float(rng.uniform(0.7, 0.99)), 2)))
        rain = self.local_rain_mm_h
        flood_rate = (1.0 / 1200.0) / (1.0 + np.exp(-(rain - 22.0) / 5.0))
        flood = online & self.detects_flooding & (u[2] < flood_rate * dt) & (self.flood_quiet_until <= t0)
        for i in np.flatnonzero(flood):
            depth = float(np.clip(4.0 + 0.9 * (rain[i] - 15.0) + rng.normal(0.0, 4.0), 3.0, 90.0))
            confidence = float(np.clip(0.55 + depth / 100.0 + rng.normal(0.0, 0.05), 0.5, 0.99))
            events.append(CameraEvent(int(i), float(when[i]), "road_flooding",
                                      {"depth_cm": round(depth), "zone": "roadway"}, round(confidence, 2)))
            self.flood_quiet_until[i] = when[i] + 20 * 60.0
        self.t = t1
        events.extend(self._vehicle_counts(t1, online))
        events.sort(key=lambda e: (e.t, e.index))
        return events

    def _vehicle_counts(self, t1: float, online: np.ndarray) -> list[CameraEvent]:
        idx, ts = self.count_schedule.due(t1)
        keep = online[idx] & self.counts_vehicles[idx]
        idx, ts = idx[keep], ts[keep]
        if idx.size == 0:
            return []
        interval = self.count_schedule.interval[idx]
        factor = demand_factor(self.profile[idx], t1) * self.demand_mult[idx]
        lam = (self.peak[idx] * factor * interval / 3600.0)[:, None] * self.mix[idx]
        counts = self.rng.poisson(lam)
        conf = np.round(self.rng.uniform(0.86, 0.97, idx.size), 2)
        out = []
        for k in range(idx.size):
            c = counts[k].tolist()
            data: dict[str, Any] = {"interval_s": int(interval[k]), "count": int(sum(c))}
            data.update({cls: int(v) for cls, v in zip(CLASSES, c, strict=False)})
            out.append(CameraEvent(int(idx[k]), float(ts[k]), "vehicle_count", data, float(conf[k])))
        return out

    def report(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        hour = float(local_hours(self.t))
        night = 1.0 if (hour < 6.0 or hour > 18.5) else 0.0
        activity = 0.75 + 0.25 * (1.0 - night)
        bitrate = self.bitrate_nominal[idx] * activity * np.exp(self.bitrate_noise[idx])
        weak = np.where(self.is_4g[idx], np.clip((-self.signal[idx] - 95.0) / 15.0, 0.0, 0.6), 0.0)
        bitrate = bitrate * (1.0 - np.nan_to_num(weak))
        stutter = self.rng.random(idx.size) < 0.02
        fps = self.fps_nominal[idx] - np.abs(self.rng.normal(0.0, 0.3, idx.size))
        fps = np.where(stutter, fps * self.rng.uniform(0.4, 0.8, idx.size), fps)
        signal = self.signal[idx] + self.signal_noise[idx]
        battery = np.where(self.solar[idx], 11.9 + 1.1 * self.soc[idx] + 0.02 * self.rng.standard_normal(idx.size),
                           np.nan)
        return {"fps": np.maximum(fps, 0.0), "bitrate_kbps": bitrate, "signal_dbm": signal, "battery_v": battery}
