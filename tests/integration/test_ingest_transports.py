"""Ingest's transport selection: the native receive path (default) and the paho fallback store the same stream
the same way, QoS 0 and 1 alike, and a bad choice is one clear configuration error. The fault, burst and
end-to-end suites run on the default (native) path."""

from __future__ import annotations

import time

import pytest

from ingest.service import IngestService
from occ.bus import MqttClient
from occ.cli import _flags, build_parser
from occ.config import load_config
from occ.errors import ConfigError
from occ.mqtt.transport import MqttSubscriber
from tests.integration.ingest_helpers import HYDROMET, Publisher, fetch, running_ingest, seed_devices, wait_for_count


@pytest.mark.parametrize("transport, kind", [("native", MqttSubscriber), ("paho", MqttClient)])
async def test_both_transports_store_the_same_stream(transport: str, kind: type, database_url: str, mqtt_url: str,
                                                      mqtt_services_url: str) -> None:
    await seed_devices(database_url)
    async with running_ingest(database_url, mqtt_services_url, transport=transport) as service:
        assert isinstance(service.bus, kind)
        pub = Publisher(mqtt_url)
        t0 = int(time.time()) - 3600
        for i in range(300):
            device = HYDROMET[i % len(HYDROMET)].id
            pub.publish(f"occ/v1/hydromet/{device}/telemetry",
                        b'{"ts": %d, "values": {"rain_mm": %d.5}}' % (t0 + i, i), qos=i % 2)
        pub.close()
        assert await wait_for_count(database_url, "SELECT count(*) FROM readings", 300) == 300
        rows = await fetch(database_url, "SELECT sum(value) AS total FROM readings")
        assert rows[0]["total"] == sum(i + 0.5 for i in range(300))
        assert service.health()["ok"]


def test_transport_setting_flag_and_validation() -> None:
    args = build_parser().parse_args(["ingest", "--transport", "paho"])
    assert load_config(None, flags=_flags(args), environ={}).ingest.transport == "paho"
    assert load_config(None, flags={}, environ={}).ingest.transport == "native"
    with pytest.raises(ConfigError, match=r"ingest\.transport must be one of native, paho"):
        IngestService(mqtt_url="mqtt://127.0.0.1:1", database_url="postgresql://x/y", transport="mosquitto",
                      http_port=None)
