"""Fixtures for the web tests: a migrated store with a few devices and one user per role, and an aiohttp test
client on the real application (real PostgreSQL; MQTT only where a test asks for it)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from occ.config import Config, load_config
from occ.models import Device, StatusChange
from occ.store import Store
from web.app import WebService
from web.auth import hash_password

PASSWORD = "correct horse battery"
ROLES = ("viewer", "operator", "admin")

DEVICES = [
    Device("HG-TEST-WL01", "hydromet", "Trạm thủy văn Hà Giang", 22.82, 104.98, "ha-giang-city",
           {"alarm_levels_m": {"I": 99.0, "II": 101.0, "III": 103.0}}),
    Device("HG-TEST-RG01", "hydromet", "Trạm đo mưa Bắc Quang", 22.42, 104.82, "bac-quang"),
    Device("HG-TEST-CAM1", "camera", "Camera cầu Yên Biên", 22.81, 104.97, "ha-giang-city"),
]


def web_config(database_url: str, mqtt_url: str | None = None, **web: Any) -> Config:
    config = load_config([], environ={}, flags={"database.url": database_url, "var_dir": "/tmp/occ-web-test"})
    if mqtt_url:
        config = dataclasses.replace(config, mqtt=dataclasses.replace(config.mqtt, url=mqtt_url))
    if web:
        config = dataclasses.replace(config, web=dataclasses.replace(config.web, **web))
    return config


async def seed(store: Store) -> None:
    await store.upsert_devices(DEVICES)
    now = datetime.now(UTC).replace(microsecond=0)
    rows = [("HG-TEST-WL01", "water_level_m", now - timedelta(minutes=10 * i), 98.0 + i / 10, 0) for i in range(6)]
    rows += [("HG-TEST-RG01", "rain_mm", now - timedelta(minutes=10 * i), float(i), 0) for i in range(6)]
    await store.write_batch(rows, statuses=[StatusChange("HG-TEST-CAM1", "offline", now)], received_at=now)
    for role in ROLES:
        await store.users.upsert(role, role, hash_password(PASSWORD))  # type: ignore[arg-type]


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    s = await Store.connect(database_url, pool_size=3)
    await seed(s)
    yield s
    await s.close()


@pytest.fixture
async def client(store: Store, database_url: str) -> AsyncIterator[TestClient[Any, Any]]:
    service = WebService(web_config(database_url), store=store)
    async with await make_client(service) as c:
        yield c


async def make_client(service: WebService) -> TestClient[Any, Any]:
    """A test client on the service's application (the gateway starts with the app)."""
    return TestClient(TestServer(await service.build()))


async def login(client: TestClient[Any, Any], name: str, password: str = PASSWORD) -> None:
    response = await client.post("/api/login", json={"name": name, "password": password},
                                 headers={"X-OCC-Request": "1"})
    assert response.status == 200, await response.text()


WRITE_HEADERS = {"X-OCC-Request": "1"}
