"""End to end in a real headless Chromium (Debian's, driven by Playwright; never a downloaded browser):
log in as an operator, see the devices, publish a reading over MQTT that crosses a flood alarm level, see the
real alerts service's alert turn the marker and appear in the list within 2 s, acknowledge it; then open the
kiosk page, restart the server and see the page reconnect by itself. The page must request nothing off the
server. Screenshots go to $OCC_TEST_ARTIFACTS (default test-artifacts/)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from occ.store import Store
from tests.integration.ingest_helpers import Publisher
from tests.web.conftest import PASSWORD, web_config
from web.app import WebService
from web.auth import new_token, token_hash

CHROMIUM = Path(os.environ.get("OCC_TEST_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("OCC_TEST_ARTIFACTS", ROOT / "test-artifacts"))

try:
    from playwright.async_api import Page, async_playwright
except ImportError:  # pragma: no cover - reported as a loud skip below
    async_playwright = None  # type: ignore[assignment]

SKIP_REASON = (
    f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)" if not CHROMIUM.exists()
    else "the playwright Python package is missing (pip install -e '.[dev]')" if async_playwright is None
    else None
)
pytestmark = [pytest.mark.browser, pytest.mark.skipif(SKIP_REASON is not None, reason=f"BROWSER TESTS SKIPPED: "
                                                                                       f"{SKIP_REASON}")]


@pytest.fixture
async def alerts_service(store: Store, database_url: str, mqtt_services_url: str) -> AsyncIterator[Any]:
    from alerts.service import AlertsService

    service = AlertsService(mqtt_url=mqtt_services_url, database_url=database_url, rules_dir=ROOT / "config" / "rules",
                            client_id=f"alerts-browser-{uuid.uuid4().hex[:8]}", http_port=0, tick_s=0.2,
                            store_options={"timescaledb": "off"})
    await service.start()
    await asyncio.sleep(0.3)
    yield service
    await service.stop()


async def start_web(database_url: str, mqtt_url: str, store: Store, port: int = 0) -> WebService:
    service = WebService(web_config(database_url, mqtt_url, flush_ms=50), port=port, store=store)
    await service.start()
    assert service.gateway is not None and service.gateway.bus is not None
    await asyncio.wait_for(service.gateway.bus.connected.wait(), 30)
    await asyncio.sleep(0.3)
    return service


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    assert async_playwright is not None
    async with async_playwright() as p:
        instance = await p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield instance
        await instance.close()


def watch_requests(page: Page, origin: str, offsite: list[str]) -> None:
    def check(request: Any) -> None:
        url = request.url
        if not (url.startswith(origin) or url.startswith(origin.replace("http", "ws", 1)) or url.startswith("data:")):
            offsite.append(url)

    page.on("request", check)
    page.on("websocket", lambda ws: check(ws))


async def shot(page: Page, name: str) -> None:
    await asyncio.to_thread(ARTIFACTS.mkdir, parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


async def test_operator_sees_flood_alert_acknowledges_and_kiosk_reconnects(
    store: Store, database_url: str, mqtt_url: str, mqtt_services_url: str, alerts_service: Any, browser: Any
) -> None:
    web = await start_web(database_url, mqtt_services_url, store)
    origin = f"http://127.0.0.1:{web.bound_port}"
    offsite: list[str] = []
    try:
        page = await browser.new_page(viewport={"width": 1600, "height": 900})
        watch_requests(page, origin, offsite)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(f"{origin}/")
        await page.wait_for_url(f"{origin}/login")
        await page.fill("input[name=name]", "operator")
        await page.fill("input[name=password]", PASSWORD)
        await page.click("button[type=submit]")
        await page.wait_for_url(f"{origin}/")
        await page.wait_for_function("document.querySelector('#kpi-online .kpi-value').textContent.includes('/ 3')")
        await page.wait_for_selector(".dev, .cluster")
        await shot(page, "wall-operator")

        publisher = Publisher(mqtt_url)
        try:
            now = datetime.now(UTC)
            publisher.publish("occ/v1/hydromet/HG-TEST-WL01/telemetry",
                              orjson.dumps({"ts": now.isoformat(), "values": {"water_level_m": 101.5}}))
            published = time.monotonic()
            row = page.locator(".alert", has_text="Trạm thủy văn Hà Giang")
            await row.first.wait_for(timeout=2000)
            await page.wait_for_selector(".dev.sev-2, .cluster.sev-2", timeout=max(1, 2000 - int(
                (time.monotonic() - published) * 1000)))
            assert time.monotonic() - published <= 2.0, "alert not on the wall within 2 s"
        finally:
            publisher.close()
        await shot(page, "wall-flood-alert")
        await row.first.locator("button[data-act=ack]").click()
        await page.fill("#note-text", "Đã báo đội ứng trực / on-call team informed")
        await page.click("#note-ok")
        await page.locator(".alert .acked", has_text="operator").first.wait_for(timeout=5000)
        acked = await store.list_alerts(state="open", device_id="HG-TEST-WL01")
        assert acked and acked[0].acked_by == "operator" and "ứng trực" in (acked[0].ack_note or "")
        await shot(page, "wall-acknowledged")
        assert not errors, errors

        # Kiosk: read-only, a clock, and reconnecting by itself after a server restart.
        admin = await store.users.get("viewer")
        assert admin is not None
        token = new_token()
        await store.users.add_token(admin.id, token_hash(token), kind="kiosk",
                                    expires_at=datetime.now(UTC) + timedelta(days=1))
        kiosk = await browser.new_page(viewport={"width": 1920, "height": 1080})
        watch_requests(kiosk, origin, offsite)
        await kiosk.goto(f"{origin}/kiosk?token={token}")
        await kiosk.wait_for_url(f"{origin}/?kiosk=1")
        await kiosk.wait_for_function("document.querySelector('#kpi-online .kpi-value').textContent.includes('/ 3')")
        assert await kiosk.locator("button[data-act=ack]").count() == 0
        assert await kiosk.locator("#banner").is_hidden()
        port = web.bound_port
        assert port is not None
        await web.stop()
        await kiosk.locator("#banner").wait_for(state="visible", timeout=10_000)
        assert "Mất kết nối / Connection lost" in await kiosk.locator("#banner").inner_text()
        await shot(kiosk, "kiosk-connection-lost")
        web = await start_web(database_url, mqtt_services_url, store, port=port)
        await kiosk.locator("#banner").wait_for(state="hidden", timeout=20_000)
        await kiosk.wait_for_function("document.querySelector('#kpi-online .kpi-value').textContent.includes('/ 3')")
        await shot(kiosk, "kiosk-reconnected")
    finally:
        await web.stop()
    assert offsite == [], f"the page requested something off the server: {offsite}"


async def test_5000_devices_render_cluster_and_counts_add_up(
    store: Store, database_url: str, mqtt_url: str, mqtt_services_url: str, browser: Any
) -> None:
    """5,000 stations (plus the 3 seeded devices) on the kiosk wall: every one reaches the cluster layer, the
    numbers on the cluster icons plus the single markers add up to the devices in view, an alert colours the
    cluster that holds its device, and drilling down reaches the device's own coloured marker."""
    import random

    from occ.models import Device

    rng = random.Random(10)
    many = [Device(f"HG-MANY-{i:04d}", "hydromet", f"Trạm {i}", 22.55 + rng.random() * 0.5,
                   104.65 + rng.random() * 0.6, "bac-quang") for i in range(5000)]
    await store.upsert_devices(many)
    total = 5003
    viewer = await store.users.get("viewer")
    assert viewer is not None
    token = new_token()
    await store.users.add_token(viewer.id, token_hash(token), kind="kiosk",
                                expires_at=datetime.now(UTC) + timedelta(days=1))
    web = await start_web(database_url, mqtt_services_url, store)
    origin = f"http://127.0.0.1:{web.bound_port}"
    count_script = """() => {
        const bounds = map.getBounds();
        let inView = 0;
        for (const d of state.devices.values()) if (d.marker && bounds.contains(d.marker.getLatLng())) inView += 1;
        let clustered = 0;
        document.querySelectorAll(".cluster").forEach((el) => { clustered += Number(el.textContent); });
        return { inView, clustered, icons: document.querySelectorAll(".cluster").length,
                 singles: document.querySelectorAll(".dev").length, layer: cluster.getLayers().length };
    }"""
    try:
        page = await browser.new_page(viewport={"width": 1920, "height": 1080})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(f"{origin}/kiosk?token={token}")
        await page.wait_for_url(f"{origin}/?kiosk=1")
        await page.wait_for_function(
            f"document.querySelector('#kpi-online .kpi-value').textContent.includes('/ {total}')")
        await page.wait_for_function(f"cluster.getLayers().length === {total}", timeout=60_000)
        await page.wait_for_timeout(500)  # let the last chunk's icons reach the DOM
        counts = await page.evaluate(count_script)
        assert counts["layer"] == total
        assert counts["inView"] == total, counts  # the province view shows every device
        assert counts["clustered"] + counts["singles"] == total, counts
        assert 0 < counts["icons"] and counts["icons"] + counts["singles"] < 500, counts  # clustered, not 5,000 icons
        await shot(page, "wall-5000-devices")

        publisher = Publisher(mqtt_url)
        try:
            alert = {"v": 1, "seq": 1, "id": 7001, "device_id": "HG-MANY-0042", "area": "bac-quang",
                     "state": "firing", "previous_state": "pending", "severity": 5, "value": 180.0,
                     "threshold": 100.0, "changed_at": datetime.now(UTC).isoformat()}
            publisher.publish("occ/v1/_sys/alerts/bac-quang/HG-MANY-0042", orjson.dumps(alert))
        finally:
            publisher.close()
        holder = """() => {
            const parent = cluster.getVisibleParent(state.devices.get("HG-MANY-0042").marker);
            const el = parent && parent._icon && parent._icon.firstElementChild;
            return el ? el.className : null;
        }"""
        await page.wait_for_function(f"({holder})() !== null && ({holder})().includes('sev-5')", timeout=10_000)
        counts = await page.evaluate(count_script)
        assert counts["clustered"] + counts["singles"] == total, counts  # refreshing a cluster lost or doubled none
        assert await page.locator(".cluster.sev-5").count() >= 1
        await page.evaluate("""() => new Promise((done) =>
            cluster.zoomToShowLayer(state.devices.get("HG-MANY-0042").marker, done))""")
        await page.locator(".dev.sev-5[data-device='HG-MANY-0042']").wait_for(timeout=10_000)
        await shot(page, "wall-5000-drilled-down")
        assert not errors, errors
    finally:
        await web.stop()
