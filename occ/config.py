"""The one configuration tree, typed and loaded once.

Precedence, lowest first: built-in defaults < YAML files (`config/occ.yaml`, or `--config FILE`) <
`OCC_*` environment variables < command-line flags (`--set section.key=value`).

Environment names: `OCC_<SECTION>__<KEY>` (double underscore), e.g. `OCC_INGEST__BATCH_MAX=5000`, plus the
shortcuts below that docker-compose and most users need. Libraries never take this object: services unpack
the fields they need and pass keyword arguments.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from occ.errors import ConfigError
from occ.yamlfile import Lines, load_yaml

ENV_SHORTCUTS: dict[str, str] = {
    "OCC_DATABASE_URL": "database.url",
    "OCC_MQTT_URL": "mqtt.url",
    "OCC_LOG_LEVEL": "log_level",
    "OCC_VAR_DIR": "var_dir",
    "OCC_CONFIG_DIR": "config_dir",
}


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str | None = None
    """postgresql://user:pass@host:port/db. Unset: `occ up` starts an embedded PostgreSQL under var/."""
    pool_size: int = 4
    timescaledb: str = "auto"
    """auto (use the extension when it can be created), on (require it) or off (plain PostgreSQL path)."""
    retention_days: int = 730
    compress_after_days: int = 7
    partition_days: int = 7
    partitions_ahead: int = 4


@dataclass(frozen=True, slots=True)
class MqttConfig:
    url: str | None = None
    """mqtt://user:pass@host:port. Unset: `occ up` starts an embedded broker."""
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    """How long the broker keeps a persistent session (and queues for it) while the client is away."""
    topic_prefix: str = "occ/v1"


@dataclass(frozen=True, slots=True)
class IngestConfig:
    client_id: str = "occ-ingest"
    share_group: str = "occ-ingest"
    """MQTT 5 shared-subscription group: N ingest workers with the same group split the stream."""
    shared: bool = True
    batch_max: int = 5000
    linger_ms: int = 10
    writers: int = 2
    """Concurrent batch writes per worker (acks stay in arrival order); 2 overlaps one COPY with a commit."""
    max_unacked: int = 50_000
    """Messages received but not yet committed and acknowledged; at the bound ingest stops reading."""
    max_unacked_mb: int = 64
    """The same bound in payload megabytes (MiB), per worker: whichever bound is reached first stops reading."""
    max_payload_bytes: int = 1_048_576
    max_future_s: int = 300
    max_past_days: int = 400
    auto_register: bool = False
    """Store readings of unknown devices and register them as unprovisioned instead of dead-lettering."""
    http_host: str = "127.0.0.1"
    http_port: int = 9101
    retry_max_s: float = 30.0
    transport: str = "native"
    """MQTT receive path: "native" (occ.mqtt, the default) or "paho" (occ.bus, the fallback)."""


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    client_id: str = "occ-alerts"
    """Its own persistent MQTT session (never the ingest share group): every message reaches the engine."""
    rules_dir: str = ""
    """Rule files (*.yaml); empty means <config_dir>/rules."""
    late_after_s: float = 900.0
    """Data older than this (processing time) opens `late` episodes: stored and shown, not announced as new."""
    tick_ms: int = 1000
    """Clock tick: timers, deadman, silences, the outbox of operator actions."""
    linger_ms: int = 20
    batch_max: int = 2000
    max_unacked: int = 20_000
    http_host: str = "127.0.0.1"
    http_port: int = 9102
    retry_max_s: float = 30.0
    clock: str = "wall"
    """wall: processing time is the wall clock. event: it is the newest event time received (replays, scenario
    tests with `occ simulate --fast`): timers, deadman and lateness follow the data stream, never the wall."""


@dataclass(frozen=True, slots=True)
class WebConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    """`occ up` picks a free port instead when this one is taken."""
    allowed_origins: str = ""
    """Comma-separated extra origins allowed to open the websocket and write (the server's own is always)."""
    cookie_secure: bool = False
    """Mark the session cookie Secure (set true behind HTTPS)."""
    session_hours: float = 12.0
    """Idle lifetime of a login session; each use slides it forward."""
    kiosk_days: int = 365
    login_max_failures: int = 5
    """Failed logins per client address and per user name within login_window_s before logins are refused."""
    login_window_s: int = 300
    tile_url: str = ""
    """Map tile URL template ({z}/{x}/{y}); empty: draw the area outlines from config/ on a plain background."""
    tile_attribution: str = ""
    client_id: str = "occ-web"
    reading_interval_s: float = 1.0
    """Live feed: at most one reading update per device per this many seconds (newer values coalesce)."""
    flush_ms: int = 100
    """Live feed: readings are sent to clients in batches at this interval (alert changes go at once)."""
    heartbeat_s: float = 15.0
    client_max_pending: int = 2000
    """Status/alert changes queued for one slow client before it gets a fresh snapshot instead."""
    client_max_lag_s: float = 30.0
    """A client whose queued changes wait longer than this is closed (it cannot keep up)."""
    history: int = 20000
    """Changes kept for resume after a reconnect."""


@dataclass(frozen=True, slots=True)
class SiteConfig:
    name: str = "Hà Giang IOC"
    timezone: str = "Asia/Ho_Chi_Minh"
    hydro_day_start_hour: int = 7


@dataclass(frozen=True, slots=True)
class Config:
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    site: SiteConfig = field(default_factory=SiteConfig)
    web: WebConfig = field(default_factory=WebConfig)
    log_level: str = "INFO"
    var_dir: str = "var"
    config_dir: str = "config"

    @property
    def config_path(self) -> Path:
        return Path(self.config_dir)

    @property
    def var_path(self) -> Path:
        return Path(self.var_dir)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML/env/flag value to the field type; strings from env and flags are parsed."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("", "null", "none")):
            return None
        return _coerce(value, args[0], where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ValueError(f"{where}: expected a string, got {type(value).__name__}")
        return str(value)
    raise TypeError(f"unsupported config type {tp!r}")


def _section_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def apply_overrides(
    config: Config, values: Mapping[str, Any], *, source: str, lines: Lines | None = None
) -> Config:
    """Return a new Config with dotted keys (`ingest.batch_max`) set; unknown keys are errors."""
    sections: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    top_types = _section_types(Config)
    for dotted, raw in values.items():
        parts = dotted.split(".")
        line = lines.of(*parts) if lines else None
        try:
            if len(parts) == 1:
                if parts[0] not in top_types or dataclasses.is_dataclass(top_types[parts[0]]):
                    raise ValueError(f"unknown setting {dotted!r}")
                top[parts[0]] = _coerce(raw, top_types[parts[0]], dotted)
            elif len(parts) == 2 and parts[0] in top_types and dataclasses.is_dataclass(top_types[parts[0]]):
                section_types = _section_types(top_types[parts[0]])
                if parts[1] not in section_types:
                    known = ", ".join(sorted(section_types))
                    raise ValueError(f"unknown setting {dotted!r} (known in {parts[0]}: {known})")
                sections.setdefault(parts[0], {})[parts[1]] = _coerce(raw, section_types[parts[1]], dotted)
            else:
                raise ValueError(f"unknown setting {dotted!r}")
        except ValueError as exc:
            raise ConfigError(str(exc), path=source, line=line) from None
    replaced = {name: dataclasses.replace(getattr(config, name), **vals) for name, vals in sections.items()}
    return dataclasses.replace(config, **replaced, **top)


def _flatten(data: Mapping[str, Any], lines: Lines) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            for sub, subvalue in value.items():
                flat[f"{key}.{sub}"] = subvalue
        else:
            flat[str(key)] = value
    return flat


def env_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in environ.items():
        if name in ENV_SHORTCUTS:
            found[ENV_SHORTCUTS[name]] = value
        elif name.startswith("OCC_") and "__" in name:
            section, _, key = name[4:].partition("__")
            found[f"{section.lower()}.{key.lower()}"] = value
    return found


def load_config(
    files: Sequence[str | Path] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Build the Config from defaults, files, environment and flags (in that order of precedence).

    With `files=None`, `<config_dir>/occ.yaml` is read when it exists (config_dir from env or default).
    """
    environ = os.environ if environ is None else environ
    config = Config()
    env = env_overrides(environ)
    if "config_dir" in env:
        config = apply_overrides(config, {"config_dir": env["config_dir"]}, source="environment")
    if files is None:
        default = config.config_path / "occ.yaml"
        files = [default] if default.exists() else []
    for path in files:
        data, lines = load_yaml(path)
        if data is None:
            continue
        if not isinstance(data, Mapping):
            raise ConfigError("top level must be a mapping of sections", path=str(path), line=1)
        config = apply_overrides(config, _flatten(data, lines), source=str(path), lines=lines)
    if env:
        config = apply_overrides(config, env, source="environment")
    if flags:
        config = apply_overrides(config, flags, source="command line")
    return config


def setting_names() -> list[str]:
    """Every dotted setting name, for documentation and the compose test."""
    names: list[str] = []
    for name, tp in _section_types(Config).items():
        if dataclasses.is_dataclass(tp):
            names.extend(f"{name}.{sub}" for sub in _section_types(tp))  # type: ignore[arg-type]
        else:
            names.append(name)
    return names


def env_name(setting: str) -> str:
    for env, dotted in ENV_SHORTCUTS.items():
        if dotted == setting:
            return env
    section, _, key = setting.partition(".")
    return f"OCC_{section.upper()}__{key.upper()}" if key else f"OCC_{section.upper()}"
