"""Statistical anomaly: rolling z-score of a reading against the previous `samples` readings (numpy).

Silent while warming up (fewer than `min_samples`) and when the history is flat (no spread to compare with).
"""

from __future__ import annotations

import numpy as np


class ZScore:
    __slots__ = ("buf", "count", "min_samples", "pos")

    def __init__(self, samples: int, min_samples: int) -> None:
        self.buf = np.zeros(samples, dtype=np.float64)
        self.count = 0
        self.pos = 0
        self.min_samples = min_samples

    def add(self, value: float) -> float | None:
        """Return the z-score of `value` against the history before it (None while warming up), then keep it."""
        z: float | None = None
        if self.count >= self.min_samples:
            hist = self.buf[: self.count] if self.count < len(self.buf) else self.buf
            std = float(hist.std())
            if std > 1e-9:
                z = (value - float(hist.mean())) / std
        self.buf[self.pos] = value
        self.pos = (self.pos + 1) % len(self.buf)
        self.count = min(self.count + 1, len(self.buf))
        return z

    def dump(self) -> list[float]:
        n = self.count
        if n < len(self.buf):
            return [round(float(x), 5) for x in self.buf[:n]]
        return [round(float(x), 5) for x in np.roll(self.buf, -self.pos)]

    def load(self, data: list[float]) -> None:
        values = data[-len(self.buf):]
        self.buf[: len(values)] = values
        self.count = len(values)
        self.pos = self.count % len(self.buf)
