"""Rolling sums over event-time windows (rain over 1/3/6/24/72 h), shared by every rule on one series.

Readings fall into buckets of `resolution` seconds (aligned to the epoch); the sum of window W at the series'
newest bucket h covers buckets (h - W/resolution, h]. One ring of buckets serves all windows of the series and
each window keeps a running sum, so a reading costs O(number of windows), never O(window length) — the
from-scratch recomputation is what `bench.alerts` compares against. A reading older than the longest window is
ignored. Sums are re-derived from the ring now and then so floating-point drift cannot accumulate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

RESUM_EVERY = 4096


class SeriesWindows:
    __slots__ = ("_adds", "head", "res", "ring", "size", "spans", "sums")

    def __init__(self, resolution_s: float, windows_s: Sequence[float]) -> None:
        self.res = float(resolution_s)
        self.spans = tuple(sorted({max(1, round(w / self.res)) for w in windows_s}))
        self.size = self.spans[-1]
        self.ring = [0.0] * self.size
        self.sums = [0.0] * len(self.spans)
        self.head: int | None = None
        self._adds = 0

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
        self.ring[b % self.size] += value
        sums = self.sums
        for i, span in enumerate(self.spans):
            if age < span:
                sums[i] += value
        self._adds += 1
        if self._adds >= RESUM_EVERY:
            self._resum()
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
            for i in range(size):
                ring[i] = 0.0
            for i in range(len(sums)):
                sums[i] = 0.0
        else:
            for new in range(self.head + 1, b + 1):
                for i, span in enumerate(spans):
                    sums[i] -= ring[(new - span) % size]
                ring[new % size] = 0.0
        self.head = b

    def _resum(self) -> None:
        self._adds = 0
        if self.head is None:
            return
        for i, span in enumerate(self.spans):
            self.sums[i] = sum(self.ring[(self.head - k) % self.size] for k in range(span))

    def total(self, index: int) -> float:
        s = self.sums[index]
        return 0.0 if abs(s) < 1e-9 else s

    # -- snapshot: only non-zero buckets, as offsets from head (rain is mostly zero) -------------------------
    def dump(self) -> dict[str, Any]:
        if self.head is None:
            return {}
        items: list[float] = []
        for k in range(self.size):
            v = self.ring[(self.head - k) % self.size]
            if v:
                items.append(k)
                items.append(round(v, 4))
        return {"h": self.head, "b": items}

    def load(self, data: dict[str, Any]) -> None:
        if not data:
            return
        self.head = int(data["h"])
        items = data.get("b", [])
        for j in range(0, len(items), 2):
            k, v = int(items[j]), float(items[j + 1])
            if k < self.size:
                self.ring[(self.head - k) % self.size] = v
        self._resum()
