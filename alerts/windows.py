"""Rolling sums over event-time windows (rain over 1/3/6/24/72 h), shared by every rule on one series.

Readings fall into buckets of `resolution` seconds (aligned to the epoch); the sum of window W at the series'
newest bucket h covers buckets (h - W/resolution, h]. One ring of buckets serves all windows of the series and
each window keeps a running sum, so a reading costs O(number of windows), never O(window length) — the
from-scratch recomputation is what `bench.alerts` compares against. A reading older than the longest window is
ignored. Values are kept as integers of 1e-6 units: the running sums are exact (no floating-point drift, and a
running sum equals a fresh sum of the same readings at a threshold).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from typing import Any

import numpy as np

SCALE = 1_000_000


class SeriesWindows:
    __slots__ = ("head", "res", "ring", "size", "spans", "sums")

    def __init__(self, resolution_s: float, windows_s: Sequence[float]) -> None:
        self.res = float(resolution_s)
        self.spans = tuple(sorted({max(1, round(w / self.res)) for w in windows_s}))
        self.size = self.spans[-1]
        # array('q'): scalar access as fast as a list, and numpy views it without a copy for snapshots.
        self.ring = array("q", bytes(8 * self.size))
        self.sums = [0] * len(self.spans)
        self.head: int | None = None

    def index(self, window_s: float) -> int:
        return self.spans.index(max(1, round(window_s / self.res)))

    def add(self, ts: float, value: float) -> bool:
        """Add a reading at event time `ts` (epoch seconds); False when it is older than the longest window."""
        b = math.floor(ts / self.res)
        head = self.head
        if head is None:
            self.head = head = b
        elif b > head:
            self._advance(b)
            head = b
        age = head - b
        if age >= self.size:
            return False
        q = round(value * SCALE)
        self.ring[b % self.size] += q
        sums = self.sums
        for i, span in enumerate(self.spans):
            if age < span:
                sums[i] += q
        return True

    def advance_to(self, ts: float) -> None:
        """Move the window end to `ts` without a reading (time passed)."""
        b = math.floor(ts / self.res)
        if self.head is None:
            self.head = b
        elif b > self.head:
            self._advance(b)

    def _advance(self, b: int) -> None:
        assert self.head is not None
        ring, size, spans, sums = self.ring, self.size, self.spans, self.sums
        steps = b - self.head
        if steps >= size:
            self.ring = array("q", bytes(8 * size))
            for i in range(len(sums)):
                sums[i] = 0
        else:
            for new in range(self.head + 1, b + 1):
                for i, span in enumerate(spans):
                    sums[i] -= ring[(new - span) % size]
                ring[new % size] = 0
        self.head = b

    def _resum(self) -> None:
        if self.head is None:
            return
        ages = (self.head - np.arange(self.size)) % self.size  # age of each slot's bucket
        ring = np.frombuffer(self.ring, dtype=np.int64)
        for i, span in enumerate(self.spans):
            self.sums[i] = int(ring[ages < span].sum())

    def total(self, index: int) -> float:
        return self.sums[index] / SCALE

    # -- snapshot: only non-zero buckets, as offsets from head (rain is mostly zero) -------------------------
    def dump(self) -> dict[str, Any]:
        if self.head is None:
            return {}
        ring = np.frombuffer(self.ring, dtype=np.int64)
        slots = np.flatnonzero(ring)
        items = np.empty(2 * slots.size, dtype=np.int64)
        items[0::2] = (self.head - slots) % self.size
        items[1::2] = ring[slots]
        return {"h": self.head, "q": items.tolist()}

    def load(self, data: dict[str, Any]) -> None:
        if not data:
            return
        self.head = int(data["h"])
        items = data.get("q", [])
        for j in range(0, len(items), 2):
            k, v = int(items[j]), int(items[j + 1])
            if k < self.size:
                self.ring[(self.head - k) % self.size] = v
        self._resum()
