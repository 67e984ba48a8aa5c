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
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from occ.errors import ConfigError
from occ.yamlfile import Lines, load_yaml

ENV_SHORTCUTS: dict[str, str] = {
    "OCC_DATABASE_URL": "database.url",
    "OCC_MQTT_URL": "mqtt.url",
    "OCC_LOG_LEVEL": "log_level",
    "OCC_VAR_DIR": "var_dir",
    "OCC_CONFIG_DIR": "config_dir",
}


# --- constraints, checked when a value is loaded (file, environment or flag), so a bad value is reported with
# its file and line instead of failing later, deep inside a service, as a traceback (issue 9) ------------------


def between(low: float | None = None, high: float | None = None) -> dict[str, Any]:
    """Field metadata: the value must lie in [low, high] (either bound may be open)."""
    return {"range": (low, high)}


def one_of(*choices: str) -> dict[str, Any]:
    """Field metadata: the value must be one of `choices` (compared case-insensitively, stored as listed)."""
    return {"choices": choices}


def checked(check: typing.Callable[[Any], str | None]) -> dict[str, Any]:
    """Field metadata: `check(value)` returns None when the value is fine, else what is wrong with it."""
    return {"check": check}


def _time_zone(value: str) -> str | None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {value!r} (an IANA name such as Asia/Ho_Chi_Minh)"
    return None


def _url_scheme(*schemes: str) -> typing.Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value is None:
            return None
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a port outside 0-65535 or not a number
        except ValueError as exc:
            return f"invalid URL {_redact(value)!r}: {exc}"
        if parts.scheme not in schemes:
            return f"URL scheme must be {' or '.join(schemes)}, got {parts.scheme or 'none'!r} in {_redact(value)!r}"
        return None

    return check


def _redact(url: str) -> str:
    """A URL without its password, for error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _topic_part(value: str) -> str | None:
    if not value or any(c in value for c in "+#") or value.startswith("/") or value.endswith("/"):
        return f"{value!r} is not a topic prefix (no +, #, or leading/trailing /)"
    return None


def _name(value: str) -> str | None:
    if not value or any(c in value for c in "/+#") or len(value) > 128:
        return f"{value!r} must be 1-128 characters without /, + or #"
    return None


def _not_empty(value: str) -> str | None:
    return "must not be empty" if not value else None


PORT = between(0, 65535)
"""0 lets the system pick a free port."""


def _redacted_repr(section: Any) -> str:
    """The dataclass repr with passwords in URLs masked (issue 11 item 9: configs end up in logs)."""
    from occ.redact import redact_url

    parts = []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        parts.append(f"{f.name}={redact_url(value)!r}" if f.name == "url" and value else f"{f.name}={value!r}")
    return f"{type(section).__name__}({', '.join(parts)})"


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str | None = field(default=None, metadata=checked(_url_scheme("postgresql", "postgres")))
    """postgresql://user:pass@host:port/db. Unset: `occ up` starts an embedded PostgreSQL under var/."""
    pool_size: int = field(default=4, metadata=between(1, 1000))
    timescaledb: str = field(default="auto", metadata=one_of("auto", "on", "off"))
    """auto (use the extension when it can be created), on (require it) or off (plain PostgreSQL path)."""
    retention_days: int = field(default=730, metadata=between(1, None))
    compress_after_days: int = field(default=7, metadata=between(1, None))
    partition_days: int = field(default=7, metadata=between(1, 366))
    partitions_ahead: int = field(default=4, metadata=between(1, 100))

    def __repr__(self) -> str:
        return _redacted_repr(self)


@dataclass(frozen=True, slots=True)
class MqttConfig:
    url: str | None = field(default=None, metadata=checked(_url_scheme("mqtt", "mqtts", "tcp", "ssl")))
    """mqtt://user:pass@host:port. Unset: `occ up` starts an embedded broker."""
    keepalive_s: int = field(default=30, metadata=between(1, 65535))
    session_expiry_s: int = field(default=7 * 24 * 3600, metadata=between(0, 2**32 - 1))
    """How long the broker keeps a persistent session (and queues for it) while the client is away."""
    topic_prefix: str = field(default="occ/v1", metadata=checked(_topic_part))
    auth: bool = True
    """Embedded Mosquitto (`occ up`): no anonymous access; accounts and topic ACLs from the store (issue 7)."""
    tls: bool = True
    """Embedded Mosquitto: a TLS listener too, with a CA and server certificate generated into var/tls."""
    tls_port: int = field(default=0, metadata=PORT)
    """Port of that TLS listener (0: a free one)."""
    plain_listener: bool = True
    """Embedded Mosquitto: keep the plain (unencrypted) listener; false leaves TLS only."""

    def __repr__(self) -> str:
        return _redacted_repr(self)


@dataclass(frozen=True, slots=True)
class IngestConfig:
    client_id: str = field(default="occ-ingest", metadata=checked(_name))
    share_group: str = field(default="occ-ingest", metadata=checked(_name))
    """MQTT 5 shared-subscription group: N ingest workers with the same group split the stream."""
    shared: bool = True
    batch_max: int = field(default=5000, metadata=between(1, 1_000_000))
    linger_ms: int = field(default=10, metadata=between(0, 60_000))
    read_coalesce_ms: float = field(default=2.0, metadata=between(0, 1000))
    """Native transport: after a socket read under 32 KiB (live traffic, not a backlog), wait this long before
    reading again, so one read carries a few milliseconds of messages instead of one or two."""
    flush_when_idle: bool = True
    """Write what is held at once when no batch write is in progress (group commit); `linger_ms` then applies
    only while writes are busy. Off: every batch waits out the linger (fewer, larger transactions: ~10 % less
    CPU at moderate rates, about twice the receive→commit time)."""
    writers: int = field(default=2, metadata=between(1, 64))
    """Concurrent batch writes per worker (acks stay in arrival order); 2 overlaps one COPY with a commit."""
    max_unacked: int = field(default=50_000, metadata=between(1, None))
    """Messages received but not yet committed and acknowledged; at the bound ingest stops reading."""
    max_unacked_mb: int = field(default=64, metadata=between(1, None))
    """The same bound in payload megabytes (MiB), per worker: whichever bound is reached first stops reading."""
    max_payload_bytes: int = field(default=1_048_576, metadata=between(1, 268_435_455))
    max_future_s: int = field(default=300, metadata=between(0, None))
    max_past_days: int = field(default=400, metadata=between(1, None))
    auto_register: bool = False
    """Store readings of unknown devices and register them as unprovisioned instead of dead-lettering."""
    http_host: str = "127.0.0.1"
    http_port: int = field(default=9101, metadata=PORT)
    retry_max_s: float = field(default=30.0, metadata=between(0.1, 3600))
    transport: str = field(default="native", metadata=one_of("native", "paho"))
    """MQTT receive path: "native" (occ.mqtt, the default) or "paho" (occ.bus, the fallback)."""


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    client_id: str = field(default="occ-alerts", metadata=checked(_name))
    """Its own persistent MQTT session (never the ingest share group): every message reaches the engine."""
    rules_dir: str = ""
    """Rule files (*.yaml); empty means <config_dir>/rules."""
    late_after_s: float = field(default=900.0, metadata=between(0, None))
    """Data older than this (processing time) opens `late` episodes: stored and shown, not announced as new."""
    tick_ms: int = field(default=1000, metadata=between(1, 60_000))
    """Clock tick: timers, deadman, silences, the outbox of operator actions."""
    linger_ms: int = field(default=20, metadata=between(0, 60_000))
    batch_max: int = field(default=2000, metadata=between(1, 1_000_000))
    max_unacked: int = field(default=20_000, metadata=between(1, None))
    http_host: str = "127.0.0.1"
    http_port: int = field(default=9102, metadata=PORT)
    retry_max_s: float = field(default=30.0, metadata=between(0.1, 3600))
    clock: str = field(default="wall", metadata=one_of("wall", "event"))
    """wall: processing time is the wall clock. event: it is the newest event time received (replays, scenario
    tests with `occ simulate --fast`): timers, deadman and lateness follow the data stream, never the wall."""
    checkpoint_s: float = field(default=30.0, metadata=between(0.1, 86_400))
    """Engine state is written this often; between checkpoints each step commits only its inputs (a journal),
    which a restart replays: at most this much."""


@dataclass(frozen=True, slots=True)
class WebConfig:
    host: str = "127.0.0.1"
    port: int = field(default=8080, metadata=PORT)
    """`occ up` picks a free port instead when this one is taken."""
    allowed_origins: str = ""
    """Comma-separated extra origins allowed to open the websocket and write (the server's own is always)."""
    cookie_secure: bool = False
    """Mark the session cookie Secure (set true behind HTTPS)."""
    session_hours: float = field(default=12.0, metadata=between(0.01, None))
    """Idle lifetime of a login session; each use slides it forward."""
    kiosk_days: int = field(default=365, metadata=between(1, None))
    login_max_failures: int = field(default=5, metadata=between(1, None))
    """Failed logins per client address and per user name within login_window_s before logins are refused."""
    login_window_s: int = field(default=300, metadata=between(1, None))
    tile_url: str = ""
    """Map tile URL template ({z}/{x}/{y}); empty: draw the area outlines from config/ on a plain background."""
    tile_attribution: str = ""
    client_id: str = field(default="occ-web", metadata=checked(_name))
    reading_interval_s: float = field(default=1.0, metadata=between(0, 3600))
    """Live feed: at most one reading update per device per this many seconds (newer values coalesce)."""
    flush_ms: int = field(default=100, metadata=between(0, 60_000))
    """Live feed: readings are sent to clients in batches at this interval (alert changes go at once)."""
    urgent_ms: int = field(default=20, metadata=between(0, 10_000))
    """Live feed: alert and status changes go out at once, but at most one fan-out per this many ms (a storm of
    changes is coalesced into a few frames per client instead of one frame per change)."""
    heartbeat_s: float = field(default=15.0, metadata=between(0.1, 3600))
    client_max_pending: int = field(default=2000, metadata=between(1, None))
    """Status/alert changes queued for one slow client before it gets a fresh snapshot instead."""
    client_max_lag_s: float = field(default=30.0, metadata=between(0.1, None))
    """A client whose queued changes wait longer than this is closed (it cannot keep up)."""
    history: int = field(default=20000, metadata=between(0, None))
    """Changes kept for resume after a reconnect."""


@dataclass(frozen=True, slots=True)
class SiteConfig:
    name: str = "Hà Giang IOC"
    timezone: str = field(default="Asia/Ho_Chi_Minh", metadata=checked(_time_zone))
    hydro_day_start_hour: int = field(default=7, metadata=between(0, 23))


@dataclass(frozen=True, slots=True)
class Config:
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    site: SiteConfig = field(default_factory=SiteConfig)
    web: WebConfig = field(default_factory=WebConfig)
    log_level: str = field(default="INFO", metadata=one_of("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))
    var_dir: str = field(default="var", metadata=checked(_not_empty))
    config_dir: str = field(default="config", metadata=checked(_not_empty))

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
        if isinstance(value, bool):
            # YAML 1.1 reads on/off/yes/no as booleans; the string settings that take such words are switches.
            return "on" if value else "off"
        if isinstance(value, (dict, list)):
            raise ValueError(f"{where}: expected a string, got {type(value).__name__}")
        return str(value)
    raise TypeError(f"unsupported config type {tp!r}")


def _section_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _metadata(cls: type, name: str) -> Mapping[str, Any]:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata
    return {}


def _validate(value: Any, meta: Mapping[str, Any], where: str) -> Any:
    """Check a coerced value against its field's constraints; return it (choices in their listed spelling)."""
    if value is None:
        return value
    if "range" in meta:
        low, high = meta["range"]
        if (low is not None and value < low) or (high is not None and value > high):
            if high is None:
                bounds = f"at least {low}"
            elif low is None:
                bounds = f"at most {high}"
            else:
                bounds = f"between {low} and {high}"
            raise ValueError(f"{where}: must be {bounds}, got {value!r}")
    if "choices" in meta:
        choices: tuple[str, ...] = meta["choices"]
        for choice in choices:
            if str(value).lower() == choice.lower():
                return choice
        raise ValueError(f"{where}: must be one of {', '.join(choices)}; got {value!r}")
    if "check" in meta:
        problem = meta["check"](value)
        if problem:
            raise ValueError(f"{where}: {problem}")
    return value


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
                value = _coerce(raw, top_types[parts[0]], dotted)
                top[parts[0]] = _validate(value, _metadata(Config, parts[0]), dotted)
            elif len(parts) == 2 and parts[0] in top_types and dataclasses.is_dataclass(top_types[parts[0]]):
                section_types = _section_types(top_types[parts[0]])
                if parts[1] not in section_types:
                    known = ", ".join(sorted(section_types))
                    raise ValueError(f"unknown setting {dotted!r} (known in {parts[0]}: {known})")
                value = _coerce(raw, section_types[parts[1]], dotted)
                value = _validate(value, _metadata(top_types[parts[0]], parts[1]), dotted)
                sections.setdefault(parts[0], {})[parts[1]] = value
            else:
                raise ValueError(f"unknown setting {dotted!r}")
        except ValueError as exc:
            where = f"environment variable {env_name(dotted)}" if source == "environment" else source
            raise ConfigError(str(exc), path=where, line=line) from None
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


SOURCE_CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
"""The `config/` folder of the source tree this package runs from (absent in an installed wheel)."""


def default_config_dir(environ: Mapping[str, str] | None = None) -> str:
    """Where `config/` is when nothing says otherwise, the same for every command (issue 9: `occ simulate
    scenarios` run outside the repository found nothing and said nothing): `$OCC_CONFIG_DIR`, else `./config`
    when it exists, else the source tree's `config/`, else `config` (and commands that need it say it is
    missing)."""
    environ = os.environ if environ is None else environ
    if environ.get("OCC_CONFIG_DIR"):
        return environ["OCC_CONFIG_DIR"]
    if Path("config").is_dir() or not SOURCE_CONFIG_DIR.is_dir():
        return "config"
    return str(SOURCE_CONFIG_DIR)


def require_config_dir(path: str | Path, *, needs: str) -> Path:
    """`path/needs` (e.g. `scenarios`), or a ConfigError saying where it was looked for and how to point at it."""
    folder = Path(path) / needs
    if not folder.exists():
        raise ConfigError(
            f"{needs} not found in {Path(path).resolve()}: run from the OCC folder, or set OCC_CONFIG_DIR "
            "(or --config-dir) to the folder holding occ.yaml, metrics.yaml, devices/ and scenarios/",
            path=str(folder),
        )
    return folder


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
    elif default_config_dir(environ) != config.config_dir:
        config = dataclasses.replace(config, config_dir=default_config_dir(environ))
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
