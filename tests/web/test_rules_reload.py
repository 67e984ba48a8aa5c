"""`POST /api/rules/reload`: the rule files are validated where they lie, then the request goes to `occ alerts`
over MQTT (`occ.topics.alerts_reload_topic`; the alerts side is tested in tests/alerts/test_service.py)."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from occ.bus import BrokerAddress
from occ.store import Store
from occ.topics import alerts_reload_topic
from tests.conftest import ROOT
from tests.web.conftest import WRITE_HEADERS, login, make_client, web_config
from web.app import WebService


def listen(mqtt_url: str, topic: str) -> tuple[paho.Client, threading.Event]:
    address = BrokerAddress.parse(mqtt_url)
    heard = threading.Event()
    subscribed = threading.Event()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_message = lambda c, u, m: heard.set()
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect(address.host, address.port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    assert subscribed.wait(10)
    return client, heard


async def test_reload_validates_then_asks_the_alerts_service(store: Store, database_url: str,
                                                             mqtt_services_url: str) -> None:
    config = web_config(database_url, mqtt_url=mqtt_services_url)
    service = WebService(config, store=store)
    listener, heard = listen(mqtt_services_url, alerts_reload_topic(config.mqtt.topic_prefix))
    try:
        async with await make_client(service) as client:
            await login(client, "admin")
            gateway = service.gateway
            assert gateway is not None and gateway.bus is not None
            await gateway.bus.connected.wait()
            response = await client.post("/api/rules/reload", headers=WRITE_HEADERS)
            body: dict[str, Any] = await response.json()
            assert response.status == 202 and body["reloaded"] is True, body
            assert heard.wait(10)
    finally:
        listener.loop_stop()
        listener.disconnect()


async def test_reload_refuses_a_bad_file_and_names_its_line(store: Store, database_url: str, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "config" / "rules", tmp_path / "rules")
    (tmp_path / "rules" / "zz-broken.yaml").write_text("rules:\n  - name: x\n    kind: nope\n")
    config = dataclasses.replace(web_config(database_url), config_dir=str(tmp_path))
    service = WebService(config, store=store)
    async with await make_client(service) as client:
        await login(client, "admin")
        response = await client.post("/api/rules/reload", headers=WRITE_HEADERS)
        body = await response.json()
        assert response.status == 422 and body["reloaded"] is False, body
        assert "zz-broken.yaml:3" in body["error"]["message"], body
