"""Hydro-meteorological stations, vectorised: one numpy array per state variable, one row per station.

Rain is a field of storm systems (tens of km, hours to days, more in the wet season) plus convective cells
(a few km, an hour, mostly in the afternoon), scaled by each district's climatology and a gusty local factor;
it is a sum of non-negative terms, so it is never negative. A tipping bucket reports it in 0.2 mm steps.

River stage follows a small lumped model per river station: upstream gauges' rain feeds a soil store whose
wetness sets the runoff fraction (so days of rain make the next storm count more), the runoff passes a cascade
of three linear reservoirs (a Nash cascade: the peak arrives `lag_h` after the rain and recedes slowly), plus a
slow baseflow store; stage = base level + gain · q^0.6 (the shape of a rating curve). The gain comes from the
station's alarm levels, so level III is reached at a design runoff of 5 mm/h unless the station says otherwise.

Every update is exact for any step length, so a fast run with large steps stays stable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from occ.models import Device
from simulators.models import climate
from simulators.models.schedule import ar1
from simulators.timeutil import day_of_year, local_hours

METRICS = (
    "rain_mm",
    "water_level_m",
    "temperature_c",
    "humidity_pct",
    "wind_speed_ms",
    "wind_dir_deg",
    "pressure_hpa",
    "battery_v",
    "signal_dbm",
)

KM_PER_DEG_LAT = 110.57
SOIL_MAX_MM = 120.0
NASH_RESERVOIRS = 3
Q_REF_MM_H = 0.03  # runoff at the base (dry-season) level
DESIGN_RUNOFF_MM_H = 5.0  # runoff that reaches alarm level III, unless the station sets `design_runoff_mm_h`
STAGE_EXPONENT = 0.6
SPINUP_S = 5 * 86400.0


def _xy_km(lat: np.ndarray, lon: np.ndarray, lat0: float, lon0: float) -> tuple[np.ndarray, np.ndarray]:
    x = (lon - lon0) * KM_PER_DEG_LAT * math.cos(math.radians(lat0))
    y = (lat - lat0) * KM_PER_DEG_LAT
    return x, y


class RainEvents:
    """Active rain systems (storms or convective cells) as parallel arrays."""

    def __init__(self) -> None:
        self.x = np.empty(0)
        self.y = np.empty(0)
        self.r = np.empty(0)
        self.t0 = np.empty(0)
        self.dur = np.empty(0)
        self.peak = np.empty(0)

    def add(self, x: np.ndarray, y: np.ndarray, r: np.ndarray, t0: np.ndarray, dur: np.ndarray,
            peak: np.ndarray) -> None:
        self.x = np.concatenate((self.x, x))
        self.y = np.concatenate((self.y, y))
        self.r = np.concatenate((self.r, r))
        self.t0 = np.concatenate((self.t0, t0))
        self.dur = np.concatenate((self.dur, dur))
        self.peak = np.concatenate((self.peak, peak))

    def prune(self, t: float) -> None:
        keep = self.t0 + self.dur > t
        if not keep.all():
            for name in ("x", "y", "r", "t0", "dur", "peak"):
                setattr(self, name, getattr(self, name)[keep])

    def intensity(self, t: float, sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
        """mm/h at each station at time t (sin² envelope in time, Gaussian in space)."""
        if self.x.size == 0:
            return np.zeros(sx.shape)
        phase = (t - self.t0) / self.dur
        active = (phase > 0.0) & (phase < 1.0)
        if not active.any():
            return np.zeros(sx.shape)
        amp = self.peak[active] * np.sin(np.pi * phase[active]) ** 2
        dx = sx[None, :] - self.x[active, None]
        dy = sy[None, :] - self.y[active, None]
        r2 = (self.r[active] ** 2)[:, None]
        result: np.ndarray = amp @ np.exp(-(dx * dx + dy * dy) / r2)
        return result


class HydrometModel:
    """State and physics of all hydromet stations; `advance(t)` then `report(idx)`."""

    kind = "hydromet"
    metrics = METRICS

    def __init__(self, devices: Sequence[Device], rng: np.random.Generator, start: float,
                 spinup_s: float = SPINUP_S) -> None:
        self.devices = list(devices)
        self.ids = [d.id for d in self.devices]
        self.rng = rng
        n = self.n = len(self.devices)
        attrs = [d.attributes for d in self.devices]
        lat = np.array([d.lat if d.lat is not None else 22.8 for d in self.devices], dtype=np.float64)
        lon = np.array([d.lon if d.lon is not None else 105.0 for d in self.devices], dtype=np.float64)
        self.lat0 = float(lat.mean()) if n else 22.8
        self.lon0 = float(lon.mean()) if n else 105.0
        self.x, self.y = _xy_km(lat, lon, self.lat0, self.lon0)
        margin = 40.0
        self.box = (
            float(self.x.min(initial=0.0)) - margin, float(self.x.max(initial=0.0)) + margin,
            float(self.y.min(initial=0.0)) - margin, float(self.y.max(initial=0.0)) + margin,
        )
        self.box_area = max((self.box[1] - self.box[0]) * (self.box[3] - self.box[2]), 1.0)
        self.alt = np.array([float(a.get("altitude_m", climate.CITY_ALTITUDE_M)) for a in attrs])
        self.rain_factor = np.array(
            [float(a.get("rain_factor", climate.rain_factor(d.area))) for d, a in zip(self.devices, attrs, strict=True)]
        )
        sensors = [self._sensors(a) for a in attrs]
        self.has_rain = np.array(["rain" in s for s in sensors], dtype=bool)
        self.has_level = np.array(["level" in s for s in sensors], dtype=bool)
        self.has_met = np.array(["met" in s for s in sensors], dtype=bool)
        self.bucket_mm = np.array([float(a.get("bucket_mm", 0.2)) for a in attrs])

        # scenario forcing, set by the engine before each advance()
        self.extra_rain_mm_h = np.zeros(n)
        self.rain_scale = np.ones(n)

        # state: rain
        self.storms = RainEvents()
        self.cells = RainEvents()
        self.gust = np.zeros(n)
        self.rain_rate = np.zeros(n)
        self.rain_acc = np.zeros(n)
        self.rain_ema = np.zeros(n)  # ≈ mm/h over the last hour, for cameras watching for road flooding

        self._init_rivers(attrs)

        # state: weather
        self.temp_regional = 0.0
        self.temp_local = rng.normal(0.0, 0.5, n)
        self.rh_noise = np.zeros(n)
        self.wind_log = rng.normal(0.0, 0.3, n)
        self.wind_base = 1.0 + self.alt / 700.0 + rng.uniform(-0.3, 0.3, n)
        self.wind_dir_offset = rng.uniform(-40.0, 40.0, n)
        self.wind_dir_noise = np.zeros(n)
        self.pressure_regional = 0.0
        self.soc = rng.uniform(0.7, 1.0, n)
        self.signal_base = np.array(
            [float(a.get("signal_base_dbm", 0.0)) or 0.0 for a in attrs]
        )
        unset = self.signal_base == 0.0
        self.signal_base[unset] = rng.uniform(-104.0, -68.0, int(unset.sum()))
        self.signal_noise = np.zeros(n)

        self.t = start - spinup_s
        self._temp_c = np.zeros(n)
        self._rh = np.zeros(n)
        self._wind_diurnal = 1.0
        self._hour = float(local_hours(start))
        self._doy = day_of_year(start)
        self._charging = np.zeros(n)
        self._wet_now = np.zeros(n)
        self._advance_weather(1.0, self._doy, self._hour, np.zeros(n))
        if spinup_s > 0:
            steps = max(1, int(spinup_s // 600))
            for k in range(1, steps + 1):
                self.advance(start - spinup_s + k * spinup_s / steps)
        self.t = start
        self.rain_acc[:] = 0.0

    @staticmethod
    def _sensors(attrs: dict[str, Any]) -> set[str]:
        listed = attrs.get("sensors")
        if isinstance(listed, list):
            return {str(s) for s in listed}
        out = {"rain"}
        if attrs.get("river") or attrs.get("alarm_levels_m"):
            out.add("level")
        if attrs.get("station_type") == "aws":
            out.add("met")
        return out

    def _init_rivers(self, attrs: list[dict[str, Any]]) -> None:
        self.riv = np.flatnonzero(self.has_level)
        nr = self.riv.size
        index = {d: i for i, d in enumerate(self.ids)}
        base = np.zeros(nr)
        gain = np.zeros(nr)
        lag = np.zeros(nr)
        pairs_r: list[int] = []
        pairs_s: list[int] = []
        pairs_w: list[float] = []
        rain_idx = np.flatnonzero(self.has_rain)
        for pos, i in enumerate(self.riv):
            a = attrs[i]
            levels = a.get("alarm_levels_m") or {}
            base[pos] = float(a.get("base_level_m", float(levels.get("I", 3.0)) - 3.0))
            top = float(levels["III"]) if "III" in levels else base[pos] + 6.0
            design = float(a.get("design_runoff_mm_h", DESIGN_RUNOFF_MM_H))
            gain[pos] = (top - base[pos]) / (design**STAGE_EXPONENT - Q_REF_MM_H**STAGE_EXPONENT)
            lag[pos] = float(a.get("lag_h", 6.0))
            upstream = [index[u] for u in a.get("upstream", []) or [] if u in index and self.has_rain[index[u]]]
            if self.has_rain[i]:
                upstream.append(int(i))
            if not upstream and rain_idx.size:
                d2 = (self.x[rain_idx] - self.x[i]) ** 2 + (self.y[rain_idx] - self.y[i]) ** 2
                upstream = [int(j) for j in rain_idx[np.argsort(d2)[:3]]]
            upstream = sorted(set(upstream))
            for j in upstream:
                pairs_r.append(pos)
                pairs_s.append(j)
                pairs_w.append(1.0 / len(upstream))
        self.riv_base = base
        self.riv_gain = gain
        self.riv_k_s = np.maximum(lag, 0.5) / (NASH_RESERVOIRS - 1) * 3600.0
        self.up_r = np.array(pairs_r, dtype=np.int64)
        self.up_s = np.array(pairs_s, dtype=np.int64)
        self.up_w = np.array(pairs_w, dtype=np.float64)
        self.soil = np.full(nr, SOIL_MAX_MM * 0.4)
        self.nash = np.zeros((NASH_RESERVOIRS, nr))
        self.baseflow_store = np.zeros(nr)  # mm; outflow = store / BASEFLOW_K_S
        self.level_noise = np.zeros(nr)

    BASEFLOW_K_S = 20 * 86400.0

    # ---- physics -------------------------------------------------------------------------------------------

    def advance(self, t1: float) -> None:
        """Advance every station from `self.t` to `t1` (one exact step)."""
        dt = t1 - self.t
        if dt <= 0:
            return
        rng = self.rng
        t_mid = self.t + dt / 2.0
        doy = day_of_year(t_mid)
        hour = float(local_hours(t_mid))
        wet = climate.wetness(doy)
        self._spawn_rain(self.t, dt, doy, hour, wet)

        base_rain = self.storms.intensity(t_mid, self.x, self.y) + self.cells.intensity(t_mid, self.x, self.y)
        self.gust = ar1(self.gust, dt, 900.0, 0.5, rng)
        rate = self.rain_factor * base_rain * np.exp(self.gust - 0.125) * self.rain_scale
        rate = rate + self.extra_rain_mm_h
        self.rain_rate = rate
        self.rain_acc += rate * (dt / 3600.0)
        alpha = 1.0 - math.exp(-dt / 3600.0)
        self.rain_ema += (rate - self.rain_ema) * alpha
        self._advance_rivers(dt, rate, wet)
        self._advance_weather(dt, doy, hour, rate)
        self.storms.prune(t1)
        self.cells.prune(t1)
        self.t = t1

    def _spawn_rain(self, t0: float, dt: float, doy: float, hour: float, wet: float) -> None:
        rng = self.rng
        mean_daily = climate.daily_rain_mm(doy)
        convective_share = 0.45 * wet
        x0, x1, y0, y1 = self.box
        # storms: peak ~5 mm/h, ~12 h, radius ~55 km → mean depth per storm at a station inside the box
        storm_depth = 5.0 * 12.0 * 0.5 * math.pi * 55.0**2 / self.box_area * 0.8  # 0.8: edge losses
        storm_rate_per_s = (1.0 - convective_share) * mean_daily / storm_depth / 86400.0
        n_new = int(rng.poisson(storm_rate_per_s * dt))
        if n_new:
            self.storms.add(
                rng.uniform(x0, x1, n_new), rng.uniform(y0, y1, n_new), rng.uniform(35.0, 75.0, n_new),
                t0 + rng.uniform(0.0, dt, n_new), rng.uniform(4.0, 20.0, n_new) * 3600.0,
                rng.lognormal(math.log(5.0) - 0.32, 0.8, n_new),
            )
        # convective cells: afternoon peak (von Mises in hour of day, mean 1)
        cell_depth = 25.0 * 1.2 * 0.5 * math.pi * 7.0**2 / self.box_area * 0.8
        diurnal = math.exp(1.2 * math.cos(2.0 * math.pi * (hour - 16.0) / 24.0)) / 1.394
        cell_rate_per_s = convective_share * mean_daily / cell_depth / 86400.0 * diurnal
        n_new = int(rng.poisson(cell_rate_per_s * dt))
        if n_new:
            self.cells.add(
                rng.uniform(x0, x1, n_new), rng.uniform(y0, y1, n_new), rng.uniform(4.0, 10.0, n_new),
                t0 + rng.uniform(0.0, dt, n_new), rng.uniform(0.5, 1.9, n_new) * 3600.0,
                rng.lognormal(math.log(25.0) - 0.18, 0.6, n_new),
            )

    def _advance_rivers(self, dt: float, rate: np.ndarray, wet: float) -> None:
        nr = self.riv.size
        if nr == 0:
            return
        catch = np.bincount(self.up_r, weights=rate[self.up_s] * self.up_w, minlength=nr)
        frac = 0.15 + 0.75 * (self.soil / SOIL_MAX_MM) ** 2
        quick_in = catch * frac
        infil = catch - quick_in
        et = (0.05 + 0.12 * wet)  # mm/h evapotranspiration, lower in the cool dry season
        soil = self.soil + (infil * 0.75 - et) * (dt / 3600.0)
        overflow = np.maximum(soil - SOIL_MAX_MM, 0.0) / (dt / 3600.0)
        self.soil = np.clip(soil, 0.0, SOIL_MAX_MM)
        quick_in = quick_in + overflow
        # slow store: a quarter of the infiltration recharges it; exact linear-reservoir update
        recharge = infil * 0.25 / 3600.0  # mm/s
        decay_b = math.exp(-dt / self.BASEFLOW_K_S)
        self.baseflow_store = self.baseflow_store * decay_b + recharge * self.BASEFLOW_K_S * (1.0 - decay_b)
        # Nash cascade, exact for piecewise-constant inflow over the step
        decay = np.exp(-dt / self.riv_k_s)
        inflow = quick_in
        for j in range(NASH_RESERVOIRS):
            self.nash[j] = self.nash[j] * decay + inflow * (1.0 - decay)
            inflow = self.nash[j]
        self.level_noise = ar1(self.level_noise, dt, 1800.0, 0.004, self.rng)

    def runoff_mm_h(self) -> np.ndarray:
        baseflow = self.baseflow_store / self.BASEFLOW_K_S * 3600.0
        result: np.ndarray = self.nash[-1] + baseflow
        return result

    def stage_m(self) -> np.ndarray:
        q = np.maximum(self.runoff_mm_h(), 0.0)
        shape = q**STAGE_EXPONENT - Q_REF_MM_H**STAGE_EXPONENT
        result: np.ndarray = self.riv_base + self.riv_gain * shape + self.level_noise
        return result

    def _advance_weather(self, dt: float, doy: float, hour: float, rate: np.ndarray) -> None:
        rng = self.rng
        wet_now = np.tanh(rate / 3.0)
        # temperature: season at sea level, lapse rate, daily cycle (smaller when wet), rain cooling, anomalies
        self.temp_regional = float(ar1(np.array([self.temp_regional]), dt, 3 * 86400.0, 1.0, rng)[0])
        self.temp_local = ar1(self.temp_local, dt, 6 * 3600.0, 0.6, rng)
        daily = math.cos(2.0 * math.pi * (hour - 14.5) / 24.0)
        amplitude = 4.0 - 2.5 * wet_now
        self._temp_c = (
            climate.sea_level_temp_c(doy) - climate.LAPSE_C_PER_M * self.alt + amplitude * daily
            - 2.0 * wet_now + self.temp_regional + self.temp_local
        )
        self.rh_noise = ar1(self.rh_noise, dt, 3 * 3600.0, 3.0, rng)
        self._rh = np.clip(climate.mean_rh_pct(doy) - 13.0 * daily + 14.0 * wet_now + self.rh_noise, 25.0, 100.0)
        self.wind_log = ar1(self.wind_log, dt, 3600.0, 0.35, rng)
        self.wind_dir_noise = ar1(self.wind_dir_noise, dt, 2 * 3600.0, 25.0, rng)
        self.pressure_regional = float(ar1(np.array([self.pressure_regional]), dt, 2 * 86400.0, 2.0, rng)[0])
        self._wind_diurnal = 1.0 + 0.45 * math.cos(2.0 * math.pi * (hour - 15.0) / 24.0)
        self._hour = hour
        self._doy = doy
        # battery: solar charge in daylight (less under rain), constant load
        sun = max(0.0, math.sin(math.pi * (hour - 6.0) / 12.0))
        clear = np.exp(-self.rain_ema / 1.5)  # overcast while it rains
        self._charging = sun * clear
        self.soc = np.clip(self.soc + (0.15 * self._charging - 0.025) * (dt / 3600.0), 0.05, 1.0)
        self.signal_noise = ar1(self.signal_noise, dt, 3600.0, 2.5, rng)
        self._wet_now = wet_now

    # ---- reports -------------------------------------------------------------------------------------------

    def report(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Values for stations `idx` at the current time (NaN where a station has no such sensor); resets the
        rain gauges' accumulators by the amount reported (the bucket keeps the remainder)."""
        nan = np.full(idx.size, np.nan)
        out: dict[str, np.ndarray] = {}
        bucket = self.bucket_mm[idx]
        tips = np.floor(self.rain_acc[idx] / bucket + 1e-9)
        rain = tips * bucket
        self.rain_acc[idx] -= rain
        out["rain_mm"] = np.where(self.has_rain[idx], rain, np.nan)
        level = nan.copy()
        if self.riv.size:
            pos = np.searchsorted(self.riv, idx)
            pos = np.minimum(pos, self.riv.size - 1)
            is_riv = self.has_level[idx]
            level[is_riv] = self.stage_m()[pos[is_riv]]
        out["water_level_m"] = level
        met = self.has_met[idx]
        out["temperature_c"] = np.where(met, self._temp_c[idx], np.nan)
        out["humidity_pct"] = np.where(met, self._rh[idx], np.nan)
        speed = self.wind_base[idx] * self._wind_diurnal * np.exp(self.wind_log[idx] - 0.06) * (
            1.0 + 1.5 * self._wet_now[idx]
        )
        out["wind_speed_ms"] = np.where(met, speed, np.nan)
        prevailing = 135.0 if 4 <= self._doy / 30.4 < 9.5 else 45.0  # SE monsoon in summer, NE in winter
        direction = (prevailing + self.wind_dir_offset[idx] + self.wind_dir_noise[idx]) % 360.0
        out["wind_dir_deg"] = np.where(met, direction, np.nan)
        p_sl = 1010.5 + 6.0 * math.cos(2.0 * math.pi * (self._doy - 15.0) / 365.0) + self.pressure_regional
        p_sl += 1.2 * math.cos(4.0 * math.pi * (self._hour - 10.0) / 24.0)
        temp_k = self._temp_c[idx] + 273.15 + climate.LAPSE_C_PER_M * self.alt[idx] / 2.0
        pressure = p_sl * np.exp(-self.alt[idx] / (29.27 * temp_k)) - 1.5 * self._wet_now[idx]
        out["pressure_hpa"] = np.where(met, pressure, np.nan)
        out["battery_v"] = 11.9 + 0.9 * self.soc[idx] + 1.3 * self._charging[idx] * (self.soc[idx] < 0.98) + \
            0.4 * self._charging[idx] * (self.soc[idx] >= 0.98)
        out["signal_dbm"] = np.clip(
            self.signal_base[idx] + self.signal_noise[idx] - 2.0 * self._wet_now[idx], -120.0, -50.0
        )
        return out

    def temperature_c(self) -> np.ndarray:
        """Air temperature at every station now (also where a station has no thermometer), for tests."""
        return self._temp_c.copy()
