"""Per-device report schedules as numpy arrays: which devices report in a time window, and when exactly."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np


def phases(ids: Sequence[str], intervals: np.ndarray, seed: int, salt: str = "") -> np.ndarray:
    """A stable whole-second phase per device in [0, interval), from the id and the seed, so that devices spread
    their reports over the interval and a device keeps its phase when others are added or removed."""
    raw = np.array([zlib.crc32(f"{seed}:{salt}:{i}".encode()) for i in ids], dtype=np.float64)
    step = np.maximum(np.floor(intervals), 1.0)
    return np.floor(raw % step)


class ReportSchedule:
    """Reports at `phase + k * interval` (epoch seconds), independent of when the run started."""

    def __init__(self, intervals: np.ndarray, phase: np.ndarray, start: float) -> None:
        self.interval = np.asarray(intervals, dtype=np.float64)
        self.phase = np.asarray(phase, dtype=np.float64)
        # first report strictly after `start`
        k = np.floor((start - self.phase) / self.interval) + 1.0
        self.next_due = self.phase + k * self.interval

    def due(self, t1: float) -> tuple[np.ndarray, np.ndarray]:
        """Devices with a report at or before `t1`: (indices, report times), ordered by time then index.
        A device whose interval is shorter than the window appears once per report."""
        idx_parts: list[np.ndarray] = []
        ts_parts: list[np.ndarray] = []
        while True:
            idx = np.flatnonzero(self.next_due <= t1)
            if idx.size == 0:
                break
            idx_parts.append(idx)
            ts_parts.append(self.next_due[idx].copy())
            self.next_due[idx] += self.interval[idx]
        if not idx_parts:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
        idx_all = np.concatenate(idx_parts)
        ts_all = np.concatenate(ts_parts)
        order = np.lexsort((idx_all, ts_all))
        return idx_all[order], ts_all[order]


def ar1(x: np.ndarray, dt: float, tau: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Advance an Ornstein-Uhlenbeck (AR(1)) process with stationary std `sigma` and time constant `tau`,
    exactly for any step `dt` (no instability when a fast run takes large steps)."""
    phi = np.exp(-dt / tau)
    return x * phi + sigma * np.sqrt(1.0 - phi * phi) * rng.standard_normal(x.shape)
