"""The pure alerts core with a fake clock: hysteresis, lifecycle, windows, deadman, storm control, restarts."""

from __future__ import annotations

import numpy as np
import pytest

from alerts.engine import Engine
from alerts.ladder import Ladder
from alerts.rules import parse_rules
from alerts.storm import LabelMatch, SilenceRule
from alerts.windows import SeriesWindows
from occ.models import Device

T0 = 1_784_000_000.0  # 2026-07-14, a fixed epoch for every test
WL = Device("WL1", "hydromet", "Sông Lô tại Hà Giang", area="ha-giang-city",
            attributes={"report_interval_s": 600, "alarm_levels_m": {"I": 99.0, "II": 101.0, "III": 103.0},
                        "sensors": ["rain", "level"]})


def engine(text: str, devices: list[Device] | None = None, **kw: object) -> Engine:
    return Engine(parse_rules(text, "rules.yaml"), devices or [WL], units={"water_level_m": "m", "rain_mm": "mm"},
                  area_names={"ha-giang-city": "TP Hà Giang", "bac-quang": "Bắc Quang"}, **kw)  # type: ignore[arg-type]


FLOOD = """
rules:
  - name: flood
    kind: threshold
    select: {kind: hydromet, has: [alarm_levels_m]}
    metric: water_level_m
    hysteresis: 0.1
    levels:
      - {name: I, severity: 1, enter: alarm_levels_m.I}
      - {name: II, severity: 2, enter: alarm_levels_m.II}
      - {name: III, severity: 3, enter: alarm_levels_m.III}
    for: FOR
    keep_firing_for: KEEP
    deescalate_after: DESC
    message_vi: "{name} vượt báo động {level} {excess:.2f} m"
    message_en: "{name}: {excess:.2f} m above alarm level {level}"
"""


def flood(for_: str = "0s", keep: str = "0s", desc: str = "0s") -> Engine:
    return engine(FLOOD.replace("FOR", for_).replace("KEEP", keep).replace("DESC", desc))


@pytest.mark.parametrize(("values", "levels"), [
    ([98.0, 99.0, 99.5, 98.95, 98.89, 99.0], [-1, 0, 0, 0, -1, 0]),          # exit 10 cm below enter
    ([98.0, 103.2, 102.95, 102.89, 100.95, 100.5, 98.0], [-1, 2, 2, 1, 1, 0, -1]),  # falls level by level
    ([101.0, 100.91, 100.9, 100.89], [1, 1, 1, 0]),
])
def test_ladder_hysteresis(values: list[float], levels: list[int]) -> None:
    ladder = Ladder([99.0, 101.0, 103.0], [98.9, 100.9, 102.9])
    level, seen = -1, []
    for v in values:
        level = ladder.step(level, v)
        seen.append(level)
    assert seen == levels


def test_ladder_below_and_strict() -> None:
    ladder = Ladder([15.0, 8.0], [20.0, 12.0], above=False)
    assert [ladder.step(-1, v) for v in (30, 15, 8, 7)] == [-1, 0, 1, 1]
    assert ladder.step(1, 11) == 1 and ladder.step(1, 12.5) == 0 and ladder.step(0, 21) == -1
    strict = Ladder([50.0], [50.0], strict=True)
    assert strict.step(-1, 50.0) == -1 and strict.step(-1, 50.01) == 0


def run(eng: Engine, series: list[tuple[float, float]]) -> list[tuple[str, str, int, float]]:
    """Feed (minutes, value) readings with a tick at each, return (from, to, severity, minutes)."""
    out = []
    for minute, value in series:
        ts = T0 + minute * 60
        out.extend(eng.tick(ts).transitions)
        eng.feed_reading("WL1", "water_level_m", ts, value)
        out.extend(eng.take().transitions)
    return [(t.from_state, t.state, t.severity, (t.ts - T0) / 60) for t in out]


@pytest.mark.parametrize(("opts", "series", "expected"), [
    # severity rises at once, in the same episode; falls at once without a dwell; resolved when clear
    ({}, [(0, 98), (10, 99.2), (20, 101.4), (30, 103.1), (40, 101.5), (50, 98.0)],
     [("ok", "firing", 1, 10), ("firing", "firing", 2, 20), ("firing", "firing", 3, 30),
      ("firing", "firing", 2, 40), ("firing", "resolved", 2, 50)]),
    # `for`: pending first, fires exactly at pending_since + for
    ({"for_": "20m"}, [(0, 99.5), (10, 99.6), (30, 99.7), (40, 98)],
     [("ok", "pending", 1, 0), ("pending", "firing", 1, 20), ("firing", "resolved", 1, 40)]),
    # pending that clears never fires
    ({"for_": "20m"}, [(0, 99.5), (10, 98.0)], [("ok", "pending", 1, 0), ("pending", "resolved", 1, 10)]),
    # keep_firing_for: recovering, back to firing in the same episode, then resolved after the hold
    ({"keep": "30m"}, [(0, 99.5), (10, 98), (20, 99.5), (30, 98), (70, 98)],
     [("ok", "firing", 1, 0), ("firing", "recovering", 1, 10), ("recovering", "firing", 1, 20),
      ("firing", "recovering", 1, 30), ("recovering", "resolved", 1, 60)]),
    # deescalate_after: severity falls only after a dwell at the lower level
    ({"desc": "30m"}, [(0, 103.5), (10, 101.5), (20, 103.2), (30, 101.5), (50, 101.5), (70, 101.5)],
     [("ok", "firing", 3, 0), ("firing", "firing", 2, 60)]),
])
def test_lifecycle_table(opts: dict[str, str], series: list[tuple[float, float]],
                         expected: list[tuple[str, str, int, float]]) -> None:
    assert run(flood(**opts), series) == expected


def test_message_says_by_how_much_a_level_is_exceeded() -> None:
    eng = flood()
    eng.tick(T0)
    eng.feed_reading("WL1", "water_level_m", T0, 101.33)
    [t] = eng.take().transitions
    assert t.message_vi == "Sông Lô tại Hà Giang vượt báo động II 0,33 m"
    assert t.message_en == "Sông Lô tại Hà Giang: 0.33 m above alarm level II"
    assert (t.level, t.threshold, t.announce, t.late) == ("II", 101.0, True, False)


def test_duplicates_and_redelivery_change_nothing() -> None:
    eng = flood()
    eng.tick(T0)
    for _ in range(3):
        eng.feed_reading("WL1", "water_level_m", T0, 101.5)
    eng.feed_reading("WL1", "water_level_m", T0 - 60, 98.0)  # older than applied: ignored
    assert len(eng.take().transitions) == 1
    assert eng.stats["duplicates"] == 3


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_windows_match_a_brute_force_numpy_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    res, spans = 600.0, [3600.0, 3 * 3600.0, 24 * 3600.0]
    gaps = rng.choice([60.0, 600.0, 1200.0, 7200.0, 30 * 3600.0], size=800, p=[0.4, 0.4, 0.1, 0.08, 0.02])
    ts = T0 + np.cumsum(gaps)
    values = np.round(rng.exponential(2.0, size=ts.size) * (rng.random(ts.size) < 0.6), 1)
    win = SeriesWindows(res, spans)
    buckets = np.floor(ts / res)
    for i in range(ts.size):
        win.add(float(ts[i]), float(values[i]))
        head = buckets[i]
        for span in spans:
            n = round(span / res)
            mask = (buckets[: i + 1] > head - n) & (buckets[: i + 1] <= head)
            assert win.total(win.index(span)) == pytest.approx(float(values[: i + 1][mask].sum()), abs=1e-6)
    restored = SeriesWindows(res, spans)
    restored.load(win.dump())
    assert restored.sums == pytest.approx(win.sums, abs=1e-3)


RAIN = """
rules:
  - name: rain-3h
    kind: accumulation
    select: {kind: hydromet}
    metric: rain_mm
    window: 3h
    resolution: 10m
    strict: true
    levels: [{name: intense, severity: 3, enter: 70}]
    message_vi: "{name}: {value:.1f} mm trong {window}"
"""


def test_accumulation_fires_and_late_backfill_is_not_announced() -> None:
    eng = engine(RAIN, late_after_s=900)
    eng.tick(T0)
    for k in range(18):  # 3 h of 10-minute reports, 4.5 mm each = 81 mm
        eng.feed_reading("WL1", "rain_mm", T0 + k * 600, 4.5)
    [t] = eng.take().transitions
    assert t.state == "firing" and t.value == pytest.approx(72.0) and t.announce and not t.late
    assert t.message_vi == "Sông Lô tại Hà Giang: 72,0 mm trong 3h"
    # A GSM-outage backlog: another station's old data, far behind the clock.
    other = Device("RG2", "hydromet", "Khâu Vai", area="meo-vac", attributes={"report_interval_s": 600})
    eng2 = engine(RAIN, [other], late_after_s=900)
    eng2.tick(T0 + 2.5 * 3600)
    eng2.feed_rows([("RG2", "rain_mm", _dt(T0 + k * 600), 8.0, 0) for k in range(12)])
    [late] = eng2.take().transitions
    assert late.late and not late.announce and late.state == "firing"
    eng2.feed_reading("RG2", "rain_mm", T0 + 2.4 * 3600, 1.0)  # live data keeps it active: still not new
    assert not eng2.take().transitions


def _dt(ts: float):
    from datetime import UTC, datetime
    return datetime.fromtimestamp(ts, UTC)


DEADMAN = """
rules:
  - name: silent
    kind: deadman
    select: {kind: hydromet}
    after: 3
    grace: 10m
    severity: 1
    message_en: "{name}: no data for {silent_for}"
"""


def test_deadman_fires_with_no_input_at_all_after_the_grace() -> None:
    eng = engine(DEADMAN)
    eng.tick(T0)
    assert not eng.tick(T0 + 1799).transitions   # 3 × 600 s not yet exceeded
    [t] = eng.tick(T0 + 1801).transitions          # no reading ever arrived
    assert (t.state, t.ts, t.message_en) == ("firing", T0 + 1800, "Sông Lô tại Hà Giang: no data for 30m")
    eng.feed_reading("WL1", "rain_mm", T0 + 2000, 0.0)
    [r] = eng.tick(T0 + 2001).transitions
    assert r.state == "resolved"


def test_deadman_start_up_grace_after_restart() -> None:
    eng = engine(DEADMAN)
    eng.tick(T0)
    eng.feed_reading("WL1", "rain_mm", T0, 0.0)
    state = eng.snapshot()
    fresh = engine(DEADMAN)
    fresh.restore({k: v for k, v in state.items() if v is not None})
    assert not fresh.tick(T0 + 3600).transitions    # silent for an hour, but we just started: grace
    [t] = fresh.tick(T0 + 3600 + 601).transitions
    assert t.state == "firing" and t.ts == T0 + 1800


def test_pending_timer_survives_restart_and_fires_once_on_time() -> None:
    eng = flood(for_="30m")
    eng.tick(T0)
    eng.feed_reading("WL1", "water_level_m", T0, 101.2)
    assert [t.state for t in eng.take().transitions] == ["pending"]
    state = {k: v for k, v in eng.snapshot().items() if v is not None}
    restarted = flood(for_="30m")
    restarted.restore(state)
    assert not restarted.tick(T0 + 1700).transitions
    [fired] = restarted.tick(T0 + 1900).transitions   # no new reading: the timer alone fires it
    assert (fired.from_state, fired.state, fired.ts) == ("pending", "firing", T0 + 1800)
    assert not restarted.tick(T0 + 2500).transitions
    restarted.feed_reading("WL1", "water_level_m", T0 + 1800, 101.2)  # redelivered after the crash
    assert not restarted.take().transitions


CAMERAS = """
rules:
  - name: cam-offline
    kind: offline
    select: {kind: camera}
    for: 2m
    severity: 1
    group: {by: area, title_en: "{area_name}: {count} cameras offline"}
"""


def test_camera_storm_is_one_incident_per_area() -> None:
    cams = [Device(f"C{i}", "camera", area="ha-giang-city" if i < 30 else "bac-quang") for i in range(33)]
    eng = engine(CAMERAS, cams)
    eng.tick(T0)
    for i, cam in enumerate(cams):
        eng.feed_status(cam.id, "offline", T0 + i)
    eng.take()
    out = eng.tick(T0 + 600)
    assert len(out.transitions) == 33 and not any(t.announce for t in out.transitions)
    opened = [c for c in out.incidents if c.members == 1]
    assert {c.area for c in opened} == {"ha-giang-city", "bac-quang"} and all(c.announce for c in opened)
    final = {c.group_key: c for c in out.incidents}
    assert final["cam-offline|ha-giang-city"].members == 30
    assert final["cam-offline|ha-giang-city"].title_en == "TP Hà Giang: 30 cameras offline"
    for cam in cams:
        eng.feed_status(cam.id, "online", T0 + 1200)
    back = eng.take()
    assert [c.state for c in back.incidents if c.members == 0] == ["resolved", "resolved"]


COMPOSITE = """
rules:
  - name: rain-3h-50
    kind: accumulation
    select: {kind: hydromet}
    metric: rain_mm
    window: 3h
    resolution: 10m
    strict: true
    levels: [{name: over, severity: 2, enter: 50}]
    internal: true
  - name: district-rain
    kind: composite
    of: [rain-3h-50]
    scope: area
    require: 3
    severity: 3
    message_en: "{area_name}: {count} gauges above 50 mm in 3 h"
"""


def test_composite_m_of_n_across_an_area() -> None:
    gauges = [Device(f"G{i}", "hydromet", area="bac-quang") for i in range(4)]
    eng = engine(COMPOSITE, gauges)
    eng.tick(T0)
    for i in range(2):
        eng.feed_reading(f"G{i}", "rain_mm", T0, 60.0)
    assert not eng.take().transitions            # the internal rule itself never alerts; 2 < 3
    eng.feed_reading("G2", "rain_mm", T0 + 60, 60.0)
    [t] = eng.take().transitions
    assert (t.device_id, t.area, t.state, t.severity) == (None, "bac-quang", "firing", 3)
    assert t.message_en == "Bắc Quang: 3 gauges above 50 mm in 3 h"


INHIBIT = FLOOD.replace("FOR", "0s").replace("KEEP", "0s").replace("DESC", "0s") + """
  - name: offline
    kind: offline
    select: {kind: hydromet}
    severity: 1
inhibit:
  - source: {rule: offline}
    target: {kind: threshold}
    equal: [device_id]
"""


def test_offline_station_mutes_its_threshold_alert_and_silences_mute() -> None:
    eng = engine(INHIBIT)
    eng.tick(T0)
    eng.feed_reading("WL1", "water_level_m", T0, 101.5)
    [t] = eng.take().transitions
    assert t.muted is None and t.announce
    eng.feed_status("WL1", "offline", T0 + 60)
    out = eng.take().transitions
    assert [(x.rule, x.muted) for x in out] == [("offline", None), ("flood", "inhibited")]
    eng.feed_status("WL1", "online", T0 + 120)
    out = eng.take().transitions
    assert [(x.rule, x.state, x.muted) for x in out] == [("offline", "resolved", None), ("flood", "firing", None)]
    eng.set_silences([SilenceRule(1, (LabelMatch.build({"label": "area", "op": "=", "value": "ha-giang-city"}),),
                                  T0, T0 + 3600)])
    [s] = eng.tick(T0 + 180).transitions
    assert s.muted == "silenced" and s.reason == "muted: silenced"


def test_flapping_keeps_the_episode_open_and_mutes_it() -> None:
    eng = flood(keep="5m")
    eng.tick(T0)
    states: list[tuple[object, object, object]] = []
    for k in range(12):
        ts = T0 + k * 600
        states.extend((t.state, t.muted, t.flapping) for t in eng.tick(ts).transitions)
        eng.feed_reading("WL1", "water_level_m", ts, 99.5 if k % 2 == 0 else 98.0)
        states.extend((t.state, t.muted, t.flapping) for t in eng.take().transitions)
    flapping_from = next(i for i, s in enumerate(states) if s[2])
    assert states[flapping_from][1] == "flapping" and states[-1][1:] == ("flapping", True)
    assert all(s != "resolved" for s, _, _ in states[flapping_from:])  # open (muted) while it keeps toggling
    assert not eng.tick(T0 + 11 * 600 + 3500).transitions
    [done] = eng.tick(T0 + 11 * 600 + 3601).transitions            # a whole quiet flap window: resolved
    assert done.state == "resolved"


EVENTS = """
rules:
  - name: incident
    kind: event
    select: {kind: camera}
    event: incident
    min_confidence: 0.8
    hold: 15m
    severity: 2
"""


def test_camera_event_with_confidence_and_hold() -> None:
    cam = Device("C1", "camera", area="vi-xuyen")
    eng = engine(EVENTS, [cam])
    eng.tick(T0)
    eng.feed_event("C1", T0, "incident", {"confidence": 0.6})
    assert not eng.take().transitions
    eng.feed_event("C1", T0 + 10, "incident", {"confidence": 0.91, "subtype": "accident"})
    [t] = eng.take().transitions
    assert t.state == "firing" and t.value == 0.91
    [r] = eng.tick(T0 + 10 + 901).transitions
    assert r.state == "resolved" and r.ts == T0 + 910


ANOMALY = """
rules:
  - name: anomaly
    kind: anomaly
    select: {kind: hydromet}
    metric: water_level_m
    samples: 50
    min_samples: 20
    z: 5
    severity: 1
"""


def test_anomaly_is_silent_while_warming_up_then_flags_a_spike() -> None:
    eng = engine(ANOMALY)
    rng = np.random.default_rng(0)
    eng.tick(T0)
    eng.feed_reading("WL1", "water_level_m", T0, 95.0)
    eng.feed_reading("WL1", "water_level_m", T0 + 60, 200.0)  # absurd, but there is no history yet
    for k in range(1, 80):
        eng.feed_reading("WL1", "water_level_m", T0 + k * 600, 95.0 + float(rng.normal(0, 0.05)))
    assert not eng.take().transitions
    eng.feed_reading("WL1", "water_level_m", T0 + 80 * 600, 97.0)
    [t] = eng.take().transitions
    assert t.state == "firing" and t.threshold is not None and t.threshold > 5


def test_operator_resolve_stands_down_until_clear() -> None:
    eng = flood()
    eng.tick(T0)
    eng.feed_reading("WL1", "water_level_m", T0, 101.5)
    eng.take()
    eng.operator_resolved("flood|WL1")
    eng.feed_reading("WL1", "water_level_m", T0 + 600, 101.6)
    assert not eng.take().transitions
    eng.feed_reading("WL1", "water_level_m", T0 + 1200, 98.0)
    eng.feed_reading("WL1", "water_level_m", T0 + 1800, 99.5)
    assert [t.state for t in eng.take().transitions] == ["firing"]


MAINT = FLOOD.replace("FOR", "0s").replace("KEEP", "0s").replace("DESC", "0s") + """
maintenance:
  - {name: weekly-check, match: {rule: flood}, weekdays: [2], start: "07:00", duration: 1h}
"""


def test_maintenance_window_in_local_time_mutes() -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    tuesday_0730 = datetime(2026, 7, 14, 7, 30, tzinfo=ZoneInfo("Asia/Ho_Chi_Minh")).timestamp()  # a Tuesday
    eng = engine(MAINT)
    eng.tick(tuesday_0730)
    eng.feed_reading("WL1", "water_level_m", tuesday_0730, 101.5)
    [t] = eng.take().transitions
    assert t.muted == "maintenance" and not t.announce
    [unmuted] = eng.tick(tuesday_0730 + 3600).transitions  # 08:30 local: the window is over
    assert unmuted.muted is None and unmuted.reason == "no longer muted"


def test_instances_per_rule_are_capped() -> None:
    text = FLOOD.replace("FOR", "0s").replace("KEEP", "0s").replace("DESC", "0s").replace(
        "    hysteresis: 0.1", "    hysteresis: 0.1\n    max_instances: 3")
    stations = [Device(f"S{i}", "hydromet", area="bac-quang", attributes=WL.attributes) for i in range(5)]
    eng = engine(text, stations)
    eng.tick(T0)
    for st in stations:
        eng.feed_reading(st.id, "water_level_m", T0, 101.5)
    assert len(eng.take().transitions) == 3 and eng.stats["capped"] >= 2


def test_restore_of_the_shipped_rules_with_many_rules_per_device() -> None:
    """A snapshot of every shipped rule over the catalog restores whole. Before: restoring one instance built its
    device's routes, which loaded (and took out of the stash) the other instances of that device, and the next
    key of the list raised KeyError — a second `make run` on the same var/ failed at start."""
    from alerts.rules import load_rules, rule_files
    from tests.alerts.test_rules import ROOT, catalog_devices

    devices = catalog_devices()
    rules = load_rules(rule_files(ROOT / "config" / "rules"))
    stations = [d for d in devices if d.kind == "hydromet" and "alarm_levels_m" in d.attributes]

    def new() -> Engine:
        return Engine(rules, devices, units={"water_level_m": "m", "rain_mm": "mm"})

    eng = new()
    eng.tick(T0)
    rng = np.random.default_rng(7)
    for step in range(200):  # enough for the anomaly rule to warm up and the ladders to move
        ts = T0 + 600 * step
        for d in stations:
            eng.feed_reading(d.id, "water_level_m", ts, float(d.attributes["alarm_levels_m"]["I"]) - 1 + rng.normal())
            eng.feed_reading(d.id, "rain_mm", ts, float(rng.exponential(2.0)))
        eng.tick(ts)
    state = {k: v for k, v in eng.snapshot(full=True).items() if v is not None}
    assert sum(k.startswith("i:") for k in state) > 2 * len(stations)  # several instances per device
    restarted = new()
    restarted.restore(state)
    assert restarted.open_fingerprints() == eng.open_fingerprints()
    again = {k: v for k, v in restarted.snapshot(full=True).items() if v is not None}
    assert again.keys() == state.keys()


DEVICE_COMPOSITE = """
rules:
  - name: high-water
    kind: threshold
    select: {kind: hydromet, has: [alarm_levels_m]}
    metric: water_level_m
    hysteresis: 0.1
    levels: [{name: I, severity: 1, enter: alarm_levels_m.I}]
    internal: true
  - name: heavy-rain
    kind: accumulation
    select: {kind: hydromet}
    metric: rain_mm
    window: 3h
    resolution: 10m
    levels: [{name: heavy, severity: 2, enter: 50}]
    internal: true
  - name: flood-risk
    kind: composite
    select: {kind: hydromet}
    of: [high-water, heavy-rain]
    scope: device
    require: REQUIRE
    severity: 4
    message_en: "{name}: {count} of {need} conditions"
"""
WL2 = Device("WL2", "hydromet", "Sông Miện tại Quản Bạ", area="quan-ba",
             attributes={"report_interval_s": 600, "alarm_levels_m": {"I": 50.0, "II": 51.0, "III": 52.0}})


def test_composite_scope_device_requires_all_its_rules_on_the_same_device() -> None:
    eng = engine(DEVICE_COMPOSITE.replace("REQUIRE", "all"), [WL, WL2])
    eng.tick(T0)
    eng.feed_reading("WL1", "water_level_m", T0, 99.5)       # WL1: high water, no rain yet
    eng.feed_reading("WL2", "rain_mm", T0, 60.0)             # WL2: heavy rain, river low
    eng.feed_reading("WL2", "water_level_m", T0, 40.0)
    assert not eng.take().transitions, "one condition per device: nothing, and devices never pool"
    eng.feed_reading("WL1", "rain_mm", T0 + 60, 55.0)
    [t] = eng.take().transitions
    assert (t.rule, t.device_id, t.area, t.state, t.severity) == ("flood-risk", "WL1", "ha-giang-city", "firing", 4)
    assert (t.value, t.threshold) == (2.0, 2.0) and t.fingerprint == "flood-risk|WL1"
    assert t.message_en == "Sông Lô tại Hà Giang: 2 of 2 conditions"
    eng.feed_reading("WL1", "water_level_m", T0 + 120, 98.5)  # the river falls below its exit: one left
    [r] = eng.take().transitions
    assert (r.device_id, r.state) == ("WL1", "resolved")


def test_composite_scope_device_any_and_m_of_n_and_restart() -> None:
    any_ = engine(DEVICE_COMPOSITE.replace("REQUIRE", "any"))
    any_.tick(T0)
    any_.feed_reading("WL1", "rain_mm", T0, 55.0)
    [t] = any_.take().transitions
    assert (t.device_id, t.state, t.value, t.threshold) == ("WL1", "firing", 1.0, 1.0)
    # m of n with a restart in between: the members seen before the restart still count after it.
    eng = engine(DEVICE_COMPOSITE.replace("REQUIRE", "2"))
    eng.tick(T0)
    eng.feed_reading("WL1", "water_level_m", T0, 99.5)
    assert not eng.take().transitions
    state = {k: v for k, v in eng.snapshot().items() if v is not None}
    assert "c:flood-risk|WL1" in state
    restarted = engine(DEVICE_COMPOSITE.replace("REQUIRE", "2"))
    restarted.restore(state)
    restarted.tick(T0 + 30)
    restarted.feed_reading("WL1", "rain_mm", T0 + 60, 55.0)
    [f] = restarted.take().transitions
    assert (f.fingerprint, f.state, f.value) == ("flood-risk|WL1", "firing", 2.0)


def test_deleting_the_last_silence_unmutes_its_episodes() -> None:
    """Before: with no silence, window or inhibit rule left, the mute refresh returned at once, so an episode
    muted by the last silence stayed muted after it was deleted."""
    eng = flood()
    eng.tick(T0)
    eng.set_silences([SilenceRule(1, (LabelMatch.build({"label": "rule", "op": "=", "value": "flood"}),),
                                  T0, T0 + 3600)])
    eng.feed_reading("WL1", "water_level_m", T0 + 10, 99.5)
    [t] = eng.take().transitions
    assert (t.state, t.muted) == ("firing", "silenced")
    eng.set_silences([])
    [u] = eng.tick(T0 + 20).transitions
    assert (u.state, u.muted, u.reason) == ("firing", None, "no longer muted")
