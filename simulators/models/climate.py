"""Climatology the simulator draws from: Hà Giang's wet/dry seasons, temperatures and rainfall by district.

Values are rounded climate normals of the kind published for Hà Giang (city ≈ 2,300–2,500 mm/year, Bắc Quang
one of the wettest places in Vietnam at ≈ 4,500–5,000 mm/year, the karst plateau of Đồng Văn / Mèo Vạc much drier
and cooler). They shape a plausible demo, they are not observations; a device attribute `rain_factor`
overrides the district factor.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

# Mean monthly rainfall at Hà Giang city, mm (Jan … Dec).
MONTHLY_RAIN_MM = np.array([30, 40, 75, 150, 290, 400, 450, 380, 230, 150, 60, 25], dtype=np.float64)
# Mean monthly air temperature at Hà Giang city (≈ 120 m), °C.
MONTHLY_TEMP_C = np.array([15.8, 17.4, 20.8, 24.4, 27.0, 28.0, 28.0, 27.6, 26.3, 23.6, 19.9, 16.8])
# Mean relative humidity, %.
MONTHLY_RH_PCT = np.array([84, 83, 82, 82, 83, 86, 87, 88, 86, 85, 85, 84], dtype=np.float64)
CITY_ALTITUDE_M = 120.0
LAPSE_C_PER_M = 0.0065
DAYS_IN_MONTH = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.float64)

# Annual rainfall relative to Hà Giang city, by district (area id).
AREA_RAIN_FACTOR = {
    "ha-giang-city": 1.0,
    "bac-quang": 2.0,
    "quang-binh": 1.5,
    "vi-xuyen": 1.25,
    "hoang-su-phi": 0.9,
    "xin-man": 0.8,
    "bac-me": 0.85,
    "quan-ba": 0.8,
    "yen-minh": 0.65,
    "dong-van": 0.7,
    "meo-vac": 0.7,
}


@lru_cache(maxsize=4096)
def _interp_cached(name: str, doy_centi: int) -> float:
    table = {"rain": MONTHLY_RAIN_MM, "temp": MONTHLY_TEMP_C, "rh": MONTHLY_RH_PCT}[name]
    return _monthly_interp_raw(table, doy_centi / 100.0)


def _monthly_interp(table: np.ndarray, doy: float) -> float:
    """Cached to 1/100 day (15 minutes): the models ask every step, the answer changes slowly."""
    name = "rain" if table is MONTHLY_RAIN_MM else "temp" if table is MONTHLY_TEMP_C else "rh"
    return _interp_cached(name, int(doy * 100.0) % 36500)


def _monthly_interp_raw(table: np.ndarray, doy: float) -> float:
    """Smooth value for a fractional day of year from a 12-month table (centred mid-month, periodic)."""
    mids = (np.cumsum(DAYS_IN_MONTH) - DAYS_IN_MONTH / 2.0)
    xs = np.concatenate(([mids[-1] - 365.0], mids, [mids[0] + 365.0]))
    ys = np.concatenate(([table[-1]], table, [table[0]]))
    return float(np.interp(doy % 365.0, xs, ys))


def daily_rain_mm(doy: float) -> float:
    """Expected daily rainfall at Hà Giang city for this day of the year."""
    month = min(11, int(np.searchsorted(np.cumsum(DAYS_IN_MONTH), doy % 365.0, side="right")))
    return _monthly_interp(MONTHLY_RAIN_MM, doy) / DAYS_IN_MONTH[month]


def wetness(doy: float) -> float:
    """0 in the heart of the dry season, 1 in the heart of the wet season."""
    d = daily_rain_mm(doy)
    return float(np.clip((d - 0.8) / (14.5 - 0.8), 0.0, 1.0))


def sea_level_temp_c(doy: float) -> float:
    return _monthly_interp(MONTHLY_TEMP_C, doy) + LAPSE_C_PER_M * CITY_ALTITUDE_M


def mean_rh_pct(doy: float) -> float:
    return _monthly_interp(MONTHLY_RH_PCT, doy)


def rain_factor(area: str | None) -> float:
    return AREA_RAIN_FACTOR.get(area or "", 1.0)
