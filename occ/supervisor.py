"""`occ up`: one machine, the whole stack — embedded PostgreSQL and broker when none is configured, then the
OCC services as child processes, all watched and restarted. Ctrl-C, SIGTERM or SIGHUP stops everything.

What this module promises (issue 11 items 1–2, issue 9 item 2, issue 12 item 5):

* **Nothing outlives it.** Every child — services and servers — is started with PR_SET_PDEATHSIG
  (occ.embedded.proc), so a `kill -9` of `occ up` takes the whole stack with it; the database runs as our
  foreground child (never `pg_ctl start`, which daemonizes). Servers live in sessions of their own, so a
  signal to our process group reaches the services first and the servers stop last, on our word. A server an
  earlier, killed run left on the same var/ is found and stopped before a new one starts.
* **Everything is watched.** A service or an embedded server that dies is restarted (same ports, same data)
  with capped backoff, logged once when it goes and once when it is back. A service that exits 0 was told to
  stop by someone and stays stopped.
* **"Up" is true.** The database and broker must answer and every service must report healthy before `occ up`
  prints the endpoints; otherwise `StartFailed` names the part and the reason.

Services are rows of a table: `SERVICES` holds one builder per kind of service, each turning the `Stack` (the
endpoints and options of this run) into `ServiceSpec`s; `SETUP` likewise lists the one-shot commands run before
them (migrations, the demo's devices and login). A new service adds its builder there.

A lock file under var/ makes a second `occ up` on the same var/ fail fast with the first one's pid.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from occ.backoff import Backoff
from occ.config import Config
from occ.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from occ.embedded.broker import WILDCARDS, mosquitto_path
from occ.embedded.proc import die_with_parent
from occ.errors import AlreadyRunning, StartFailed
from occ.redact import redact_url
from occ.secrets import private_dir

if TYPE_CHECKING:
    from occ.embedded.auth_sync import AuthSync

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 60.0
"""How long a service may take to report healthy before `occ up` gives up and says which one."""
STOP_TIMEOUT_S = 15.0
"""How long services get to drain on SIGTERM before they are killed."""
TICK_S = 0.2


# -- the table of services ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Stack:
    """What every service builder gets: where the database and broker are and how this `occ up` was asked
    to run. `env` is the environment every service starts with (OCC_DATABASE_URL, OCC_MQTT_URL, …)."""

    database_url: str
    mqtt_url: str
    """For devices and simulators (MQTT 3.1.1 and, with Mosquitto, 5)."""
    mqtt_services_url: str
    """For OCC's own services, which speak MQTT 5 (a listener of its own with rumqttd)."""
    env: Mapping[str, str]
    config: Config
    demo: bool = False
    workers: int = 2
    speed: float = 60.0
    run_id: str = ""
    var: Path = Path("var")
    service_urls: Mapping[str, str] = field(default_factory=dict)
    """Closed broker: the MQTT URL with each platform account's credentials (occ-ingest, occ-sim, …)."""


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One child `occ up` runs (`python -m occ.cli <args>`), restarts when it crashes and checks at start.

    `http_port`: the service's /healthz and /metrics; `occ up` waits for /healthz to answer 200 before it says
    "up". None for services without one (they only have to stay alive)."""

    name: str
    args: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    http_port: int | None = None
    http_host: str = "127.0.0.1"
    url: str | None = None
    """A page for people (the web console), printed with the endpoints."""
    shared_sessions: tuple[tuple[str, str], ...] = ()
    """(client id, `$share/...` filter) of the service's persistent MQTT sessions with shared subscriptions, which
    `occ up` re-creates right after restarting its embedded broker (see `_restore_shared_sessions`)."""

    @property
    def health_url(self) -> str | None:
        return f"http://{self.http_host}:{self.http_port}/healthz" if self.http_port else None

    @property
    def metrics_url(self) -> str | None:
        return f"http://{self.http_host}:{self.http_port}/metrics" if self.http_port else None


@dataclass(frozen=True, slots=True)
class SetupStep:
    """A one-shot `occ <args>` run before the services start; `occ up` fails, naming `what`, unless it exits 0.
    `note` is shown with the endpoints (and recorded in endpoints.json under `key`)."""

    what: str
    args: tuple[str, ...]
    key: str | None = None
    note: str | None = None


ServiceBuilder = Callable[[Stack], list[ServiceSpec]]
SetupBuilder = Callable[[Stack], list[SetupStep]]


def schema_setup(stack: Stack) -> list[SetupStep]:
    return [SetupStep("database migration", ("db", "migrate"))]


def demo_setup(stack: Stack) -> list[SetupStep]:
    """With --demo: the Hà Giang device catalog and a web console login."""
    if not stack.demo:
        return []
    steps = []
    devices = sorted((stack.config.config_path / "devices").glob("*.yaml"))
    if devices:
        # Each new device gets its MQTT credentials (issue 7): what a real device of the catalog would be given.
        credentials = stack.var / "secrets" / "device-credentials.txt"
        steps.append(SetupStep("device import", ("devices", "import", *map(str, devices), "--issue-credentials",
                                                 str(credentials)), key="device_credentials",
                               note=f"{credentials} (0600; `occ simulate run --mode device --credentials` uses it)"))
    password_file = stack.var / "demo-admin-password"
    steps.append(SetupStep("demo login", ("users", "demo-admin", str(password_file)), key="web_login",
                           note=f"admin / password in {password_file}"))
    return steps


SETUP: tuple[SetupBuilder, ...] = (schema_setup, demo_setup)
"""One-shot commands before the services, in order."""


def ingest_services(stack: Stack) -> list[ServiceSpec]:
    """`--workers` ingest workers on one shared subscription, each with its own client id and HTTP port."""
    ingest, mqtt = stack.config.ingest, stack.config.mqtt
    specs = []
    for i in range(1, stack.workers + 1):
        port = free_port()
        client_id = f"occ-ingest-{i}"
        shared = ((client_id, f"$share/{ingest.share_group}/{mqtt.topic_prefix}/+/+/+"),) if ingest.shared else ()
        specs.append(ServiceSpec(f"ingest-{i}", ("ingest",), {
            "OCC_INGEST__CLIENT_ID": client_id, "OCC_INGEST__HTTP_PORT": str(port)}, http_port=port,
            shared_sessions=shared))
    return specs


def alerts_services(stack: Stack) -> list[ServiceSpec]:
    """The alerts engine (one instance: its state is per rule and device).

    Under --demo it runs on the event clock: the simulator replays the last day at `speed`, so its readings are
    hours old by the wall clock. On the wall clock they would all be `late` (stored, never announced) and every
    `for`/`keep_firing_for` timer would last `speed` times longer than the flood it belongs to; on the event
    clock the engine's time is the stream's, and flood levels fire and resolve at demo speed."""
    port = free_port()
    env = {"OCC_ALERTS__HTTP_PORT": str(port)}
    if stack.demo:
        env["OCC_ALERTS__CLOCK"] = "event"
    return [ServiceSpec("alerts", ("alerts",), env, http_port=port)]


def web_services(stack: Stack) -> list[ServiceSpec]:
    """The REST API, live feed and wall page on web.port (a free port when that one is taken)."""
    host = stack.config.web.host
    port = _port_or_free(host, stack.config.web.port)
    local = "127.0.0.1" if host in WILDCARDS else host
    return [ServiceSpec("web", ("web", "--port", str(port)), http_port=port, http_host=local,
                        url=f"http://{local}:{port}/")]


def _port_or_free(host: str, port: int) -> int:
    """The configured port when it can be bound, else a free one (a second stack must not fail on 8080)."""
    import socket

    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return free_port()
    return port


DEMO_SCENARIO = "demo"
"""config/scenarios/demo.yaml: normal days over the whole catalog plus the demo incidents (a compressed flash
flood, the camera outage storm, the QL2 rush-hour jam) inside the replayed day."""


def demo_simulate_args(speed: float, config_dir: Path | str, scenario: str = DEMO_SCENARIO) -> tuple[str, ...]:
    """`occ simulate` arguments of the demo: one process drives every device (the scenarios' effects add up on
    the same devices, so no two publishers fight over one), the last day replayed at `speed`, then real time,
    forever. The same as `simulators.cli.demo_argv`."""
    return ("simulate", "run", "--scenario", scenario, "--speed", f"{speed:g}", "--start=-1d",
            "--duration", "forever", "--config-dir", str(config_dir), "--quiet")


def simulator_services(stack: Stack) -> list[ServiceSpec]:
    """With --demo: the Hà Giang fleet on the demo scenario, publishing as devices do."""
    if not stack.demo:
        return []
    # The pooled simulator speaks for the whole fleet: the occ-sim account when the broker is closed.
    url = _with_devices_listener(stack.service_urls["occ-sim"], stack.mqtt_url) if "occ-sim" in stack.service_urls \
        else stack.mqtt_url
    return [ServiceSpec("simulate", demo_simulate_args(stack.speed, stack.config.config_path), {"OCC_MQTT_URL": url})]


def _with_devices_listener(account_url: str, devices_url: str) -> str:
    """The devices' listener (`devices_url`) with the credentials of `account_url`."""
    account = urlsplit(account_url)
    return _with_credentials(devices_url, account.username or "", account.password or "")


SERVICES: tuple[ServiceBuilder, ...] = (ingest_services, alerts_services, web_services, simulator_services)
"""Every kind of service `occ up` runs, in start order. Add a builder here for a new service."""


SERVICE_ACCOUNTS: Mapping[str, str] = {"ingest": "occ-ingest", "alerts": "occ-alerts", "web": "occ-web",
                                       "simulate": "occ-sim"}
"""The broker account each kind of service (its first argument) connects with when the broker is closed."""

RUMQTTD_WARNING = (
    "!!! The embedded broker is rumqttd (Mosquitto is not installed): it checks NO passwords and enforces NO "
    "topic ACLs. Anyone who can reach it can publish as any device and under occ/v1/_sys/. Install Mosquitto "
    "(apt-get install mosquitto) for device credentials and ACLs. !!!")


def _certificate_hosts(bind: str) -> tuple[str, ...]:
    """Names and addresses devices may use for the TLS listener: the bound address, or with a wildcard bind the
    addresses this machine's name resolves to (localhost and the host name are always in the certificate)."""
    if not is_wildcard(bind):
        return (bind,)
    import socket

    try:
        return tuple(a for a in socket.gethostbyname_ex(socket.gethostname())[2] if not a.startswith("127."))
    except OSError:
        return ()


def _with_credentials(url: str, username: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{quote(username, safe='')}:{quote(password, safe='')}@{host}", parts.path,
                       parts.query, parts.fragment))


# -- restart decisions (pure) ---------------------------------------------------------------------------
_ASKED_TO_STOP = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STOPPED_ON_PURPOSE = frozenset({0, *(-s for s in _ASKED_TO_STOP), *(128 + s for s in _ASKED_TO_STOP)})
"""Exit statuses of a process that was told to stop: 0, or ended by (or exiting 128+n after) SIGTERM, SIGINT or
SIGHUP before it had installed its own handler. SIGKILL (the OOM killer) and any other status are crashes."""


class RestartPolicy:
    """What to do when a supervised process exits: a delay before starting it again, or None to leave it.

    A process that was told to stop (`STOPPED_ON_PURPOSE`: an operator's SIGTERM, or its own clean end) is left
    stopped unless `restart_clean_exit` (the servers: the stack cannot work without them). Crashes restart
    with capped exponential backoff, which starts over after a run longer than `healthy_after_s`."""

    def __init__(self, *, restart_clean_exit: bool = False, base_s: float = 0.5, cap_s: float = 30.0,
                 healthy_after_s: float = 60.0, rng: Callable[[], float] = random.random) -> None:
        self.restart_clean_exit = restart_clean_exit
        self.healthy_after_s = healthy_after_s
        self.backoff = Backoff(base_s, cap_s, jitter=0.2, rng=rng)

    def on_exit(self, code: int | None, ran_s: float) -> float | None:
        if code in STOPPED_ON_PURPOSE and not self.restart_clean_exit:
            return None
        if ran_s >= self.healthy_after_s:
            self.backoff.reset()
        return self.backoff.next()

    def on_failed_start(self) -> float:
        return self.backoff.next()


# -- supervised processes -------------------------------------------------------------------------------
@dataclass
class Child:
    """A running (or waiting, or stopped) service process."""

    spec: ServiceSpec
    env: dict[str, str]
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    next_start: float | None = None
    stopped: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    def start(self, now: float) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "occ.cli", *self.spec.args], env=self.env,
                                        stdin=subprocess.DEVNULL, preexec_fn=die_with_parent(signal.SIGTERM))
        self.started_at = now
        self.next_start = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class ServerSlot:
    """An embedded server (database or broker) and its restart state."""

    name: Literal["database", "broker"]
    server: EmbeddedPostgres | EmbeddedBroker
    policy: RestartPolicy = field(default_factory=lambda: RestartPolicy(restart_clean_exit=True, base_s=0.1,
                                                                        cap_s=10.0))
    started_at: float = 0.0
    down_since: float | None = None
    next_start: float | None = None
    failing: bool = False

    @property
    def port(self) -> int:
        return self.server.port


class _StopRequested(Exception):
    """A signal arrived while `occ up` was still starting."""


class Supervisor:
    def __init__(self, config: Config, *, demo: bool = False, workers: int = 2, broker: str = "auto",
                 speed: float = 60.0, bind: str = "127.0.0.1", mqtt_port: int | None = None,
                 db_port: int | None = None, health_timeout_s: float = HEALTH_TIMEOUT_S,
                 services: Sequence[ServiceBuilder] = SERVICES, setup: Sequence[SetupBuilder] = SETUP) -> None:
        self.config = config
        self.demo = demo
        self.workers = workers
        self.broker_kind = broker
        self.speed = speed
        self.bind = bind
        self.mqtt_port = mqtt_port
        self.db_port = db_port
        self.health_timeout_s = health_timeout_s
        self.builders = tuple(services)
        self.setup_builders = tuple(setup)
        self.notes: dict[str, str] = {}
        self.var = config.var_path.resolve()
        self.secrets = self.var / "secrets"
        """Generated passwords (database, service accounts), 0600 files in a 0700 folder (issue 7)."""
        self.postgres: EmbeddedPostgres | None = None
        self.broker: EmbeddedBroker | None = None
        self.servers: list[ServerSlot] = []
        self.children: list[Child] = []
        self.stack: Stack | None = None
        self._lock_file: IO[str] | None = None
        self._stop_requested = False
        self._hurry = False
        self.endpoints: dict[str, Any] = {}
        self.auth_sync: AuthSync | None = None
        self.service_passwords: dict[str, str] = {}
        self.service_urls: dict[str, str] = {}
        """MQTT URL with its own account, per service account (closed broker only)."""

    @property
    def holds_lock(self) -> bool:
        return self._lock_file is not None

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """From a signal handler: the first request stops cleanly; a second Ctrl-C (SIGINT) stops without waiting.

        Only SIGINT escalates: a SIGTERM often comes twice on its own (`kill -TERM -- -<group>` of `make run`
        reaches us directly and again through make), and must still let the services drain."""
        if self._stop_requested and signum == signal.SIGINT:
            self._hurry = True
        self._stop_requested = True

    def _check_stop(self) -> None:
        if self._stop_requested:
            raise _StopRequested

    # -- lock ---------------------------------------------------------------------------------------
    def acquire_lock(self) -> None:
        self.var.mkdir(parents=True, exist_ok=True)
        # var/ holds endpoints.json (URLs with passwords) and the data. As root the servers run as their own
        # users and must traverse var/ to reach their folders: others may traverse (x) but not list it.
        self.var.chmod(0o711 if os.geteuid() == 0 else 0o700)
        path = self.var / "occ-up.lock"
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            text = handle.read().strip()
            handle.close()
            raise AlreadyRunning(int(text) if text.isdigit() else -1, str(path)) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_file = handle
        private_dir(self.secrets)
        # Left by a run that was killed: it points at servers that are gone. It is written again once up.
        (self.var / "endpoints.json").unlink(missing_ok=True)

    # -- start --------------------------------------------------------------------------------------
    def start(self) -> dict[str, Any] | None:
        """Bring the stack up and check it; the endpoints, or None when a stop was requested meanwhile.
        Raises StartFailed naming the part that did not come up."""
        self.acquire_lock()
        try:
            return self._start()
        except _StopRequested:
            return None

    def _start(self) -> dict[str, Any]:
        database_url = self.config.database.url
        if not database_url:
            self.postgres = EmbeddedPostgres(self.var / "postgres", port=self.db_port,
                                             password_file=self.secrets / "postgres-password")
            try:
                base = self.postgres.start()
                database_url = base.rsplit("/", 1)[0] + "/occ"
                _ensure_database(base, "occ")
            except Exception as exc:
                raise StartFailed("database", f"the embedded PostgreSQL did not start: {exc}") from exc
            self.servers.append(ServerSlot("database", self.postgres, started_at=time.monotonic()))
        else:
            _check_database(database_url)
        self._check_stop()
        mqtt_url = self.config.mqtt.url
        services_mqtt = mqtt_url
        if not mqtt_url:
            self.broker = self._make_broker(database_url)
            try:
                mqtt_url = self.broker.start()
            except Exception as exc:
                raise StartFailed("broker", f"the embedded {self.broker.kind} broker did not start: {exc}") from exc
            services_mqtt = self.broker.services_url
            self.servers.append(ServerSlot("broker", self.broker, started_at=time.monotonic()))
            if self.auth_sync is not None:
                self.auth_sync.start()
        assert mqtt_url is not None and services_mqtt is not None
        self.service_urls = {name: _with_credentials(services_mqtt, name, password)
                             for name, password in self.service_passwords.items()}
        _check_broker(self.service_urls.get("occ-ingest", services_mqtt))
        self._check_stop()

        env = {**os.environ, "OCC_DATABASE_URL": database_url, "OCC_MQTT_URL": services_mqtt,
               "OCC_VAR_DIR": str(self.var), "OCC_CONFIG_DIR": str(self.config.config_path.resolve()),
               "PYTHONUNBUFFERED": "1"}
        self.stack = Stack(database_url=database_url, mqtt_url=mqtt_url, mqtt_services_url=services_mqtt, env=env,
                           config=self.config, demo=self.demo, workers=self.workers, speed=self.speed,
                           run_id=uuid.uuid4().hex[:6], var=self.var, service_urls=dict(self.service_urls))
        for setup in self.setup_builders:
            for step in setup(self.stack):
                self._run_once(step.what, list(step.args), env)
                if step.key and step.note:
                    self.notes[step.key] = step.note
        if self.auth_sync is not None:
            self.auth_sync.sync_now()  # what the setup steps issued (the demo's devices) is in the broker now
        for builder in self.builders:
            for spec in builder(self.stack):
                account = SERVICE_ACCOUNTS.get(spec.args[0])
                own = {"OCC_MQTT_URL": self.service_urls[account]} if account in self.service_urls else {}
                self.children.append(Child(spec, {**env, **own, **spec.env}))
        now = time.monotonic()
        for child in self.children:
            child.start(now)
        self._wait_healthy()
        if self.broker is not None:
            self.broker.save()  # the services' persistent sessions are on disk before anything can crash
        self._write_endpoints()
        return self.endpoints

    def _make_broker(self, database_url: str) -> EmbeddedBroker:
        """The embedded broker; closed (issue 7) unless mqtt.auth is off or only rumqttd is available: the
        schema is migrated first, the service accounts ensured and the broker's files rendered from the store
        before it listens, so nobody is ever let in anonymously."""
        mqtt = self.config.mqtt
        tls = None
        kind = self.broker_kind if self.broker_kind != "auto" else ("mosquitto" if mosquitto_path() else "iotcore")
        if mqtt.tls and kind == "mosquitto":
            from occ.embedded.tls import ensure_tls_files

            tls = ensure_tls_files(self.var / "tls", hosts=_certificate_hosts(self.bind))
        elif mqtt.tls:
            log.warning("no TLS listener: rumqttd (Mosquitto is not installed) is started without TLS")
        broker = EmbeddedBroker(self.var / "broker", kind=kind,  # type: ignore[arg-type]
                                port=self.mqtt_port, host=self.bind, auth=mqtt.auth, tls=tls,
                                tls_port=mqtt.tls_port or None, plain=mqtt.plain_listener or tls is None)
        if broker.kind != "mosquitto":
            if mqtt.auth:
                log.warning(RUMQTTD_WARNING)
            return broker
        if not mqtt.auth:
            log.warning("mqtt.auth is off: the embedded broker accepts anonymous clients and enforces no topic ACLs")
            return broker
        env = {**os.environ, "OCC_DATABASE_URL": database_url, "OCC_VAR_DIR": str(self.var)}
        self._run_once("database migration", ["db", "migrate"], env)
        from occ.embedded.auth_sync import AuthSync, ensure_service_accounts, service_passwords

        self.service_passwords = service_passwords(self.secrets)
        asyncio.run(ensure_service_accounts(database_url, self.service_passwords))
        self.auth_sync = AuthSync(database_url, lambda files: broker.set_auth(files.passwd, files.acl),
                                  prefix=mqtt.topic_prefix)
        self.auth_sync.sync_now()
        return broker

    def _run_once(self, what: str, args: list[str], env: dict[str, str]) -> None:
        """Run a setup step with its output in var/setup.log: its last line is shown when it succeeds (a device
        import lists every device), its last lines go into the StartFailed when it does not."""
        log_path = self.var / "setup.log"
        with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as out:
            start = out.seek(0, os.SEEK_END)
            process = subprocess.Popen([sys.executable, "-m", "occ.cli", *args], env=env, stdin=subprocess.DEVNULL,
                                       stdout=out, stderr=out, preexec_fn=die_with_parent(signal.SIGTERM))
        while process.poll() is None:
            if self._stop_requested:
                process.terminate()
                process.wait()
                raise _StopRequested
            time.sleep(0.05)
        with open(log_path, "rb") as out:
            out.seek(start)
            lines = [line for line in out.read().decode(errors="replace").splitlines() if line.strip()]
        if process.returncode != 0:
            tail = " | ".join(lines[-3:]) or "no output"
            raise StartFailed(what, f"`occ {' '.join(args[:2])}` failed with exit code {process.returncode}: {tail} "
                                    f"(all of it in {log_path})")
        if lines:
            print(f"{what}: {lines[-1]}", flush=True)

    def _wait_healthy(self) -> None:
        """Every service with a health endpoint answers 200; every service is still running."""
        deadline = time.monotonic() + self.health_timeout_s
        pending = list(self.children)
        last: dict[str, str] = {}
        while pending:
            self._check_stop()
            for child in list(pending):
                assert child.process is not None
                code = child.process.poll()
                if code is not None:
                    raise StartFailed(child.name, f"exited with code {code} while starting (its log is above)")
                url = child.spec.health_url
                if url is None:
                    pending.remove(child)
                    continue
                answer = _http_get(url)
                if answer is not None and answer[0] == 200:
                    pending.remove(child)
                elif answer is not None:
                    last[child.name] = answer[1].decode(errors="replace")[:300]
            if pending and time.monotonic() > deadline:
                child = pending[0]
                detail = last.get(child.name, "its health endpoint never answered")
                raise StartFailed(child.name, f"not healthy after {self.health_timeout_s:.0f} s: {detail}")
            if pending:
                time.sleep(0.1)

    # -- endpoints ----------------------------------------------------------------------------------
    def _write_endpoints(self) -> None:
        assert self.stack is not None
        stack = self.stack
        self.endpoints = {
            "database_url": stack.database_url, "mqtt_url": stack.mqtt_url,
            "mqtt_services_url": stack.mqtt_services_url,
            "broker": self.broker.kind if self.broker else "external", "pid": os.getpid(),
            "bind": self.bind if self.broker else None,
            "ingest_metrics": [c.spec.metrics_url for c in self.children
                               if c.spec.args[0] == "ingest" and c.spec.metrics_url],
            "services": {c.name: {"pid": c.process.pid if c.alive() and c.process else None,
                                  "health": c.spec.health_url, "metrics": c.spec.metrics_url, "url": c.spec.url}
                         for c in self.children},
            "servers": {s.name: {"pid": s.server.pid, "port": s.port} for s in self.servers},
            "mqtt_auth": ("closed" if self.broker is not None and self.broker.auth
                          else "open" if self.broker is not None else "external"),
            "mqtt_service_urls": dict(self.service_urls),
            "mqtt_tls_url": self.broker.tls_url if self.broker is not None else None,
            "mqtt_ca": str(self.broker.tls.ca) if self.broker is not None and self.broker.tls else None,
            **{f"{c.name}_url": c.spec.url for c in self.children if c.spec.url},
            **{f"{c.name}_metrics": c.spec.metrics_url for c in self.children
               if c.spec.metrics_url and c.spec.args[0] not in ("ingest", "web")},
            **self.notes,
        }
        # URLs may carry passwords: readable by this user only, and replaced atomically (readers never see
        # half a file).
        path = self.var / "endpoints.json"
        tmp = path.with_name(".endpoints.json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(self.endpoints, indent=2) + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    # -- run ----------------------------------------------------------------------------------------
    def watch(self) -> None:
        """Restart what dies (servers first, then services) until a stop is requested."""
        while not self._stop_requested:
            now = time.monotonic()
            changed = False
            for slot in self.servers:
                changed |= self._tend_server(slot, now)
            for child in self.children:
                changed |= self._tend_child(child, now)
            if changed and not self._stop_requested:
                self._write_endpoints()
            time.sleep(TICK_S)

    def _tend_server(self, slot: ServerSlot, now: float) -> bool:
        server = slot.server
        if server.running():
            return False
        if slot.next_start is None:
            slot.down_since = now
            delay = slot.policy.on_exit(server.returncode, now - slot.started_at)
            slot.next_start = now + (delay or 0.0)
            log.error("embedded %s exited with code %s; restarting it on port %d", slot.name, server.returncode,
                      slot.port)
            return False
        if now < slot.next_start or self._stop_requested:
            return False
        try:
            server.start()
        except Exception as exc:
            delay = slot.policy.on_failed_start()
            if not slot.failing:
                log.error("restarting the embedded %s failed (%s); retrying with backoff", slot.name, exc)
            slot.failing = True
            slot.next_start = time.monotonic() + delay
            return False
        if slot.name == "broker":
            self._restore_shared_sessions()
        down = time.monotonic() - (slot.down_since or now)
        log.warning("embedded %s is back on port %d after %.1f s", slot.name, slot.port, down)
        slot.started_at = time.monotonic()
        slot.down_since = slot.next_start = None
        slot.failing = False
        return True

    def _restore_shared_sessions(self) -> None:
        """Give the services' persistent sessions back their shared subscriptions, before devices reconnect.

        Mosquitto 2.0.11 restores sessions and plain subscriptions from its persistence file but not shared ones
        (`$share/...`), and rumqttd keeps nothing: until a worker has reconnected and subscribed again, the
        broker drops what devices publish (measured: 600 messages in a kill -9 test). So as soon as the broker
        listens again, each such session is re-created with its subscription (retained messages not sent) and
        left offline: messages queue for it until the worker is back. If a worker was quicker, this takes its
        session over once; it reconnects by itself and unacknowledged messages are redelivered."""
        if self.stack is None:
            return
        for child in self.children:
            for client_id, topic in child.spec.shared_sessions:
                try:
                    _recreate_session(self.stack.service_urls.get("occ-ingest", self.stack.mqtt_services_url),
                                      client_id, topic,
                                      self.config.mqtt.session_expiry_s)
                except OSError as exc:
                    log.warning("could not restore the MQTT session of %s after the broker restart: %s",
                                client_id, exc)

    def _tend_child(self, child: Child, now: float) -> bool:
        if child.stopped or child.alive():
            return False
        if child.process is None or child.next_start is not None:
            if child.next_start is not None and now >= child.next_start:
                child.start(now)
                return True
            return False
        code = child.process.returncode
        ran = now - child.started_at
        delay = child.policy.on_exit(code, ran)
        if delay is None:
            log.warning("%s stopped (exit code %s after %.0f s: it was told to stop); not restarting it",
                        child.name, code, ran)
            child.stopped = True
            return True
        log.error("%s exited with code %s after %.0f s; restarting in %.1f s", child.name, code, ran, delay)
        child.next_start = now + delay
        return False

    def stop(self) -> None:
        """Services first (SIGTERM, they drain), then the broker, then the database; idempotent."""
        self._stop_requested = True
        began = time.monotonic()
        for child in self.children:
            if child.alive():
                assert child.process is not None
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(c.alive() for c in self.children) and time.monotonic() < deadline and not self._hurry:
            time.sleep(0.05)
        for child in self.children:
            if child.alive():
                assert child.process is not None
                log.warning("%s did not stop in time; killing it", child.name)
                child.process.kill()
            if child.process is not None:
                child.process.wait()
        services = time.monotonic()
        if self.auth_sync is not None:
            self.auth_sync.stop()
        if self.broker:
            self.broker.stop()
        broker = time.monotonic()
        if self.postgres:
            self.postgres.stop(mode="immediate" if self._hurry else "fast")
        done = time.monotonic()
        if self.children or self.servers:
            log.info("stopped in %.1f s (services %.1f s, broker %.1f s, database %.1f s)", done - began,
                     services - began, broker - services, done - broker)
        (self.var / "endpoints.json").unlink(missing_ok=True)
        if self._lock_file:
            self._lock_file.close()
            self._lock_file = None


# -- checks ---------------------------------------------------------------------------------------------
def _http_get(url: str, timeout: float = 1.0) -> tuple[int, bytes] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
        exc.close()
        return int(exc.code), body
    except (OSError, TimeoutError):
        return None


def _ensure_database(admin_url: str, name: str) -> None:
    import asyncpg

    async def create() -> None:
        conn = await asyncpg.connect(admin_url, timeout=10)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())


def _check_database(url: str, timeout: float = 5.0) -> None:
    """The configured database answers a query (StartFailed with the reason otherwise)."""
    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(url, timeout=timeout)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        detail = str(exc).strip() or type(exc).__name__
        raise StartFailed("database", f"{redact_url(url)} does not answer: {detail}") from None


def _check_broker(url: str, timeout: float = 5.0) -> None:
    """The broker accepts an MQTT 5 CONNECT from us (StartFailed with the reason otherwise)."""
    import paho.mqtt.client as paho

    from occ.bus import BrokerAddress

    address = BrokerAddress.parse(url)
    result: dict[str, Any] = {}
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"occ-up-check-{uuid.uuid4().hex[:8]}",
                         protocol=paho.MQTTv5)
    if address.username:
        client.username_pw_set(address.username, address.password)
    if address.tls:
        client.tls_set_context(address.ssl_context())
    client.on_connect = lambda c, u, f, reason, p: result.setdefault("reason", reason)
    client.connect_timeout = timeout
    try:
        client.connect(address.host, address.port, keepalive=10)
        deadline = time.monotonic() + timeout
        while "reason" not in result and time.monotonic() < deadline:
            client.loop(timeout=0.1)
    except (OSError, ValueError) as exc:
        raise StartFailed("broker", f"{redact_url(url)} does not answer: {exc}") from None
    finally:
        client.disconnect()
        sock = client.socket()
        if sock is not None:
            sock.close()
    reason = result.get("reason")
    if reason is None:
        raise StartFailed("broker", f"{redact_url(url)} accepted TCP but sent no MQTT CONNACK within {timeout:.0f} s")
    if reason.is_failure:
        raise StartFailed("broker", f"{redact_url(url)} refused the connection: {reason}")


def _recreate_session(url: str, client_id: str, topic: str, expiry_s: int, timeout: float = 2.0) -> None:
    """Connect as `client_id` (persistent session), subscribe to `topic` at QoS 1 without retained messages,
    disconnect: the broker now queues for that session until its owner reconnects."""
    import paho.mqtt.client as paho
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.subscribeoptions import SubscribeOptions

    from occ.bus import BrokerAddress

    address = BrokerAddress.parse(url)
    done: dict[str, Any] = {}
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    if address.username:
        client.username_pw_set(address.username, address.password)
    if address.tls:
        client.tls_set_context(address.ssl_context())
    client.on_connect = lambda c, u, f, reason, p: done.setdefault("connack", reason)
    client.on_subscribe = lambda c, u, mid, reasons, p: done.setdefault("suback", reasons)
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = expiry_s
    try:
        client.connect(address.host, address.port, keepalive=10, clean_start=False, properties=properties)
        deadline = time.monotonic() + timeout
        while "connack" not in done and time.monotonic() < deadline:
            client.loop(timeout=0.05)
        if "connack" in done and not done["connack"].is_failure:
            client.subscribe([(topic, SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND))])
            while "suback" not in done and time.monotonic() < deadline:
                client.loop(timeout=0.05)
            client.disconnect()
            client.loop(timeout=0.05)
    finally:
        sock = client.socket()
        if sock is not None:
            sock.close()


def is_wildcard(host: str) -> bool:
    return host in WILDCARDS


def read_endpoints(var: Path) -> dict[str, Any] | None:
    """The endpoints a running `occ up` wrote, so other commands find its database and broker; None when no
    `occ up` is running there (a file left by a killed run names servers that are gone)."""
    try:
        endpoints = dict(json.loads((var / "endpoints.json").read_text()))
    except (OSError, ValueError):
        return None
    pid = endpoints.get("pid")
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, TypeError):
        return None
    return endpoints if b"up" in command else None
