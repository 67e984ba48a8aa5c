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


SAMPLE_VALUES = {
    "database.url": "postgresql://u@db/x",
    "mqtt.url": "mqtt://broker:1883",
    "database.timescaledb": "off",
    "site.timezone": "Asia/Bangkok",
    "log_level": "WARNING",
    "mqtt.topic_prefix": "x",
    "ingest.transport": "paho",
    "alerts.clock": "event",
}


def test_every_setting_has_an_environment_name_that_round_trips() -> None:
    for name in setting_names():
        value = SAMPLE_VALUES.get(name, "x" if name.endswith(("dir", "client_id", "share_group", "name",
                                                                "http_host")) else "1")
        config = load_config([], environ={env_name(name): value})
        section, _, key = name.partition(".")
        target = getattr(getattr(config, section), key) if key else getattr(config, section)
        assert str(target).lower() in (value.lower(), "1.0", "true"), name


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("site:\n  timezone: Asia/Hanoi_nope\n", 2, "unknown time zone 'Asia/Hanoi_nope'"),
        ("ingest:\n  linger_ms: 5\n  batch_max: -5\n", 3, "ingest.batch_max: must be between 1 and 1000000, got -5"),
        ("ingest:\n  http_port: 99999\n", 2, "must be between 0 and 65535, got 99999"),
        ("database:\n  timescaledb: maybe\n", 2, "must be one of auto, on, off; got 'maybe'"),
        ("database:\n  url: mysql://u:secret@db/x\n", 2, "scheme must be postgresql or postgres, got 'mysql'"),
        ("mqtt:\n  url: mqtt://h:70000\n", 2, "invalid URL"),
        ("mqtt:\n  topic_prefix: occ/#\n", 2, "not a topic prefix"),
        ("ingest:\n  share_group: a/b\n", 2, "without /, + or #"),
        ("site:\n  hydro_day_start_hour: 24\n", 2, "between 0 and 23"),
        ("log_level: LOUD\n", 1, "one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("ingest:\n  retry_max_s: 0\n", 2, "between 0.1 and 3600"),
        ("web:\n  port: 80800\n", 2, "web.port: must be between 0 and 65535"),
        ("alerts:\n  clock: sundial\n", 2, "alerts.clock: must be one of wall, event"),
    ],
)
def test_values_are_checked_against_ranges_and_choices_with_the_line(
    tmp_path: Path, text: str, line: int, reason: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config([path], environ={})
    assert info.value.line == line and info.value.path == str(path)
    assert reason in info.value.reason
    assert "secret" not in str(info.value), "a password never appears in an error message"


def test_bad_environment_and_flag_values_name_their_source() -> None:
    with pytest.raises(ConfigError, match=r"^environment variable OCC_INGEST__HTTP_PORT: ingest.http_port: must be"):
        load_config([], environ={"OCC_INGEST__HTTP_PORT": "99999"})
    with pytest.raises(ConfigError, match=r"^environment variable OCC_DATABASE_URL: database.url: URL scheme"):
        load_config([], environ={"OCC_DATABASE_URL": "mysql://db/x"})
    with pytest.raises(ConfigError, match=r"^command line: site.timezone: unknown time zone"):
        load_config([], environ={}, flags={"site.timezone": "Mars/Olympus"})


def test_choices_are_case_insensitive_and_yaml_switch_words_are_read_as_written(tmp_path: Path) -> None:
    # YAML 1.1 turns a bare `on` into true: it still means the choice "on".
    config = load_config([write(tmp_path, "database:\n  timescaledb: on\nlog_level: debug\n")], environ={})
    assert config.database.timescaledb == "on" and config.log_level == "DEBUG"
    assert load_config([], environ={}, flags={"database.timescaledb": "OFF"}).database.timescaledb == "off"


def test_config_dir_is_found_from_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from occ.config import SOURCE_CONFIG_DIR, default_config_dir, require_config_dir

    monkeypatch.chdir(tmp_path)  # outside the repository: no ./config
    assert default_config_dir({}) == str(SOURCE_CONFIG_DIR)
    assert load_config(environ={}).config_path == SOURCE_CONFIG_DIR
    assert default_config_dir({"OCC_CONFIG_DIR": "/elsewhere"}) == "/elsewhere"
    (tmp_path / "config").mkdir()
    assert default_config_dir({}) == "config"  # a local config/ wins
    with pytest.raises(ConfigError, match=r"scenarios not found in .*OCC_CONFIG_DIR"):
        require_config_dir(tmp_path / "config", needs="scenarios")


def test_shipped_config_file_is_valid() -> None:
    shipped = Path(__file__).resolve().parents[2] / "config" / "occ.yaml"
    assert load_config([shipped], environ={}) == Config()
