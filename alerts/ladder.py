"""Threshold ladders with per-level enter and exit values (hysteresis).

A ladder is levels in rising severity; `step(level, value)` returns the new level index (-1 = below every
level). Rising is immediate to the highest level whose `enter` the value reaches; falling leaves a level only
when the value passes that level's `exit`, so a value hovering at a threshold does not toggle. `direction:
below` (speeds, voltages) is the mirror image: values are negated once here so the comparisons stay the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


class Ladder:
    __slots__ = ("_enter", "_exit", "_sign", "_strict", "_top", "enter", "exit")

    def __init__(self, enter: Sequence[float], exit: Sequence[float | None], *, above: bool = True,
                 strict: bool = False) -> None:
        if not enter:
            raise ValueError("a ladder needs at least one level")
        self.enter = tuple(enter)
        self.exit = tuple(e if x is None else x for e, x in zip(enter, exit, strict=True))
        self._sign = 1.0 if above else -1.0
        self._enter = tuple(self._sign * e for e in self.enter)
        self._exit = tuple(self._sign * x for x in self.exit)
        self._strict = strict
        self._top = len(enter) - 1

    def step(self, level: int, value: float) -> int:
        v = self._sign * value
        enter = self._enter
        i = level
        if self._strict:
            while i < self._top and v > enter[i + 1]:
                i += 1
        else:
            while i < self._top and v >= enter[i + 1]:
                i += 1
        if i > level:
            return i
        exit_ = self._exit
        if self._strict:
            while i >= 0 and v <= exit_[i]:
                i -= 1
        else:
            while i >= 0 and v < exit_[i]:
                i -= 1
        return i

    def quiet_below(self) -> tuple[float, float]:
        """(sign, bound): `value * sign < bound` means the value is below the lowest level's enter value, so an
        idle instance stays idle without calling `step` (the engine's fast path)."""
        first = self._enter[0]
        if self._strict:
            return self._sign, math.nextafter(first, math.inf)
        return self._sign, first

    def excess(self, level: int, value: float) -> float:
        """How far the value is past the enter value of `level` (positive when past)."""
        return self._sign * value - self._enter[level]
