"""The run loop: step the engine, pace its messages against the wall clock, hand them to the outputs."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TextIO

from simulators.clock import Pacer
from simulators.engine import Message, Simulation
from simulators.timeutil import iso_local

log = logging.getLogger(__name__)


class Output(Protocol):
    sent: int

    def send(self, messages: Iterable[Message]) -> None: ...

    def pump(self, timeout: float = 0.0) -> None: ...

    def close(self, flush_timeout: float = 10.0) -> None: ...


@dataclass(slots=True)
class RunStats:
    messages: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    sim_start: float = 0.0
    sim_end: float = 0.0


class Progress:
    """A progress line on stderr: rewritten in place on a terminal, one line every `every_s` otherwise."""

    def __init__(self, stream: TextIO | None = None, every_s: float = 2.0, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = every_s if self.tty else max(every_s, 60.0)  # logs: a line a minute at most
        self.enabled = enabled
        self._last = time.monotonic()
        self._last_count = 0
        self._wrote = False

    def update(self, label: str, count: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        rate = (count - self._last_count) / max(now - self._last, 1e-9)
        self._last, self._last_count = now, count
        text = f"{label} | {count:,} msgs | {rate:,.0f} msg/s"
        if self.tty:
            self.stream.write("\r" + text[:160].ljust(100))
            self._wrote = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled and self.tty and self._wrote:
            self.stream.write("\n")
            self.stream.flush()


def _wait(outputs: Sequence[Output], seconds: float, stop: threading.Event) -> None:
    """Sleep while servicing the network (acks, keepalive) of the outputs."""
    deadline = time.monotonic() + seconds
    while not stop.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        step = min(left, 0.25)
        if outputs:
            outputs[0].pump(step)
            for o in outputs[1:]:
                o.pump(0.0)
        else:
            stop.wait(step)


def deliver(messages: Sequence[Message], pacer: Pacer, outputs: Sequence[Output], stop: threading.Event,
            granularity_s: float = 0.05) -> int:
    """Send messages (ordered by t) when the pacer says they are due; returns how many were sent."""
    i = 0
    n = len(messages)
    sent = 0
    while i < n and not stop.is_set():
        wait = pacer.delay(messages[i].t)
        if wait > granularity_s:
            _wait(outputs, wait, stop)
            continue
        # everything due within the granularity goes out together
        j = i + 1
        while j < n and pacer.delay(messages[j].t) <= granularity_s:
            j += 1
            if j - i >= 5000:
                break
        chunk = messages[i:j]
        for o in outputs:
            o.send(chunk)
        sent += j - i
        i = j
    return sent


def run(
    sim: Simulation,
    pacer: Pacer,
    outputs: Sequence[Output],
    *,
    end: float | None,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
    announce_offline_at_exit: bool = True,
) -> RunStats:
    """Run the simulation from its current time to `end` (None: until `stop` is set)."""
    stop = stop or threading.Event()
    progress = progress or Progress(enabled=False)
    stats = RunStats(sim_start=sim.t)
    wall0, cpu0 = time.monotonic(), time.process_time()
    stats.messages += deliver(sim.initial_messages(), pacer, outputs, stop)
    speed = "fast" if pacer.speed is None else f"{pacer.speed:g}x"
    try:
        while not stop.is_set() and (end is None or sim.t < end - 1e-9):
            batch = sim.step()
            stats.messages += deliver(batch, pacer, outputs, stop)
            progress.update(f"sim {iso_local(sim.t)} ({speed})", stats.messages)
    finally:
        if announce_offline_at_exit:
            final = sim.final_messages()
            for o in outputs:
                o.send(final)
            stats.messages += len(final)
        progress.update(f"sim {iso_local(sim.t)} ({speed}) done", stats.messages, force=True)
        progress.done()
        stats.wall_s = time.monotonic() - wall0
        stats.cpu_s = time.process_time() - cpu0
        stats.sim_end = sim.t
    return stats


def replay(messages: Iterable[Message], pacer: Pacer, outputs: Sequence[Output], *,
           stop: threading.Event | None = None, progress: Progress | None = None, chunk: int = 2000) -> RunStats:
    """Play back recorded messages, paced by their recorded simulated times relative to the first one."""
    stop = stop or threading.Event()
    progress = progress or Progress(enabled=False)
    stats = RunStats()
    wall0, cpu0 = time.monotonic(), time.process_time()
    buf: list[Message] = []
    first: float | None = None
    for m in messages:
        if first is None:
            first = m.t
            pacer.start = m.t
            stats.sim_start = m.t
        buf.append(m)
        if len(buf) >= chunk:
            stats.messages += deliver(buf, pacer, outputs, stop)
            buf = []
            progress.update(f"replay {iso_local(m.t)}", stats.messages)
        if stop.is_set():
            break
    if buf and not stop.is_set():
        stats.messages += deliver(buf, pacer, outputs, stop)
        stats.sim_end = buf[-1].t
    progress.update("replay done", stats.messages, force=True)
    progress.done()
    stats.wall_s = time.monotonic() - wall0
    stats.cpu_s = time.process_time() - cpu0
    return stats
