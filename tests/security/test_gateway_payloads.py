"""A gateway's own topic carries many devices in its payload, which the broker's ACL cannot see: ingest's decoder
holds a gateway that devices name in their `gateway` attribute to those devices (issue 7)."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from occ.catalog import Catalog
from occ.codecs import Decoder
from occ.models import Device, RejectCode

NOW = datetime(2026, 11, 27, 1, 0, tzinfo=UTC)
DEVICES = {
    "RG-1": Device("RG-1", "hydromet", attributes={"gateway": "GW-1"}),
    "RG-2": Device("RG-2", "hydromet", attributes={"gateway": "GW-2"}),
    "RG-3": Device("RG-3", "hydromet"),
}


def decode(topic: str, doc: object) -> tuple[set[str], list[tuple[str, str]]]:
    out = Decoder(Catalog.default(), DEVICES).decode(topic, orjson.dumps(doc), NOW)
    return {row[0] for row in out.rows}, [(r.code, r.text) for r in out.rejects]


def test_an_assigned_gateway_speaks_for_its_devices_only() -> None:
    body = {"ts": int(NOW.timestamp()) - 60, "values": {"rain_mm": 1.0}}
    stored, rejects = decode("occ/v1/gateway/GW-1/telemetry", {"RG-1": body, "RG-2": body, "RG-3": body})
    assert stored == {"RG-1"}
    assert [code for code, _ in rejects] == [RejectCode.DEVICE_MISMATCH] * 2
    assert "RG-2 is not assigned to gateway GW-1" in rejects[0][1]
    # SenML naming the devices: the same rule
    senml = [{"bn": "RG-1/", "n": "rain_mm", "v": 1.0, "t": NOW.timestamp() - 60},
             {"bn": "RG-3/", "n": "rain_mm", "v": 2.0, "t": NOW.timestamp() - 60}]
    stored, rejects = decode("occ/v1/gateway/GW-1/telemetry", senml)
    assert stored == {"RG-1"} and [code for code, _ in rejects] == [RejectCode.DEVICE_MISMATCH]


def test_a_gateway_nobody_names_is_not_restricted() -> None:
    body = {"ts": int(NOW.timestamp()) - 60, "values": {"rain_mm": 1.0}}
    stored, rejects = decode("occ/v1/gateway/GW-FREE/telemetry", {"RG-1": body, "RG-3": body})
    assert stored == {"RG-1", "RG-3"} and rejects == []
