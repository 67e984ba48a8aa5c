"""`occ up`: one machine, the whole stack — embedded PostgreSQL and broker when none is configured, then the
OCC services as child processes. Ctrl-C or SIGTERM stops everything; nothing is left behind.

A lock file under var/ makes a second `occ up` on the same var/ fail fast with the first one's pid.
Children get PR_SET_PDEATHSIG so they also die if the supervisor itself is killed.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from occ.config import Config
from occ.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from occ.errors import AlreadyRunning, ServiceError

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
RESTART_BACKOFF_MAX_S = 30.0


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = 0.0

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, env=self.env, preexec_fn=_die_with_parent)
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Supervisor:
    def __init__(self, config: Config, *, demo: bool = False, workers: int = 2, broker: str = "auto",
                 speed: float = 60.0) -> None:
        self.config = config
        self.demo = demo
        self.workers = workers
        self.broker_kind = broker
        self.speed = speed
        self.var = config.var_path.resolve()
        self.postgres: EmbeddedPostgres | None = None
        self.broker: EmbeddedBroker | None = None
        self.children: list[Child] = []
        self._lock_file: IO[str] | None = None
        self._stopping = False
        self.endpoints: dict[str, Any] = {}

    @property
    def holds_lock(self) -> bool:
        return self._lock_file is not None

    # -- lock ---------------------------------------------------------------------------------------
    def acquire_lock(self) -> None:
        self.var.mkdir(parents=True, exist_ok=True)
        self.var.chmod(0o755)
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

    # -- start --------------------------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        self.acquire_lock()
        database_url = self.config.database.url
        if not database_url:
            self.postgres = EmbeddedPostgres(self.var / "postgres")
            base = self.postgres.start()
            database_url = base.rsplit("/", 1)[0] + "/occ"
            _ensure_database(base, "occ")
        mqtt_url = self.config.mqtt.url
        services_mqtt = mqtt_url
        if not mqtt_url:
            self.broker = EmbeddedBroker(self.var / "broker", kind=self.broker_kind)  # type: ignore[arg-type]
            mqtt_url = self.broker.start()
            services_mqtt = self.broker.services_url
        assert services_mqtt is not None
        self.endpoints = {"database_url": database_url, "mqtt_url": mqtt_url, "mqtt_services_url": services_mqtt,
                          "broker": self.broker.kind if self.broker else "external", "pid": os.getpid()}
        env = {**os.environ, "OCC_DATABASE_URL": database_url, "OCC_MQTT_URL": services_mqtt,
               "OCC_VAR_DIR": str(self.var), "OCC_CONFIG_DIR": str(self.config.config_path.resolve()),
               "PYTHONUNBUFFERED": "1"}
        occ = [sys.executable, "-m", "occ.cli"]
        self._run_once(occ + ["db", "migrate"], env)
        if self.demo:
            devices = sorted((self.config.config_path / "devices").glob("*.yaml"))
            if devices:
                self._run_once(occ + ["devices", "import", *map(str, devices)], env)
        ingest_ports = []
        for i in range(1, self.workers + 1):
            port = free_port()
            ingest_ports.append(port)
            child_env = {**env, "OCC_INGEST__CLIENT_ID": f"occ-ingest-{i}", "OCC_INGEST__HTTP_PORT": str(port)}
            self.children.append(Child(f"ingest-{i}", occ + ["ingest"], child_env))
        self.endpoints["ingest_metrics"] = [f"http://127.0.0.1:{p}/metrics" for p in ingest_ports]
        alerts_port = free_port()
        self.children.append(Child("alerts", occ + ["alerts"], {**env, "OCC_ALERTS__HTTP_PORT": str(alerts_port)}))
        self.endpoints["alerts_metrics"] = f"http://127.0.0.1:{alerts_port}/metrics"
        web_port = _port_or_free(self.config.web.host, self.config.web.port)
        self.children.append(Child("web", occ + ["web", "--port", str(web_port)], env))
        self.endpoints["web_url"] = f"http://{self.config.web.host}:{web_port}/"
        if self.demo:
            password_file = self.var / "demo-admin-password"
            self._run_once(occ + ["users", "demo-admin", str(password_file)], env)
            self.endpoints["web_login"] = f"admin / password in {password_file}"
        if self.demo:
            sim_env = {**env, "OCC_MQTT_URL": mqtt_url}
            self.children.append(Child("simulate", occ + ["simulate", "--scenario", "normal-day",
                                                          "--speed", str(self.speed)], sim_env))
        for child in self.children:
            child.start()
        (self.var / "endpoints.json").write_text(json.dumps(self.endpoints, indent=2) + "\n")
        return self.endpoints

    def _run_once(self, argv: list[str], env: dict[str, str]) -> None:
        result = subprocess.run(argv, env=env, preexec_fn=_die_with_parent)
        if result.returncode != 0:
            raise ServiceError(f"{' '.join(argv[3:])} failed with exit code {result.returncode}")

    # -- run ----------------------------------------------------------------------------------------
    def watch(self) -> None:
        """Restart children that exit unexpectedly (capped backoff) until stop() is requested."""
        while not self._stopping:
            now = time.monotonic()
            for child in self.children:
                if child.process is None or child.alive():
                    if child.process is None and now >= child.next_start:
                        child.start()
                    continue
                code = child.process.returncode
                ran = now - child.started_at
                child.restarts = 0 if ran > 60 else child.restarts + 1
                delay = min(RESTART_BACKOFF_MAX_S, 0.5 * 2 ** child.restarts)
                log.error("%s exited with code %s after %.0f s; restarting in %.1f s", child.name, code, ran, delay)
                child.process = None
                child.next_start = now + delay
            time.sleep(0.2)

    def stop(self) -> None:
        self._stopping = True
        for child in self.children:
            if child.alive():
                assert child.process is not None
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", child.name)
                child.process.kill()
                child.process.wait()
        if self.broker:
            self.broker.stop()
        if self.postgres:
            self.postgres.stop()
        (self.var / "endpoints.json").unlink(missing_ok=True)
        if self._lock_file:
            self._lock_file.close()
            self._lock_file = None


def _port_or_free(host: str, port: int) -> int:
    """The configured port when it can be bound, else a free one (a second stack must not fail on 8080)."""
    import socket

    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return free_port()
    return port


def _ensure_database(admin_url: str, name: str) -> None:
    import asyncio

    import asyncpg

    async def create() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())


def read_endpoints(var: Path) -> dict[str, Any] | None:
    """The endpoints a running `occ up` wrote, so other commands find its database and broker."""
    try:
        return dict(json.loads((var / "endpoints.json").read_text()))
    except (OSError, ValueError):
        return None
