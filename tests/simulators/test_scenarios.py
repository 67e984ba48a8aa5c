"""Scenario files: every shipped one is valid; bad files are rejected whole with file, line and reason;
targets select by id, kind, area and attribute; scenarios compose."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from simhelpers import CONFIG, JULY, RunSim, subset

from occ.errors import ConfigError
from occ.yamlfile import parse_yaml
from simulators.engine import Message, Simulation
from simulators.fleet import Fleet
from simulators.scenario import (
    TargetSpec,
    available_scenarios,
    bind,
    check_expectations,
    load_scenarios,
    parse_scenario,
    select,
)
from simulators.timeutil import parse_timestamp

SHIPPED = ["normal-day", "flash-flood-bac-quang", "camera-outage-storm", "rush-hour-jam-ql2", "sensor-faults",
           "gsm-outage", "demo"]


def test_shipped_scenarios_are_valid(fleet: Fleet) -> None:
    assert set(SHIPPED) <= set(available_scenarios(CONFIG))
    for name in SHIPPED:
        specs = load_scenarios([name], CONFIG, fleet.metrics)
        Simulation(fleet, start=JULY, seed=0, scenarios=specs, spinup_s=0)  # binds every target


def test_scenarios_compose_and_include(fleet: Fleet) -> None:
    specs = load_scenarios(["flash-flood-bac-quang", "sensor-faults", "normal-day"], CONFIG, fleet.metrics)
    names = [s.name for s in specs]
    assert names.count("normal-day") == 1  # included by the flood scenario, loaded once
    sim = Simulation(fleet, start=JULY, seed=0, scenarios=specs, spinup_s=0)
    kinds = {e.spec.do for e in sim.effects}
    assert {"rain", "weather", "fault"} <= kinds


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


HEAD = """
scenario:
  name: test
effects:
"""

BAD = [
    ("unknown effect", HEAD + "  - do: earthquake\n    target: {kind: camera}\n    for: 1h\n", 4, "unknown effect"),
    ("unknown key", HEAD + "  - do: offline\n    target: {kind: camera}\n    for: 1h\n    sprad: 60s\n", 7,
     "unknown key 'sprad'"),
    ("bad duration", HEAD + "  - do: offline\n    target: {kind: camera}\n    for: 20 minutes\n", 6,
     "invalid duration"),
    ("unquoted clock time", HEAD + "  - do: offline\n    target: {kind: camera}\n    at: 17:00\n    for: 1h\n", 6,
     "quoted local time"),
    ("missing for", HEAD + "  - do: offline\n    target: {kind: camera}\n", 4, "needs `for`"),
    ("unknown metric", HEAD + "  - do: fault\n    fault: stuck\n    metric: rainfall\n    target: {kind: hydromet}\n"
     "    for: 1h\n", 6, "unknown metric 'rainfall'"),
    ("fault param", HEAD + "  - do: fault\n    fault: stuck\n    metric: rain_mm\n    magnitude: 3\n"
     "    target: {kind: hydromet}\n    for: 1h\n", 7, "does not take 'magnitude'"),
    ("in range", HEAD + "  - do: fault\n    fault: out_of_range\n    metric: rain_mm\n    value: 12\n"
     "    target: {kind: hydromet}\n    for: 1h\n", 7, "inside the plausible range"),
    ("target keys", HEAD + "  - do: offline\n    target: {kinds: camera}\n    for: 1h\n", 5, "unknown key 'kinds'"),
    ("yaml syntax", HEAD + "  - do: offline\n    target: {kind: camera\n    for: 1h\n", None, "invalid YAML"),
    ("duplicate key", HEAD + "  - do: offline\n    do: fault\n    target: {kind: camera}\n    for: 1h\n", 5,
     "duplicate key"),
    ("no header", "effects: []\n", 1, "scenario:"),
]


@pytest.mark.parametrize(("text", "line", "reason"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_file_is_rejected_with_file_line_and_reason(tmp_path: Path, fleet: Fleet, text: str,
                                                        line: int | None, reason: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_scenarios([str(path)], CONFIG, fleet.metrics)
    assert err.value.path == str(path)
    if line is not None:
        assert err.value.line == line, str(err.value)
    else:
        assert err.value.line is not None
    assert reason in err.value.reason
    assert f"{path}:" in str(err.value)


BIND_ERRORS = [
    ("no match", "  - do: offline\n    target: {ids: [NO-SUCH-*]}\n    for: 1h\n", 5, "matches no device"),
    ("metric not sent", "  - do: fault\n    fault: stuck\n    metric: water_level_m\n    target: {ids: [HG-BQ-RG01]}"
     "\n    for: 1h\n", 4, "do not report water_level_m"),
    ("metric of other kind", "  - do: fault\n    fault: stuck\n    metric: fps\n    target: {ids: [HG-BQ-RG01]}"
     "\n    for: 1h\n", 4, "not reported by"),
    ("rain on cameras", "  - do: rain\n    intensity_mm_h: 5\n    target: {kind: camera}\n    for: 1h\n", 4,
     "applies to hydromet"),
    ("spikes too close", "  - do: fault\n    fault: spike\n    metric: rain_mm\n    magnitude: 5\n    count: 10\n"
     "    target: {ids: [HG-BQ-RG01]}\n    for: 30m\n", 4, "closer than the report interval"),
]


@pytest.mark.parametrize(("effects", "line", "reason"), [b[1:] for b in BIND_ERRORS], ids=[b[0] for b in BIND_ERRORS])
def test_targets_are_checked_against_the_catalog(tmp_path: Path, fleet: Fleet, effects: str, line: int,
                                                 reason: str) -> None:
    path = write(tmp_path, HEAD + effects)
    specs = load_scenarios([str(path)], CONFIG, fleet.metrics)
    with pytest.raises(ConfigError) as err:
        Simulation(fleet, start=JULY, seed=0, scenarios=specs, spinup_s=0)
    assert err.value.path == str(path)
    assert err.value.line == line, str(err.value)
    assert reason in err.value.reason


def test_include_cycle_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("scenario: {name: a, include: [" + str(tmp_path / "b.yaml") + "]}\n")
    (tmp_path / "b.yaml").write_text("scenario: {name: b, include: [" + str(tmp_path / "a.yaml") + "]}\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_scenarios([str(tmp_path / "a.yaml")], CONFIG)


def test_target_selection(fleet: Fleet) -> None:
    rng = np.random.default_rng(0)
    by_kind = select(fleet, TargetSpec(kinds=("camera",), areas=("ha-giang-city",)), rng)
    assert by_kind and all(d.kind == "camera" and d.area == "ha-giang-city" for d in by_kind)
    assert len(select(fleet, TargetSpec(kinds=("camera",), areas=("ha-giang-city",), limit=30), rng)) == 30
    sample = select(fleet, TargetSpec(kinds=("camera",), sample=5), rng)
    assert len(sample) == 5
    by_glob = select(fleet, TargetSpec(ids=("HG-BQ-RG*",)), rng)
    assert {d.id for d in by_glob} == {f"HG-BQ-RG0{i}" for i in range(1, 7)}
    province = select(fleet, TargetSpec(areas=("ha-giang",)), rng)
    assert len(province) == len(fleet.devices)  # the province includes every district
    ql2 = select(fleet, TargetSpec(kinds=("traffic",), where=(("road", "QL2"),)), rng)
    assert ql2 and all(d.attributes["road"] == "QL2" for d in ql2)
    rivers = select(fleet, TargetSpec(where=(("river", "Lô"),)), rng)
    assert {d.attributes["river"] for d in rivers} == {"Lô"} and len(rivers) >= 3


def test_at_forms_resolve_against_the_run_start(fleet: Fleet) -> None:
    text = HEAD + """\
  - do: offline
    target: {ids: [HG-TP-CAM01]}
    at: "17:00"
    for: 1h
  - do: offline
    target: {ids: [HG-TP-CAM02]}
    at: "1d 06:30"
    for: 1h
  - do: offline
    target: {ids: [HG-TP-CAM03]}
    at: 2026-07-14T12:00:00+07:00
    for: 1h
  - do: offline
    target: {ids: [HG-TP-CAM04]}
    at: 1d2h
    for: 1h
"""
    data, lines = parse_yaml(textwrap.dedent(text))
    spec, _ = parse_scenario(data, lines, fleet.metrics)
    start = JULY + 18 * 3600  # 18:00 local on 14 July
    starts = [b.start for b in bind([spec], fleet, start, 0)]
    assert starts[0] == JULY + 86400 + 17 * 3600  # 17:00 already passed: the next day
    assert starts[1] == JULY + 86400 + 6.5 * 3600
    assert starts[2] == JULY + 12 * 3600
    assert starts[3] == start + 26 * 3600


# --- repeats (issue 10: a demo wall left running keeps showing life) ---------------------------------------

REPEAT_BAD = [
    ("too short", "scenario:\n  name: r\n  repeat: 30s\neffects: []\n", 3, "at least 1m"),
    ("bad period", "scenario:\n  name: r\n  repeat: often\neffects: []\n", 3, "invalid duration"),
    ("longer than the period", "scenario:\n  name: r\n  repeat: 1h\neffects:\n  - do: offline\n"
     "    target: {kind: camera}\n    for: 2h\n", 5, "longer than the scenario's repeat period"),
    ("include key", "scenario:\n  name: r\n  include:\n    - {scenario: normal-day, every: 1d}\neffects: []\n", 4,
     "unknown key 'every'"),
    ("include without name", "scenario:\n  name: r\n  include:\n    - {repeat: 1d}\neffects: []\n", 4,
     "scenario: NAME"),
]


@pytest.mark.parametrize(("text", "line", "reason"), [b[1:] for b in REPEAT_BAD], ids=[b[0] for b in REPEAT_BAD])
def test_bad_repeat_is_rejected_with_file_line_and_reason(tmp_path: Path, fleet: Fleet, text: str, line: int,
                                                          reason: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_scenarios([str(path)], CONFIG, fleet.metrics)
    assert err.value.path == str(path)
    assert err.value.line == line, str(err.value)
    assert reason in err.value.reason


def test_an_include_that_repeats_too_fast_for_its_effects_is_rejected_at_the_include(tmp_path: Path,
                                                                                     fleet: Fleet) -> None:
    path = write(tmp_path, "scenario:\n  name: r\n  include:\n    - {scenario: camera-outage-storm, repeat: 10m}\n"
                 "effects: []\n")
    with pytest.raises(ConfigError, match="longer than the scenario's repeat period") as err:
        load_scenarios([str(path)], CONFIG, fleet.metrics)
    assert err.value.path == str(path)


def test_includes_set_the_period_of_the_scenario_they_include(fleet: Fleet) -> None:
    specs = {s.name: s for s in load_scenarios(["demo"], CONFIG, fleet.metrics)}
    assert specs["demo"].repeat == 2 * 86400
    assert specs["camera-outage-storm"].repeat == 6 * 3600
    assert specs["rush-hour-jam-ql2"].repeat == 86400
    assert specs["normal-day"].repeat is None
    # the same file run on its own stays a one-off
    (alone,) = load_scenarios(["camera-outage-storm"], CONFIG, fleet.metrics)
    assert alone.repeat is None


def offline_times(messages: list[Message], device_ids: set[str]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {d: [] for d in device_ids}
    for m in messages:
        if m.channel == "status" and m.device_id in device_ids and m.payload == b"offline":
            out[m.device_id].append(m.t)
    return out


def test_a_repeating_outage_recurs_every_period_on_the_same_devices(tmp_path: Path, fleet: Fleet,
                                                                     run_sim: RunSim) -> None:
    path = write(tmp_path, "scenario:\n  name: r\n  include:\n    - {scenario: camera-outage-storm, repeat: 6h}\n"
                 "effects: []\n")
    specs = load_scenarios([str(path)], CONFIG, fleet.metrics)
    cameras = subset(fleet, kinds=["camera"])
    sim, messages = run_sim(cameras, 26, scenarios=specs, tick_s=300.0)
    storm = {d.id for d in sim.templates[0].devices}
    assert len(storm) == 30
    downs = offline_times(messages, storm)
    for device_id, times in downs.items():
        # outages start at +30 min + k × 6 h (within the 60 s spread), 5 of them in 26 h; random camera
        # outages of the model may add a few more
        scripted = [t for t in times if (t - JULY - 1800) % 21600 <= 120]
        assert len(scripted) == 5, (device_id, [(t - JULY) / 3600 for t in times])
        assert [round((t - JULY - 1800) / 21600) for t in scripted] == list(range(5))
    # bounded: ended occurrences are dropped, the next day's are bound ahead
    assert all(e.end > sim.t - 6 * 3600 for e in sim.effects)
    assert len(sim.effects) <= 6


def test_the_flood_of_the_demo_recurs_and_meets_its_windows_every_time(fleet: Fleet) -> None:
    """Two demo cycles (4 days): every `expect:` window of the flood is met in both, so each flood's alerts
    rise and resolve before the next one (the cycle check fails when a river has not receded)."""
    specs = [s for s in load_scenarios(["demo"], CONFIG, fleet.metrics) if s.name in ("demo", "normal-day")]
    hydromet = subset(fleet, kinds=["hydromet"])  # the flood's devices (the camera and traffic includes left out)
    watch = [(x.device, x.metric) for s in specs for x in s.expects]
    start = parse_timestamp("2026-12-01T03:00:00+07:00")  # the season `occ up --demo` runs in (dry)
    sim = Simulation(hydromet, start=start, seed=3, scenarios=specs, watch=watch, tick_s=300.0)
    for _ in sim.run_until(start + 4 * 86400 + 3600):
        pass
    results = check_expectations(specs, start, sim.watch, hydromet)
    demo_expects = [x for s in specs if s.name == "demo" for x in s.expects]
    assert len(results) == 2 * len(demo_expects)
    failed = [f"{x.name}: {detail}" for x, ok, detail in results if not ok]
    assert not failed, failed
    assert sum("occurrence 2" in detail for _, _, detail in results) == len(demo_expects)
