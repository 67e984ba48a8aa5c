"""The ingest flow core (ingest/flow.py) against its contract: table-driven steps with a fake clock, plus a
seeded random simulation of a transport and a flaky store that checks the invariants on every step."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import pytest

from ingest.flow import (
    Ack,
    Failure,
    Flush,
    IngestFlow,
    Isolate,
    Pause,
    Resume,
    RetryAt,
    StoreDown,
    StoreRecovered,
    TickAt,
    Write,
)

OUTAGE, ERROR = Failure.OUTAGE, Failure.ERROR


@dataclass
class FakeClock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


def make(clock: FakeClock, jitter: float = 0.0, **options: Any) -> IngestFlow[str]:
    settings: dict[str, Any] = dict(batch_max=2, linger_s=0.01, max_unacked=100, max_unacked_bytes=10_000,
                                    max_batches=4, retry_initial_s=0.25, retry_max_s=2.0, poison_attempts=3)
    settings.update(options)
    return IngestFlow(clock=clock, random=lambda: jitter, **settings)


def run(flow: IngestFlow[str], clock: FakeClock, steps: list[tuple[Any, ...]]) -> None:
    """Each step is (event, *args, expected actions); `wait` moves the fake clock."""
    for number, (event, *args, expected) in enumerate(steps):
        if event == "wait":
            clock.now += args[0]
            continue
        if event == "recv":
            got = flow.received(args[0], args[1] if len(args) > 1 else 10)
        elif event == "commit":
            got = flow.committed(args[0])
        elif event == "fail":
            got = flow.failed(args[0], args[1])
        elif event == "tick":
            got = flow.tick()
        elif event == "drain":
            got = flow.drain()
        elif event == "settle":
            got = flow.settle()
        else:
            raise AssertionError(event)
        assert list(got) == expected, f"step {number} ({event} {args}): {list(got)} != {expected}"


T0 = 100.0

CASES: dict[str, tuple[dict[str, Any], list[tuple[Any, ...]]]] = {
    "flush when idle: what a read brought is written at once when no batch is out": ({"flush_when_idle": True}, [
        ("recv", "a", [TickAt(T0 + 0.01)]),
        ("settle", [Flush(0, ["a"])]),  # nothing out: no linger
        ("recv", "b", [TickAt(T0 + 0.01)]),
        ("settle", []),  # batch 0 is being written: b lingers
        ("commit", 0, [Ack(0, ["a"]), Flush(1, ["b"])]),  # none out any more: b at once
        ("settle", []),  # nothing held
        ("recv", "c", [TickAt(T0 + 0.01)]),
        ("wait", 0.01, None),
        ("tick", [Flush(2, ["c"])]),  # while a write is out, the linger rule as before
    ]),
    "without flush when idle, settle changes nothing": ({}, [
        ("recv", "a", [TickAt(T0 + 0.01)]),
        ("settle", []),
        ("wait", 0.01, None),
        ("tick", [Flush(0, ["a"])]),
    ]),
    "a full batch flushes at once": ({}, [
        ("recv", "a", [TickAt(T0 + 0.01)]),
        ("recv", "b", [Flush(0, ["a", "b"])]),
        ("tick", []),
    ]),
    "a partial batch flushes when its oldest item lingered": ({}, [
        ("recv", "a", [TickAt(T0 + 0.01)]),
        ("wait", 0.005, None),
        ("tick", [TickAt(T0 + 0.01)]),  # early (another deadline's tick): asks again
        ("wait", 0.006, None),
        ("tick", [Flush(0, ["a"])]),
        ("recv", "b", [TickAt(T0 + 0.011 + 0.01)]),
    ]),
    "acks go out in arrival order whichever write commits first": ({}, [
        ("recv", "a", [TickAt(T0 + 0.01)]),
        ("recv", "b", [Flush(0, ["a", "b"])]),
        ("recv", "c", [TickAt(T0 + 0.01)]),
        ("recv", "d", [Flush(1, ["c", "d"])]),
        ("recv", "e", [TickAt(T0 + 0.01)]),
        ("recv", "f", [Flush(2, ["e", "f"])]),
        ("commit", 2, []),
        ("commit", 1, []),
        ("commit", 0, [Ack(0, ["a", "b"]), Ack(1, ["c", "d"]), Ack(2, ["e", "f"])]),
    ]),
    "pause at the message bound, resume at half of it": ({"max_unacked": 4}, [
        ("recv", "a", [TickAt(T0 + 0.01)]),
        ("recv", "b", [Flush(0, ["a", "b"])]),
        ("recv", "c", [TickAt(T0 + 0.01)]),
        ("recv", "d", [Flush(1, ["c", "d"]), Pause()]),
        ("commit", 0, [Ack(0, ["a", "b"]), Resume()]),
        ("recv", "e", [TickAt(T0 + 0.01)]),
    ]),
    "pause at the byte bound (a few big messages), resume at half of it": ({"max_unacked_bytes": 1000}, [
        ("recv", "a", 600, [TickAt(T0 + 0.01)]),
        ("recv", "b", 500, [Flush(0, ["a", "b"]), Pause()]),
        ("recv", "c", 10, [TickAt(T0 + 0.01)]),  # already on the wire when reading paused
        ("wait", 0.01, None),
        ("tick", [Flush(1, ["c"])]),
        ("commit", 1, []),
        ("commit", 0, [Ack(0, ["a", "b"]), Ack(1, ["c"]), Resume()]),
    ]),
    "one message bigger than the byte bound still flows": ({"max_unacked_bytes": 100}, [
        ("recv", "huge", 5000, [TickAt(T0 + 0.01), Pause()]),
        ("wait", 0.01, None),
        ("tick", [Flush(0, ["huge"])]),
        ("commit", 0, [Ack(0, ["huge"]), Resume()]),
    ]),
    "no more than max_batches out: the next batch waits for a commit": ({"max_batches": 1}, [
        ("recv", "a", [TickAt(T0 + 0.01)]),
        ("recv", "b", [Flush(0, ["a", "b"])]),
        ("recv", "c", []),  # no slot: no timer either (the commit flushes)
        ("recv", "d", []),
        ("recv", "e", []),
        ("wait", 1.0, None),
        ("tick", []),
        ("commit", 0, [Ack(0, ["a", "b"]), Flush(1, ["c", "d"])]),  # "e" lingers anew from here
        ("commit", 1, [Ack(1, ["c", "d"]), TickAt(T0 + 1.0 + 0.01)]),
        ("wait", 0.01, None),
        ("tick", [Flush(2, ["e"])]),
    ]),
    "an outage is retried with capped exponential backoff and reported once": ({}, [
        ("recv", "a", [TickAt(T0 + 0.01)]),
        ("recv", "b", [Flush(0, ["a", "b"])]),
        ("fail", 0, OUTAGE, [StoreDown(OUTAGE), RetryAt(0, T0 + 0.125, 1), TickAt(T0 + 0.125)]),
        ("wait", 0.1, None),
        ("tick", [TickAt(T0 + 0.125)]),
        ("wait", 0.025, None),
        ("tick", [Write(0, False)]),
        ("fail", 0, OUTAGE, [RetryAt(0, T0 + 0.375, 2), TickAt(T0 + 0.375)]),
        ("wait", 0.25, None),
        ("tick", [Write(0, False)]),
        ("fail", 0, OUTAGE, [RetryAt(0, T0 + 0.875, 3), TickAt(T0 + 0.875)]),
        ("wait", 0.5, None),
        ("tick", [Write(0, False)]),
        ("fail", 0, OUTAGE, [RetryAt(0, T0 + 1.875, 4), TickAt(T0 + 1.875)]),
        ("wait", 1.0, None),
        ("tick", [Write(0, False)]),
        ("fail", 0, OUTAGE, [RetryAt(0, T0 + 2.875, 5), TickAt(T0 + 2.875)]),  # capped: 2.0 · [0.5, 1]
        ("wait", 1.0, None),
        ("tick", [Write(0, False)]),
        ("commit", 0, [StoreRecovered(2.875 - 0.0), Ack(0, ["a", "b"])]),
    ]),
    "errors that are not outages isolate the batch after poison_attempts": ({}, [
        ("recv", "a", [TickAt(T0 + 0.01)]),
        ("recv", "b", [Flush(0, ["a", "b"])]),
        ("fail", 0, ERROR, [StoreDown(ERROR), RetryAt(0, T0 + 0.125, 1), TickAt(T0 + 0.125)]),
        ("wait", 0.125, None),
        ("tick", [Write(0, False)]),
        ("fail", 0, OUTAGE, [RetryAt(0, T0 + 0.375, 2), TickAt(T0 + 0.375)]),  # outages do not count
        ("wait", 0.25, None),
        ("tick", [Write(0, False)]),
        ("fail", 0, ERROR, [RetryAt(0, T0 + 0.875, 3), TickAt(T0 + 0.875)]),
        ("wait", 0.5, None),
        ("tick", [Write(0, False)]),
        ("fail", 0, ERROR, [Isolate(0), RetryAt(0, T0 + 1.875, 4), TickAt(T0 + 1.875)]),
        ("wait", 1.0, None),
        ("tick", [Write(0, True)]),
        ("commit", 0, [StoreRecovered(1.875), Ack(0, ["a", "b"])]),
    ]),
    "a batch waiting for its retry does not hold back the others' writes, only their acks": ({}, [
        ("recv", "a", [TickAt(T0 + 0.01)]),
        ("recv", "b", [Flush(0, ["a", "b"])]),
        ("recv", "c", [TickAt(T0 + 0.01)]),
        ("recv", "d", [Flush(1, ["c", "d"])]),
        ("fail", 0, OUTAGE, [StoreDown(OUTAGE), RetryAt(0, T0 + 0.125, 1), TickAt(T0 + 0.125)]),
        ("commit", 1, [StoreRecovered(0.0)]),
        ("wait", 0.2, None),
        ("tick", [Write(0, False)]),
        ("commit", 0, [Ack(0, ["a", "b"]), Ack(1, ["c", "d"])]),
    ]),
    "draining flushes at once, without lingering": ({}, [
        ("recv", "a", [TickAt(T0 + 0.01)]),
        ("drain", [Flush(0, ["a"])]),
        ("recv", "b", [Flush(1, ["b"])]),
        ("commit", 0, [Ack(0, ["a"])]),
        ("commit", 1, [Ack(1, ["b"])]),
    ]),
    "an earlier tick asks again for a later deadline": ({}, [
        ("recv", "a", [TickAt(T0 + 0.01)]),
        ("recv", "b", [Flush(0, ["a", "b"])]),
        ("fail", 0, OUTAGE, [StoreDown(OUTAGE), RetryAt(0, T0 + 0.125, 1), TickAt(T0 + 0.125)]),
        ("recv", "c", [TickAt(T0 + 0.01)]),
        ("wait", 0.01, None),
        ("tick", [Flush(1, ["c"]), TickAt(T0 + 0.125)]),
    ]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_steps(name: str) -> None:
    options, steps = CASES[name]
    clock = FakeClock(T0)
    run(make(clock, **options), clock, steps)


def test_jitter_spans_half_to_full_backoff() -> None:
    for jitter, expected in ((0.0, 0.125), (0.5, 0.1875), (1.0, 0.25)):
        clock = FakeClock(T0)
        flow = make(clock, jitter=jitter, batch_max=1)
        [flush] = [a for a in flow.received("a", 1) if isinstance(a, Flush)]
        retry = next(a for a in flow.failed(flush.seq, OUTAGE) if isinstance(a, RetryAt))
        assert retry.at == pytest.approx(T0 + expected)


def test_events_about_batches_not_being_written_are_adapter_bugs() -> None:
    clock = FakeClock()
    flow = make(clock, batch_max=1)
    flow.received("a", 1)
    with pytest.raises(ValueError):
        flow.committed(7)
    flow.committed(0)
    with pytest.raises(ValueError):
        flow.committed(0)  # twice
    flow.received("b", 1)
    flow.failed(1, OUTAGE)
    with pytest.raises(ValueError):
        flow.committed(1)  # waiting for its retry, not being written


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        make(FakeClock(), max_unacked=0)
    with pytest.raises(ValueError):
        make(FakeClock(), retry_initial_s=5.0, retry_max_s=1.0)


@pytest.mark.parametrize("seed", range(20))
def test_random_runs_ack_everything_once_in_order_within_the_bounds(seed: int) -> None:
    """A transport that honours Pause/Resume, writers that finish in random order and fail at random (some
    outages, some errors), and a clock that jumps: every item is acknowledged exactly once, in arrival order,
    and the transport never has to deliver while paused beyond what was already on the wire."""
    rng = random.Random(seed)
    clock = FakeClock()
    max_unacked, max_bytes = rng.choice([5, 20, 200]), rng.choice([300, 3000, 10**9])
    flow: IngestFlow[str] = IngestFlow(
        batch_max=rng.choice([1, 3, 10]), linger_s=rng.choice([0.0, 0.01, 0.2]), max_unacked=max_unacked,
        max_unacked_bytes=max_bytes, max_batches=rng.choice([1, 2, 4]), clock=clock, random=rng.random,
        retry_initial_s=0.05, retry_max_s=1.0, poison_attempts=2, flush_when_idle=rng.random() < 0.5,
    )
    total = 400
    sent = acked = 0
    paused = False
    writing: list[int] = []
    next_tick: float | None = None
    acked_items: list[str] = []
    in_flight_when_paused = 8  # messages already on the wire when Pause is carried out

    def apply(actions: Any) -> None:
        nonlocal paused, next_tick, acked
        for action in actions:
            if isinstance(action, Pause):
                assert not paused
                paused = True
            elif isinstance(action, Resume):
                assert paused
                paused = False
            elif isinstance(action, Flush):
                writing.append(action.seq)
            elif isinstance(action, Write):
                writing.append(action.seq)
            elif isinstance(action, TickAt):
                next_tick = action.at if next_tick is None else min(next_tick, action.at)
            elif isinstance(action, Ack):
                acked_items.extend(action.items)

    budget = in_flight_when_paused
    for _ in range(100_000):
        if len(acked_items) == total:
            break
        choice = rng.random()
        if sent < total and (not paused or budget > 0) and choice < 0.5:
            if paused:
                budget -= 1
            apply(flow.received(f"m{sent}", rng.randint(1, 100)))
            sent += 1
            if rng.random() < 0.3:  # the end of a transport read
                apply(flow.settle())
            if not paused:
                budget = in_flight_when_paused
            assert flow.unacked <= max_unacked + in_flight_when_paused
        elif writing and choice < 0.8:
            seq = writing.pop(rng.randrange(len(writing)))
            roll = rng.random()
            if roll < 0.15:
                apply(flow.failed(seq, OUTAGE))
            elif roll < 0.25:
                apply(flow.failed(seq, ERROR))
            else:
                apply(flow.committed(seq))
        else:
            clock.now += rng.choice([0.001, 0.01, 0.1, 0.5])
            if next_tick is not None and clock.now >= next_tick:
                next_tick = None
                apply(flow.tick())
        if sent == total and not writing and next_tick is None and len(acked_items) < total:
            apply(flow.drain())  # the end of the stream: nothing more arrives to fill the batch
    assert acked_items == [f"m{i}" for i in range(total)]
    assert flow.idle and flow.unacked_bytes == 0 and flow.batches_out == 0 and not flow.paused
