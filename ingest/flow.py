"""The ingest flow core: batching, ordered acknowledgement, the unacked bounds, retries and poison isolation.

A pure state machine in the style of the `websockets` protocol objects: no I/O, no asyncio, an injected clock
and random source. The asyncio adapter (`ingest/service.py`) feeds it events and carries out the actions it
returns; unit tests (tests/unit/test_flow.py) drive it with a fake clock.

Events in (methods)                         Actions out (returned, in the order to carry them out)
  received(item, nbytes)  a message arrived     Flush(seq, items)      decode these messages and write them
  committed(seq)          a batch's write       Write(seq, isolate)    write batch `seq` again (a retry);
                          committed                                    `isolate`: message by message
  failed(seq, failure)    a batch's write       Ack(seq, items)        acknowledge these messages now
                          raised                Pause() / Resume()     stop / start reading the transport
  tick()                  the clock reached     RetryAt(seq, at, n)    attempt n failed; retried at `at`
                          a TickAt deadline     Isolate(seq)           suspected poison: next attempt isolates
  settle()                the transport handed
                          over all it had read
  drain()                 flush what is held    StoreDown(failure)     the store just started failing
                          without lingering     StoreRecovered(s)      ... and works again after s seconds
                                                TickAt(at)             call tick() at clock time `at`

The narrow boundary with the transport is therefore: deliveries come in as opaque items with a size (the
adapter keeps a handle to acknowledge each one); Ack, Pause and Resume go out. Nothing here knows MQTT.

Contract (held by tests/unit/test_flow.py):

* Never raises on a valid event sequence; an event about an unknown or finished batch is a bug in the
  adapter and raises `ValueError`.
* Order: batches are numbered in arrival order (`seq` 0, 1, 2, ...) and `Ack`s come out strictly in that
  order, each exactly once, whichever write finishes first (MQTT 3.1.1 §4.6 / MQTT 5 §4.6: acks in the order
  the PUBLISH packets were received).
* Every item is flushed in exactly one batch, in arrival order; a batch flushes when it holds `batch_max`
  items or its oldest item has waited `linger_s` (immediately while draining), and only while fewer than
  `max_batches` batches are out (flushed and not yet acknowledged) — so decoded batches are bounded too.
  With `flush_when_idle`, what is held also flushes at once when no batch is out, at `settle()` (the end of a
  transport read) and at the commit that leaves none out: group commit. Under light load a message waits for
  nothing but its own write; once writes are busy, batches grow by the linger rule as before. Measured at
  half the sustained rate (bench/README.md): the oldest message's receive→commit time fell from ~24 to ~12 ms
  for ~10 % more CPU (twice the transactions, half the size).
* Bounds: `Pause` is emitted once when held messages reach `max_unacked` or held bytes reach
  `max_unacked_bytes`; `Resume` once when both are back at or below half (hysteresis: no pause/resume per
  message). Held = received and not yet acknowledged.
* Retries: a failed batch is retried (`RetryAt`, then `Write` from the `tick` at or after that time) after a
  capped exponential backoff with jitter: attempt n waits a uniformly random time in [d/2, d] with
  d = min(retry_initial_s · 2^(n-1), retry_max_s); it is never dropped. Failures that are not outages count
  towards `poison_attempts`; after that many the batch is written message by message (`Isolate`, then
  `Write(isolate=True)`), so that one message the store refuses is dead-lettered instead of blocking the stream.
* Health: `StoreDown` comes out once at the first failure after a success, `StoreRecovered` once at the next
  commit; never one per retry.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class Failure(enum.Enum):
    """Why a write failed, decided by the adapter from the exception type (never from its text)."""

    OUTAGE = "outage"
    """The store is unreachable (StoreUnavailable): retry, never isolate."""
    ERROR = "error"
    """Anything else: may be a message the store refuses; counts towards poison isolation."""


# -- actions --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Flush(Generic[T]):
    seq: int
    items: list[T]


@dataclass(frozen=True, slots=True)
class Write:
    seq: int
    isolate: bool


@dataclass(frozen=True, slots=True)
class Ack(Generic[T]):
    seq: int
    items: list[T]


@dataclass(frozen=True, slots=True)
class Pause:
    pass


@dataclass(frozen=True, slots=True)
class Resume:
    pass


@dataclass(frozen=True, slots=True)
class RetryAt:
    seq: int
    at: float
    attempt: int


@dataclass(frozen=True, slots=True)
class Isolate:
    seq: int


@dataclass(frozen=True, slots=True)
class StoreDown:
    failure: Failure


@dataclass(frozen=True, slots=True)
class StoreRecovered:
    down_s: float


@dataclass(frozen=True, slots=True)
class TickAt:
    at: float


Action = Flush[T] | Write | Ack[T] | Pause | Resume | RetryAt | Isolate | StoreDown | StoreRecovered | TickAt

_NOTHING: tuple[()] = ()


@dataclass(slots=True)
class _Batch(Generic[T]):
    items: list[T]
    nbytes: int
    writing: bool = True
    committed: bool = False
    attempts: int = 0
    errors: int = 0
    retry_at: float | None = None
    isolate: bool = False


class IngestFlow(Generic[T]):
    """See the module docstring for the events, the actions and the contract."""

    def __init__(
        self,
        *,
        batch_max: int,
        linger_s: float,
        max_unacked: int,
        max_unacked_bytes: int,
        max_batches: int,
        clock: Callable[[], float],
        random: Callable[[], float],
        retry_initial_s: float = 0.25,
        retry_max_s: float = 30.0,
        poison_attempts: int = 3,
        flush_when_idle: bool = False,
    ) -> None:
        if max_unacked < 1 or max_unacked_bytes < 1 or max_batches < 1:
            raise ValueError("max_unacked, max_unacked_bytes and max_batches must be at least 1")
        if not 0 < retry_initial_s <= retry_max_s:
            raise ValueError("need 0 < retry_initial_s <= retry_max_s")
        self.max_unacked = max_unacked
        self.max_unacked_bytes = max_unacked_bytes
        self.max_batches = max_batches
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.poison_attempts = poison_attempts
        self._clock = clock
        self._random = random
        if batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        self.batch_max = batch_max
        self.linger_s = linger_s
        self._idle_slots = 1 if flush_when_idle else 0  # batches out below which held items flush at once
        # The batch being filled (the policy of ingest/batcher.py, inlined: this is the per-message path).
        self._items: list[T] = []
        self._first_at = 0.0
        self._sizes: list[int] = []
        self._batches: dict[int, _Batch[T]] = {}
        self._next_seq = 0
        self._next_ack = 0
        self.unacked = 0
        self.unacked_bytes = 0
        self.paused = False
        self.draining = False
        self.store_up = True
        self._down_since: float | None = None

    # -- state --------------------------------------------------------------------------------------
    @property
    def held_in_batcher(self) -> int:
        return len(self._items)

    @property
    def batches_out(self) -> int:
        """Batches flushed and not yet acknowledged."""
        return len(self._batches)

    @property
    def idle(self) -> bool:
        """Nothing held: every message received so far has been acknowledged."""
        return self.unacked == 0

    # -- events -------------------------------------------------------------------------------------
    def received(self, item: T, nbytes: int) -> Sequence[Action[T]]:
        """One message arrived (the hot path: keep it cheap; usually returns an empty tuple)."""
        self.unacked += 1
        self.unacked_bytes += nbytes
        items = self._items
        first = not items
        if first:
            self._first_at = self._clock()
        items.append(item)
        self._sizes.append(nbytes)
        out: list[Action[T]] | None = None
        if (len(items) >= self.batch_max or self.draining) and len(self._batches) < self.max_batches:
            out = self._flush_ready()
            out.extend(self._linger_tick())
        elif first:
            out = list(self._linger_tick())
        if not self.paused and (self.unacked >= self.max_unacked or self.unacked_bytes >= self.max_unacked_bytes):
            self.paused = True
            if out is None:
                return (Pause(),)
            out.append(Pause())
        return out or _NOTHING

    def committed(self, seq: int) -> Sequence[Action[T]]:
        """The write of batch `seq` committed: acknowledge it and every batch before it that is done."""
        batch = self._writing(seq)
        batch.writing = False
        batch.committed = True
        out: list[Action[T]] = []
        if not self.store_up:
            self.store_up = True
            since, self._down_since = self._down_since, None
            out.append(StoreRecovered(self._clock() - since if since is not None else 0.0))
        batches = self._batches
        while (head := batches.get(self._next_ack)) is not None and head.committed:
            del batches[self._next_ack]
            self.unacked -= len(head.items)
            self.unacked_bytes -= head.nbytes
            out.append(Ack(self._next_ack, head.items))
            self._next_ack += 1
        if self.paused and self.unacked <= self.max_unacked // 2 and self.unacked_bytes <= self.max_unacked_bytes // 2:
            self.paused = False
            out.append(Resume())
        out.extend(self._flush_ready())
        out.extend(self._linger_tick())
        return out

    def failed(self, seq: int, failure: Failure) -> Sequence[Action[T]]:
        """The write of batch `seq` raised: schedule its retry (and isolation once it looks like poison)."""
        batch = self._writing(seq)
        batch.writing = False
        batch.attempts += 1
        out: list[Action[T]] = []
        now = self._clock()
        if self.store_up:
            self.store_up = False
            self._down_since = now
            out.append(StoreDown(failure))
        if failure is Failure.ERROR:
            batch.errors += 1
            if batch.errors >= self.poison_attempts and not batch.isolate:
                batch.isolate = True
                out.append(Isolate(seq))
        ceiling = min(self.retry_initial_s * 2 ** min(batch.attempts - 1, 62), self.retry_max_s)
        at = now + ceiling * (0.5 + 0.5 * self._random())
        batch.retry_at = at
        out.append(RetryAt(seq, at, batch.attempts))
        out.append(TickAt(at))
        return out

    def tick(self) -> Sequence[Action[T]]:
        """Time passed: start the retries that are due and flush a batch whose linger ran out."""
        now = self._clock()
        out: list[Action[T]] = []
        next_at: float | None = None
        for seq, batch in self._batches.items():
            at = batch.retry_at
            if at is None:
                continue
            if at <= now:
                batch.retry_at = None
                batch.writing = True
                out.append(Write(seq, batch.isolate))
            elif next_at is None or at < next_at:
                next_at = at
        out.extend(self._flush_ready())
        for linger in self._linger_tick():
            next_at = linger.at if next_at is None else min(next_at, linger.at)
        if next_at is not None:
            out.append(TickAt(next_at))
        return out

    def settle(self) -> Sequence[Action[T]]:
        """The transport handed over everything it had read: with `flush_when_idle` and no batch out, flush now
        rather than linger (a message arriving alone is written at once)."""
        if self._items and len(self._batches) < self._idle_slots:
            return self._flush_ready() + self._linger_tick()
        return _NOTHING

    def drain(self) -> Sequence[Action[T]]:
        """From now on flush without lingering (shutdown or leaving the share group)."""
        self.draining = True
        return self._flush_ready()

    # -- internals ----------------------------------------------------------------------------------
    def _writing(self, seq: int) -> _Batch[T]:
        batch = self._batches.get(seq)
        if batch is None or not batch.writing:
            raise ValueError(f"batch {seq} is not being written")
        return batch

    def _flush_ready(self) -> list[Action[T]]:
        """Flush every batch that is due (all that is held, while draining) as long as slots allow.

        Due: `batch_max` items held, or the oldest has waited `linger_s`. What a flush leaves behind (more than
        `batch_max` were held) starts a new linger period."""
        out: list[Action[T]] = []
        while self._items and len(self._batches) < self.max_batches and (
            self.draining or len(self._items) >= self.batch_max or self._clock() >= self._first_at + self.linger_s
            or len(self._batches) < self._idle_slots
        ):
            n = self.batch_max
            items, self._items = self._items[:n], self._items[n:]
            sizes, self._sizes = self._sizes[:n], self._sizes[n:]
            if self._items:
                self._first_at = self._clock()
            seq = self._next_seq
            self._next_seq += 1
            self._batches[seq] = _Batch(items, sum(sizes))
            out.append(Flush(seq, items))
        return out

    def _linger_tick(self) -> list[TickAt]:
        """A tick at the held items' linger deadline, when they could be flushed then.

        Not while every slot is taken: the next commit flushes them (a tick then would only spin)."""
        if not self._items or len(self._batches) >= self.max_batches:
            return []
        return [TickAt(max(self._first_at + self.linger_s, self._clock()))]
