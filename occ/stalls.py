"""Where a service's event loop stops: the garbage collector's pauses and the loop's own lateness.

A stall of a tenth of a second in an ingest worker is a tenth of a second of every device's publish→commit time;
on a busy machine the stalls, not the averages, decide the 99th percentile (issue 8). `StallWatch` is the pure
core: it is told of collector phases and of how late each loop tick woke, keeps the figures, and remembers the
latest stalls with their wall-clock time so that a slow minute can be matched to its cause. `watch_loop` is the
asyncio adapter that measures the lateness.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from occ.metrics import Registry

log = logging.getLogger(__name__)

LOOP_TICK_S = 0.05
"""How often the loop's lateness is measured: 20 wake-ups a second cost nothing next to a message stream."""
STALL_NOTE_S = 0.05
"""A loop tick this late, or a collection this long, is remembered (with its time) in `recent`."""
STALL_WARN_S = 1.0
"""A stall this long is also logged: a second without reading the socket or committing is not healthy."""
RECENT = 32
LAG_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]
GC_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1]


@dataclass(frozen=True, slots=True)
class Stall:
    """One remembered stall: when it ended (wall clock), how long, and what it was."""

    at: float
    seconds: float
    kind: str  # "loop" (a tick woke this late) or "gc<generation>" (one collection)

    def as_dict(self) -> dict[str, Any]:
        return {"at": round(self.at, 3), "seconds": round(self.seconds, 4), "kind": self.kind}


class StallWatch:
    """Figures of a process's stalls. Events in (`gc_phase`, `loop_tick`), metrics and `recent` out; no I/O.

    `clock` times a collection (monotonic), `wall` stamps a remembered stall so that it can be matched to other
    records (a benchmark's probes, a server log)."""

    def __init__(self, registry: Registry, prefix: str, *, clock: Callable[[], float] = time.perf_counter,
                 wall: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._wall = wall
        self._gc_started: float | None = None
        self.recent: deque[Stall] = deque(maxlen=RECENT)
        self.loop_lag = registry.histogram(f"{prefix}_event_loop_lag_seconds",
                                           f"How late the event loop woke for a tick due every {LOOP_TICK_S} s",
                                           LAG_BUCKETS)
        self.gc_pause = registry.histogram(f"{prefix}_gc_pause_seconds",
                                           "One garbage collection (the process stands still meanwhile)",
                                           GC_BUCKETS)
        self.gc_seconds = registry.counter(f"{prefix}_gc_seconds_total", "Time spent collecting, by generation",
                                           ["generation"])

    def gc_phase(self, phase: str, info: dict[str, Any]) -> None:
        """A `gc.callbacks` entry: "start" and "stop" of one collection."""
        if phase == "start":
            self._gc_started = self._clock()
            return
        if self._gc_started is None:
            return
        seconds = self._clock() - self._gc_started
        self._gc_started = None
        generation = str(info.get("generation", "?"))
        self.gc_pause.observe(seconds)
        self.gc_seconds.inc(seconds, generation)
        self._note(seconds, f"gc{generation}")

    def loop_tick(self, late_s: float) -> None:
        """The loop woke `late_s` after a tick was due."""
        late_s = max(0.0, late_s)
        self.loop_lag.observe(late_s)
        self._note(late_s, "loop")

    def _note(self, seconds: float, kind: str) -> None:
        if seconds < STALL_NOTE_S:
            return
        self.recent.append(Stall(self._wall(), seconds, kind))
        if seconds >= STALL_WARN_S:
            log.warning("%s stalled this process for %.2f s", "the event loop" if kind == "loop"
                        else f"garbage collection (generation {kind[2:]})", seconds)

    def summary(self) -> dict[str, Any]:
        """For a health endpoint: the latest stalls, newest last."""
        return {"recent_stalls": [s.as_dict() for s in self.recent]}

    def install_gc(self) -> Callable[[], None]:
        """Hook the collector; returns the function that unhooks it."""
        gc.callbacks.append(self.gc_phase)

        def uninstall() -> None:
            if self.gc_phase in gc.callbacks:
                gc.callbacks.remove(self.gc_phase)
        return uninstall


async def watch_loop(watch: StallWatch, tick_s: float = LOOP_TICK_S) -> None:
    """Sleep one tick at a time and report how late each wake-up came. Runs until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + tick_s
        await asyncio.sleep(tick_s)
        watch.loop_tick(loop.time() - due)
