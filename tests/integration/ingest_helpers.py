"""Helpers for ingest integration tests: a running IngestService, a publisher, and store polling."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import paho.mqtt.client as paho

from ingest.service import IngestService
from occ.bus import BrokerAddress
from occ.models import Device
from occ.store import Store
from tests.integration.fault_helpers import storage_mode

HYDROMET = [Device(id=f"HG-T-{i:03d}", kind="hydromet", name=f"Test station {i}", area="bac-quang",
                   attributes={"report_interval_s": 600}) for i in range(20)]


async def seed_devices(database_url: str, devices: Iterable[Device] = HYDROMET) -> None:
    """Register devices, migrating with the run's storage mode (the one ingest will be started with)."""
    store = await Store.connect(database_url, pool_size=1, timescaledb=storage_mode(database_url))
    try:
        await store.upsert_devices(list(devices))
    finally:
        await store.close()


@asynccontextmanager
async def running_ingest(database_url: str, mqtt_url: str, **options: Any) -> AsyncIterator[IngestService]:
    options.setdefault("client_id", f"ingest-test-{uuid.uuid4().hex[:8]}")
    options.setdefault("share_group", None)
    options.setdefault("http_port", 0)
    options.setdefault("store_options", {"timescaledb": storage_mode(database_url)})
    service = IngestService(mqtt_url=mqtt_url, database_url=database_url, **options)
    try:
        # Inside the try: a start that fails half-way (a refused migration, say) has already opened its HTTP
        # socket and maybe a pool; stop() closes them, or they surface later as another test's ResourceWarning.
        await service.start()
        yield service
    finally:
        await service.stop()


class Publisher:
    """A paho publisher in its own thread loop (as a device would be), QoS 1 by default."""

    def __init__(
        self, mqtt_url: str, *, client_id: str | None = None, protocol: paho.MQTTProtocolVersion = paho.MQTTv311
    ) -> None:
        address = BrokerAddress.parse(mqtt_url)
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id or f"pub-{uuid.uuid4().hex[:8]}", protocol=protocol
        )
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect(address.host, address.port)
        self.client.loop_start()
        self.infos: list[paho.MQTTMessageInfo] = []

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        self.infos.append(self.client.publish(topic, payload, qos=qos, retain=retain))

    def wait(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for info in self.infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        self.infos.clear()

    def close(self) -> None:
        self.wait()
        self.client.disconnect()
        self.client.loop_stop()


async def wait_for_count(database_url: str, sql: str, expected: int, timeout: float = 60) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + timeout
        value = -1
        while time.monotonic() < deadline:
            value = int(await conn.fetchval(sql))
            if value >= expected:
                return value
            await asyncio.sleep(0.1)
        return value
    finally:
        await conn.close()


async def fetch(database_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()
