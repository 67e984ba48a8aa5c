"""An MQTT broker for a machine that has none: Mosquitto when it is on PATH, else rumqttd from `iotcore`.

Both are configured so that a burst is queued, not dropped (docs/architecture.md §3: Mosquitto's default
`max_queued_messages 1000` silently drops QoS 1 messages for a subscriber that falls behind), and so that an
ack-after-commit consumer is not throttled by a small in-flight window.

rumqttd speaks MQTT 3.1.1 and MQTT 5 on separate listeners, so the iotcore path has two URLs: `url` for
devices (3.1.1) and `services_url` (MQTT 5) for OCC services. With Mosquitto both are the same listener.

Closed mode (issue 7, `auth=True`, Mosquitto only): anonymous access off, a password file and an ACL file in the
data folder (`set_auth` writes them and makes a running broker re-read them with SIGHUP; Mosquitto then drops
clients whose account went away). Until the first `set_auth` both files are empty: nobody gets in. rumqttd
cannot check our hashes nor enforce topic ACLs; `occ up` says so loudly when it falls back to it.

TLS (issue 7 item 3, Mosquitto only): a second listener on `tls_port` with the given server certificate; the
plain listener can be left out (`plain=False`).

The broker is our child with PR_SET_PDEATHSIG (see occ.embedded.proc) in a session of its own, so it dies with
us whatever kills us. Run as root, Mosquitto is started directly as the `mosquitto` user (its own `user`
option would drop privileges after exec and so cancel the death signal). A broker an earlier run left on the
same data folder is found by its command line and stopped before a new one starts on that persistence.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from occ.embedded.net import free_port, port_open
from occ.embedded.proc import die_with_parent, find_processes, stop_child, terminate
from occ.errors import ServiceError

log = logging.getLogger(__name__)

BrokerKind = Literal["mosquitto", "iotcore"]

MOSQUITTO_CONF = """\
# Written by OCC for its embedded broker; regenerated at every start.
{listeners}
{auth}
persistence true
persistence_location {data}/
autosave_interval 30
# A burst must be queued, not dropped: no count limit on a subscriber's queue (default 1000 drops).
max_queued_messages 0
max_queued_bytes 0
# Ingest acknowledges only after its database commit; a 20-message window would throttle it.
max_inflight_messages 0
persistent_client_expiration 14d
max_packet_size 4194304
set_tcp_nodelay true
log_dest file {data}/mosquitto.log
log_type error
log_type warning
connection_messages false
{user_line}
"""

RUMQTTD_TOML = """\
# Written by OCC for its embedded broker (rumqttd via iotcore); regenerated at every start.
id = 0

[router]
id = 0
max_connections = 20010
max_outgoing_packet_count = 10000
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "{host}:{port}"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 4194304
    max_inflight_count = 65535
    dynamic_filters = true

[v5.1]
name = "v5-1"
listen = "{host}:{port5}"
next_connection_delay_ms = 1
    [v5.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 4194304
    max_inflight_count = 65535
"""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files of a TLS listener: the CA clients should trust, and the server's certificate and key."""

    ca: Path
    cert: Path
    key: Path


def write_auth_files(folder: Path, passwd: str, acl: str, *, owner: tuple[int, int] | None = None) -> bool:
    """`folder/passwd` and `folder/acl`, each replaced atomically with mode 0600 (owned by `owner`, the broker's
    uid and gid, when given) and only when its text changed. True when either changed."""
    folder.mkdir(parents=True, exist_ok=True)
    changed = False
    for path, text in ((folder / "passwd", passwd), (folder / "acl", acl)):
        try:
            if path.read_text() == text:
                continue
        except OSError:
            pass
        changed = True
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, path)
    return changed


def mosquitto_path() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None
    )


def _reachable(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether `user` can traverse every parent folder of `path` (mode bits only; no ACLs)."""
    for parent in path.parents:
        st = parent.stat()
        if st.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid == user.pw_gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


WILDCARDS = ("0.0.0.0", "::", "")


class EmbeddedBroker:
    """A broker child process with its config and persistence under `data_dir`.

    `host` is the listen address (127.0.0.1 unless a LAN must reach it); the URLs stay connectable from this
    machine either way."""

    def __init__(
        self, data_dir: str | Path, *, kind: BrokerKind | Literal["auto"] = "auto", port: int | None = None,
        host: str = "127.0.0.1", auth: bool = False, tls: TlsFiles | None = None, tls_port: int | None = None,
        plain: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        if kind == "auto":
            kind = "mosquitto" if mosquitto_path() else "iotcore"
        self.kind: BrokerKind = kind
        if kind != "mosquitto" and (tls is not None or not plain):
            raise ServiceError("TLS listeners need Mosquitto (rumqttd from iotcore is started without TLS)")
        if not plain and tls is None:
            raise ServiceError("the plain listener can only be turned off when a TLS listener is configured")
        self.host = host
        self.auth = auth and kind == "mosquitto"
        """Whether clients must authenticate and are held to the ACL file (rumqttd: never)."""
        self.tls = tls
        self.plain = plain
        self.port = port or free_port()
        self.tls_port = (tls_port or free_port()) if tls is not None else None
        self.port5 = self.port if kind == "mosquitto" else free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._user: pwd.struct_passwd | None = None

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in WILDCARDS else self.host

    @property
    def url(self) -> str:
        """For devices and any MQTT client (3.1.1; also 5 with Mosquitto); the TLS one without a plain listener."""
        if not self.plain:
            assert self.tls_url is not None
            return self.tls_url
        return f"mqtt://{self._client_host}:{self.port}"

    @property
    def services_url(self) -> str:
        """For OCC services, which speak MQTT 5."""
        if not self.plain:
            return self.url
        return f"mqtt://{self._client_host}:{self.port5}"

    @property
    def tls_url(self) -> str | None:
        """`mqtts://host:port?cafile=…` (occ.bus.BrokerAddress reads the CA from the query), or None."""
        if self.tls is None:
            return None
        host = "localhost" if self._client_host == "127.0.0.1" else self._client_host
        return f"mqtts://{host}:{self.tls_port}?cafile={quote(str(self.tls.ca))}"

    @property
    def passwd_path(self) -> Path:
        return self.data_dir / "passwd"

    @property
    def acl_path(self) -> Path:
        return self.data_dir / "acl"

    def set_auth(self, passwd: str, acl: str) -> bool:
        """Replace the password and ACL files (0600, atomically) and have a running Mosquitto re-read them
        (SIGHUP; it also drops clients whose account is gone). True when the files changed."""
        if not self.auth:
            return False
        owner = (self._user.pw_uid, self._user.pw_gid) if self._user is not None else None
        changed = write_auth_files(self.data_dir, passwd, acl, owner=owner)
        if changed:
            self.reload()
        return changed

    def reload(self) -> None:
        """SIGHUP: Mosquitto re-reads its password and ACL files."""
        if self.kind == "mosquitto" and self.running() and self._process is not None:
            self._process.send_signal(signal.SIGHUP)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running() and self._process else None

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process else None

    def _mosquitto_user(self) -> pwd.struct_passwd | None:
        """The user to run Mosquitto as when we are root (None: run as we are)."""
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam("mosquitto")
        except KeyError:
            return None
        if _reachable(self.data_dir, entry):
            return entry
        # As `mosquitto` it could not write its persistence file and log (it only says so on stderr, and then
        # loses every queued message on a restart).
        log.warning("%s is not reachable by the mosquitto user; the embedded broker runs as root", self.data_dir)
        return None

    def _command(self) -> tuple[list[str], pwd.struct_passwd | None]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)  # persistence holds message payloads
        if self.kind == "mosquitto":
            exe = mosquitto_path()
            if exe is None:
                raise ServiceError("mosquitto is not installed")
            user = self._mosquitto_user()
            self._user = user
            auth = "allow_anonymous true"
            if self.auth:
                for path in (self.passwd_path, self.acl_path):
                    if not path.exists():  # nobody gets in until set_auth writes the accounts
                        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
                auth = (f"allow_anonymous false\npassword_file {self.passwd_path}\nacl_file {self.acl_path}")
            if user is not None:
                os.chown(self.data_dir, user.pw_uid, user.pw_gid)
                for child in self.data_dir.iterdir():
                    os.chown(child, user.pw_uid, user.pw_gid)
                if self.tls is not None:  # the key stays 0600, owned by the broker's user
                    os.chown(self.tls.key, user.pw_uid, user.pw_gid)
            conf = self.data_dir / "mosquitto.conf"
            # Started as its user already; as root with no such user, Mosquitto needs to be told to stay root.
            user_line = "" if user is not None or os.geteuid() != 0 else "user root"
            listeners = []
            if self.plain:
                listeners.append(f"listener {self.port} {self.host}\nprotocol mqtt")
            if self.tls is not None:
                listeners.append(f"listener {self.tls_port} {self.host}\nprotocol mqtt\ncafile {self.tls.ca}\n"
                                 f"certfile {self.tls.cert}\nkeyfile {self.tls.key}\ntls_version tlsv1.2")
            conf.write_text(MOSQUITTO_CONF.format(listeners="\n".join(listeners), auth=auth, data=self.data_dir,
                                                  user_line=user_line))
            return [exe, "-c", str(conf)], user
        conf = self.data_dir / "rumqttd.toml"
        conf.write_text(RUMQTTD_TOML.format(host=self.host, port=self.port, port5=self.port5))
        # iotcore's child entry point: it exits by itself when our stdin pipe closes (parent gone).
        bootstrap = (
            "import sys, json; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
            "from iotcore._serve import main; main()"
        )
        return [sys.executable, "-c", bootstrap, json.dumps({"config_path": str(conf)})], None

    def _leftovers(self) -> list[int]:
        """Brokers on our data folder that we did not start (an earlier run killed before it could stop them)."""
        confs = (str(self.data_dir / "mosquitto.conf"), str(self.data_dir / "rumqttd.toml"))
        mine = self._process.pid if self.running() and self._process else None

        def ours(argv: list[str]) -> bool:
            return any(conf in arg for arg in argv[1:] for conf in confs)

        return [pid for pid in find_processes(ours) if pid != mine]

    def stop_leftovers(self, timeout: float = 10.0) -> None:
        pids = self._leftovers()
        if pids:
            log.warning("stopping a broker left running on %s by an earlier run (pid %s)", self.data_dir,
                        ", ".join(map(str, pids)))
            terminate(pids, signal.SIGTERM, timeout=timeout, what="an earlier broker")

    def start(self, timeout: float = 15.0) -> str:
        if self.running():
            return self.url
        self.stop_leftovers()
        command, user = self._command()
        extra: dict[str, object] = {}
        if user is not None:
            extra = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        with open(self.data_dir / "broker.stderr", "ab") as stderr:  # the child keeps its own copy
            self._process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGTERM), **extra,  # type: ignore[call-overload]
            )
        deadline = time.monotonic() + timeout
        ports = {self.port, self.port5} if self.plain else set()
        if self.tls_port is not None:
            ports.add(self.tls_port)
        for port in ports:
            while not port_open(self._client_host, port):
                code = self._process.poll()
                if code is not None or time.monotonic() > deadline:
                    self.stop()
                    raise ServiceError(f"{self.kind} broker did not listen on {port} (exit code {code}): "
                                       f"{_tail(self.data_dir / 'broker.stderr')}")
                time.sleep(0.05)
        log.info("embedded %s broker listening on %s", self.kind, self.url)
        return self.url

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def save(self) -> None:
        """Ask Mosquitto to write its persistence file now (SIGUSR1), so sessions just made survive a crash."""
        if self.kind == "mosquitto" and self.running() and self._process is not None:
            self._process.send_signal(signal.SIGUSR1)

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin:
            process.stdin.close()
        stop_child(process, signal.SIGTERM, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL (fault tests); Mosquitto's last autosave is what survives."""
        process, self._process = self._process, None
        if process is not None:
            stop_child(process, signal.SIGKILL, timeout=5)
            if process.stdin:
                process.stdin.close()


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""
