"""Pacing simulated time against the wall clock: real time, accelerated (`--speed 60`) or as fast as possible.

The engine never looks at the wall clock; the pacer only decides when a message stamped with simulated time
`t` may leave. Unless `allow_future` is set, simulated time never runs ahead of the present (ingest rejects
readings from the future): an accelerated run that catches up with now continues in real time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Pacer:
    def __init__(
        self,
        start: float,
        speed: float | None,
        *,
        allow_future: bool = False,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`speed` None means as fast as possible; 1.0 is real time."""
        if speed is not None and speed <= 0:
            raise ValueError("speed must be positive")
        self.start = start
        self.speed = speed
        self.allow_future = allow_future
        self._wall = wall
        self._mono = monotonic
        self._mono0 = monotonic()
        self.caught_up = False

    @property
    def fast(self) -> bool:
        return self.speed is None

    def delay(self, sim_t: float) -> float:
        """Seconds to wait before something stamped `sim_t` is due (≤ 0: due now)."""
        wait = 0.0
        if self.speed is not None:
            wait = self._mono0 + (sim_t - self.start) / self.speed - self._mono()
        if not self.allow_future:
            ahead = sim_t - self._wall()
            if ahead > wait:
                if not self.caught_up and ahead > 0:
                    self.caught_up = True
                    log.info("simulated time caught up with the present; continuing in real time")
                wait = ahead
        return wait

    def sim_now(self) -> float:
        """The simulated time the wall clock corresponds to now (for progress lines)."""
        if self.speed is None:
            return float("inf")
        t = self.start + (self._mono() - self._mono0) * self.speed
        return t if self.allow_future else min(t, self._wall())
