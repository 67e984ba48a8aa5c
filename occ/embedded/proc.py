"""Child processes that cannot outlive the process that started them (issue 11 item 1).

Whatever ends the parent — Ctrl-C, `kill -TERM -- -<group>`, `kill -9`, a killed pytest — the kernel sends each
child the signal it asked for with PR_SET_PDEATHSIG, so no server is left holding a port or a data folder.
Two Linux facts shape the code:

* the death signal is tied to the *thread* that forked the child: start children from a thread that lives
  as long as they should (the main thread), never from `asyncio.to_thread`;
* the kernel clears it when the child's credentials change, so a server that must not run as root is
  started directly as its user (`user=` in Popen runs before `preexec_fn`), never left to drop privileges
  itself (Mosquitto's `user` option would silently cancel the death signal).

The parent may also die between fork and prctl; the child checks its parent afterwards and exits.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: the child only calls into it


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A `preexec_fn` that makes the child receive `sig` when this process (this thread) ends."""
    parent = os.getpid()

    def preexec() -> None:
        _LIBC.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the death signal was armed
            os._exit(1)

    return preexec


def argv_of(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _live(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2 :].split(" ", 1)[0] not in ("Z", "X")


def find_processes(match: Callable[[list[str]], bool]) -> list[int]:
    """Live processes (not zombies, not this one) whose argument vector satisfies `match`."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        argv = argv_of(int(name))
        if argv and match(argv) and _live(int(name)):
            found.append(int(name))
    return found


def terminate(pids: Sequence[int], sig: int, *, timeout: float, what: str) -> None:
    """Send `sig`, wait up to `timeout` for the processes to go, then SIGKILL what is left."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while (left := [pid for pid in pids if _live(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:
        log.warning("%s (pid %d) ignored signal %d; killing it", what, pid, sig)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while [pid for pid in left if _live(pid)] and time.monotonic() < deadline:
        time.sleep(0.05)


def stop_child(process: subprocess.Popen[bytes], sig: int, *, timeout: float) -> int:
    """Signal a child, wait for it (SIGKILL after `timeout`), reap it; return its exit code."""
    if process.poll() is None:
        try:
            process.send_signal(sig)
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()
