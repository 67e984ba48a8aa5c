"""Rate of change over a window (river rising m/h): newest value minus the oldest within the window, per hour.

Needs at least half a window of history, so one noisy pair of readings cannot raise "rising fast".

Bounded state: points closer than window/64 to the previous kept point are not kept (the newest point always
is), so a tracker holds at most ~66 points whatever the report rate (a gauge reporting every second would
otherwise keep 3,600 per hour of window, in memory and in every snapshot). The oldest point is then up to
window/64 older than the exact horizon; the rate divides by the real span, so it stays a true rate, over a
span at most 1/64 longer. Reports at the usual intervals (minutes) are never thinned.
"""

from __future__ import annotations

from collections import deque

POINTS_PER_WINDOW = 64


class RateTracker:
    __slots__ = ("points", "spacing", "window")

    def __init__(self, window_s: float) -> None:
        self.window = window_s
        self.spacing = window_s / POINTS_PER_WINDOW
        self.points: deque[tuple[float, float]] = deque()

    def add(self, ts: float, value: float) -> float | None:
        """Add a reading (in time order) and return the rate per hour, or None while history is too short."""
        points = self.points
        if len(points) >= 2 and points[-1][0] - points[-2][0] < self.spacing:
            points[-1] = (ts, value)  # the newest so far was too close to the last kept one: replace it
        else:
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
