"""The metric catalog: loading, validation with the line at fault, unit conversion."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from occ.catalog import Catalog, KindSpec, MetricSpec
from occ.errors import ConfigError, DecodeError

SMALL = textwrap.dedent(
    """\
    kinds:
      hydromet:
        report_interval_s: 600
        description: Station
      camera:
        report_interval_s: 60
    units:
      mm: {dimension: length, factor: 0.001}
      m: {dimension: length}
      Cel: {dimension: temperature}
      K: {dimension: temperature, factor: 1.0, offset: -273.15}
    metrics:
      rain_mm: {unit: mm, min: 0, max: 300, kinds: [hydromet], description: Rain}
      temperature_c: {unit: Cel, min: -20, max: 50, kinds: [hydromet]}
      level_m: {unit: m, kinds: [hydromet]}
    """
)


def parse_error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Catalog.parse(text, "metrics.yaml")
    return info.value


def test_default_catalog_loads_the_repository_file() -> None:
    catalog = Catalog.default()
    assert catalog is Catalog.default()  # loaded once
    rain = catalog.metric("rain_mm")
    assert rain == MetricSpec("rain_mm", "mm", 0.0, 300.0, ("hydromet",), "Rainfall in the report interval")
    assert catalog.kind("hydromet") == KindSpec(
        "hydromet", 600.0, "Hydro-meteorological station (rain gauge, river level, weather)"
    )
    level = catalog.metric("water_level_m")
    assert level is not None and "m above datum" in level.description
    assert catalog.metric("nope") is None
    assert catalog.kind("nope") is None
    assert {m.name for m in catalog.metrics_for_kind("camera")} == {
        "battery_v",
        "signal_dbm",
        "fps",
        "bitrate_kbps",
    }


def test_specs_are_frozen_value_objects() -> None:
    rain = Catalog.default().metric("rain_mm")
    assert rain is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        rain.max = 1.0  # type: ignore[misc]
    assert not hasattr(rain, "__dict__")


def test_optional_range_means_unbounded() -> None:
    catalog = Catalog.parse(SMALL)
    level = catalog.metric("level_m")
    assert level is not None and level.min is None and level.max is None
    assert level.in_range(-1e9) and level.in_range(1e9)
    rain = catalog.metric("rain_mm")
    assert rain is not None and rain.in_range(0) and not rain.in_range(300.1)


@pytest.mark.parametrize(
    ("value", "src", "dst", "expected"),
    [
        (250, "cm", "m", 2.5),
        (1500, "mm", "m", 1.5),
        (2.5, "m", "mm", 2500),
        (36, "km/h", "m/s", 10.0),
        (10, "m/s", "km/h", 36.0),
        (300, "K", "Cel", 26.85),
        (0, "Cel", "K", 273.15),
        (1013.25, "hPa", "Pa", 101325),
        (3300, "mV", "V", 3.3),
        (7, "mm", "mm", 7.0),
    ],
)
def test_convert(value: float, src: str, dst: str, expected: float) -> None:
    assert Catalog.default().convert(value, src, dst) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("src", "dst", "reason"),
    [
        ("K", "mm", "unit 'K' (temperature) cannot be converted to 'mm' (length)"),
        ("furlong", "m", "unknown unit 'furlong'"),
        ("m", "furlong", "unknown unit 'furlong'"),
        ("furlong", "furlong", "unknown unit 'furlong'"),
    ],
)
def test_convert_rejects_incompatible_or_unknown_units(src: str, dst: str, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        Catalog.default().convert(1.0, src, dst)
    assert info.value.reason == reason


def test_load_from_path_reports_the_path(tmp_path: Path) -> None:
    path = tmp_path / "metrics.yaml"
    path.write_text(SMALL.replace("max: 300", "max: 300, maximum: 3"), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        Catalog.load(path)
    assert info.value.path == str(path)
    assert info.value.line == 13
    assert str(info.value).startswith(f"{path}:13: unknown key 'maximum'")
    path.write_text(SMALL, encoding="utf-8")
    assert Catalog.load(path).path == str(path)


@pytest.mark.parametrize(
    ("old", "new", "line", "fragment"),
    [
        ("kinds:\n", "kind:\n", 1, "unknown key 'kind'"),
        ("    description: Station", "    descr: Station", 4, "unknown key 'descr'"),
        ("{dimension: length}", "{dimension: length, scale: 2}", 9, "unknown key 'scale'"),
        ("min: 0, max: 300", "min: 300, max: 0", 13, "min 300 is greater than max 0"),
        ("{unit: Cel,", "{unit: degF,", 14, "unknown unit 'degF'"),
        ("kinds: [hydromet]}\n  level", "kinds: [hydromet, radar]}\n  level", 14, "unknown kind 'radar'"),
        ("report_interval_s: 60\n", "report_interval_s: -5\n", 6, "report_interval_s must be > 0"),
        ("report_interval_s: 600", "report_interval_s: often", 3, "must be a finite number"),
        ("factor: 0.001", "factor: 0", 8, "factor must not be 0"),
        ("  rain_mm:", "  rain/mm:", 13, "invalid metric name 'rain/mm'"),
        ("max: 300", "max: .inf", 13, "max must be a finite number"),
        ("kinds: [hydromet]}\n  level", "kinds: []}\n  level", 14, "'kinds' must be a non-empty list"),
    ],
)
def test_bad_catalog_is_rejected_with_the_line_at_fault(old: str, new: str, line: int, fragment: str) -> None:
    assert old in SMALL
    error = parse_error(SMALL.replace(old, new, 1))
    assert fragment in error.reason
    assert error.line == line
    assert error.path == "metrics.yaml"


def test_missing_section_and_wrong_shapes() -> None:
    assert (
        "missing section 'units'" in parse_error("kinds: {a: {report_interval_s: 1}}\nmetrics: {}\n").reason
    )
    assert "must be a mapping" in parse_error("- a\n- b\n").reason
    assert (
        "'metrics' must be a non-empty mapping"
        in parse_error("kinds: {a: {report_interval_s: 1}}\nunits: {m: {dimension: l}}\nmetrics: []\n").reason
    )


def test_constructor_checks_cross_references() -> None:
    kinds = {"k": KindSpec("k", 60)}
    with pytest.raises(ValueError, match="unknown unit"):
        Catalog(kinds, {}, {"x": MetricSpec("x", "m", None, None, ("k",))})
