"""An MQTT broker for a machine that has none: Mosquitto when it is on PATH, else rumqttd from `iotcore`.

Both are configured so that a burst is queued, not dropped (docs/architecture.md §3: Mosquitto's default
`max_queued_messages 1000` silently drops QoS 1 messages for a subscriber that falls behind), and so that an
ack-after-commit consumer is not throttled by a small in-flight window.

rumqttd speaks MQTT 3.1.1 and MQTT 5 on separate listeners, so the iotcore path has two URLs: `url` for
devices (3.1.1) and `services_url` (MQTT 5) for OCC services. With Mosquitto both are the same listener.
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
from pathlib import Path
from typing import Literal

from occ.embedded.net import free_port, wait_for_port
from occ.errors import ServiceError

log = logging.getLogger(__name__)

BrokerKind = Literal["mosquitto", "iotcore"]

MOSQUITTO_CONF = """\
# Written by OCC for its embedded broker; regenerated at every start.
listener {port} 127.0.0.1
protocol mqtt
allow_anonymous true
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
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 4194304
    max_inflight_count = 65535
    dynamic_filters = true

[v5.1]
name = "v5-1"
listen = "127.0.0.1:{port5}"
next_connection_delay_ms = 1
    [v5.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 4194304
    max_inflight_count = 65535
"""


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


class EmbeddedBroker:
    """A broker child process with its config and persistence under `data_dir`."""

    def __init__(
        self, data_dir: str | Path, *, kind: BrokerKind | Literal["auto"] = "auto", port: int | None = None
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        if kind == "auto":
            kind = "mosquitto" if mosquitto_path() else "iotcore"
        self.kind: BrokerKind = kind
        self.port = port or free_port()
        self.port5 = self.port if kind == "mosquitto" else free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """For devices and any MQTT client (3.1.1; also 5 with Mosquitto)."""
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def services_url(self) -> str:
        """For OCC services, which speak MQTT 5."""
        return f"mqtt://127.0.0.1:{self.port5}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def _command(self) -> list[str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.kind == "mosquitto":
            exe = mosquitto_path()
            if exe is None:
                raise ServiceError("mosquitto is not installed")
            user_line = "user root"
            if os.geteuid() == 0:
                try:
                    entry: pwd.struct_passwd | None = pwd.getpwnam("mosquitto")
                except KeyError:
                    entry = None
                if entry is not None and _reachable(self.data_dir, entry):
                    os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
                    for child in self.data_dir.iterdir():
                        os.chown(child, entry.pw_uid, entry.pw_gid)
                    user_line = "user mosquitto"
                elif entry is not None:
                    # Dropping to `mosquitto` would leave it unable to write its persistence file and log
                    # (it only says so on stderr, and then loses every queued message on a restart).
                    log.warning("%s is not reachable by the mosquitto user; the embedded broker runs as root",
                                self.data_dir)
            conf = self.data_dir / "mosquitto.conf"
            conf.write_text(MOSQUITTO_CONF.format(port=self.port, data=self.data_dir, user_line=user_line))
            return [exe, "-c", str(conf)]
        conf = self.data_dir / "rumqttd.toml"
        conf.write_text(RUMQTTD_TOML.format(port=self.port, port5=self.port5))
        # iotcore's child entry point: it exits by itself when our stdin pipe closes (parent gone).
        bootstrap = (
            "import sys, json; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
            "from iotcore._serve import main; main()"
        )
        return [sys.executable, "-c", bootstrap, json.dumps({"config_path": str(conf)})]

    def start(self, timeout: float = 15.0) -> str:
        command = self._command()
        with open(self.data_dir / "broker.stderr", "ab") as stderr:  # the child keeps its own copy
            self._process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
            )
        for port in {self.port, self.port5}:
            if not wait_for_port("127.0.0.1", port, timeout):
                code = self._process.poll()
                self.stop()
                raise ServiceError(f"{self.kind} broker did not listen on {port} (exit code {code})")
        log.info("embedded %s broker listening on %s", self.kind, self.url)
        return self.url

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if process.stdin:
            process.stdin.close()

    def kill(self) -> None:
        """SIGKILL (fault tests); Mosquitto's last autosave is what survives."""
        if self._process and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None
