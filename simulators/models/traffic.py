"""Traffic counters, vectorised: vehicles per interval by class, mean speed and occupancy.

Demand follows Vietnamese daily patterns (early morning peak for school and work, a lunchtime trip home, an
evening peak, weekends flatter, tourist roads busiest at weekend middays), motorbikes dominate the mix. Speed
and occupancy come from the volume/capacity ratio: free flow until demand nears capacity, then the speed
collapses and occupancy rises; an incident (random or from a scenario) removes capacity the same way.
Vehicle counts are Poisson draws of the served flow, so they are whole numbers and never negative.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from occ.models import Device
from simulators.models.schedule import ar1
from simulators.timeutil import local_hours, local_weekday

METRICS = (
    "vehicles_motorbike",
    "vehicles_car",
    "vehicles_truck",
    "speed_kmh",
    "occupancy_pct",
    "battery_v",
    "signal_dbm",
)
CLASSES = ("motorbike", "car", "truck")
PCU = np.array([0.3, 1.0, 2.5])  # passenger-car units per class (Vietnamese practice for mixed traffic)
PROFILES = ("urban", "highway", "tourist")
BINS_PER_DAY = 288  # 5-minute resolution

ROAD_DEFAULTS: dict[str, dict[str, Any]] = {
    # profile, free speed km/h, mix (motorbike, car, truck), peak veh/h (all lanes), capacity pcu/h per lane
    "urban": {"profile": "urban", "free_speed_kmh": 40.0, "mix": (0.82, 0.14, 0.04), "peak_veh_h": 2400.0,
              "capacity_pcu_h_lane": 900.0},
    "QL2": {"profile": "highway", "free_speed_kmh": 55.0, "mix": (0.60, 0.25, 0.15), "peak_veh_h": 1300.0,
            "capacity_pcu_h_lane": 850.0},
    "QL4C": {"profile": "tourist", "free_speed_kmh": 35.0, "mix": (0.70, 0.20, 0.10), "peak_veh_h": 420.0,
             "capacity_pcu_h_lane": 600.0},
    "QL34": {"profile": "highway", "free_speed_kmh": 45.0, "mix": (0.68, 0.20, 0.12), "peak_veh_h": 520.0,
             "capacity_pcu_h_lane": 700.0},
    "QL279": {"profile": "highway", "free_speed_kmh": 45.0, "mix": (0.70, 0.18, 0.12), "peak_veh_h": 480.0,
              "capacity_pcu_h_lane": 700.0},
}


def _gauss(h: np.ndarray, mu: float, sd: float) -> np.ndarray:
    result: np.ndarray = np.exp(-0.5 * ((h - mu) / sd) ** 2)
    return result


def _plateau(h: np.ndarray, a: float, b: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(h - a) * 2.0)) / (1.0 + np.exp((h - b) * 2.0))


def _profile_tables() -> np.ndarray:
    """Demand relative to the daily peak: [profile, weekday(0)/saturday(1)/sunday(2), 5-minute bin]."""
    h = (np.arange(BINS_PER_DAY) + 0.5) * 24.0 / BINS_PER_DAY
    night = 0.04
    tables = np.zeros((len(PROFILES), 3, BINS_PER_DAY))
    urban_wd = night + 1.0 * _gauss(h, 7.0, 0.55) + 0.7 * _gauss(h, 11.3, 0.5) + 0.6 * _gauss(h, 13.4, 0.45) \
        + 0.95 * _gauss(h, 17.2, 0.7) + 0.42 * _plateau(h, 8.3, 16.5) + 0.3 * _gauss(h, 20.0, 1.3)
    urban_we = night + 0.45 * _gauss(h, 8.5, 1.2) + 0.5 * _plateau(h, 9.0, 21.0) + 0.45 * _gauss(h, 19.5, 1.5)
    highway_wd = 0.06 + 0.55 * _gauss(h, 7.3, 1.0) + 0.55 * _plateau(h, 7.0, 18.5) + 0.6 * _gauss(h, 16.8, 1.3)
    highway_we = 0.06 + 0.35 * _gauss(h, 8.5, 1.5) + 0.6 * _plateau(h, 7.5, 18.5) + 0.5 * _gauss(h, 16.0, 1.8)
    tourist_wd = 0.03 + 0.55 * _plateau(h, 7.5, 17.5) + 0.3 * _gauss(h, 10.5, 1.5) + 0.25 * _gauss(h, 15.0, 1.5)
    tourist_we = 0.03 + 0.8 * _plateau(h, 7.0, 18.0) + 0.6 * _gauss(h, 10.5, 1.5) + 0.5 * _gauss(h, 15.0, 1.5)
    for p, (wd, we) in enumerate(((urban_wd, urban_we), (highway_wd, highway_we), (tourist_wd, tourist_we))):
        peak = max(wd.max(), we.max())
        tables[p, 0] = wd / peak
        tables[p, 1] = we / peak
        tables[p, 2] = we / peak * 0.9
    return tables


PROFILE_TABLES = _profile_tables()


def demand_factor(profile: np.ndarray, t: float) -> np.ndarray:
    """Demand relative to the daily peak for each profile index at time t."""
    weekday = local_weekday(t)
    daytype = 0 if weekday < 5 else (1 if weekday == 5 else 2)
    b = int(float(local_hours(t)) * BINS_PER_DAY / 24.0) % BINS_PER_DAY
    result: np.ndarray = PROFILE_TABLES[profile, daytype, b]
    return result


def road_settings(attrs: dict[str, Any], area: str | None) -> dict[str, Any]:
    road = str(attrs.get("road", ""))
    base = dict(ROAD_DEFAULTS.get(road) or ROAD_DEFAULTS["urban"])
    if attrs.get("profile"):
        base["profile"] = str(attrs["profile"])
    for key in ("free_speed_kmh", "peak_veh_h"):
        if key in attrs:
            base[key] = float(attrs[key])
    mix = attrs.get("mix")
    if isinstance(mix, dict):
        base["mix"] = tuple(float(mix.get(c, 0.0)) for c in CLASSES)
    lanes = int(attrs.get("lanes", 2))
    base["lanes"] = max(1, lanes)
    base["capacity_pcu_h"] = float(attrs.get("capacity_pcu_h", base["capacity_pcu_h_lane"] * base["lanes"]))
    return base


class TrafficModel:
    """Traffic counters; the engine sets `demand_mult`, `capacity_mult` and `forced_severity` from scenarios."""

    kind = "traffic"
    metrics = METRICS

    def __init__(self, devices: Sequence[Device], rng: np.random.Generator, start: float) -> None:
        self.devices = list(devices)
        self.ids = [d.id for d in self.devices]
        self.rng = rng
        n = self.n = len(self.devices)
        settings = [road_settings(d.attributes, d.area) for d in self.devices]
        self.profile = np.array([PROFILES.index(s["profile"]) if s["profile"] in PROFILES else 0
                                 for s in settings], dtype=np.int64)
        self.free_speed = np.array([s["free_speed_kmh"] for s in settings], dtype=np.float64)
        self.peak = np.array([s["peak_veh_h"] for s in settings], dtype=np.float64)
        mix = np.array([s["mix"] for s in settings], dtype=np.float64).reshape(n, 3)
        self.mix = mix / np.maximum(mix.sum(axis=1, keepdims=True), 1e-9)
        self.lanes = np.array([s["lanes"] for s in settings], dtype=np.float64)
        self.capacity = np.array([s["capacity_pcu_h"] for s in settings], dtype=np.float64)
        self.noise = rng.normal(0.0, 0.1, n)
        self.speed_noise = np.zeros(n)
        self.signal = rng.uniform(-95.0, -70.0, n)
        self.incident_until = np.full(n, -math.inf)
        self.incident_severity = np.zeros(n)
        # scenario inputs
        self.demand_mult = np.ones(n)
        self.capacity_mult = np.ones(n)
        self.forced_severity = np.zeros(n)
        self.t = start
        self.incident_rate_per_s = 1.0 / (60 * 86400.0)

    def advance(self, t1: float) -> None:
        dt = t1 - self.t
        if dt <= 0:
            return
        rng = self.rng
        self.noise = ar1(self.noise, dt, 1200.0, 0.12, rng)
        self.speed_noise = ar1(self.speed_noise, dt, 600.0, 1.5, rng)
        hit = rng.random(self.n) < self.incident_rate_per_s * dt
        if hit.any():
            k = int(hit.sum())
            self.incident_until[hit] = t1 + rng.uniform(15.0, 60.0, k) * 60.0
            self.incident_severity[hit] = rng.uniform(0.5, 0.9, k)
        self.t = t1

    def severity(self) -> np.ndarray:
        random_incident = np.where(self.incident_until > self.t, self.incident_severity, 0.0)
        result: np.ndarray = np.maximum(random_incident, self.forced_severity)
        return result

    def report(self, idx: np.ndarray, interval_s: np.ndarray) -> dict[str, np.ndarray]:
        t = self.t
        demand = self.peak[idx] * demand_factor(self.profile[idx], t) * np.exp(self.noise[idx] - 0.007)
        demand = demand * self.demand_mult[idx]  # veh/h
        mix = self.mix[idx]
        pcu_per_veh = mix @ PCU
        severity = self.severity()[idx]
        capacity = self.capacity[idx] * self.capacity_mult[idx] * (1.0 - 0.7 * severity)  # pcu/h
        x = demand * pcu_per_veh / np.maximum(capacity, 1.0)
        served = np.minimum(demand, capacity / pcu_per_veh * 1.02)
        lam = served[:, None] * mix * (interval_s[:, None] / 3600.0)
        counts = self.rng.poisson(lam).astype(np.float64)
        congestion = np.clip((x - 0.85) / 0.4, 0.0, 1.0)
        c_tot = 1.0 - (1.0 - congestion) * (1.0 - severity)
        speed = self.free_speed[idx] * (1.0 - 0.12 * np.minimum(x, 1.0) ** 2) * (1.0 - 0.85 * c_tot)
        speed = np.clip(speed + self.speed_noise[idx] * (1.0 - 0.8 * c_tot), 3.0, None)
        flow_pcu = (counts @ PCU) * (3600.0 / interval_s)
        occ_free = 100.0 * flow_pcu * 0.0055 / (speed * self.lanes[idx])
        occupancy = np.clip((1.0 - c_tot) * occ_free + c_tot * (62.0 + 28.0 * c_tot), 0.0, 98.0)
        return {
            "vehicles_motorbike": counts[:, 0],
            "vehicles_car": counts[:, 1],
            "vehicles_truck": counts[:, 2],
            "speed_kmh": speed,
            "occupancy_pct": occupancy,
            "battery_v": 13.6 + self.rng.normal(0.0, 0.03, idx.size),
            "signal_dbm": self.signal[idx] + self.rng.normal(0.0, 2.0, idx.size),
        }
