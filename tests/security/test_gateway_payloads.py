"""A gateway's own topic carries many devices in its payload, which the broker's ACL cannot see: ingest's decoder
holds a gateway that holds MQTT credentials to the devices whose `gateway` attribute names it, possibly none; a
gateway id without credentials (open broker, legacy) is not restricted (issue 7)."""

from __future__ import annotations

from collections.abc import Iterable
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
BODY = {"ts": int(NOW.timestamp()) - 60, "values": {"rain_mm": 1.0}}
ACCOUNTS = ("GW-1", "GW-2", "GW-EMPTY")


def decode(topic: str, doc: object, accounts: Iterable[str] = ACCOUNTS,
           decoder: Decoder | None = None) -> tuple[set[str], list[tuple[str, str]]]:
    decoder = decoder or Decoder(Catalog.default(), DEVICES, gateway_accounts=accounts)
    out = decoder.decode(topic, orjson.dumps(doc), NOW)
    return {row[0] for row in out.rows}, [(r.code, r.text) for r in out.rejects]


def test_a_credentialed_gateway_speaks_for_its_devices_only() -> None:
    stored, rejects = decode("occ/v1/gateway/GW-1/telemetry", {"RG-1": BODY, "RG-2": BODY, "RG-3": BODY})
    assert stored == {"RG-1"}
    assert [code for code, _ in rejects] == [RejectCode.DEVICE_MISMATCH] * 2
    assert "RG-2 is not assigned to gateway GW-1" in rejects[0][1]
    assert "RG-3 is not assigned to gateway GW-1" in rejects[1][1]
    # SenML naming the devices: the same rule
    senml = [{"bn": "RG-1/", "n": "rain_mm", "v": 1.0, "t": NOW.timestamp() - 60},
             {"bn": "RG-3/", "n": "rain_mm", "v": 2.0, "t": NOW.timestamp() - 60}]
    stored, rejects = decode("occ/v1/gateway/GW-1/telemetry", senml)
    assert stored == {"RG-1"} and [code for code, _ in rejects] == [RejectCode.DEVICE_MISMATCH]


def test_a_credentialed_gateway_that_no_device_names_speaks_for_none() -> None:
    stored, rejects = decode("occ/v1/gateway/GW-EMPTY/telemetry", {"RG-1": BODY, "RG-3": BODY})
    assert stored == set()
    assert [code for code, _ in rejects] == [RejectCode.DEVICE_MISMATCH] * 2
    assert "RG-1 is not assigned to gateway GW-EMPTY" in rejects[0][1]
    assert "none does" in rejects[0][1]


def test_a_gateway_without_credentials_is_not_restricted() -> None:
    # Named by no device, or named by devices: without an account anyone could publish anyway.
    stored, rejects = decode("occ/v1/gateway/GW-FREE/telemetry", {"RG-1": BODY, "RG-3": BODY})
    assert stored == {"RG-1", "RG-3"} and rejects == []
    stored, rejects = decode("occ/v1/gateway/GW-1/telemetry", {"RG-1": BODY, "RG-2": BODY}, accounts=())
    assert stored == {"RG-1", "RG-2"} and rejects == []


def test_the_accounts_and_the_registry_can_change_independently() -> None:
    decoder = Decoder(Catalog.default(), DEVICES)
    topic, doc = "occ/v1/gateway/GW-NEW/telemetry", {"RG-1": BODY, "RG-3": BODY}
    assert decode(topic, doc, decoder=decoder)[0] == {"RG-1", "RG-3"}
    decoder.set_gateway_accounts(["GW-NEW"])  # issued: restricted at once, to nobody
    assert decode(topic, doc, decoder=decoder)[0] == set()
    decoder.set_devices({**DEVICES, "RG-3": Device("RG-3", "hydromet", attributes={"gateway": "GW-NEW"})})
    assert decode(topic, doc, decoder=decoder)[0] == {"RG-3"}  # the registry change keeps the accounts
    decoder.set_gateway_accounts([])
    assert decode(topic, doc, decoder=decoder)[0] == {"RG-1", "RG-3"}
