"""Capped exponential backoff with jitter, one implementation for every retry loop (issue 11 item 10).

Pure: the random source is injectable, so tests get exact delays. Jitter spreads reconnects after a shared
outage (a broker restart would otherwise see every client return in the same millisecond).
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delays base, base·factor, base·factor², … capped at `cap`, each scaled by a factor drawn from
    [1 - jitter, 1 + jitter). `reset()` after a success starts over."""

    __slots__ = ("_rng", "attempts", "base", "cap", "factor", "jitter")

    def __init__(self, base: float = 0.2, cap: float = 10.0, *, factor: float = 2.0, jitter: float = 0.5,
                 rng: Callable[[], float] = random.random) -> None:
        if not 0 < base <= cap or factor < 1 or not 0 <= jitter < 1:
            raise ValueError(f"bad backoff: base={base} cap={cap} factor={factor} jitter={jitter}")
        self.base = base
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self._rng = rng
        self.attempts = 0

    def next(self) -> float:
        """The delay before the next attempt (call once per failure)."""
        nominal = min(self.cap, self.base * self.factor ** min(self.attempts, 64))
        self.attempts += 1
        return min(self.cap, nominal * (1 - self.jitter + 2 * self.jitter * self._rng()))

    def reset(self) -> None:
        self.attempts = 0
