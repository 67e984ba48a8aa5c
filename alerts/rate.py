"""Rate of change over a window (river rising m/h): newest value minus the oldest within the window, per hour.

Needs at least half a window of history, so one noisy pair of readings cannot raise "rising fast".
"""

from __future__ import annotations

from collections import deque


class RateTracker:
    __slots__ = ("points", "window")

    def __init__(self, window_s: float) -> None:
        self.window = window_s
        self.points: deque[tuple[float, float]] = deque()

    def add(self, ts: float, value: float) -> float | None:
        """Add a reading (in time order) and return the rate per hour, or None while history is too short."""
        points = self.points
        points.append((ts, value))
        horizon = ts - self.window
        while len(points) > 2 and points[1][0] <= horizon:
            points.popleft()
        t0, v0 = points[0]
        span = ts - t0
        if span < self.window / 2 or span <= 0:
            return None
        return (value - v0) * 3600.0 / span

    def dump(self) -> list[float]:
        return [x for p in self.points for x in p]

    def load(self, data: list[float]) -> None:
        self.points = deque((data[i], data[i + 1]) for i in range(0, len(data), 2))
