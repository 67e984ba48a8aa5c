"""The live websocket end to end: real aiohttp server, real broker, real PostgreSQL, and `websockets` as the
client (the same library the benchmark clients use)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from occ.store import Store
from tests.integration.ingest_helpers import Publisher
from tests.web.conftest import PASSWORD, web_config
from web.app import WebService


@pytest.fixture
async def server(store: Store, database_url: str, mqtt_services_url: str) -> AsyncIterator[WebService]:
    service = WebService(web_config(database_url, mqtt_services_url, flush_ms=50), port=0, store=store)
    await service.start()
    assert service.gateway is not None and service.gateway.bus is not None
    await asyncio.wait_for(service.gateway.bus.connected.wait(), 30)
    await asyncio.sleep(0.3)  # let the SUBACKs arrive before tests publish
    yield service
    await service.stop()


async def token_for(service: WebService, name: str) -> str:
    async with aiohttp.ClientSession() as http, http.post(
        f"http://127.0.0.1:{service.bound_port}/api/login", json={"name": name, "password": PASSWORD, "bearer": True}
    ) as response:
        assert response.status == 200
        token: str = (await response.json())["token"]
        return token


def ws_url(service: WebService) -> str:
    return f"ws://127.0.0.1:{service.bound_port}/ws"


async def next_frame(ws: Any, kind: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        frame: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic())))
        if frame["type"] == kind:
            return frame


async def test_snapshot_deltas_alerts_and_resume(server: WebService, mqtt_url: str) -> None:
    token = await token_for(server, "viewer")
    headers = {"Authorization": f"Bearer {token}"}
    async with websockets.connect(ws_url(server), additional_headers=headers, compression=None) as ws:
        hello = await next_frame(ws, "hello")
        assert hello["role"] == "viewer"
        await ws.send(orjson.dumps({"type": "subscribe", "filter": {"kinds": ["hydromet"]}}).decode())
        snap = await next_frame(ws, "snapshot")
        assert sorted(d["id"] for d in snap["devices"]) == ["HG-TEST-RG01", "HG-TEST-WL01"]
        publisher = Publisher(mqtt_url)
        try:
            publisher.publish("occ/v1/hydromet/HG-TEST-WL01/telemetry", orjson.dumps({"water_level_m": 101.4}))
            publisher.publish("occ/v1/camera/HG-TEST-CAM1/telemetry", orjson.dumps({"fps": 25}))  # filtered out
            delta = await next_frame(ws, "delta")
            assert [r["id"] for r in delta["readings"]] == ["HG-TEST-WL01"]
            assert delta["readings"][0]["values"]["water_level_m"] == 101.4
            alert = {"v": 1, "seq": 1, "id": 41, "device_id": "HG-TEST-WL01", "area": "ha-giang-city",
                     "state": "firing", "previous_state": "pending", "severity": 3, "value": 101.4, "threshold": 101.0}
            publisher.publish("occ/v1/_sys/alerts/ha-giang-city/HG-TEST-WL01", orjson.dumps(alert))
            publisher.publish("occ/v1/_sys/alerts/ha-giang-city/HG-TEST-WL01", orjson.dumps(alert))  # redelivered
            delta = await next_frame(ws, "delta")
            assert [a["id"] for a in delta["alerts"]] == [41]
            last_seq = delta["seq"]
            stream = snap["stream"]
        finally:
            publisher.close()
    # Reconnect: the changes missed meanwhile, not a snapshot.
    publisher = Publisher(mqtt_url)
    try:
        publisher.publish("occ/v1/hydromet/HG-TEST-RG01/telemetry", orjson.dumps({"rain_mm": 7.5}))
        publisher.wait()
    finally:
        publisher.close()
    gateway = server.gateway
    assert gateway is not None
    for _ in range(100):
        if gateway.hub.seq > last_seq:
            break
        await asyncio.sleep(0.05)
    async with websockets.connect(ws_url(server), additional_headers=headers, compression=None) as ws:
        await ws.send(orjson.dumps({"type": "subscribe", "filter": {"kinds": ["hydromet"]}, "resume": last_seq,
                                    "stream": stream}).decode())
        resumed = await next_frame(ws, "resumed")
        assert resumed["missed"] >= 1
        delta = await next_frame(ws, "delta")
        assert [r["id"] for r in delta["readings"]] == ["HG-TEST-RG01"]
        # A fresh client sees the open alert in its snapshot (state kept by the gateway, not re-read).
    async with websockets.connect(ws_url(server), additional_headers=headers, compression=None) as ws:
        await ws.send('{"type": "subscribe"}')
        snap = await next_frame(ws, "snapshot")
        assert [a["id"] for a in snap["alerts"]] == [41]
        await ws.send("{not json")
        error = await next_frame(ws, "error")
        assert error["code"] == "malformed"


async def test_websocket_needs_auth_and_same_origin(server: WebService) -> None:
    with pytest.raises(InvalidStatus) as anonymous:
        async with websockets.connect(ws_url(server)):
            pass
    assert anonymous.value.response.status_code == 401
    token = await token_for(server, "viewer")
    with pytest.raises(InvalidStatus) as foreign:
        async with websockets.connect(ws_url(server), additional_headers={"Authorization": f"Bearer {token}"},
                                      origin="https://evil.example"):  # type: ignore[arg-type]
            pass
    assert foreign.value.response.status_code == 403
    own = f"http://127.0.0.1:{server.bound_port}"
    async with websockets.connect(ws_url(server), additional_headers={"Authorization": f"Bearer {token}"},
                                  origin=own) as ws:  # type: ignore[arg-type]
        assert (await next_frame(ws, "hello"))["user"] == "viewer"


async def test_repeated_garbage_closes_with_reason(server: WebService) -> None:
    token = await token_for(server, "viewer")
    async with websockets.connect(ws_url(server), additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        for _ in range(5):
            await ws.send("garbage")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert "too many bad messages" in closed.value.rcvd.reason


@pytest.fixture
async def slow_urgent_server(store: Store, database_url: str, mqtt_services_url: str) -> AsyncIterator[WebService]:
    """A gateway that fans out urgent changes at most every 500 ms (the default is 20 ms) and readings every
    second, so a burst is coalesced whatever the machine's speed."""
    service = WebService(web_config(database_url, mqtt_services_url, flush_ms=1000, urgent_ms=500), port=0,
                         store=store)
    await service.start()
    assert service.gateway is not None and service.gateway.bus is not None
    await asyncio.wait_for(service.gateway.bus.connected.wait(), 30)
    await asyncio.sleep(0.3)
    yield service
    await service.stop()


async def test_an_alert_storm_is_coalesced_into_few_frames_for_every_client(
    slow_urgent_server: WebService, mqtt_url: str
) -> None:
    """100 alert changes published within about a second reach two walls (one watching everything: the shared,
    pre-encoded frame; one filtered: its own frame) complete and in order, in far fewer frames than changes."""
    token = await token_for(slow_urgent_server, "viewer")
    headers = {"Authorization": f"Bearer {token}"}
    url = ws_url(slow_urgent_server)
    async with websockets.connect(url, additional_headers=headers, compression=None) as everything, \
            websockets.connect(url, additional_headers=headers, compression=None) as hydromet:
        await everything.send('{"type": "subscribe"}')
        await hydromet.send(orjson.dumps({"type": "subscribe", "filter": {"kinds": ["hydromet"]}}).decode())
        await next_frame(everything, "snapshot")
        await next_frame(hydromet, "snapshot")
        publisher = Publisher(mqtt_url)
        try:
            for i in range(100):
                alert = {"v": 1, "seq": 1, "id": 1000 + i, "device_id": "HG-TEST-WL01", "area": "ha-giang-city",
                         "state": "firing", "previous_state": "pending", "severity": 1 + i % 5}
                publisher.publish("occ/v1/_sys/alerts/ha-giang-city/HG-TEST-WL01", orjson.dumps(alert))
                await asyncio.sleep(0.01)  # a storm over about a second, not one packet
            publisher.wait()
        finally:
            publisher.close()
        for ws in (everything, hydromet):
            ids: list[int] = []
            frames = 0
            while len(ids) < 100:
                delta = await next_frame(ws, "delta", timeout=20)
                frames += 1
                ids += [a["id"] for a in delta["alerts"]]
            assert ids == [1000 + i for i in range(100)]
            assert frames <= 20, f"{frames} frames for 100 alert changes: the burst was not coalesced"
