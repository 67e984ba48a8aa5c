"""Rule files: the shipped rules cover the Hà Giang catalog; a bad file is rejected whole with file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from alerts.rules import bound, load_rules, parse_rules, rule_files
from occ.catalog import Catalog
from occ.devices import load_devices
from occ.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def catalog_devices() -> list:
    catalog = Catalog.load(ROOT / "config" / "metrics.yaml")
    return [d for f in sorted((ROOT / "config" / "devices").glob("*.yaml")) for d in load_devices(f, catalog)]


def test_shipped_rules_cover_the_catalog() -> None:
    rules = load_rules(rule_files(ROOT / "config" / "rules"))
    devices = catalog_devices()
    by_name = rules.by_name()
    rivers = [d for d in devices if "alarm_levels_m" in d.attributes]
    assert len(rivers) == 10
    assert all(bound(by_name["flood-level"], d) for d in rivers)  # every river station has its flood ladder
    gauges = [d for d in devices if "rain" in d.attributes.get("sensors", [])]
    assert gauges and all(bound(by_name["rain-24h"], d) and bound(by_name["rain-3h-intense"], d) for d in gauges)
    cameras = [d for d in devices if d.kind == "camera"]
    assert all(bound(by_name["camera-offline"], d) and bound(by_name["camera-incident"], d) for d in cameras)
    assert {r.kind for r in rules.rules} == {"threshold", "accumulation", "rate", "deadman", "offline", "composite",
                                             "anomaly", "event"}
    assert by_name["traffic-jam"].direction == "below"


BASE = """
rules:
  - name: flood
    kind: threshold
    metric: water_level_m
    levels:
      - {name: I, severity: 1, enter: alarm_levels_m.I}
"""


@pytest.mark.parametrize(("text", "line", "words"), [
    (BASE.replace("kind: threshold", "kind: thresold"), 4, "kind"),
    (BASE.replace("severity: 1", "severity: 7"), 7, "1..5"),
    (BASE.replace("metric: water_level_m", "metric: water_level_m\n    for: 10 minutes"), 6, "duration"),
    (BASE.replace("metric: water_level_m", "metric: water_level_m\n    colour: red"), 6, "unknown key 'colour'"),
    (BASE + "    message_vi: '{nme} vượt'\n", 8, "unknown field {nme}"),
    (BASE.replace("enter: alarm_levels_m.I", "enter: 'levels I'"), 7, "threshold"),
    (BASE + "  - name: flood\n    kind: offline\n", 8, "defined twice"),
    ("rules:\n  - name: c\n    kind: composite\n    of: [nope]\n", 2, "unknown rule 'nope'"),
    ("rules:\n  - name: a\n    kind: accumulation\n    metric: rain_mm\n    window: 25m\n    resolution: 10m\n"
     "    levels: [{name: x, severity: 1, enter: 1}]\n", 5, "whole multiple"),
    ("rules: [\n", 2, "invalid YAML"),
])
def test_a_bad_file_names_file_line_and_problem(text: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rules(text, "bad.yaml")
    assert info.value.path == "bad.yaml" and info.value.line == line, str(info.value)
    assert words in str(info.value)


def test_one_bad_file_rejects_the_whole_set(tmp_path: Path) -> None:
    good = tmp_path / "a.yaml"
    good.write_text(BASE)
    bad = tmp_path / "b.yaml"
    bad.write_text(BASE.replace("flood", "flood2").replace("severity: 1", "severity: 0"))
    assert len(load_rules([good]).rules) == 1
    with pytest.raises(ConfigError) as info:
        load_rules([good, bad])
    assert info.value.path == str(bad)


def test_occ_rules_validate_exit_codes(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE.replace("severity: 1", "severity: 9"))
    run = [sys.executable, "-m", "occ.cli", "rules", "validate"]
    ok = subprocess.run([*run, *map(str, rule_files(ROOT / "config" / "rules"))], capture_output=True, text=True)
    assert ok.returncode == 0 and "rules valid" in ok.stdout
    failed = subprocess.run([*run, str(bad)], capture_output=True, text=True)
    assert failed.returncode == 2
    assert f"{bad}:7:" in failed.stderr and "1..5" in failed.stderr and "Traceback" not in failed.stderr
