"""Keeps the embedded Mosquitto's password and ACL files equal to the store (issue 7 item 2).

`AuthSync` reads the accounts and the device registry, renders both files (occ.broker_auth) and hands them to
the broker (`EmbeddedBroker.set_auth`: write, then SIGHUP). It does so once at start, then polls a cheap version
stamp of both tables every `interval_s` on a thread of its own, so an `occ devices credentials issue|rotate|
revoke` or a device import made by any process reaches the running broker within about a second, and a revoked
client is disconnected by that reload (well within the 5 s the issue asks for). A database outage is logged
once when it starts and once when it ends; the broker keeps the last files meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from occ.broker_auth import SERVICES, AccountRow, AuthFiles, DeviceRow, hash_password, render, verify_password
from occ.embedded.broker import write_auth_files
from occ.embedded.proc import find_processes
from occ.secrets import read_or_create_secret

log = logging.getLogger(__name__)


async def load_auth(store: Any, prefix: str) -> AuthFiles:
    """Render the broker's files from the store (`occ.store.Store`)."""
    accounts = [AccountRow(a.username, a.role, a.password_hash)
                for a in await store.credentials.accounts(active_only=True) if a.password_hash]
    devices = [DeviceRow(d.id, d.kind, _gateway(d.attributes)) for d in await store.list_devices()]
    return render(accounts, devices, prefix=prefix)


def _gateway(attributes: dict[str, Any]) -> str | None:
    value = attributes.get("gateway") if isinstance(attributes, dict) else None
    return value if isinstance(value, str) else None


class AuthSync:
    """Render on start, then re-render whenever the store's accounts or devices change."""

    def __init__(self, database_url: str, apply: Callable[[AuthFiles], object], *, prefix: str = "occ/v1",
                 interval_s: float = 1.0) -> None:
        self.database_url = database_url
        self.apply = apply
        self.prefix = prefix
        self.interval_s = interval_s
        self.renders = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._version: object = None

    async def _store(self) -> Any:
        from occ.store import Store

        return await Store.connect(self.database_url, migrate=False, pool_size=1)

    async def _sync(self, store: Any, *, force: bool = False) -> bool:
        version = await store.credentials.version()
        if version == self._version and not force:
            return False
        files = await load_auth(store, self.prefix)
        self.apply(files)
        self._version = version
        self.renders += 1
        log.info("broker accounts: %d active (files rendered from the store)", files.accounts)
        return True

    def sync_now(self) -> None:
        """Render and apply at once (a fresh connection; for start-up and right after setup steps)."""

        async def once() -> None:
            store = await self._store()
            try:
                await self._sync(store, force=True)
            finally:
                await store.close()

        asyncio.run(once())

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._watch()), name="occ-auth-sync", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    async def _watch(self) -> None:
        store = None
        failing = False
        while not self._stop.is_set():
            try:
                if store is None:
                    store = await self._store()
                await self._sync(store)
                if failing:
                    log.warning("broker account sync: the database answers again")
                    failing = False
            except Exception as exc:  # keep the last files; try again next round
                if not failing:
                    log.error("broker account sync: cannot read accounts (%s); the broker keeps the last ones", exc)
                    failing = True
                if store is not None:
                    try:
                        await store.close()
                    except Exception:
                        pass
                    store = None
            await asyncio.to_thread(self._stop.wait, self.interval_s)
        if store is not None:
            await store.close()


def service_passwords(secrets_dir: Path) -> dict[str, str]:
    """`occ up`'s service passwords: one generated secret per account in `secrets_dir/mqtt-<name>` (0600)."""
    return {name: read_or_create_secret(secrets_dir / f"mqtt-{name}") for name in SERVICES}


async def ensure_service_accounts(database_url: str, passwords: Mapping[str, str]) -> None:
    """The platform services' accounts (occ.broker_auth.SERVICES) in the store with these passwords; an account
    whose stored hash does not verify (a new var/, a rotated secret) is re-issued."""
    from occ.store import Store

    store = await Store.connect(database_url, migrate=False, pool_size=1)
    try:
        current = {a.username: a.password_hash or "" for a in await store.credentials.accounts(role="service")}
        stale = [name for name, password in passwords.items()
                 if not verify_password(password, current.get(name, ""))]
        if stale:
            await store.credentials.set_passwords([(n, "service", hash_password(passwords[n])) for n in stale])
    finally:
        await store.close()


def mosquitto_processes() -> list[int]:
    """Mosquitto processes this one can see (in compose: the broker's, through a shared pid namespace)."""
    return find_processes(lambda argv: Path(argv[0]).name == "mosquitto")


def _owner(pid: int) -> tuple[int, int] | None:
    """(uid, gid) a process runs as (so the files we write are readable by the broker after it dropped root)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    ids = {line.split(":")[0]: int(line.split()[1]) for line in status if line.startswith(("Uid:", "Gid:"))}
    return (ids["Uid"], ids["Gid"]) if len(ids) == 2 else None


def serve_broker_auth(database_url: str, out_dir: Path, service_password: str, *, watch: bool,
                      prefix: str = "occ/v1", interval_s: float = 1.0,
                      stop: threading.Event | None = None) -> int:
    """`occ broker-auth`: ensure the service accounts (all with `service_password`), render the files into
    `out_dir` for a Mosquitto this process does not own (compose, a host's systemd Mosquitto) and SIGHUP every
    Mosquitto it can see when they change; with `watch`, keep doing so until `stop` is set."""

    asyncio.run(ensure_service_accounts(database_url, {name: service_password for name in SERVICES}))

    def apply(files: AuthFiles) -> None:
        brokers = mosquitto_processes()
        owner = _owner(brokers[0]) if brokers else None
        if write_auth_files(out_dir, files.passwd, files.acl, owner=owner):
            for pid in brokers:
                os.kill(pid, signal.SIGHUP)
            log.info("broker files written to %s; %s", out_dir,
                     f"Mosquitto (pid {', '.join(map(str, brokers))}) reloads them" if brokers
                     else "no Mosquitto process is visible to signal (it reads them at its next start or SIGHUP)")

    sync = AuthSync(database_url, apply, prefix=prefix, interval_s=interval_s)
    sync.sync_now()
    if not watch:
        return 0
    stop = stop or threading.Event()
    sync.start()
    try:
        stop.wait()
    finally:
        sync.stop()
    return 0
