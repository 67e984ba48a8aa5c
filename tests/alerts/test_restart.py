"""Restart safety and topic separation through a real broker and PostgreSQL.

* `kill -9` of `occ alerts` at arbitrary moments (one of them inside a pending period): at the end the stored
  transitions are exactly those the pure engine computes for the same readings — none re-fired, lost or
  duplicated — the pending alert fired once, on time, and every stored transition was published.
* Ingest never receives, and never dead-letters, an alert message: alert topics lie outside the device space.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import orjson
import pytest

from alerts.engine import Engine
from alerts.rules import parse_rules
from occ.embedded import free_port
from occ.models import Device
from tests.alerts.helpers import ROOT, Recorder, running_alerts
from tests.integration.ingest_helpers import Publisher, fetch, running_ingest, seed_devices

STATION = Device("HG-K9-WL01", "hydromet", "Sông Lô tại Thử Nghiệm", area="bac-quang",
                 attributes={"report_interval_s": 600, "alarm_levels_m": {"I": 61.5, "II": 63.5, "III": 65.5}})
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
    for: 30m
    keep_firing_for: 20m
    deescalate_after: 30m
"""
T0 = 1_784_000_000.0
STAGES = [60.0] * 3 + [62.0] * 6 + [64.0] * 8 + [66.0] * 5 + [64.2] * 6 + [60.0] * 8 + [62.2] * 2 + [60.5] * 6


def readings() -> list[tuple[float, float]]:
    return [(T0 + k * 600, value + 0.01 * (k % 3)) for k, value in enumerate(STAGES)]


def reference() -> list[tuple[str, str, int, float]]:
    """What the pure engine decides for the same readings (event clock, a tick after every reading)."""
    engine = Engine(parse_rules(RULES), [STATION], event_clock=True)
    out = []
    for ts, value in readings():
        engine.feed_reading(STATION.id, "water_level_m", ts, value)
        out.extend(engine.take().transitions)
        out.extend(engine.tick(ts).transitions)
    return [(t.from_state, t.state, t.severity, t.ts) for t in out]


def start_alerts(database_url: str, mqtt_url: str, rules_dir: Path, prefix: str, client_id: str,
                 *, wait: bool = True, checkpoint_s: str = "3600") -> subprocess.Popen[bytes]:
    """`occ alerts` as a child process; with `wait`, returns once /healthz says it is connected."""
    port = free_port()
    env = {**os.environ, "OCC_DATABASE_URL": database_url, "OCC_MQTT_URL": mqtt_url,
           "OCC_ALERTS__RULES_DIR": str(rules_dir), "OCC_ALERTS__CLOCK": "event",
           "OCC_ALERTS__CLIENT_ID": client_id, "OCC_ALERTS__HTTP_PORT": str(port), "OCC_ALERTS__TICK_MS": "100",
           "OCC_ALERTS__CHECKPOINT_S": checkpoint_s,
           "OCC_MQTT__TOPIC_PREFIX": prefix, "OCC_CONFIG_DIR": str(ROOT / "config"),
           "OCC_DATABASE__TIMESCALEDB": "off", "OCC_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "occ.cli", "alerts"], env=env)
    deadline = time.monotonic() + 60
    while wait and time.monotonic() < deadline:
        assert proc.poll() is None, f"occ alerts exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        time.sleep(0.1)
    return proc


@pytest.mark.parametrize("checkpoint_s", ["3600", "0.2"], ids=["journal-only", "checkpoints-while-running"])
async def test_kill_9_at_any_moment_neither_refires_loses_nor_duplicates(
        database_url: str, mqtt_url: str, mqtt_services_url: str, tmp_path: Path, checkpoint_s: str) -> None:
    """`journal-only`: no checkpoint while running (only the one after the replay at start), so each kill -9
    leaves a journal the next start must replay exactly. `checkpoints-while-running`: checkpoints every 0.2 s,
    captured piecemeal and written in the background, so kills fall before, during and after them."""
    await seed_devices(database_url, [STATION])
    (tmp_path / "flood.yaml").write_text(RULES)
    prefix = f"k{uuid.uuid4().hex[:8]}/v1"
    client_id = f"alerts-k9-{uuid.uuid4().hex[:6]}"
    expected = reference()
    assert [(f, t) for f, t, _, _ in expected][:2] == [("ok", "pending"), ("pending", "firing")]
    recorder = Recorder(mqtt_url, f"{prefix}/_sys/alerts/#")
    publisher = Publisher(mqtt_url)
    topic = f"{prefix}/hydromet/{STATION.id}/telemetry"
    rng = random.Random(9)
    proc = start_alerts(database_url, mqtt_services_url, tmp_path, prefix, client_id,
                                checkpoint_s=checkpoint_s)
    kills = 0
    try:
        data = readings()
        # 1. Into a pending period: the reading that opens it, wait until it is published, then kill -9.
        first_high = next(i for i, (_, v) in enumerate(data) if v >= 61.5)
        for ts, value in data[: first_high + 1]:
            publisher.publish(topic, orjson.dumps({"ts": ts, "values": {"water_level_m": value}}))
        publisher.wait()
        assert await asyncio.to_thread(recorder.wait_for, lambda ps: any(p["state"] == "pending" for p in ps), 60)
        if checkpoint_s == "3600":
            [journal] = await fetch(database_url, "SELECT count(*) AS n FROM alert_engine_journal")
            assert journal["n"] > 0, "the state to recover is in the journal: the restart must replay it"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        # 2. While it is down the stream goes on (queued on its persistent session); restart, then kill again
        # at random moments while it works through the rest.
        rest = data[first_high + 1:]
        chunks = [rest[i: i + 7] for i in range(0, len(rest), 7)]
        for n, chunk in enumerate(chunks):
            for ts, value in chunk:
                publisher.publish(topic, orjson.dumps({"ts": ts, "values": {"water_level_m": value}}))
            publisher.wait()
            if n == 0:
                proc = start_alerts(database_url, mqtt_services_url, tmp_path, prefix, client_id,
                                checkpoint_s=checkpoint_s)
            elif n in (2, 4):
                await asyncio.sleep(rng.uniform(0.0, 1.5))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                proc = start_alerts(database_url, mqtt_services_url, tmp_path, prefix, client_id,
                                checkpoint_s=checkpoint_s)
        # 3. Let it finish.
        deadline = time.monotonic() + 60
        rows = []
        while time.monotonic() < deadline:
            rows = await fetch(database_url,
                               "SELECT id, from_state, to_state, to_severity, ts, published_at FROM alert_transitions "
                               "ORDER BY id")
            if len(rows) >= len(expected) and all(r["published_at"] for r in rows):
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        rows = await fetch(database_url, "SELECT id, from_state, to_state, to_severity, ts FROM alert_transitions "
                                         "ORDER BY id")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
        publisher.close()
        recorder.close()
    assert kills == 3
    got = [(r["from_state"], r["to_state"], r["to_severity"], r["ts"].timestamp()) for r in rows]
    assert got == expected
    pending_at = expected[0][3]
    assert got[1] == ("pending", "firing", 1, pending_at + 1800), "fired once, exactly `for` after pending"
    assert {p["seq"] for p in recorder.unique()} == {r["id"] for r in rows}, "every transition was published"


async def test_ingest_never_receives_or_dead_letters_an_alert(
        database_url: str, mqtt_url: str, mqtt_services_url: str, tmp_path: Path) -> None:
    await seed_devices(database_url, [STATION])
    (tmp_path / "flood.yaml").write_text(RULES.replace("for: 30m", "for: 0s"))
    prefix = f"i{uuid.uuid4().hex[:8]}/v1"
    recorder = Recorder(mqtt_url, f"{prefix}/_sys/alerts/#")
    publisher = Publisher(mqtt_url)
    try:
        async with running_ingest(database_url, mqtt_services_url, topic_prefix=prefix) as ingest, \
                running_alerts(database_url, mqtt_services_url, tmp_path, topic_prefix=prefix):
            publisher.publish(f"{prefix}/hydromet/{STATION.id}/telemetry",
                              orjson.dumps({"ts": time.time(), "values": {"water_level_m": 64.0}}))
            publisher.wait()
            assert await asyncio.to_thread(recorder.wait_for, lambda ps: len(ps) >= 1, 30)
            await asyncio.sleep(1.0)
            assert ingest.metrics.received.get() == 1, "ingest saw the reading and nothing else"
        letters = await fetch(database_url, "SELECT topic FROM dead_letters")
        stored = await fetch(database_url, "SELECT count(*) AS n FROM readings")
    finally:
        publisher.close()
        recorder.close()
    assert letters == []
    assert stored[0]["n"] == 1
    assert recorder.messages[0][0] == f"{prefix}/_sys/alerts/bac-quang/{STATION.id}"
