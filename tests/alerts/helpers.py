"""Helpers for alerts integration tests: an MQTT recorder of the alert stream and a running service."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho

from alerts.service import AlertsService
from occ.bus import BrokerAddress

ROOT = Path(__file__).resolve().parents[2]


class Recorder:
    """Records JSON messages on a topic filter (its own thread, QoS 1), as the web gateway would receive them."""

    def __init__(self, mqtt_url: str, topic: str = "occ/v1/_sys/alerts/#") -> None:
        address = BrokerAddress.parse(mqtt_url)
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"rec-{uuid.uuid4().hex[:8]}")
        client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, 1)
        client.on_subscribe = lambda c, u, mid, rc, p: subscribed.set()
        client.on_message = self._on_message
        if address.username:  # a closed broker (issue 7)
            client.username_pw_set(address.username, address.password)
        client.connect(address.host, address.port)
        client.loop_start()
        self.client = client
        assert subscribed.wait(10), "subscription not acknowledged"

    def _on_message(self, client: object, userdata: object, msg: Any) -> None:
        with self._lock:
            self.messages.append((msg.topic, orjson.loads(msg.payload)))

    def payloads(self) -> list[dict[str, Any]]:
        with self._lock:
            return [p for _, p in self.messages]

    def unique(self) -> list[dict[str, Any]]:
        """Deduplicated on `seq` (delivery is at least once), in seq order."""
        by_seq = {p["seq"]: p for p in self.payloads() if "seq" in p}
        return [by_seq[k] for k in sorted(by_seq)]

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.unique()):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@asynccontextmanager
async def running_alerts(database_url: str, mqtt_url: str, rules_dir: Path, **options: Any
                         ) -> AsyncIterator[AlertsService]:
    options.setdefault("client_id", f"alerts-test-{uuid.uuid4().hex[:8]}")
    options.setdefault("http_port", 0)
    options.setdefault("tick_s", 0.1)
    options.setdefault("store_options", {"timescaledb": "off"})
    service = AlertsService(mqtt_url=mqtt_url, database_url=database_url, rules_dir=rules_dir, **options)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()
