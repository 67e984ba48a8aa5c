"""Malformed and mutated payloads through a real broker and ingest (issue 11 item 12).

More than 10,000 broken messages of every form (object, array, SenML, gateway, event, status; byte flips, cuts,
injected tokens, NaN literals, wrong types, oversize, bad topics) are published with a valid stream interleaved.
Ingest must stay up; every broken message must be in dead letters (exactly those the decoder rejects) or
stored; the valid stream must be stored exactly once.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from occ.catalog import Catalog
from occ.codecs import Decoder
from occ.models import Device
from tests.integration.ingest_helpers import Publisher, fetch, running_ingest, seed_devices, wait_for_count

BROKEN = 12_500
VALID = 2_000
MAX_PAYLOAD = 16_384
FUZZED = [Device(f"HG-F-{i:02d}", "hydromet") for i in range(10)] + [Device("HG-F-CAM", "camera")]
STREAM = [Device(f"HG-V-{i:02d}", "hydromet") for i in range(20)]
TOKENS = [b"{", b"}", b"[", b"]", b'"', b",", b":", b"\\", b"\x00", b"\xff\xfe", b"NaN", b"-Infinity", b"1e999",
          b"null", b"true", b'"x"', b"-", b"0", b'"ts":', b'"values":']


def base_messages(rng: random.Random, now: datetime) -> list[tuple[str, bytes]]:
    """Well-formed messages of every form for the fuzzed devices (the seeds that get mutated)."""
    dev = rng.choice(FUZZED[:-1]).id
    ts = int((now - timedelta(minutes=rng.randrange(1, 600))).timestamp())
    iso = (now - timedelta(minutes=rng.randrange(1, 600))).isoformat()
    values = {"rain_mm": rng.uniform(0, 50), "water_level_m": rng.uniform(95, 105), "temperature_c": 21.5}
    tele = f"occ/v1/hydromet/{dev}/telemetry"
    return [
        (tele, orjson.dumps({"ts": ts, "values": values})),
        (tele, orjson.dumps({"ts": iso, **values})),
        (tele, orjson.dumps([{"ts": ts - 60 * k, "values": {"rain_mm": k}} for k in range(rng.randrange(2, 30))])),
        (tele, orjson.dumps([{"bn": f"{dev}/", "bt": ts, "n": "rain_mm", "u": "mm", "v": 1.5},
                             {"n": "water_level_m", "v": 101.2, "t": -60}, {"n": "humidity_pct", "v": 88}])),
        ("occ/v1/gateway/HG-F-GW/telemetry",
         orjson.dumps({d.id: [{"ts": ts, "values": {"rain_mm": 2}}] for d in FUZZED[:3]})),
        ("occ/v1/gateway/HG-F-GW/telemetry",
         orjson.dumps([{"bn": "HG-F-01/", "bt": ts, "n": "rain_mm", "v": 3}, {"n": "HG-F-02/rain_mm", "v": 4}])),
        ("occ/v1/camera/HG-F-CAM/event", orjson.dumps({"ts": iso, "type": "incident", "kind": "landslide"})),
        ("occ/v1/camera/HG-F-CAM/event", orjson.dumps([{"type": "vehicle", "ts": ts}, {"type": "tamper"}])),
        (f"occ/v1/hydromet/{dev}/status", rng.choice([b"online", b"offline", b'{"status": "online", "ts": %d}' % ts])),
    ]


def mutate(rng: random.Random, payload: bytes) -> bytes:
    data = bytearray(payload)
    for _ in range(rng.randrange(1, 5)):
        op = rng.randrange(6)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and pos < len(data):
            data[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            del data[pos:]
        elif op == 2:
            data[pos:pos] = rng.choice(TOKENS)
        elif op == 3 and pos < len(data):
            del data[pos : pos + rng.randrange(1, 6)]
        elif op == 4:
            data[pos:pos] = data[max(0, pos - 12) : pos]
        else:
            data = bytearray(payload.replace(b"1.5", rng.choice([b'"1.5"', b"NaN", b"null", b"[1]", b"1e400"])))
    return bytes(data)


def broken_messages(rng: random.Random, now: datetime) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    while len(out) < BROKEN:
        for topic, payload in base_messages(rng, now):
            roll = rng.random()
            if roll < 0.85:
                out.append((topic, mutate(rng, payload)))
            elif roll < 0.9:  # a valid payload on a topic ingest cannot use
                out.append((rng.choice(["occ/v1/hydromet/HG-F-GHOST/telemetry", "occ/v1/camera/HG-F-01/telemetry",
                                        "occ/v1/hydromet/HG-F-01/config", "occ/v1/hydro met/HG-F-01/event"]),
                            payload))
            elif roll < 0.93:
                out.append((topic, payload + b" " * MAX_PAYLOAD))  # oversize
            elif roll < 0.96:
                out.append((topic, rng.choice([b"", b"   ", b"\xff\xfe\xfd", b"[]", b"{}", b"42", b'"online"'])))
            else:
                out.append((topic, payload))  # some pass through untouched: stored, not dead-lettered
    return out[:BROKEN]


@pytest.mark.slow
async def test_ten_thousand_broken_messages_never_stop_ingest_or_disturb_the_stream(
    database_url: str, mqtt_url: str, mqtt_services_url: str
) -> None:
    rng = random.Random(11_12)
    now = datetime.now(UTC)
    later = now + timedelta(seconds=90)  # ingest receives everything within this window
    decoder = Decoder(Catalog.default(), {d.id: d for d in FUZZED + STREAM}, max_payload_bytes=MAX_PAYLOAD)
    broken = []
    for topic, payload in broken_messages(rng, now):
        first, second = decoder.decode(topic, payload, now), decoder.decode(topic, payload, later)
        if bool(first.rejects) != bool(second.rejects):  # a timestamp at the edge of the accepted window
            payload = b"{"
        broken.append((topic, payload))
    stream_start = now - timedelta(hours=2)
    valid = [(f"occ/v1/hydromet/{STREAM[i % len(STREAM)].id}/telemetry",
              orjson.dumps({"ts": (stream_start + timedelta(seconds=i)).isoformat(),
                            "values": {"water_level_m": 100 + i / 1000}}))
             for i in range(VALID)]
    # Interleave: a valid message after every ~5 broken ones, in publish order.
    messages = list(broken)
    for k, message in enumerate(valid):
        messages.insert(k * (BROKEN // VALID + 1), message)

    # What the decoder says about each broken message (the same decoder, run here before ingest sees it).
    # Readings whose time does not depend on the receive time ("now" for flat payloads, relative SenML) must
    # be found in the store by key.
    rejected = Counter(payload for topic, payload in broken if decoder.decode(topic, payload, now).rejects)
    stored_keys: set[tuple[str, str, datetime]] = set()
    for topic, payload in broken:
        keys = {row[:3] for row in decoder.decode(topic, payload, now).rows}
        stored_keys |= keys & {row[:3] for row in decoder.decode(topic, payload, later).rows}
    assert sum(rejected.values()) >= 10_000, "at least 10,000 of them must be broken"

    await seed_devices(database_url, FUZZED + STREAM)
    async with running_ingest(database_url, mqtt_services_url, max_payload_bytes=MAX_PAYLOAD) as service:
        pub = Publisher(mqtt_url)
        for topic, payload in messages:
            pub.publish(topic, payload)
        pub.close()
        expected_letters = sum(rejected.values())
        assert await wait_for_count(database_url, "SELECT count(*) FROM dead_letters", expected_letters,
                                    timeout=120) == expected_letters
        assert await wait_for_count(database_url, "SELECT count(*) FROM readings WHERE device_id LIKE 'HG-V-%'",
                                    VALID, timeout=120) == VALID
        assert service.health()["ok"], service.health()
        assert service.metrics.received.get() == len(messages)
        assert service.metrics.dead_lettered.get("decoder_error") == 0

    letters = await fetch(database_url, "SELECT payload, code FROM dead_letters")
    assert Counter(bytes(r["payload"]) for r in letters) == rejected  # exactly the rejected ones, once each
    assert all(r["code"] for r in letters)
    stream = await fetch(database_url, "SELECT device_id, ts, value FROM readings WHERE device_id LIKE 'HG-V-%'")
    assert sorted((r["ts"], r["device_id"], r["value"]) for r in stream) == [
        (stream_start + timedelta(seconds=i), STREAM[i % len(STREAM)].id, 100 + i / 1000) for i in range(VALID)
    ]
    fuzzed = await fetch(database_url, "SELECT device_id, metric, ts FROM readings WHERE device_id LIKE 'HG-F-%'")
    missing = stored_keys - {(r["device_id"], r["metric"], r["ts"]) for r in fuzzed}
    assert not missing, f"{len(missing)} readings the decoder accepted were not stored, e.g. {sorted(missing)[:3]}"
