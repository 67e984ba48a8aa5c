"""CPU cost of ingest's flow control per message: the pure core (`ingest.flow.IngestFlow`) against the inline
code it replaced (a `Batcher`, an unacked counter, a pause check per message and an ordered-ack dictionary per
batch, as `ingest/service.py` had them before issue 11 item 6), side by side in one process.

Both see the same stream: messages arrive one by one, a batch is flushed when full (5,000) and committed at
once, writes finish in pairs out of order (two writers), acks go out in order. Only CPU time of this process is
counted (`time.process_time`), rounds alternate between the two and the median round is reported, so a busy
machine slows both alike; compare the ratio, not the µs.

    python -m bench.flow [--messages 500000] [--rounds 7]

Last line: one JSON object (`core_ns_per_msg`, `inline_ns_per_msg`, `core_vs_inline`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from typing import Any

from bench.common import machine_info
from ingest.batcher import Batcher
from ingest.flow import Ack, Flush, IngestFlow

BATCH = 5000


@dataclass(slots=True)
class Item:
    topic: str
    payload: bytes
    received: float
    delivery: int | None


def run_core(messages: int) -> tuple[float, int]:
    flow: IngestFlow[Item] = IngestFlow(batch_max=BATCH, linger_s=0.01, max_unacked=50_000,
                                        max_unacked_bytes=64 << 20, max_batches=4, clock=time.monotonic,
                                        random=lambda: 0.5)
    payload = b'{"ts": 1764200000, "values": {"water_level_m": 97.1}}'
    topic = "occ/v1/hydromet/HG-0001/telemetry"
    acked = 0
    pending: list[int] = []
    started = time.process_time()
    received = flow.received
    for k in range(messages):
        actions = received(Item(topic, payload, 0.0, k), len(payload))
        for action in actions:
            if type(action) is Flush:
                pending.append(action.seq)
        if len(pending) == 2:  # two writers: the second batch commits first
            for seq in (pending[1], pending[0]):
                for action in flow.committed(seq):
                    if type(action) is Ack:
                        acked += len(action.items)
            pending.clear()
    return time.process_time() - started, acked


def run_inline(messages: int) -> tuple[float, int]:
    """The replaced code, reduced to what it did per message and per batch."""

    class State:
        unacked = 0
        paused = False

    state = State()
    batcher: Batcher[Item] = Batcher(max_items=BATCH, linger_s=0.01, clock=time.monotonic)
    payload = b'{"ts": 1764200000, "values": {"water_level_m": 97.1}}'
    topic = "occ/v1/hydromet/HG-0001/telemetry"
    done: dict[int, list[Item]] = {}
    next_seq = next_ack = 0
    acked = 0
    wake = False
    taken: list[tuple[int, list[Item]]] = []
    started = time.process_time()
    for k in range(messages):
        state.unacked += 1
        item = Item(topic, payload, 0.0, k)
        if batcher.add(item):
            wake = True
        elif len(batcher) == 1:
            wake = True
        if state.unacked >= 50_000 and not state.paused:
            state.paused = True
        if wake and batcher.full():
            taken.append((next_seq, batcher.take()))
            next_seq += 1
            wake = False
        if len(taken) == 2:
            for seq, items in (taken[1], taken[0]):
                done[seq] = items
                while next_ack in done:
                    batch = done.pop(next_ack)
                    next_ack += 1
                    state.unacked -= len(batch)
                    acked += len(batch)
                    if state.paused and state.unacked <= 25_000:
                        state.paused = False
            taken.clear()
    return time.process_time() - started, acked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.flow", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    messages = args.messages - args.messages % (2 * BATCH)
    core: list[float] = []
    inline: list[float] = []
    for _ in range(args.rounds):
        for runner, into in ((run_core, core), (run_inline, inline)):
            seconds, acked = runner(messages)
            assert acked == messages, (runner.__name__, acked, messages)
            into.append(seconds)
    core_ns = statistics.median(core) / messages * 1e9
    inline_ns = statistics.median(inline) / messages * 1e9
    print(f"flow core:   {core_ns:7.0f} ns CPU per message (median of {args.rounds} rounds of {messages:,})")
    print(f"inline code: {inline_ns:7.0f} ns CPU per message")
    print(f"ratio core / inline: {core_ns / inline_ns:.2f}")
    info: dict[str, Any] = machine_info()
    print(json.dumps({"core_ns_per_msg": round(core_ns), "inline_ns_per_msg": round(inline_ns),
                      "core_vs_inline": round(core_ns / inline_ns, 3), "messages": messages,
                      "rounds": args.rounds, **info}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
