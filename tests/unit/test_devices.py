"""Device and area files: loading, the line at fault for every error, and the YAML dump round trip."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from occ.catalog import Catalog
from occ.devices import Area, dump_devices, load_areas, load_devices, parse_areas, parse_devices
from occ.errors import ConfigError
from occ.models import Device

DEVICES = textwrap.dedent(
    """\
    devices:
      - id: HG-BQ-RG01
        kind: hydromet
        name: "Trạm đo mưa Bắc Quang"
        lat: 22.49
        lon: 104.86
        area: bac-quang
        attributes:
          report_interval_s: 600
          alarm_levels_m: {I: 99.0, II: 101.0, III: 103.0}
      - id: HG-TC-01
        kind: traffic
        lat: 22.82
        lon: 104.98
      - id: HG-CAM-01
        kind: camera
    """
)

AREAS = textwrap.dedent(
    """\
    areas:
      - {id: ha-giang, name: "Hà Giang", name_en: Ha Giang, kind: province, lat: 22.8, lon: 104.98}
      - {id: bac-quang, name: "Bắc Quang", name_en: Bac Quang, kind: district, parent: ha-giang}
      - {id: lo-basin, name: "Lưu vực sông Lô", kind: basin}
      - {id: viet-quang, name: "Việt Quang", kind: commune, parent: bac-quang}
    """
)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.default()


def device_error(text: str, catalog: Catalog, areas: list[Area] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_devices(text, catalog, areas=areas, path="devices.yaml")
    assert info.value.path == "devices.yaml"
    return info.value


def test_device_file_loads(catalog: Catalog) -> None:
    devices = parse_devices(DEVICES, catalog, areas=parse_areas(AREAS))
    assert devices[0] == Device(
        "HG-BQ-RG01",
        "hydromet",
        "Trạm đo mưa Bắc Quang",
        22.49,
        104.86,
        "bac-quang",
        {"report_interval_s": 600, "alarm_levels_m": {"I": 99.0, "II": 101.0, "III": 103.0}},
    )
    assert devices[0].report_interval_s == 600.0
    assert devices[1] == Device("HG-TC-01", "traffic", "", 22.82, 104.98)
    assert devices[2] == Device("HG-CAM-01", "camera")
    assert all(d.provisioned for d in devices)


def test_json_device_file_loads_too(catalog: Catalog, tmp_path: Path) -> None:
    path = tmp_path / "devices.json"
    path.write_text(
        json.dumps({"devices": [{"id": "HG-1", "kind": "hydromet", "lat": 22.5, "lon": 104.9}]}, indent=2),
        encoding="utf-8",
    )
    assert load_devices(path, catalog) == [Device("HG-1", "hydromet", "", 22.5, 104.9)]


def test_empty_files_mean_no_devices(catalog: Catalog) -> None:
    assert parse_devices("", catalog) == []
    assert parse_devices("devices: []\n", catalog) == []
    assert parse_areas("areas:\n") == []


def test_area_is_checked_only_when_areas_are_given(catalog: Catalog) -> None:
    assert parse_devices(DEVICES, catalog)[0].area == "bac-quang"
    error = device_error(DEVICES, catalog, areas=[Area("ha-giang", "Hà Giang")])
    assert error.reason == "device HG-BQ-RG01: unknown area 'bac-quang'"
    assert error.line == 7


@pytest.mark.parametrize(
    ("old", "new", "line", "reason"),
    [
        (
            "    lon: 104.86\n",
            "    lon: 104.86\n    elevation: 80\n",
            7,
            "unknown key 'elevation' (expected one of: area, attributes, id, kind, lat, lon, name)",
        ),
        ("  - id: HG-TC-01\n", "  - name: x\n", 11, "device: missing 'id'"),
        ("id: HG-TC-01", "id: HG TC 01", 11, "invalid device id 'HG TC 01' (expected [A-Za-z0-9_.-]{1,64})"),
        ("id: HG-TC-01", "id: 12345", 11, "invalid device id 12345 (expected [A-Za-z0-9_.-]{1,64})"),
        (
            "id: HG-TC-01",
            'id: "HG-TC-01\\n"',
            11,
            "invalid device id 'HG-TC-01\\n' (expected [A-Za-z0-9_.-]{1,64})",
        ),
        ("id: HG-CAM-01", "id: HG-TC-01", 15, "duplicate device id 'HG-TC-01' (first at line 11)"),
        (
            "kind: traffic",
            "kind: radar",
            12,
            "device HG-TC-01: unknown kind 'radar' (expected one of: camera, gateway, hydromet, traffic)",
        ),
        ("    kind: camera\n", "    name: cam\n", 15, "device HG-CAM-01: missing 'kind'"),
        ("lat: 22.82", "lat: 122.82", 13, "device HG-TC-01: lat 122.82 is not in [-90, 90]"),
        ("lon: 104.98", "lon: -190", 14, "device HG-TC-01: lon -190 is not in [-180, 180]"),
        ("lat: 22.82", "lat: north", 13, "device HG-TC-01: lat 'north' is not in [-90, 90]"),
        ("    lon: 104.98\n", "", 11, "device HG-TC-01: 'lat' and 'lon' go together ('lon' missing)"),
        ('name: "Trạm đo mưa Bắc Quang"', "name: 7", 4, "'name' must be a string, got int 7"),
        (
            "      report_interval_s: 600\n      alarm_levels_m: {I: 99.0, II: 101.0, III: 103.0}\n",
            "      - report_interval_s\n",
            8,
            "device HG-BQ-RG01: attributes must be a mapping, got a list",
        ),
        (
            "report_interval_s: 600",
            "report_interval_s: '10 min'",
            9,
            "device HG-BQ-RG01: report_interval_s must be a positive number, got '10 min'",
        ),
        (
            "report_interval_s: 600",
            "report_interval_s: 0",
            9,
            "device HG-BQ-RG01: report_interval_s must be a positive number, got 0",
        ),
        (
            "{I: 99.0, II: 101.0, III: 103.0}",
            "{I: 99.0, II: 98.0, III: 103.0}",
            10,
            "device HG-BQ-RG01: alarm level II (98) must be above level I (99)",
        ),
        (
            "{I: 99.0, II: 101.0, III: 103.0}",
            "{I: 99.0, III: 99.0}",
            10,
            "device HG-BQ-RG01: alarm level III (99) must be above level I (99)",
        ),
        (
            "{I: 99.0, II: 101.0, III: 103.0}",
            "{I: 99.0, II: 101.0, IV: 105.0}",
            10,
            "device HG-BQ-RG01: unknown alarm level 'IV' (expected I, II, III)",
        ),
        (
            "{I: 99.0, II: 101.0, III: 103.0}",
            "{I: 99.0, II: high}",
            10,
            "device HG-BQ-RG01: alarm level II must be a number, got 'high'",
        ),
        (
            "{I: 99.0, II: 101.0, III: 103.0}",
            "[99.0, 101.0, 103.0]",
            10,
            "device HG-BQ-RG01: alarm_levels_m must be a mapping of I/II/III to water levels",
        ),
        ("devices:\n", "device:\n", 1, "unknown key 'device' (expected one of: devices)"),
    ],
)
def test_device_file_errors_carry_the_line(
    catalog: Catalog, old: str, new: str, line: int, reason: str
) -> None:
    assert old in DEVICES
    error = device_error(DEVICES.replace(old, new, 1), catalog)
    assert error.reason == reason
    assert error.line == line


def test_alarm_levels_on_separate_lines_report_the_level_line(catalog: Catalog) -> None:
    text = DEVICES.replace(
        "alarm_levels_m: {I: 99.0, II: 101.0, III: 103.0}",
        "alarm_levels_m:\n          I: 99.0\n          II: 101.0\n          III: 100.0",
    )
    error = device_error(text, catalog)
    assert error.line == 13
    assert error.reason == "device HG-BQ-RG01: alarm level III (100) must be above level II (101)"


def test_yaml_syntax_and_duplicate_keys_are_reported_with_the_line(catalog: Catalog) -> None:
    assert (
        device_error(DEVICES.replace("    kind: camera", "    kind: camera\n    kind: traffic"), catalog).line
        == 17
    )
    assert device_error("devices:\n  - id: [\n", catalog).line is not None


def test_wrong_shapes(catalog: Catalog) -> None:
    assert device_error("- a\n", catalog).reason == "top level must be a mapping with 'devices'"
    assert device_error("devices: {a: 1}\n", catalog).reason == "'devices' must be a list, got a mapping"
    assert (
        device_error("devices:\n  - HG-1\n", catalog).reason == "device 0: expected a mapping, got a string"
    )


def test_load_devices_from_a_file_reports_its_path(catalog: Catalog, tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text(DEVICES.replace("lat: 22.82", "lat: 95"), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_devices(path, catalog)
    assert str(info.value) == f"{path}:13: device HG-TC-01: lat 95 is not in [-90, 90]"
    with pytest.raises(ConfigError, match="cannot read file"):
        load_devices(tmp_path / "missing.yaml", catalog)


def test_dump_devices_round_trips(catalog: Catalog) -> None:
    devices = parse_devices(DEVICES, catalog)
    text = dump_devices(devices)
    assert "Trạm đo mưa Bắc Quang" in text  # readable Vietnamese, not \u escapes
    assert parse_devices(text, catalog) == devices
    assert dump_devices([]) == "devices: []\n"


def test_dump_of_an_auto_registered_device_loads_as_provisioned(catalog: Catalog) -> None:
    text = dump_devices([Device("HG-NEW", "traffic", provisioned=False)])
    assert parse_devices(text, catalog) == [Device("HG-NEW", "traffic")]


# -- areas --------------------------------------------------------------------------------------------------


def test_areas_load(tmp_path: Path) -> None:
    path = tmp_path / "areas.yaml"
    path.write_text(AREAS, encoding="utf-8")
    areas = load_areas(path)
    assert areas[0] == Area("ha-giang", "Hà Giang", "Ha Giang", "province", 22.8, 104.98, None)
    assert areas[1] == Area("bac-quang", "Bắc Quang", "Bac Quang", "district", None, None, "ha-giang")
    assert [a.id for a in areas] == ["ha-giang", "bac-quang", "lo-basin", "viet-quang"]


def test_parents_may_come_later() -> None:
    areas = parse_areas(
        "areas:\n  - {id: b, name: B, kind: commune, parent: a}\n  - {id: a, name: A, kind: district}\n"
    )
    assert areas[0].parent == "a"


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        (AREAS.replace("kind: basin", "kind: basin, code: 7"), 4, "unknown key 'code'"),
        (
            AREAS.replace("id: lo-basin", "id: bac-quang"),
            4,
            "duplicate area id 'bac-quang' (first at line 3)",
        ),
        (
            AREAS.replace("parent: bac-quang", "parent: yen-minh"),
            5,
            "area viet-quang: unknown parent 'yen-minh'",
        ),
        (
            AREAS.replace("kind: province,", "kind: province, parent: viet-quang,"),
            2,
            "parent chain loops back",
        ),
        (AREAS.replace("lat: 22.8", "lat: 222.8"), 2, "area ha-giang: lat 222.8 is not in [-90, 90]"),
        (AREAS.replace(', name: "Lưu vực sông Lô"', ""), 4, "area lo-basin: missing 'name'"),
        (AREAS.replace(", kind: basin", ""), 4, "area lo-basin: missing 'kind'"),
        (AREAS.replace("kind: basin", "kind: river basin"), 4, "area lo-basin: invalid kind 'river basin'"),
        (AREAS.replace("id: lo-basin", "id: lo basin"), 4, "invalid area id 'lo basin'"),
    ],
)
def test_area_file_errors_carry_the_line(text: str, line: int, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_areas(text, "areas.yaml")
    assert reason in info.value.reason
    assert info.value.line == line


# -- import plan (issue 9: a re-import silently turned a rain gauge into a camera) --------------------------


def test_import_plan_says_created_updated_unchanged_with_differences() -> None:
    from occ.devices import MISSING, plan_import

    gauge = Device("HG-BQ-RG01", "hydromet", "Rain gauge", 22.4, 104.8, "bac-quang",
                   {"report_interval_s": 600, "sensors": ["rain"]})
    same = Device("HG-TC-01", "traffic", "Counter", 22.8, 104.9, "ha-giang-city")
    registry = {d.id: d for d in (gauge, same)}
    renamed = Device("HG-BQ-RG01", "hydromet", "Rain gauge Bắc Quang", 22.4, 104.8, "bac-quang",
                     {"report_interval_s": 300})
    new = Device("HG-NEW-01", "camera")
    plan = plan_import(registry, [renamed, same, new])
    assert [(c.device.id, c.action) for c in plan] == [
        ("HG-BQ-RG01", "updated"), ("HG-TC-01", "unchanged"), ("HG-NEW-01", "created")]
    assert plan[0].differences == (
        ("name", "Rain gauge", "Rain gauge Bắc Quang"),
        ("attributes.report_interval_s", 600, 300),
        ("attributes.sensors", ["rain"], MISSING),
    )
    assert not plan[0].changes_kind and repr(MISSING) == "(none)"


def test_import_plan_flags_a_kind_change_and_provisioning() -> None:
    from occ.cli_devices import describe_plan
    from occ.devices import plan_import

    registry = {"HG-BQ-RG01": Device("HG-BQ-RG01", "hydromet", attributes={"sensors": ["rain"]}),
                "AUTO-1": Device("AUTO-1", "hydromet", provisioned=False)}
    plan = plan_import(registry, [Device("HG-BQ-RG01", "camera"), Device("AUTO-1", "hydromet")])
    assert plan[0].changes_kind and plan[0].previous_kind == "hydromet"
    assert plan[1].action == "updated" and plan[1].differences == (("provisioned", False, True),)
    assert describe_plan(plan) == [
        "updated    HG-BQ-RG01 (camera)",
        '    kind: "hydromet" → "camera"',
        '    attributes.sensors: ["rain"] → (none)',
        "updated    AUTO-1 (hydromet)",
        "    provisioned: false → true",
    ]
    unchanged = plan_import({"X": Device("X", "camera")}, [Device("X", "camera")])
    assert describe_plan(unchanged) == [] and describe_plan(unchanged, verbose=True) == ["unchanged  X (camera)"]


def test_filters_naming_nothing_list_the_valid_values(catalog: Catalog) -> None:
    from occ.cli_devices import check_filters
    from occ.errors import UsageError

    areas = parse_areas(AREAS)
    registry = [Device("A", "hydromet", area="bac-quang")]
    check_filters("camera", "ha-giang", registry, catalog=catalog, areas=areas)  # exist, just no devices
    with pytest.raises(UsageError, match=r"no device kind 'cam'; kinds are: .*camera.*hydromet"):
        check_filters("cam", None, registry, catalog=catalog, areas=areas)
    with pytest.raises(UsageError, match=r"no area 'Bắc Quang': areas are ids — did you mean bac-quang\?"):
        check_filters(None, "Bắc Quang", registry, catalog=catalog, areas=areas)
    with pytest.raises(UsageError, match=r"no area 'Mars'.*Areas: bac-quang, ha-giang"):
        check_filters(None, "Mars", registry, catalog=catalog, areas=areas)


def test_history_times_are_read_in_the_site_zone() -> None:
    from datetime import UTC, datetime, timedelta
    from zoneinfo import ZoneInfo

    from occ.cli_history import parse_time
    from occ.errors import UsageError

    tz = ZoneInfo("Asia/Ho_Chi_Minh")
    now = datetime(2026, 11, 27, 12, 0, tzinfo=tz)
    assert parse_time("now", tz=tz, now=now, what="to") == now
    assert parse_time("-6h", tz=tz, now=now, what="from") == now - timedelta(hours=6)
    assert parse_time("2d ago", tz=tz, now=now, what="from") == now - timedelta(days=2)
    assert parse_time("2026-11-27", tz=tz, now=now, what="from") == datetime(2026, 11, 26, 17, 0, tzinfo=UTC)
    assert parse_time("2026-11-27T07:00", tz=tz, now=now, what="from") == datetime(2026, 11, 27, 0, 0, tzinfo=UTC)
    assert parse_time("2026-11-27T07:00Z", tz=tz, now=now, what="from") == datetime(2026, 11, 27, 7, 0, tzinfo=UTC)
    with pytest.raises(UsageError, match="--from 'yesterday'"):
        parse_time("yesterday", tz=tz, now=now, what="from")


def test_a_folder_imports_its_device_files_in_order(tmp_path: Path) -> None:
    """Compose mounts config/devices/ and imports the folder."""
    from occ.cli_devices import device_files

    (tmp_path / "b.yaml").write_text("devices: []\n")
    (tmp_path / "a.yml").write_text("devices: []\n")
    (tmp_path / "README.txt").write_text("not a device file\n")
    assert device_files([str(tmp_path), "x.yaml"]) == [str(tmp_path / "a.yml"), str(tmp_path / "b.yaml"), "x.yaml"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no device files"):
        device_files([str(empty)])
