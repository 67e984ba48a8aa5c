"""End to end through a real broker and PostgreSQL, driven by the simulators' scenarios (`occ simulate --fast`,
each test under a topic prefix of its own). The alerts service runs on the event-time clock (`alerts.clock:
event`), so a five-day scenario plays in seconds and every timestamp is the scenario's."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from occ.catalog import Catalog
from occ.devices import load_areas, load_devices
from simulators.fleet import load_fleet
from simulators.scenario import load_scenarios
from simulators.timeutil import parse_timestamp
from tests.alerts.helpers import ROOT, Recorder, running_alerts
from tests.integration.ingest_helpers import fetch, seed_devices

CONFIG = ROOT / "config"
START = "2026-07-14T00:00:00+07:00"
T0 = parse_timestamp(START)


def catalog_devices(kind: str) -> list[Any]:
    catalog = Catalog.load(CONFIG / "metrics.yaml")
    return [d for d in load_devices(CONFIG / "devices" / f"hagiang-{kind}.yaml", catalog)]


def simulate(mqtt_url: str, prefix: str, scenario: str, kinds: str, *extra: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "simulators", "--scenario", scenario, "--kinds", kinds, "--fast", "--start", START,
         "--seed", "7", "--tick", "300s", "--mqtt-url", mqtt_url, "--topic-prefix", prefix, "--quiet",
         "--client-prefix", f"sim-{uuid.uuid4().hex[:6]}", "--config-dir", str(CONFIG),
         "--connections", "1", *extra],  # one connection: the stream stays in event-time order
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr


async def drained(service: Any, quiet_s: float = 1.5, timeout: float = 120) -> None:
    """Wait until the service has processed and acknowledged everything and nothing arrived for a while."""
    deadline = time.monotonic() + timeout
    last = -1.0
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        received = service.metrics.received.get()
        if received != last or service.unacked or service._inbox:
            last = received
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("alerts service did not drain")


def area_names() -> dict[str, str]:
    return {a.id: a.name for a in load_areas(CONFIG / "areas.yaml")}


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}/v1"


async def test_bac_quang_flash_flood_raises_i_ii_iii_then_resolves_each_once(
        database_url: str, mqtt_url: str, mqtt_services_url: str, prefix: str) -> None:
    await seed_devices(database_url, catalog_devices("hydromet"))
    recorder = Recorder(mqtt_url, f"{prefix}/_sys/alerts/#")
    try:
        async with running_alerts(database_url, mqtt_services_url, CONFIG / "rules", topic_prefix=prefix,
                                  event_clock=True, area_names=area_names(),
                                  catalog=Catalog.load(CONFIG / "metrics.yaml")) as service:
            await asyncio.to_thread(simulate, mqtt_url, prefix, "flash-flood-bac-quang", "hydromet")
            await drained(service)
        rows = await fetch(database_url,
                           "SELECT t.id, t.from_state, t.to_state, t.from_severity, t.to_severity, t.ts, "
                           "t.payload->>'level' AS level, t.late FROM alert_transitions t "
                           "JOIN alert_episodes e ON e.id = t.episode_id "
                           "WHERE e.fingerprint = 'flood-level|HG-BQ-WL01' ORDER BY t.id")
        episodes = {r["id"] for r in await fetch(
            database_url, "SELECT id FROM alert_episodes WHERE fingerprint = 'flood-level|HG-BQ-WL01'")}
    finally:
        recorder.close()
    assert len(episodes) == 1, "one episode for the whole flood"
    rises = [r for r in rows if r["to_state"] == "firing" and (r["from_state"] in ("ok", "pending") or
                                                                 r["to_severity"] > (r["from_severity"] or 0))]
    levels = [r["level"] for r in rises]
    assert levels[:3] == ["I", "II", "III"] and levels.count("I") == levels.count("II") == levels.count("III") == 1
    resolved = [r for r in rows if r["to_state"] == "resolved"]
    assert len(resolved) == 1 and rows[-1]["to_state"] == "resolved"
    assert not any(r["late"] for r in rows)
    # Inside the scenario's planned windows (`expect:` in config/scenarios/flash-flood-bac-quang.yaml).
    specs = load_scenarios(["flash-flood-bac-quang"], CONFIG, load_fleet(config_dir=CONFIG).metrics)
    windows = {(x.check, x.level): (x.between[0].resolve(T0), x.between[1].resolve(T0))
               for spec in specs for x in spec.expects if x.device == "HG-BQ-WL01" and x.between}
    for rise in rises[:3]:
        lo, hi = windows[("crosses", rise["level"])]
        assert lo <= rise["ts"].timestamp() <= hi, (rise["level"], (rise["ts"].timestamp() - T0) / 3600)
    lo, hi = windows[("recedes_below", "I")]
    assert lo <= resolved[0]["ts"].timestamp() <= hi
    # The published stream carries exactly the stored transitions (deduplicated on seq).
    published = [p for p in recorder.unique() if p["fingerprint"] == "flood-level|HG-BQ-WL01"]
    assert [p["seq"] for p in published] == [r["id"] for r in rows]
    assert published[1]["message_vi"].startswith("Sông Lô tại Tân Quang vượt báo động II")


async def test_camera_outage_storm_is_one_incident_per_area(
        database_url: str, mqtt_url: str, mqtt_services_url: str, prefix: str) -> None:
    await seed_devices(database_url, catalog_devices("cameras"))
    recorder = Recorder(mqtt_url, f"{prefix}/_sys/#")
    try:
        async with running_alerts(database_url, mqtt_services_url, CONFIG / "rules", topic_prefix=prefix,
                                  event_clock=True, area_names=area_names(),
                                  catalog=Catalog.load(CONFIG / "metrics.yaml")) as service:
            await asyncio.to_thread(simulate, mqtt_url, prefix, "camera-outage-storm", "camera")
            await drained(service)
        storm = await fetch(database_url,
                            "SELECT id, area, peak_members, title_vi, state FROM alert_incidents "
                            "WHERE opened_at BETWEEN $1 AND $2 ORDER BY id",
                            _dt(T0 + 30 * 60), _dt(T0 + 52 * 60))
        offline = await fetch(database_url,
                              "SELECT count(DISTINCT device_id) AS n FROM alert_episodes "
                              "WHERE rule = 'camera-offline' AND area = 'ha-giang-city' AND fired_at IS NOT NULL")
        announced = await fetch(database_url,
                                "SELECT count(*) AS n FROM alert_transitions t JOIN alert_episodes e "
                                "ON e.id = t.episode_id WHERE e.rule LIKE 'camera-%' "
                                "AND (t.payload->>'announce')::bool AND e.kind IN ('offline', 'deadman')")
    finally:
        recorder.close()
    city = [i for i in storm if i["area"] == "ha-giang-city"]
    assert len(city) == 1, storm
    assert city[0]["peak_members"] >= 30 and city[0]["state"] == "resolved"
    assert city[0]["title_vi"].startswith("Thành phố Hà Giang:")
    assert offline[0]["n"] >= 30
    assert announced[0]["n"] == 0, "grouped outages page through their incident, never one by one"
    incident_msgs = [p for t, p in recorder.messages if "/_sys/incidents/ha-giang-city" in t]
    assert {p["id"] for p in incident_msgs} >= {city[0]["id"]}


GSM_RAIN = """
scenario:
  name: gsm-cloudburst
  description: the GSM outage with a cloudburst at the silent gauge, so its backlog would raise rain alerts
  duration: 6h
  include: [gsm-outage, normal-day]
effects:
  - name: cloudburst at Khâu Vai while its link is down
    do: rain
    target: {ids: [HG-MV-RG01]}
    at: 2h
    for: 1h
    intensity_mm_h: 90
"""


async def test_gsm_outage_backfill_announces_no_new_alert(
        database_url: str, mqtt_url: str, mqtt_services_url: str, prefix: str, tmp_path: Path) -> None:
    await seed_devices(database_url, catalog_devices("hydromet"))
    scenario = tmp_path / "gsm-cloudburst.yaml"
    scenario.write_text(GSM_RAIN)
    async with running_alerts(database_url, mqtt_services_url, CONFIG / "rules", topic_prefix=prefix,
                              event_clock=True, catalog=Catalog.load(CONFIG / "metrics.yaml")) as service:
        await asyncio.to_thread(simulate, mqtt_url, prefix, str(scenario), "hydromet")
        await drained(service)
    rows = await fetch(database_url,
                       "SELECT e.rule, t.to_state, t.late, (t.payload->>'announce')::bool AS announce, t.ts "
                       "FROM alert_transitions t JOIN alert_episodes e ON e.id = t.episode_id "
                       "WHERE e.device_id = 'HG-MV-RG01' ORDER BY t.id")
    backfilled = [r for r in rows if r["rule"] in ("rain-3h-intense", "rain-24h")]
    assert any(r["to_state"] == "firing" for r in backfilled), "the backlog's rain reached the windows"
    assert all(r["late"] and not r["announce"] for r in backfilled), [tuple(r) for r in backfilled]
    offline = [r for r in rows if r["rule"] == "station-offline" and r["to_state"] == "firing"]
    assert offline and offline[0]["announce"] and not offline[0]["late"], "the live outage itself was announced"


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
