"""Plausibility of the device models: rain, river response, temperature with altitude, traffic patterns."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import orjson
from simhelpers import JULY, WEEKDAY_MORNING, RunSim, subset

from occ.models import Device
from simulators.fleet import Fleet
from simulators.models.hydromet import HydrometModel


def values_by_device(messages: list, channel: str = "telemetry") -> dict[str, list[tuple[float, dict]]]:
    out: dict[str, list[tuple[float, dict]]] = defaultdict(list)
    for m in messages:
        if m.channel == channel:
            out[m.device_id].append((m.t, orjson.loads(m.payload)["values"]))
    return out


def test_rain_is_never_negative_and_wet_season_rains(fleet: Fleet, run_sim: RunSim) -> None:
    hydromet = subset(fleet, kinds=["hydromet"]).replicate(2)
    sim, messages = run_sim(hydromet, 24 * 5, tick_s=1800.0)
    rain = [v["rain_mm"] for rows in values_by_device(messages).values() for _, v in rows if "rain_mm" in v]
    assert len(rain) > 10_000
    assert min(rain) >= 0.0
    assert sum(rain) > 0
    # tipping bucket: multiples of 0.2 mm
    assert all(abs(r * 5 - round(r * 5)) < 1e-6 for r in rain[:5000])
    assert (sim.kinds["hydromet"].model.rain_rate >= 0).all()


def test_bac_quang_is_wetter_than_the_karst_plateau(fleet: Fleet, run_sim: RunSim) -> None:
    hydromet = subset(fleet, kinds=["hydromet"])
    totals: dict[str, float] = defaultdict(float)
    for seed in (1,):
        _, messages = run_sim(hydromet, 24 * 15, seed=seed, tick_s=3600.0)
        for device, rows in values_by_device(messages).items():
            area = hydromet.by_id()[device].area or ""
            totals[area] += sum(v.get("rain_mm", 0.0) for _, v in rows)
    counts: dict[str, int] = defaultdict(int)
    for d in hydromet.devices:
        counts[d.area or ""] += 1
    mean = {a: totals[a] / counts[a] for a in counts}
    assert mean["bac-quang"] > 1.5 * mean["dong-van"]
    assert mean["bac-quang"] > mean["ha-giang-city"]


def _river_pair(lag_h: float = 6.0) -> list[Device]:
    gauge = Device("T-RG", "hydromet", lat=22.5, lon=104.86, area="bac-quang",
                   attributes={"sensors": ["rain"], "altitude_m": 100})
    river = Device("T-WL", "hydromet", lat=22.51, lon=104.87, area="bac-quang",
                   attributes={"sensors": ["level"], "altitude_m": 90, "base_level_m": 50.0, "lag_h": lag_h,
                               "alarm_levels_m": {"I": 53.0, "II": 55.0, "III": 57.0}, "upstream": ["T-RG"]})
    return [gauge, river]


def test_river_rises_hours_after_upstream_rain_and_recedes_slowly() -> None:
    start = JULY
    model = HydrometModel(_river_pair(), np.random.default_rng(5), start, spinup_s=0)
    model.rain_scale = np.zeros(2)  # no background weather: only the scripted burst
    step = 600.0
    times, stages = [], []
    for k in range(1, 6 * 24 * 2 + 1):  # two days, 10-minute steps
        t = start + k * step
        burst = 2 * 3600 < (t - step / 2 - start) < 4 * 3600  # 20 mm/h from hour 2 to hour 4
        model.extra_rain_mm_h = np.array([20.0 if burst else 0.0, 0.0])
        model.advance(t)
        times.append((t - start) / 3600.0)
        stages.append(float(model.stage_m()[0]))
    h = np.array(times)
    s = np.array(stages)
    before = s[h <= 2.0]
    assert before.max() - before.min() < 0.03  # flat before the rain
    base = before.mean()
    rise = s.max() - base
    assert rise > 0.5
    peak_h = h[int(np.argmax(s))]
    assert peak_h >= 2.0 + 3.0  # the peak comes hours after the rain starts (lag 6 h)
    assert s[np.searchsorted(h, 2.17)] - base < 0.05 * rise  # ten minutes in: nothing yet
    assert np.abs(np.diff(s)).max() < 0.15 * rise  # never a jump
    half = base + rise / 2
    rise_time = h[np.argmax(s >= half)] - 2.0
    after_peak = np.flatnonzero((h > peak_h) & (s <= half))
    assert after_peak.size, "the river must recede"
    fall_time = h[after_peak[0]] - peak_h
    assert fall_time > rise_time  # recedes more slowly than it rose


def test_more_upstream_rain_gives_a_higher_peak() -> None:
    peaks = []
    for rate in (5.0, 15.0):
        model = HydrometModel(_river_pair(), np.random.default_rng(5), JULY, spinup_s=0)
        model.rain_scale = np.zeros(2)
        best = 0.0
        for k in range(1, 24 * 6 + 1):
            t = JULY + k * 600.0
            model.extra_rain_mm_h = np.array([rate if k <= 18 else 0.0, 0.0])
            model.advance(t)
            best = max(best, float(model.stage_m()[0]))
        peaks.append(best)
    assert peaks[1] > peaks[0] + 0.3


def test_temperature_falls_with_altitude(fleet: Fleet, run_sim: RunSim) -> None:
    stations = subset(fleet, kinds=["hydromet"])
    _, messages = run_sim(stations, 72, tick_s=300.0)
    by_device = values_by_device(messages)
    alt, mean = [], []
    for d in stations.devices:
        temps = [v["temperature_c"] for _, v in by_device[d.id] if "temperature_c" in v]
        if temps:
            alt.append(float(d.attributes["altitude_m"]))
            mean.append(float(np.mean(temps)))
    assert len(alt) >= 10
    assert np.corrcoef(alt, mean)[0, 1] < -0.9
    means = dict(zip([d.id for d in stations.devices if "met" in d.attributes.get("sensors", [])], mean, strict=True))
    assert means["HG-DV-AWS01"] < means["HG-TP-AWS01"] - 4.0  # Đồng Văn ~1,040 m vs Hà Giang city ~120 m
    assert means["HG-MV-AWS01"] < means["HG-TP-AWS01"] - 4.0
    all_values = [v for _, rows in by_device.items() for _, v in rows]
    assert all(0 <= v["humidity_pct"] <= 100 for v in all_values if "humidity_pct" in v)
    assert all(0 <= v["wind_dir_deg"] < 360 for v in all_values if "wind_dir_deg" in v)
    assert all(v["wind_speed_ms"] >= 0 for v in all_values if "wind_speed_ms" in v)
    assert all(500 < v["pressure_hpa"] < 1100 for v in all_values if "pressure_hpa" in v)
    assert all(10.5 < v["battery_v"] < 15 for v in all_values)


def test_traffic_peaks_and_motorbikes_dominate(fleet: Fleet, run_sim: RunSim) -> None:
    counters = subset(fleet, kinds=["traffic"])
    _, messages = run_sim(counters, 24, start=WEEKDAY_MORNING - 6 * 3600)  # Monday 00:00
    for device, rows in values_by_device(messages).items():
        hours = np.array([(t - (WEEKDAY_MORNING - 6 * 3600)) / 3600.0 for t, _ in rows])
        total = np.array([v["vehicles_motorbike"] + v["vehicles_car"] + v["vehicles_truck"] for _, v in rows])
        mb = sum(v["vehicles_motorbike"] for _, v in rows)
        others = sum(v["vehicles_car"] + v["vehicles_truck"] for _, v in rows)
        assert mb > others, device
        morning = total[(hours >= 6.5) & (hours < 8.0)].mean()
        night = total[(hours >= 1.0) & (hours < 4.0)].mean()
        assert morning > 3 * max(night, 0.1), device
        for _, v in rows:
            assert all(isinstance(v[k], int) and v[k] >= 0 for k in ("vehicles_motorbike", "vehicles_car",
                                                                       "vehicles_truck"))
            assert 3.0 <= v["speed_kmh"] <= 80.0
            assert 0.0 <= v["occupancy_pct"] <= 100.0


def test_camera_health_and_events(fleet: Fleet, run_sim: RunSim) -> None:
    cameras = subset(fleet, kinds=["camera"])
    _, messages = run_sim(cameras, 6)
    health = [v for rows in values_by_device(messages).values() for _, v in rows]
    assert health and all(0 < v["fps"] <= 30 and v["bitrate_kbps"] > 0 for v in health)
    events = [orjson.loads(m.payload) for m in messages if m.channel == "event"]
    counts = [e for e in events if e["type"] == "vehicle_count"]
    assert counts and all(e["count"] == e["motorbike"] + e["car"] + e["truck"] for e in counts)
    assert all(0 < e["confidence"] <= 1 for e in events)
