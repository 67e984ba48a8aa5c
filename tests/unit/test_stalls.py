"""The stall watch: collector pauses and event-loop lateness, as metrics and as a dated list of recent stalls."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from datetime import datetime
from typing import Any

import pytest

from ingest.service import IngestService
from occ.metrics import Registry
from occ.models import Decoded, Device
from occ.stalls import RECENT, STALL_NOTE_S, STALL_WARN_S, StallWatch, watch_loop


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def sample(registry: Registry, name: str) -> float:
    for line in registry.render().splitlines():
        if line.split(" ", 1)[0] == name:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not rendered")


def test_a_collection_is_timed_from_start_to_stop_and_dated_when_long() -> None:
    clock, wall, registry = FakeClock(), FakeClock(), Registry()
    watch = StallWatch(registry, "t", clock=clock, wall=wall)
    watch.gc_phase("start", {"generation": 0})
    clock.now += 0.002
    watch.gc_phase("stop", {"generation": 0})
    watch.gc_phase("start", {"generation": 2})
    clock.now += 0.120
    wall.now = 5000.0
    watch.gc_phase("stop", {"generation": 2})
    assert sample(registry, "t_gc_pause_seconds_count") == 2
    assert sample(registry, "t_gc_pause_seconds_sum") == pytest.approx(0.122)
    assert sample(registry, 't_gc_seconds_total{generation="2"}') == pytest.approx(0.120)
    assert watch.summary() == {"recent_stalls": [{"at": 5000.0, "seconds": 0.12, "kind": "gc2"}]}


def test_a_stop_without_a_start_is_ignored() -> None:
    # The watch can be hooked in while a collection runs: its "stop" comes without a "start".
    registry = Registry()
    watch = StallWatch(registry, "t", clock=FakeClock())
    watch.gc_phase("stop", {"generation": 1})
    assert sample(registry, "t_gc_pause_seconds_count") == 0


def test_late_ticks_are_counted_and_only_long_ones_remembered() -> None:
    registry, wall = Registry(), FakeClock()
    watch = StallWatch(registry, "t", wall=wall)
    for late in (0.001, -0.0005, STALL_NOTE_S / 2, 0.3):
        wall.now += 1
        watch.loop_tick(late)
    assert sample(registry, "t_event_loop_lag_seconds_count") == 4
    assert sample(registry, 't_event_loop_lag_seconds_bucket{le="0.005"}') == 2  # a negative lateness counts as 0
    assert watch.summary()["recent_stalls"] == [{"at": 104.0, "seconds": 0.3, "kind": "loop"}]


def test_only_the_latest_stalls_are_kept() -> None:
    wall = FakeClock()
    watch = StallWatch(Registry(), "t", wall=wall)
    for _ in range(RECENT + 5):
        wall.now += 1
        watch.loop_tick(0.1)
    stalls = watch.summary()["recent_stalls"]
    assert len(stalls) == RECENT
    assert stalls[0]["at"] == 100.0 + 6 and stalls[-1]["at"] == 100.0 + RECENT + 5


def test_a_stall_of_a_second_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    watch = StallWatch(Registry(), "t")
    with caplog.at_level(logging.WARNING, logger="occ.stalls"):
        watch.loop_tick(0.5)
        watch.loop_tick(STALL_WARN_S + 0.2)
    assert [r.getMessage() for r in caplog.records] == ["the event loop stalled this process for 1.20 s"]


def test_real_collections_are_seen_while_hooked_and_not_after() -> None:
    registry = Registry()
    watch = StallWatch(registry, "t")
    unhook = watch.install_gc()
    try:
        gc.collect()
        gc.collect(0)
    finally:
        unhook()
    seen = sample(registry, "t_gc_pause_seconds_count")
    assert seen >= 2  # the two asked for, and any the allocator started meanwhile
    assert sample(registry, 't_gc_seconds_total{generation="0"}') > 0
    assert sample(registry, 't_gc_seconds_total{generation="2"}') > 0
    gc.collect()
    assert sample(registry, "t_gc_pause_seconds_count") == seen
    unhook()  # twice is harmless


async def test_a_blocked_event_loop_is_measured_as_late() -> None:
    watch = StallWatch(Registry(), "t")
    task = asyncio.create_task(watch_loop(watch, tick_s=0.01))
    try:
        await asyncio.sleep(0.03)
        # a callback that holds the loop (a long statement built in Python, a big collection)
        asyncio.get_running_loop().call_soon(time.sleep, 0.2)
        await asyncio.sleep(0.25)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    loop_stalls = [s for s in watch.summary()["recent_stalls"] if s["kind"] == "loop"]
    assert len(loop_stalls) == 1 and loop_stalls[0]["seconds"] >= 0.18


async def test_ingest_reports_its_stalls_in_health_and_metrics() -> None:
    service = IngestService(mqtt_url="mqtt://127.0.0.1:1", database_url="postgresql://127.0.0.1:1/x", http_port=None)
    service.stalls.loop_tick(0.2)
    assert service.health()["recent_stalls"][0]["seconds"] == 0.2
    rendered = service.metrics.registry.render()
    for name in ("occ_ingest_event_loop_lag_seconds_bucket", "occ_ingest_gc_pause_seconds_count",
                 "occ_ingest_gc_seconds_total"):
        assert name in rendered


async def test_ingest_decodes_a_large_batch_in_slices_and_lets_the_loop_run_between_them() -> None:
    # A writer whose database answered must not wait for a whole batch's decoding (~25 ms for 5,000 messages).
    from ingest.flow import Flush
    from ingest.service import DECODE_SLICE, Inbound

    service = IngestService(mqtt_url="mqtt://127.0.0.1:1", database_url="postgresql://127.0.0.1:1/x", http_port=None)
    service.decoder.set_devices({"H-1": Device(id="H-1", kind="hydromet", name="H-1")})
    count = DECODE_SLICE * 3 + 1
    messages = [Inbound("occ/v1/hydromet/H-1/telemetry", b'{"values":{"rain_mm":1}}', time.time(), i)
                for i in range(count)]
    decoded_before: list[int] = []  # the ticker's count when each message was decoded
    real = service.decoder

    class CountingDecoder:
        def decode(self, topic: str, payload: bytes, now: datetime) -> Decoded:
            decoded_before.append(ticks)
            return real.decode(topic, payload, now)

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    service.decoder = CountingDecoder()  # type: ignore[assignment]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticking = asyncio.create_task(ticker())
    decoding = asyncio.create_task(service._decode_loop())
    service._decodes.put_nowait(Flush(1, messages))
    write = await asyncio.wait_for(service._writes.get(), 5)
    for task in (ticking, decoding):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert write.seq == 1 and len(service._batches[1].messages) == count
    # the other task ran between the slices, and never inside one
    assert len(set(decoded_before)) == 4
    assert [len([t for t in decoded_before if t == v]) for v in sorted(set(decoded_before))] == [
        DECODE_SLICE, DECODE_SLICE, DECODE_SLICE, 1]
