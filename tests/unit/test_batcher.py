"""The batching policy with a fake clock: flush on size, flush on linger, leftovers start a new period."""

from __future__ import annotations

from ingest.batcher import Batcher


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_empty_batcher_has_no_deadline() -> None:
    batcher: Batcher[int] = Batcher(max_items=3, linger_s=0.01, clock=FakeClock())
    assert batcher.wait_s() is None and not batcher.due()


def test_flushes_when_full() -> None:
    batcher: Batcher[int] = Batcher(max_items=3, linger_s=10, clock=FakeClock())
    assert not batcher.add(1) and not batcher.add(2)
    assert batcher.add(3)
    assert batcher.due()
    assert batcher.take() == [1, 2, 3]
    assert len(batcher) == 0 and batcher.wait_s() is None


def test_flushes_after_linger_from_first_item() -> None:
    clock = FakeClock()
    batcher: Batcher[int] = Batcher(max_items=100, linger_s=0.01, clock=clock)
    batcher.add(1)
    clock.now += 0.006
    batcher.add(2)
    assert not batcher.due() and abs((batcher.wait_s() or 0) - 0.004) < 1e-9
    clock.now += 0.004
    assert batcher.due()
    assert batcher.take() == [1, 2]


def test_overflow_keeps_order_and_restarts_linger() -> None:
    clock = FakeClock()
    batcher: Batcher[int] = Batcher(max_items=2, linger_s=1.0, clock=clock)
    for i in range(5):
        batcher.add(i)
    assert batcher.take() == [0, 1]
    clock.now += 0.5
    assert batcher.take() == [2, 3]
    assert batcher.wait_s() == 1.0
    assert batcher.take() == [4]
