"""`occ alerts` in process against a real broker and PostgreSQL: readings in, alert stream out, stored with
every transition; operator actions published; decoder rejects skipped; reload keeps rules on a bad file."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

from occ.models import Device
from occ.store import Store
from tests.alerts.helpers import Recorder, running_alerts
from tests.integration.ingest_helpers import Publisher, fetch, seed_devices

STATION = Device("HG-T-WL01", "hydromet", "Sông Lô tại Thử Nghiệm", area="bac-quang",
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
    message_vi: "{name} vượt báo động {level} {excess:.2f} m"
    message_en: "{name}: {excess:.2f} m above alarm level {level}"
"""


def reading(value: float, ts: float) -> bytes:
    return orjson.dumps({"ts": ts, "values": {"water_level_m": value}})


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    (tmp_path / "flood.yaml").write_text(RULES)
    return tmp_path


async def test_readings_raise_a_stored_and_published_alert(database_url: str, mqtt_url: str,
                                                         mqtt_services_url: str, rules_dir: Path) -> None:
    await seed_devices(database_url, [STATION])
    recorder = Recorder(mqtt_url)
    publisher = Publisher(mqtt_url)
    topic = "occ/v1/hydromet/HG-T-WL01/telemetry"
    try:
        async with running_alerts(database_url, mqtt_services_url, rules_dir) as service:
            now = time.time()
            publisher.publish(topic, b"{not json")  # rejected by the decoder: skipped and counted
            for k, value in enumerate((60.0, 62.0, 63.83)):
                publisher.publish(topic, reading(value, now - 300 + k * 60))
            publisher.wait()
            assert await asyncio.to_thread(recorder.wait_for, lambda ps: len(ps) >= 2)
            first, second = recorder.unique()[:2]
            assert (first["state"], first["level"], first["severity"]) == ("firing", "I", 1)
            assert (second["previous_state"], second["level"], second["severity"]) == ("firing", "II", 2)
            assert second["message_vi"] == "Sông Lô tại Thử Nghiệm vượt báo động II 0,33 m"
            assert second["id"] == first["id"] and second["seq"] > first["seq"]
            assert {"id", "rule", "device_id", "area", "severity", "level", "state", "value", "threshold",
                    "message_vi", "message_en", "started_at", "changed_at", "reason", "late"} <= set(second)
            topics = {t for t, _ in recorder.messages}
            assert topics == {"occ/v1/_sys/alerts/bac-quang/HG-T-WL01"}
            assert service.metrics.rejected.get() >= 1
            rows = await fetch(database_url, "SELECT to_state, reason FROM alert_transitions ORDER BY id")
            assert [r["to_state"] for r in rows] == ["firing", "firing"]
            # An operator acknowledges from the CLI/web: the service publishes it within a second or so.
            store = await Store.connect(database_url, pool_size=1, migrate=False)
            try:
                await store.acknowledge_alert(first["id"], user="op1", note="đã biết")
            finally:
                await store.close()
            assert await asyncio.to_thread(
                recorder.wait_for, lambda ps: any(p["actor"] == "op1" for p in ps), 10)
            acked = next(p for p in recorder.unique() if p["actor"] == "op1")
            assert acked["acked"]["by"] == "op1" and acked["state"] == "firing"
            await asyncio.sleep(0.3)
            unpublished = await fetch(database_url, "SELECT id FROM alert_transitions WHERE published_at IS NULL")
            assert unpublished == []
    finally:
        publisher.close()
        recorder.close()


async def test_sighup_reload_keeps_running_rules_when_a_file_is_bad(database_url: str, mqtt_services_url: str,
                                                                 rules_dir: Path) -> None:
    await seed_devices(database_url, [STATION])
    async with running_alerts(database_url, mqtt_services_url, rules_dir) as service:
        (rules_dir / "broken.yaml").write_text("rules:\n  - name: x\n    kind: nope\n")
        service._reload()
        assert [r.name for r in service.rules.rules] == ["flood"]
        assert service.metrics.reloads.get("rejected") == 1
        (rules_dir / "broken.yaml").write_text(RULES.replace("name: flood", "name: flood-2"))
        service._reload()
        assert sorted(r.name for r in service.rules.rules) == ["flood", "flood-2"]


async def test_a_reload_requested_over_mqtt_installs_new_rule_files(database_url: str, mqtt_services_url: str,
                                                                    rules_dir: Path) -> None:
    """`occ web` cannot signal `occ alerts`; it publishes on the reload topic, which acts as SIGHUP."""
    from occ.topics import alerts_reload_topic

    await seed_devices(database_url, [STATION])
    async with running_alerts(database_url, mqtt_services_url, rules_dir) as service:
        (rules_dir / "more.yaml").write_text(RULES.replace("name: flood", "name: flood-2"))
        publisher = Publisher(mqtt_services_url)
        try:
            publisher.publish(alerts_reload_topic(service.prefix), b"{}")
            publisher.wait()
        finally:
            publisher.close()
        deadline = time.monotonic() + 15
        while sorted(r.name for r in service.rules.rules) != ["flood", "flood-2"]:
            assert time.monotonic() < deadline, [r.name for r in service.rules.rules]
            await asyncio.sleep(0.05)
        assert service.unacked == 0  # the control message is acknowledged, never held


async def test_a_maintenance_window_stored_in_the_database_mutes_and_unmutes(
        database_url: str, mqtt_url: str, mqtt_services_url: str, rules_dir: Path) -> None:
    """Operators keep recurring maintenance windows in the database (`alert_maintenance`, local time of the
    site): the running service picks them up, mutes the episodes they match (and only those), and unmutes them
    when the window is deleted."""
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    other = Device("HG-T-WL02", "hydromet", "Sông Chảy tại Thử Nghiệm", area="vi-xuyen",
                   attributes={"report_interval_s": 600, "alarm_levels_m": {"I": 61.5, "II": 63.5, "III": 65.5}})
    await seed_devices(database_url, [STATION, other])
    local_now = datetime.now(ZoneInfo("Asia/Ho_Chi_Minh"))
    store = await Store.connect(database_url, pool_size=1, migrate=False)
    try:
        window = await store.create_maintenance(
            name="bảo trì Bắc Quang", matchers=[{"label": "area", "op": "=", "value": "bac-quang"}],
            start_local=(local_now - timedelta(hours=1)).time().replace(microsecond=0), duration_s=4 * 3600,
            author="op1", comment="thay cảm biến")
        recorder = Recorder(mqtt_url)
        publisher = Publisher(mqtt_url)
        try:
            async with running_alerts(database_url, mqtt_services_url, rules_dir):
                now = time.time()
                for device in (STATION, other):
                    publisher.publish(f"occ/v1/hydromet/{device.id}/telemetry", reading(62.0, now))
                publisher.wait()
                assert await asyncio.to_thread(recorder.wait_for, lambda ps: len(ps) >= 2)
                by_device = {p["device_id"]: p for p in recorder.unique()}
                assert by_device[STATION.id]["state"] == "firing"
                assert by_device[STATION.id]["muted"] == "maintenance"
                assert by_device[other.id]["muted"] is None, "the window matches bac-quang only"
                assert await store.delete_maintenance(window.id)
                assert await asyncio.to_thread(recorder.wait_for, lambda ps: any(
                    p["device_id"] == STATION.id and p["reason"] == "no longer muted" for p in ps), 20)
                unmuted = next(p for p in recorder.unique() if p["reason"] == "no longer muted")
                assert unmuted["muted"] is None and unmuted["state"] == "firing" and unmuted["id"] == \
                    by_device[STATION.id]["id"]
            rows = await fetch(database_url, "SELECT device_id, muted FROM alert_episodes ORDER BY device_id")
            assert [(r["device_id"], r["muted"]) for r in rows] == [(STATION.id, None), (other.id, None)]
        finally:
            publisher.close()
            recorder.close()
    finally:
        await store.close()
