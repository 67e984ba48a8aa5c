"""Ingest end to end through a real broker into a real PostgreSQL: every payload form, bad input, redelivery."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson

from occ.models import RejectCode
from tests.integration.ingest_helpers import Publisher, fetch, running_ingest, seed_devices, wait_for_count

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def iso(dt: datetime) -> str:
    return dt.isoformat()


async def test_every_payload_form_lands_once(database_url: str, mqtt_url: str, mqtt_services_url: str) -> None:
    await seed_devices(database_url)
    async with running_ingest(database_url, mqtt_services_url):
        pub = Publisher(mqtt_url)
        # 1. object
        pub.publish(
            "occ/v1/hydromet/HG-T-000/telemetry",
            orjson.dumps({"ts": iso(T0), "values": {"rain_mm": 1.5, "water_level_m": 99.2}}),
        )
        # 1b. flat object = now
        pub.publish("occ/v1/hydromet/HG-T-001/telemetry", b'{"temperature_c": 21.5}')
        # 2. backfill array
        backfill = [
            {"ts": int((T0 + timedelta(minutes=10 * i)).timestamp()), "values": {"rain_mm": float(i)}} for i in range(6)
        ]
        pub.publish("occ/v1/hydromet/HG-T-002/telemetry", orjson.dumps(backfill))
        # 3. SenML
        senml = [
            {"bn": "HG-T-003/", "bt": T0.timestamp(), "n": "temperature_c", "u": "K", "v": 295.15},
            {"n": "humidity_pct", "u": "%RH", "v": 80, "t": 60},
        ]
        pub.publish("occ/v1/hydromet/HG-T-003/telemetry", orjson.dumps(senml))
        # 4. gateway
        gateway = {
            "HG-T-004": [{"ts": iso(T0), "values": {"rain_mm": 2.0}}],
            "HG-T-005": {"ts": iso(T0), "values": {"rain_mm": 3.0}},
        }
        pub.publish("occ/v1/gateway/GW-1/telemetry", orjson.dumps(gateway))
        # status and event
        pub.publish("occ/v1/hydromet/HG-T-006/status", b"offline", retain=False)
        pub.publish("occ/v1/hydromet/HG-T-006/event", orjson.dumps({"ts": iso(T0), "type": "tamper", "door": 1}))
        pub.close()
        total = 2 + 1 + 6 + 2 + 2
        assert await wait_for_count(database_url, "SELECT count(*) FROM readings", total) == total
        assert await wait_for_count(database_url, "SELECT count(*) FROM events", 1) == 1
        assert await wait_for_count(database_url, "SELECT count(*) FROM device_status", 1) == 1
    rows = {
        (r["device_id"], r["metric"]): r["value"]
        for r in await fetch(
            database_url, "SELECT device_id, metric, value FROM readings WHERE device_id IN ('HG-T-000','HG-T-003')"
        )
    }
    assert rows[("HG-T-000", "water_level_m")] == 99.2
    assert abs(rows[("HG-T-003", "temperature_c")] - 22.0) < 1e-9  # K converted to Cel
    status = await fetch(database_url, "SELECT status FROM device_status WHERE device_id = 'HG-T-006'")
    assert status[0]["status"] == "offline"
    assert (await fetch(database_url, "SELECT count(*) AS n FROM dead_letters"))[0]["n"] == 0


BAD_MESSAGES = {
    "malformed": (b'{"rain_mm": 1.', "malformed JSON"),
    "wrong_type": (b'{"rain_mm": "lots"}', "expected a number"),
    "nan": (b'{"rain_mm": NaN}', "non-finite"),
    "infinity": (b'{"values": {"rain_mm": Infinity}}', "non-finite"),
    "mismatch": (b'{"device_id": "HG-T-009", "values": {"rain_mm": 1}}', "does not match"),
    "future": (
        orjson.dumps({"ts": iso(datetime.now(UTC) + timedelta(hours=1)), "values": {"rain_mm": 1}}),
        "in the future",
    ),
    "past": (b'{"ts": 946684800, "values": {"rain_mm": 1}}', "days old"),
    "oversize": (b'{"rain_mm": 1, "pad": "' + b"x" * 70_000 + b'"}', "exceeds the limit"),
}
BAD_CODES = {
    "malformed": RejectCode.MALFORMED_JSON, "wrong_type": RejectCode.BAD_VALUE, "nan": RejectCode.NON_FINITE,
    "infinity": RejectCode.NON_FINITE, "mismatch": RejectCode.DEVICE_MISMATCH, "future": RejectCode.TIME_IN_FUTURE,
    "past": RejectCode.TIME_TOO_OLD, "oversize": RejectCode.PAYLOAD_TOO_LARGE,
}


async def test_bad_input_goes_to_dead_letters_and_ingest_keeps_running(
    database_url: str, mqtt_url: str, mqtt_services_url: str
) -> None:
    await seed_devices(database_url)
    async with running_ingest(database_url, mqtt_services_url, max_payload_bytes=65536) as service:
        pub = Publisher(mqtt_url)
        for payload, _ in BAD_MESSAGES.values():
            pub.publish("occ/v1/hydromet/HG-T-007/telemetry", payload)
        pub.publish("occ/v1/hydromet/NOT-REGISTERED/telemetry", b'{"rain_mm": 1}')
        pub.publish("occ/v1/hydromet/HG-T-008/telemetry", b'{"rain_mm": 4.5}')  # a good one after the bad
        pub.close()
        expected = len(BAD_MESSAGES) + 1
        assert await wait_for_count(database_url, "SELECT count(*) FROM dead_letters", expected) == expected
        assert await wait_for_count(database_url, "SELECT count(*) FROM readings", 1) == 1
        assert service.health()["ok"]
        # metrics are labelled by code (a bounded set), never by the text
        assert service.metrics.dead_lettered.get(RejectCode.NON_FINITE) == 2
        assert service.metrics.dead_lettered.get(RejectCode.UNKNOWN_DEVICE) == 1
    letters = await fetch(database_url, "SELECT topic, payload, reason, code, device_id FROM dead_letters")
    for name, (payload, fragment) in BAD_MESSAGES.items():
        matching = [r for r in letters if bytes(r["payload"]) == payload]
        assert matching, f"{name} not dead-lettered"
        assert fragment in matching[0]["reason"], (name, matching[0]["reason"])
        assert (matching[0]["code"], matching[0]["device_id"]) == (BAD_CODES[name], "HG-T-007"), name
    unknown = [r for r in letters if r["code"] == RejectCode.UNKNOWN_DEVICE]
    assert [(r["device_id"], r["reason"]) for r in unknown] == [("NOT-REGISTERED", "unknown device NOT-REGISTERED")]


async def test_out_of_range_is_stored_with_quality_flag(
    database_url: str, mqtt_url: str, mqtt_services_url: str
) -> None:
    await seed_devices(database_url)
    async with running_ingest(database_url, mqtt_services_url):
        pub = Publisher(mqtt_url)
        pub.publish("occ/v1/hydromet/HG-T-010/telemetry", b'{"humidity_pct": 140}')
        pub.close()
        assert await wait_for_count(database_url, "SELECT count(*) FROM readings", 1) == 1
    row = (await fetch(database_url, "SELECT value, quality FROM readings"))[0]
    assert row["value"] == 140 and row["quality"] == 1


async def test_redelivered_message_is_stored_once(database_url: str, mqtt_url: str, mqtt_services_url: str) -> None:
    await seed_devices(database_url)
    payload = json.dumps({"ts": iso(T0), "values": {"rain_mm": 7.0, "temperature_c": 18.0}})
    async with running_ingest(database_url, mqtt_services_url) as service:
        pub = Publisher(mqtt_url)
        for _ in range(3):  # a device retrying, or the broker redelivering after a lost ack
            pub.publish("occ/v1/hydromet/HG-T-011/telemetry", payload)
        pub.close()
        await wait_for_count(database_url, "SELECT count(*) FROM readings", 2)
        deadline = asyncio.get_running_loop().time() + 10
        while service.metrics.acked.get() < 3 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert service.metrics.duplicates.get() == 4
    assert (await fetch(database_url, "SELECT count(*) AS n FROM readings"))[0]["n"] == 2


async def test_message_the_database_refuses_is_dead_lettered_not_blocking(
    database_url: str, mqtt_url: str, mqtt_services_url: str
) -> None:
    """A message the database refuses (here: a check a DBA added as a trigger) must not block the stream."""
    await seed_devices(database_url)
    conn = await asyncpg.connect(database_url)
    await conn.execute("""
        CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.data->>'note' = 'poison' THEN RAISE EXCEPTION 'poison event' USING ERRCODE = 'check_violation';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_poison BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse_poison();
    """)
    await conn.close()
    async with running_ingest(database_url, mqtt_services_url, linger_s=0.5, retry_max_s=0.2) as service:
        pub = Publisher(mqtt_url)
        pub.publish("occ/v1/hydromet/HG-T-012/event", b'{"ts": 1764200000, "type": "tamper", "note": "poison"}')
        pub.publish("occ/v1/hydromet/HG-T-012/event", b'{"ts": 1764200000, "type": "tamper", "note": "fine"}')
        pub.publish("occ/v1/hydromet/HG-T-012/telemetry", b'{"rain_mm": 3.5}')
        pub.close()
        assert await wait_for_count(database_url, "SELECT count(*) FROM readings", 1, timeout=30) == 1
        assert await wait_for_count(database_url, "SELECT count(*) FROM dead_letters", 1, timeout=30) == 1
        assert await wait_for_count(database_url, "SELECT count(*) FROM events", 1, timeout=30) == 1
        assert service.health()["ok"]
        assert service.metrics.dead_lettered.get("store_rejected") == 1
    letter = (await fetch(database_url, "SELECT topic, payload, reason, code FROM dead_letters"))[0]
    assert b"poison" in bytes(letter["payload"]) and "store rejected" in letter["reason"]
    assert letter["code"] == RejectCode.STORE_REJECTED
    assert "poison event" in letter["reason"]


async def test_device_registered_while_running_is_accepted_at_once(
    database_url: str, mqtt_url: str, mqtt_services_url: str
) -> None:
    """Import a device, publish right away: the registry is re-checked when an unknown id arrives."""
    from occ.models import Device

    await seed_devices(database_url)
    async with running_ingest(database_url, mqtt_services_url):
        await seed_devices(database_url, [Device(id="HG-NEW-01", kind="hydromet", name="new station")])
        pub = Publisher(mqtt_url)
        pub.publish("occ/v1/hydromet/HG-NEW-01/telemetry", b'{"rain_mm": 0.4}')
        pub.close()
        assert await wait_for_count(database_url, "SELECT count(*) FROM readings", 1) == 1
    assert (await fetch(database_url, "SELECT count(*) AS n FROM dead_letters"))[0]["n"] == 0


async def test_two_workers_split_a_shared_subscription(
    database_url: str, mqtt_url: str, mqtt_services_url: str
) -> None:
    """N ingest workers in one MQTT 5 shared-subscription group split the stream; each reading is stored once."""
    import uuid

    await seed_devices(database_url)
    group = f"occ-test-{uuid.uuid4().hex[:6]}"
    async with (
        running_ingest(database_url, mqtt_services_url, share_group=group) as first,
        running_ingest(database_url, mqtt_services_url, share_group=group) as second,
    ):
        pub = Publisher(mqtt_url)
        for i in range(2000):
            ts = int(T0.timestamp()) + i
            pub.publish(
                f"occ/v1/hydromet/HG-T-{i % 20:03d}/telemetry", orjson.dumps({"ts": ts, "values": {"rain_mm": i / 10}})
            )
        pub.close()
        assert await wait_for_count(database_url, "SELECT count(*) FROM readings", 2000) == 2000
        received = (first.metrics.received.get(), second.metrics.received.get())
    assert sum(received) == 2000, received
    assert min(received) > 0, f"one worker got nothing: {received}"
    assert (await fetch(database_url, "SELECT count(DISTINCT (device_id, metric, ts)) AS n FROM readings"))[0][
        "n"
    ] == 2000
