"""Checkpoint + journal (issue 6 §7, the end-to-end throughput work): the engine restored from a checkpoint and
replaying the inputs recorded since is the engine that recorded them — same state, same transitions after.

The service commits each step's recorded inputs (cheap: what arrived) and a snapshot only every few seconds;
these tests hold the core to the property that makes that safe, on a random stream over every rule kind."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from alerts.engine import Engine
from alerts.rate import RateTracker
from alerts.rules import parse_rules
from occ.models import Device

T0 = 1_784_000_000.0
RULES = """
rules:
  - name: flood
    kind: threshold
    select: {kind: hydromet, has: [alarm_levels_m]}
    metric: water_level_m
    hysteresis: 0.1
    levels:
      - {name: I, severity: 1, enter: alarm_levels_m.I}
      - {name: II, severity: 2, enter: alarm_levels_m.II}
      - {name: III, severity: 3, enter: alarm_levels_m.III}
    for: 20m
    keep_firing_for: 15m
    deescalate_after: 30m
  - name: rain-3h
    kind: accumulation
    select: {kind: hydromet}
    metric: rain_mm
    window: 3h
    resolution: 10m
    levels: [{name: heavy, severity: 2, enter: 30}, {name: intense, severity: 3, enter: 60}]
    keep_firing_for: 10m
  - name: rain-over-50
    kind: accumulation
    select: {kind: hydromet}
    metric: rain_mm
    window: 1h
    resolution: 10m
    levels: [{name: over, severity: 1, enter: 20}]
    internal: true
  - name: district-rain
    kind: composite
    of: [rain-over-50]
    scope: area
    require: 2
    severity: 3
  - name: rising
    kind: rate
    select: {kind: hydromet}
    metric: water_level_m
    window: 1h
    levels: [{name: fast, severity: 2, enter: 1.0, exit: 0.5}]
  - name: silent
    kind: deadman
    select: {kind: hydromet}
    after: 3
    grace: 10m
    severity: 1
  - name: offline
    kind: offline
    select: {kind: camera}
    for: 2m
    severity: 2
  - name: incident
    kind: event
    select: {kind: camera}
    event: incident
    min_confidence: 0.8
    hold: 15m
    severity: 2
"""
STATIONS = [Device(f"S{i}", "hydromet", f"Trạm {i}", area=f"area-{i % 2}",
                   attributes={"report_interval_s": 600, "alarm_levels_m": {"I": 10.0, "II": 11.0, "III": 12.0}})
            for i in range(6)]
CAMERAS = [Device(f"C{i}", "camera", area=f"area-{i % 2}") for i in range(3)]
DEVICES = STATIONS + CAMERAS


def new_engine(**kw: Any) -> Engine:
    return Engine(parse_rules(RULES, "rules.yaml"), DEVICES, **kw)


def step_inputs(rng: random.Random, k: int, levels: dict[str, float]) -> list[tuple[Any, ...]]:
    """One step of a random stream: some stations report (some late, some duplicated), cameras flap, a tick."""
    now = T0 + 300 * k
    calls: list[tuple[Any, ...]] = []
    for d in STATIONS:
        if rng.random() < 0.15:
            continue  # a missed report (deadman material)
        levels[d.id] = max(8.0, min(13.5, levels[d.id] + rng.gauss(0, 0.5)))
        ts = now - rng.choice((0, 0, 0, 60, 2000))  # now and then an old (late) reading
        calls.append(("r", d.id, "water_level_m", ts, round(levels[d.id], 2)))
        calls.append(("r", d.id, "rain_mm", ts, round(rng.expovariate(0.4) if rng.random() < 0.3 else 0.0, 1)))
        if rng.random() < 0.1:
            calls.append(calls[-1])  # redelivered
    for c in CAMERAS:
        if rng.random() < 0.1:
            calls.append(("s", c.id, rng.choice(("online", "offline")), now, True))
        if rng.random() < 0.05:
            calls.append(("e", c.id, now, "incident", {"confidence": rng.choice((0.5, 0.9))}))
    calls.append(("k",))
    calls.append(("t", now + 1))
    return calls


def apply(engine: Engine, calls: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    out = []
    for c in calls:
        if c[0] == "r":
            engine.feed_reading(*c[1:])
        elif c[0] == "s":
            engine.feed_status(c[1], c[2], c[3], clock=c[4])
        elif c[0] == "e":
            engine.feed_event(*c[1:])
        elif c[0] == "k":
            out.extend(engine.take().transitions)
        else:
            out.extend(engine.tick(c[1]).transitions)
    return [(t.fingerprint, t.from_state, t.state, t.severity, t.ts, t.late, t.muted, t.value) for t in out]


def state_of(engine: Engine) -> dict[str, Any]:
    snap = {k: orjson.loads(v) for k, v in engine.snapshot(full=True).items() if v is not None}
    clocks = snap.pop("m:engine")
    return {**snap, "clocks": (clocks["now"], clocks["watermark"], clocks["late_before"])}


@pytest.mark.parametrize("seed", range(4))
def test_checkpoint_plus_replayed_journal_is_the_recording_engine(seed: int) -> None:
    """Checkpoints are taken as the service takes them: started between steps, captured piecemeal while the
    engine goes on (copy-on-write by device), written when whole. A kill at any step (even while a checkpoint
    is being captured) restores the last whole checkpoint and replays the journal after its position."""
    rng = random.Random(seed)
    levels = {d.id: 9.0 for d in STATIONS}
    live = new_engine()
    live.record_inputs()
    stored: dict[str, bytes] = {}                # what the whole checkpoints wrote
    journal: list[tuple[int, list[Any]]] = []    # (step, records as JSON) after the last whole checkpoint
    capturing_from: int | None = None
    for k in range(160):
        apply(live, step_inputs(rng, k, levels))
        journal.append((k, orjson.loads(orjson.dumps(live.take_journal()))))
        if capturing_from is not None and live.continue_checkpoint(rng.choice((0, 1, 3))):
            for key, value in live.take_checkpoint().items():
                if value is None:
                    stored.pop(key, None)
                else:
                    stored[key] = value
            journal = [(step, records) for step, records in journal if step > capturing_from]
            capturing_from = None
        if capturing_from is None and rng.random() < 0.15:  # a checkpoint of the state after step k begins
            live.start_checkpoint()
            capturing_from = k
        if rng.random() < 0.1:       # kill -9 here: restore the last checkpoint, replay what followed it
            restarted = new_engine()
            restarted.restore(dict(stored))
            restarted.replay(rec for _, records in journal for rec in records)
            assert state_of(restarted) == state_of(live), f"step {k}"
            # ... and both decide the same from here on.
            rng_state = rng.getstate()
            ahead = [step_inputs(rng, k + 1 + j, dict(levels)) for j in range(12)]
            rng.setstate(rng_state)
            twin = new_engine()
            twin.restore(dict(stored))
            twin.replay(rec for _, records in journal for rec in records)
            twin.started = live.started  # same start-up grace as the live one, to compare deadman too
            reference = _copy(live)
            assert [apply(twin, c) for c in ahead] == [apply(reference, c) for c in ahead]
    assert stored and journal  # the run exercised both


def test_a_checkpoint_captured_piecemeal_is_the_state_when_it_began() -> None:
    rng = random.Random(11)
    levels = {d.id: 9.0 for d in STATIONS}
    eng = new_engine()
    for k in range(40):
        apply(eng, step_inputs(rng, k, levels))
    eng.snapshot()
    for k in range(40, 50):
        apply(eng, step_inputs(rng, k, levels))
    expected = eng.snapshot(full=True)
    eng.start_checkpoint()
    assert eng.checkpointing
    for k in range(50, 60):  # the engine goes on; devices are captured as they are about to change
        apply(eng, step_inputs(rng, k, levels))
        eng.continue_checkpoint(1)
    got = eng.take_checkpoint()
    assert not eng.checkpointing
    assert len(got) > 10 and all(expected[key] == value for key, value in got.items())


def _copy(live: Engine) -> Engine:
    """An independent copy of the live engine at this point (a fresh engine fed the same full history would do
    too; restoring the live engine's own full snapshot is quicker and does not touch `live`)."""
    twin = new_engine()
    twin.restore({k: v for k, v in live.snapshot(full=True).items() if v is not None})
    twin.started = live.started
    twin.now = live.now
    twin._late_before = live._late_before
    return twin


def test_replay_discards_outputs_and_records_nothing() -> None:
    eng = new_engine()
    eng.record_inputs()
    eng.tick(T0)
    eng.feed_reading("S0", "water_level_m", T0, 12.5)
    recorded = eng.take_journal()
    assert recorded == [("t", T0), ("r", "S0", "water_level_m", T0, 12.5)]
    again = new_engine()
    again.record_inputs()
    assert again.replay(recorded) == 2
    assert not again.take().transitions
    assert again.take_journal() == [("k",)]  # only the take after the replay
    assert again.open_fingerprints() == {"flood|S0"}  # pending, as in the recording engine


def test_accumulation_windows_and_duplicates_survive_a_snapshot() -> None:
    """Series state (windows, newest timestamp) is in the snapshot: the rain of the last hours counts after a
    restart, and a reading redelivered after it is still a duplicate."""
    eng = new_engine()
    eng.tick(T0)
    for k in range(5):
        eng.feed_reading("S1", "rain_mm", T0 + 600 * k, 5.0)  # 25 mm in 3 h: below 30
    eng.take()
    state = {k: v for k, v in eng.snapshot().items() if v is not None}
    assert "s:S1|rain_mm" in state
    restarted = new_engine()
    restarted.restore(state)
    restarted.feed_reading("S1", "rain_mm", T0 + 2400, 5.0)  # redelivered: must not count twice
    assert not restarted.take().transitions
    restarted.feed_reading("S1", "rain_mm", T0 + 3000, 6.0)  # 31 mm
    [t] = restarted.take().transitions
    assert (t.rule, t.state, t.value) == ("rain-3h", "firing", pytest.approx(31.0))


def test_last_seen_is_state_only_for_devices_a_deadman_rule_watches() -> None:
    eng = new_engine()
    eng.tick(T0)
    eng.feed_reading("S0", "rain_mm", T0, 0.0)
    eng.feed_status("C0", "online", T0)
    eng.feed_event("C1", T0, "incident", {"confidence": 0.1})
    keys = set(eng.snapshot())
    assert "d:S0" in keys and not {"d:C0", "d:C1"} & keys


def test_rate_tracker_state_is_bounded_whatever_the_report_rate() -> None:
    tracker = RateTracker(3600.0)
    rates = [tracker.add(T0 + s, 0.001 * s) for s in range(4 * 3600)]  # one reading a second, rising 3.6 m/h
    assert len(tracker.points) <= 66
    assert rates[-1] == pytest.approx(3.6)
    ten_minutes = RateTracker(3600.0)
    for k in range(12):
        ten_minutes.add(T0 + 600 * k, float(k))
    assert len(ten_minutes.points) == 7  # usual report intervals are never thinned: the hour plus its start
