"""`occ devices remove` end to end (issue 9): a removed device's readings stay, and a running ingest stops
accepting it at its next registry refresh (its new messages become `unknown device` dead letters)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

import ingest.service
from occ.models import Device, RejectCode
from tests.conftest import ROOT
from tests.integration.ingest_helpers import HYDROMET, Publisher, fetch, running_ingest, seed_devices, wait_for_count


async def test_a_removed_device_keeps_its_readings_and_is_refused_afterwards(
    database_url: str, mqtt_url: str, mqtt_services_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest.service, "REGISTRY_REFRESH_S", 0.5)  # instead of 30 s: same code path, sooner
    await seed_devices(database_url)
    device = HYDROMET[0].id
    topic = f"occ/v1/hydromet/{device}/telemetry"
    publisher = Publisher(mqtt_url)
    try:
        async with running_ingest(database_url, mqtt_services_url):
            publisher.publish(topic, '{"ts": "2026-11-27T07:00:00+07:00", "values": {"rain_mm": 1.5}}')
            publisher.wait()
            assert await wait_for_count(database_url, "SELECT count(*) FROM readings", 1, timeout=30) == 1
            result = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "occ.cli", "--database-url", database_url, "devices", "remove", device],
                capture_output=True, text=True, cwd=ROOT, timeout=60,
                env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OCC_VAR_DIR": str(tmp_path)},
            )
            assert result.returncode == 0, result.stderr
            assert f"removed    {device}" in result.stdout
            # Publish until the refreshed registry refuses the device (at most a few refresh periods).
            for minute in range(1, 60):
                publisher.publish(topic, f'{{"ts": "2026-11-27T07:{minute:02d}:00+07:00", "values": {{"rain_mm": 1}}}}')
                publisher.wait()
                if await wait_for_count(database_url, "SELECT count(*) FROM dead_letters", 1, timeout=0.5) >= 1:
                    break
            else:
                raise AssertionError("ingest kept accepting the removed device")
    finally:
        publisher.close()
    letters = await fetch(database_url, "SELECT code, device_id FROM dead_letters")
    assert {(r["code"], r["device_id"]) for r in letters} == {(RejectCode.UNKNOWN_DEVICE, device)}
    first = await fetch(database_url, "SELECT value FROM readings WHERE device_id = $1 AND value = 1.5", device)
    assert len(first) == 1, "the readings stored before the removal stay"


async def test_the_periodic_check_reloads_the_registry_only_when_it_changed(
    database_url: str, mqtt_services_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every registry check reads its version; the devices are loaded again only when it changed (a reload holds
    the event loop for tens of milliseconds with thousands of devices), or every REGISTRY_RELOAD_S regardless."""
    monkeypatch.setattr(ingest.service, "REGISTRY_REFRESH_S", 0.05)
    await seed_devices(database_url)
    async with running_ingest(database_url, mqtt_services_url) as service:
        store = service.store
        assert store is not None
        loads = 0
        original = store.list_devices

        async def counted(*args: object, **kwargs: object) -> list[Device]:
            nonlocal loads
            loads += 1
            return await original(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(store, "list_devices", counted)
        await asyncio.sleep(0.6)  # ~10 checks
        assert loads == 0
        await seed_devices(database_url, [Device(id="HG-NEW-1", kind="hydromet", name="added")])
        for _ in range(100):
            if "HG-NEW-1" in service.devices:
                break
            await asyncio.sleep(0.05)
        assert "HG-NEW-1" in service.devices and loads == 1
        monkeypatch.setattr(ingest.service, "REGISTRY_RELOAD_S", 0.0)  # the safety net: every check reloads
        await asyncio.sleep(0.3)
        assert loads >= 3
