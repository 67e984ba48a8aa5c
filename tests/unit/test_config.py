"""Config precedence (defaults < files < environment < flags) and whole-file rejection with the line at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from occ.config import Config, env_name, load_config, setting_names
from occ.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "occ.yaml"
    path.write_text(text)
    return path


def test_defaults_without_files() -> None:
    config = load_config([], environ={})
    assert config == Config()
    assert config.ingest.linger_ms == 10 and config.database.url is None


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, "ingest:\n  batch_max: 100\n  linger_ms: 20\n  auto_register: yes\nlog_level: DEBUG\n")
    config = load_config([path], environ={"OCC_INGEST__LINGER_MS": "30", "OCC_DATABASE_URL": "postgresql://db/x"},
                         flags={"ingest.batch_max": "7"})
    assert config.ingest.batch_max == 7  # flag beats file
    assert config.ingest.linger_ms == 30  # environment beats file
    assert config.ingest.auto_register is True
    assert config.log_level == "DEBUG"
    assert config.database.url == "postgresql://db/x"


def test_unknown_key_is_rejected_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "ingest:\n  batch_max: 100\n  lingr_ms: 20\n")
    with pytest.raises(ConfigError) as info:
        load_config([path], environ={})
    assert info.value.line == 3 and "lingr_ms" in str(info.value) and str(path) in str(info.value)


def test_wrong_type_is_rejected_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "database:\n  pool_size: many\n")
    with pytest.raises(ConfigError) as info:
        load_config([path], environ={})
    assert info.value.line == 2 and "integer" in info.value.reason


def test_yaml_syntax_error_and_duplicate_key_give_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config([write(tmp_path, "ingest:\n  batch_max: [1,\n")], environ={})
    assert info.value.line is not None
    with pytest.raises(ConfigError) as info:
        load_config([write(tmp_path, "ingest:\n  batch_max: 1\n  batch_max: 2\n")], environ={})
    assert info.value.line == 3 and "duplicate" in info.value.reason


def test_bad_environment_value_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"ingest\.batch_max"):
        load_config([], environ={"OCC_INGEST__BATCH_MAX": "lots"})
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config([], environ={"OCC_INGEST__NOPE": "1"})


def test_every_setting_has_an_environment_name_that_round_trips() -> None:
    for name in setting_names():
        value = "1" if not name.endswith(("url", "level", "dir", "client_id", "share_group", "name", "timezone",
                                          "topic_prefix", "http_host", "timescaledb")) else "x"
        if name == "log_level":
            value = "INFO"
        config = load_config([], environ={env_name(name): value})
        section, _, key = name.partition(".")
        target = getattr(getattr(config, section), key) if key else getattr(config, section)
        assert str(target).lower() in (value.lower(), "1.0", "true"), name


def test_shipped_config_file_is_valid() -> None:
    shipped = Path(__file__).resolve().parents[2] / "config" / "occ.yaml"
    assert load_config([shipped], environ={}) == Config()
