"""The payload decoder: every telemetry form, status, events, and a precise reason for every reject."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from occ.catalog import Catalog
from occ.codecs import MAX_REJECT_REASONS, Decoder
from occ.models import Decoded, Device, Event, Quality, RejectCode, StatusChange

NOW = datetime(2026, 11, 27, 1, 0, tzinfo=UTC)  # 08:00 in Hà Giang
NOW_EPOCH = int(NOW.timestamp())
RG = "HG-BQ-RG01"
TC = "HG-TC-01"
TOPIC = f"occ/v1/hydromet/{RG}/telemetry"
GW_TOPIC = "occ/v1/gateway/HG-GW-01/telemetry"

DEVICES = {
    RG: Device(RG, "hydromet", "Trạm đo mưa Bắc Quang"),
    TC: Device(TC, "traffic"),
    "HG-CAM-01": Device("HG-CAM-01", "camera"),
}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.default()


@pytest.fixture
def decoder(catalog: Catalog) -> Decoder:
    return Decoder(catalog, DEVICES)


def decode(decoder: Decoder, payload: Any, topic: str = TOPIC, at: datetime = NOW) -> Decoded:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return decoder.decode(topic, raw, at)


def texts(result: Decoded) -> list[str]:
    """The human reasons, for assertions on wording (codes are checked separately)."""
    return [reject.text for reject in result.rejects]


def only_reject(result: Decoded) -> str:
    assert not result.rows, result.rows
    assert len(result.rejects) == 1, result.rejects
    return result.rejects[0].text


# -- telemetry forms -------------------------------------------------------------------------------


def test_flat_object_means_now_and_shares_the_receive_time(decoder: Decoder) -> None:
    result = decode(decoder, b'{"rain_mm": 1.2, "water_level_m": 99.5}')
    assert result.rows == [(RG, "rain_mm", NOW, 1.2, 0), (RG, "water_level_m", NOW, 99.5, 0)]
    assert texts(result) == [] and result.events == [] and result.status is None
    assert result.rows[0][2] is result.rows[1][2]
    assert all(type(row[3]) is float and type(row[4]) is int for row in result.rows)


def test_object_with_iso_timestamp_is_stored_in_utc(decoder: Decoder) -> None:
    result = decode(
        decoder, {"ts": "2026-11-27T07:50:00+07:00", "values": {"rain_mm": 3, "temperature_c": 18.5}}
    )
    ts = datetime(2026, 11, 27, 0, 50, tzinfo=UTC)
    assert result.rows == [(RG, "rain_mm", ts, 3.0, 0), (RG, "temperature_c", ts, 18.5, 0)]
    assert result.rows[0][2].tzinfo is UTC
    assert result.rows[0][2] is result.rows[1][2]  # one datetime per record


def test_flat_object_may_carry_ts_and_device_id(decoder: Decoder) -> None:
    result = decode(decoder, {"ts": "2026-11-27T00:55:00Z", "device_id": RG, "rain_mm": 0.4})
    assert result.rows == [(RG, "rain_mm", NOW - timedelta(minutes=5), 0.4, 0)]
    assert texts(result) == []


def test_naive_iso_timestamp_is_local_time(catalog: Catalog) -> None:
    local = Decoder(catalog, DEVICES)
    assert decode(local, {"ts": "2026-11-27T07:30:00", "rain_mm": 1})
    assert decode(local, {"ts": "2026-11-27T07:30:00", "rain_mm": 1}).rows[0][2] == datetime(
        2026, 11, 27, 0, 30, tzinfo=UTC
    )
    utc = Decoder(catalog, DEVICES, local_tz="UTC")
    assert decode(utc, {"ts": "2026-11-27 00:30", "rain_mm": 1}).rows[0][2] == datetime(
        2026, 11, 27, 0, 30, tzinfo=UTC
    )
    fixed = Decoder(catalog, DEVICES, local_tz=timezone(timedelta(hours=7)))
    assert decode(fixed, {"ts": "2026-11-27T07:30:00", "rain_mm": 1}).rows[0][2] == datetime(
        2026, 11, 27, 0, 30, tzinfo=UTC
    )


def test_epoch_seconds_and_milliseconds(decoder: Decoder) -> None:
    seconds = decode(decoder, {"ts": NOW_EPOCH - 60, "values": {"rain_mm": 1}})
    millis = decode(decoder, {"ts": (NOW_EPOCH - 60) * 1000, "values": {"rain_mm": 1}})
    fractional = decode(decoder, {"ts": NOW_EPOCH - 59.5, "values": {"rain_mm": 1}})
    precise = decode(decoder, {"ts": (NOW_EPOCH - 60) * 1000 + 123, "values": {"rain_mm": 1}})
    assert seconds.rows[0][2] == millis.rows[0][2] == NOW - timedelta(seconds=60)
    assert fractional.rows[0][2] == NOW - timedelta(seconds=59.5)
    assert precise.rows[0][2] == NOW - timedelta(seconds=60) + timedelta(milliseconds=123)


def test_array_backfill_keeps_event_time_and_order(decoder: Decoder) -> None:
    records = [{"ts": NOW_EPOCH - 600 * i, "values": {"rain_mm": float(i)}} for i in range(5000)]
    result = decode(decoder, records)
    assert texts(result) == []
    assert len(result.rows) == 5000
    assert result.rows[0] == (RG, "rain_mm", NOW, 0.0, 0)
    assert result.rows[4999][2] == NOW - timedelta(seconds=600 * 4999)


def test_array_may_mix_flat_and_enveloped_records(decoder: Decoder) -> None:
    result = decode(decoder, [{"rain_mm": 1}, {"ts": NOW_EPOCH, "values": {"rain_mm": 2}}])
    assert [row[3] for row in result.rows] == [1.0, 2.0]


def test_bad_record_in_backfill_is_rejected_alone(decoder: Decoder) -> None:
    result = decode(
        decoder,
        [
            {"ts": NOW_EPOCH - 1200, "values": {"rain_mm": 1}},
            {"ts": "yesterday", "values": {"rain_mm": 2}},
            {"ts": NOW_EPOCH, "values": {"rain_mm": 3}},
            7,
        ],
    )
    assert [row[3] for row in result.rows] == [1.0, 3.0]
    assert texts(result) == [
        "record 1: timestamp 'yesterday' is not ISO-8601 or epoch seconds/ms",
        "record 3: expected an object, got number",
    ]


def test_unit_conversion_per_object(decoder: Decoder) -> None:
    result = decode(
        decoder,
        {
            "values": {"water_level_m": 9950, "temperature_c": 291.15, "wind_speed_ms": 36, "rain_mm": 0.5},
            "units": {"water_level_m": "cm", "temperature_c": "K", "wind_speed_ms": "km/h"},
        },
    )
    assert texts(result) == []
    values = {row[1]: row[3] for row in result.rows}
    assert values == pytest.approx(
        {"water_level_m": 99.5, "temperature_c": 18.0, "wind_speed_ms": 10.0, "rain_mm": 0.5}
    )


def test_unit_conversion_on_a_flat_object_and_traffic_speed(decoder: Decoder) -> None:
    result = decode(
        decoder, {"speed_kmh": 10, "units": {"speed_kmh": "m/s"}}, topic=f"occ/v1/traffic/{TC}/telemetry"
    )
    assert result.rows == [(TC, "speed_kmh", NOW, pytest.approx(36.0), 0)]


def test_out_of_range_is_kept_with_a_quality_flag(decoder: Decoder) -> None:
    result = decode(decoder, {"rain_mm": 450.0, "humidity_pct": -3, "temperature_c": 50})
    assert texts(result) == []
    assert result.rows == [
        (RG, "rain_mm", NOW, 450.0, Quality.OUT_OF_RANGE),
        (RG, "humidity_pct", NOW, -3.0, Quality.OUT_OF_RANGE),
        (RG, "temperature_c", NOW, 50.0, Quality.GOOD),  # the bounds are inclusive
    ]


def test_range_is_checked_after_unit_conversion(decoder: Decoder) -> None:
    result = decode(decoder, {"values": {"rain_mm": 40}, "units": {"rain_mm": "cm"}})
    assert result.rows == [(RG, "rain_mm", NOW, 400.0, Quality.OUT_OF_RANGE)]


# -- SenML (RFC 8428) ------------------------------------------------------------------------------


def test_senml_base_fields_names_and_units(decoder: Decoder) -> None:
    pack = [
        {"bn": f"urn:dev:occ:{RG}:", "bt": NOW_EPOCH - 600, "bu": "mm", "n": "rain_mm", "v": 1.5},
        {"n": "rain_mm", "v": 2.5, "t": 300},
        {"n": "temperature_c", "u": "K", "v": 300.15},
        {"n": "water_level_m", "u": "cm", "v": 10010},
    ]
    result = decode(decoder, pack)
    assert texts(result) == []
    t0 = NOW - timedelta(seconds=600)
    assert result.rows == [
        (RG, "rain_mm", t0, 1.5, 0),
        (RG, "rain_mm", t0 + timedelta(seconds=300), 2.5, 0),
        (RG, "temperature_c", t0, pytest.approx(27.0), 0),
        (RG, "water_level_m", t0, pytest.approx(100.1), 0),
    ]
    assert result.rows[2][2] is result.rows[3][2]


def test_senml_plain_names_and_device_path_names(decoder: Decoder) -> None:
    result = decode(decoder, [{"n": "rain_mm", "v": 1}, {"bn": f"{RG}/", "n": "humidity_pct", "v": 80}])
    assert result.rows == [(RG, "rain_mm", NOW, 1.0, 0), (RG, "humidity_pct", NOW, 80.0, 0)]


def test_senml_relative_time(decoder: Decoder) -> None:
    # no bt: t below 2**28 is relative to the receive time (RFC 8428 §4.5.3)
    result = decode(decoder, [{"n": "rain_mm", "v": 1, "t": -600}, {"n": "rain_mm", "v": 2, "t": -0.5}])
    assert [row[2] for row in result.rows] == [NOW - timedelta(seconds=600), NOW - timedelta(seconds=0.5)]
    # a relative base time plus a relative offset
    result = decode(decoder, [{"bt": -3600, "n": "rain_mm", "v": 1, "t": 60}])
    assert result.rows[0][2] == NOW - timedelta(seconds=3540)


def test_senml_boolean_and_base_value(decoder: Decoder) -> None:
    result = decode(
        decoder,
        [
            {"n": "humidity_pct", "vb": True},
            {"n": "rain_mm", "vb": False},
            {"bv": 100, "n": "water_level_m", "v": 1.5},
        ],
    )
    assert [row[3] for row in result.rows] == [1.0, 0.0, 101.5]


def test_senml_string_and_data_values_are_rejected(decoder: Decoder) -> None:
    result = decode(
        decoder,
        [
            {"bn": f"{RG}/", "n": "rain_mm", "v": 1},
            {"n": "rain_mm", "vs": "heavy"},
            {"n": "rain_mm", "vd": "aGk="},
            {"n": "rain_mm", "s": 12},
        ],
    )
    assert result.rows == [(RG, "rain_mm", NOW, 1.0, 0)]
    assert texts(result) == [
        f"SenML record 1 ('{RG}/rain_mm'): vs (string value) is not supported for numeric metrics",
        f"SenML record 2 ('{RG}/rain_mm'): vd (data value) is not supported for numeric metrics",
        f"SenML record 3 ('{RG}/rain_mm'): sum (s) without a value is not supported",
    ]


def test_senml_device_in_name_must_match_the_topic(decoder: Decoder) -> None:
    reason = only_reject(decode(decoder, [{"bn": "urn:dev:occ:HG-OTHER:", "n": "rain_mm", "v": 1}]))
    assert reason == (
        f"SenML record 0 ('urn:dev:occ:HG-OTHER:rain_mm'): name is for device HG-OTHER, topic device is {RG}"
    )


@pytest.mark.parametrize(
    ("pack", "reason"),
    [
        ([{"n": "rain_mm", "v": "1"}], "SenML record 0 ('rain_mm'): v must be a number, got string ('1')"),
        ([{"n": "rain_mm", "v": None}], "SenML record 0 ('rain_mm'): v must be a number, got null"),
        ([{"n": "rain_mm", "vb": 1}], "SenML record 0 ('rain_mm'): vb must be true or false, got number"),
        ([{"n": "rain_mm"}], "SenML record 0 ('rain_mm'): no value (v or vb)"),
        (
            [{"n": "rain_mm", "v": 1, "u": "K"}],
            "SenML record 0 ('rain_mm'): 'rain_mm': unit 'K' "
            "(temperature) cannot be converted to 'mm' (length)",
        ),
        ([{"n": "snow_cm", "v": 1}], "SenML record 0 ('snow_cm'): unknown metric 'snow_cm'"),
        (
            [{"n": "rain_mm", "v": 1, "t": "now"}],
            "SenML record 0 ('rain_mm'): t must be a number, got string",
        ),
        (
            [{"n": "rain_mm", "v": 1, "t": 3600}],
            "SenML record 0 ('rain_mm'): timestamp 3600 (bt+t) is 3600 s in the future (device clock ahead?)",
        ),
        ([{"n": "rain mm", "v": 1}], "SenML record 0: invalid SenML name 'rain mm'"),
        (
            [{"bn": f"{RG}:", "v": 1}],
            f"SenML record 0: SenML name '{RG}:' has no metric after the last '/' or ':'",
        ),
        (
            [{"bn": 5, "n": "rain_mm", "v": 1}],
            "SenML record 0: bn must be a string, got number (this and later records rejected)",
        ),
        ([{"n": "rain_mm", "v": 1, "x_": 1}], "SenML record 0: unsupported must-understand field 'x_'"),
        ([{"bt": NOW_EPOCH}], "no readings"),
    ],
)
def test_senml_rejects(decoder: Decoder, pack: list[Any], reason: str) -> None:
    assert only_reject(decode(decoder, pack)) == reason


def test_senml_unknown_optional_fields_are_ignored(decoder: Decoder) -> None:
    result = decode(decoder, [{"n": "rain_mm", "v": 1, "ut": 600, "bver": 10, "note": "x"}])
    assert result.rows == [(RG, "rain_mm", NOW, 1.0, 0)] and texts(result) == []


# -- gateway ---------------------------------------------------------------------------------------


def test_gateway_payload_with_one_unknown_device(decoder: Decoder) -> None:
    result = decode(
        decoder,
        {
            RG: [
                {"ts": NOW_EPOCH - 600, "values": {"rain_mm": 1}},
                {"ts": NOW_EPOCH, "values": {"rain_mm": 2}},
            ],
            TC: {"values": {"vehicles_car": 12, "speed_kmh": 41.5}},
            "HG-GHOST": {"values": {"rain_mm": 5}},
        },
        topic=GW_TOPIC,
    )
    assert result.rows == [
        (RG, "rain_mm", NOW - timedelta(seconds=600), 1.0, 0),
        (RG, "rain_mm", NOW, 2.0, 0),
        (TC, "vehicles_car", NOW, 12.0, 0),
        (TC, "speed_kmh", NOW, 41.5, 0),
    ]
    assert texts(result) == ["unknown device HG-GHOST"]


def test_gateway_uses_each_devices_registered_kind(decoder: Decoder) -> None:
    result = decode(
        decoder, {TC: {"rain_mm": 1}, RG: [{"values": {"rain_mm": 1}, "device_id": TC}]}, topic=GW_TOPIC
    )
    assert result.rows == []
    assert texts(result) == [
        f"device {TC}: metric 'rain_mm' is not allowed for kind 'traffic'",
        f"device {RG} record 0: payload device '{TC}' does not match gateway key {RG}",
    ]


def test_gateway_rejects(decoder: Decoder) -> None:
    assert only_reject(decode(decoder, [1, 2], topic=GW_TOPIC)).startswith(
        "gateway payload must be an object"
    )
    assert only_reject(decode(decoder, {}, topic=GW_TOPIC)) == "no readings"
    assert only_reject(decode(decoder, {"bad id": {"rain_mm": 1}}, topic=GW_TOPIC)).startswith(
        "invalid device id 'bad id'"
    )
    assert only_reject(decode(decoder, {f"{RG}\n": {"rain_mm": 1}}, topic=GW_TOPIC)).startswith(
        "invalid device id 'HG-BQ-RG01\\n'"
    )
    assert only_reject(decode(decoder, {RG: 5}, topic=GW_TOPIC)) == (
        f"device {RG}: expected an object or array of objects, got number"
    )
    assert only_reject(decode(decoder, {RG: []}, topic=GW_TOPIC)) == f"device {RG}: no readings"


def test_gateway_senml_names_the_devices(decoder: Decoder) -> None:
    pack = [
        {"bn": f"urn:dev:occ:{RG}:", "n": "rain_mm", "v": 1},
        {"bn": f"{TC}/", "n": "vehicles_car", "v": 3},
        {"bn": "", "n": "rain_mm", "v": 1},
        {"bn": "HG-GHOST/", "n": "rain_mm", "v": 1},
    ]
    result = decode(decoder, pack, topic=GW_TOPIC)
    assert result.rows == [(RG, "rain_mm", NOW, 1.0, 0), (TC, "vehicles_car", NOW, 3.0, 0)]
    assert texts(result) == [
        "SenML record 2 ('rain_mm'): a gateway pack needs the device id in the name "
        "(bn 'DEVICE/' or 'urn:dev:...:DEVICE:')",
        "SenML record 3 ('HG-GHOST/rain_mm'): unknown device HG-GHOST",
    ]


def test_gateway_cannot_auto_register(catalog: Catalog) -> None:
    decoder = Decoder(catalog, DEVICES, auto_register=True)
    result = decode(decoder, {"HG-NEW": {"rain_mm": 1}}, topic=GW_TOPIC)
    assert only_reject(result) == "unknown device HG-NEW (a gateway message cannot register it: kind unknown)"
    assert result.unknown_devices == set()


# -- rejects ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"rain_mm": NaN}', "non-finite number (NaN/Infinity) is not allowed"),
        (b'{"rain_mm": Infinity}', "non-finite number (NaN/Infinity) is not allowed"),
        (b'[{"rain_mm": -Infinity}]', "non-finite number (NaN/Infinity) is not allowed"),
        (b'{"rain_mm": 1e400}', "non-finite number (NaN/Infinity) is not allowed"),
        (b'{"rain_mm": 1.2', "malformed JSON: unexpected end of data: line 1 column 16 (char 15)"),
        (
            b"rain_mm=1.2",
            "malformed JSON: unexpected character, expected a JSON value: line 1 column 1 (char 0)",
        ),
        (b'{"rain_mm": "\xff"}', "payload is not valid UTF-8 (byte 13)"),
        (b"", "empty payload"),
        (b"   ", "empty payload"),
        (b"42", "telemetry must be a JSON object or array, got number"),
        (b'"online"', "telemetry must be a JSON object or array, got string"),
        (b"{}", "no readings"),
        (b'{"values": {}}', "no readings"),
        (b'{"ts": 1795741200}', "no readings"),
        (b"[]", "no readings"),
        (b'{"rain_mm": "1.2"}', "value of 'rain_mm' is a string ('1.2'), expected a number"),
        (b'{"rain_mm": true}', "value of 'rain_mm' is a boolean (true), expected a number"),
        (b'{"rain_mm": null}', "value of 'rain_mm' is null, expected a number"),
        (b'{"rain_mm": {"v": 1}}', "value of 'rain_mm' is an object ({\"v\":1}), expected a number"),
        (b'{"rain_mm": [1, 2]}', "value of 'rain_mm' is an array ([1,2]), expected a number"),
        (b'{"values": {"rain_mm": false}}', "value of 'rain_mm' is a boolean (false), expected a number"),
        (b'{"values": [1]}', "'values' must be an object, got array"),
        (b'{"values": null}', "'values' is null, expected an object"),
        (b'{"snow_cm": 1}', "unknown metric 'snow_cm'"),
        (b'{"fps": 25}', "metric 'fps' is not allowed for kind 'hydromet'"),
        (
            b'{"rain_mm": 1, "units": {"rain_mm": "K"}}',
            "'rain_mm': unit 'K' (temperature) cannot be converted to 'mm' (length)",
        ),
        (b'{"rain_mm": 1, "units": {"rain_mm": "inch"}}', "'rain_mm': unknown unit 'inch'"),
        (b'{"rain_mm": 1, "units": {"rain_mm": 1}}', "unit of 'rain_mm' must be a string, got number"),
        (b'{"rain_mm": 1, "units": "mm"}', "'units' must be an object, got string"),
        (
            b'{"ts": "27/11/2026 08:00", "rain_mm": 1}',
            "timestamp '27/11/2026 08:00' is not ISO-8601 or epoch seconds/ms",
        ),
        (
            b'{"ts": true, "rain_mm": 1}',
            "timestamp must be an ISO-8601 string or epoch seconds/ms, got boolean",
        ),
        (b'{"ts": [1], "rain_mm": 1}', "timestamp must be an ISO-8601 string or epoch seconds/ms, got array"),
        (b'{"ts": 1e300, "rain_mm": 1}', "timestamp 1e+300 is out of range"),
        (
            b'{"ts": "2026-11-27T03:00:00Z", "values": {"rain_mm": 1}}',
            "timestamp '2026-11-27T03:00:00Z' is 7200 s in the future (device clock ahead?)",
        ),
        (
            b'{"ts": "2026-11-27T09:00:00+07:00", "rain_mm": 1}',
            "timestamp '2026-11-27T09:00:00+07:00' is 3600 s in the future (device clock ahead?)",
        ),
        (b'{"ts": 1700000000, "rain_mm": 1}', "timestamp 1700000000 is 1108.1 days old (limit 400 days)"),
        (b'{"device_id": "HG-X", "rain_mm": 1}', f"payload device 'HG-X' does not match topic device {RG}"),
        (
            b'{"ts": 1795741200, "seq": 7, "values": {"rain_mm": 1}}',
            "unknown key 'seq' next to 'values' (expected ts, values, units, device_id)",
        ),
    ],
)
def test_reject_reasons(decoder: Decoder, payload: bytes, reason: str) -> None:
    result = decoder.decode(TOPIC, payload, NOW)
    assert reason in texts(result), result.rejects
    assert len(result.rejects) == 1, result.rejects


def test_good_readings_survive_bad_ones_in_the_same_message(decoder: Decoder) -> None:
    result = decode(decoder, {"rain_mm": 1, "snow_cm": 2, "humidity_pct": "wet", "temperature_c": 20})
    assert result.rows == [(RG, "rain_mm", NOW, 1.0, 0), (RG, "temperature_c", NOW, 20.0, 0)]
    assert texts(result) == [
        "unknown metric 'snow_cm'",
        "value of 'humidity_pct' is a string ('wet'), expected a number",
    ]


def test_unknown_envelope_key_is_reported_but_readings_are_kept(decoder: Decoder) -> None:
    result = decode(decoder, {"seq": 1, "values": {"rain_mm": 1}})
    assert result.rows == [(RG, "rain_mm", NOW, 1.0, 0)]
    assert len(result.rejects) == 1


def test_future_and_past_limits_are_configurable(catalog: Catalog) -> None:
    strict = Decoder(catalog, DEVICES, max_future_s=10, max_past_s=3600)
    assert only_reject(decode(strict, {"ts": NOW_EPOCH + 11, "rain_mm": 1})) == (
        f"timestamp {NOW_EPOCH + 11} is 11 s in the future (device clock ahead?)"
    )
    assert only_reject(decode(strict, {"ts": NOW_EPOCH - 3601, "rain_mm": 1})) == (
        f"timestamp {NOW_EPOCH - 3601} is 3601 s old (limit 3600 s)"
    )
    assert decode(strict, {"ts": NOW_EPOCH + 10, "rain_mm": 1}).rows
    assert decode(strict, {"ts": NOW_EPOCH - 3600, "rain_mm": 1}).rows


def test_oversize_payload_is_rejected_whole(catalog: Catalog) -> None:
    small = Decoder(catalog, DEVICES, max_payload_bytes=64)
    payload = orjson.dumps([{"rain_mm": 1}] * 10)
    assert (
        only_reject(small.decode(TOPIC, payload, NOW))
        == f"payload of {len(payload)} bytes exceeds the limit of 64 bytes"
    )


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("occ/v1/hydromet/HG-GHOST/telemetry", "unknown device HG-GHOST"),
        (
            f"occ/v1/camera/{RG}/telemetry",
            f"topic kind 'camera' does not match kind 'hydromet' registered for device {RG}",
        ),
        ("occ/v1/hydromet/bad id/telemetry", "invalid device id 'bad id' in topic"),
        (f"occ/v1/hydromet/{RG}\n/telemetry", f"invalid device id '{RG}\\n' in topic"),
        ("occ/v1/hydromet/x/y/telemetry", "topic must be {prefix}/{kind}/{device_id}/{channel}"),
        (f"occ/v1/hydromet/{RG}/metrics", "unknown channel 'metrics' (expected telemetry, event or status)"),
        (f"other/hydromet/{RG}/telemetry", "topic outside occ/v1/"),
    ],
)
def test_topic_and_registry_rejects(decoder: Decoder, topic: str, reason: str) -> None:
    assert only_reject(decoder.decode(topic, b'{"rain_mm": 1}', NOW)) == reason


def test_custom_prefix(catalog: Catalog) -> None:
    decoder = Decoder(catalog, DEVICES, prefix="hagiang/v2")
    assert decoder.decode(f"hagiang/v2/hydromet/{RG}/telemetry", b'{"rain_mm": 1}', NOW).rows
    assert texts(decoder.decode(TOPIC, b'{"rain_mm": 1}', NOW)) == ["topic outside hagiang/v2/"]


def test_auto_register_keeps_rows_and_reports_the_device(catalog: Catalog) -> None:
    decoder = Decoder(catalog, DEVICES, auto_register=True)
    result = decoder.decode("occ/v1/traffic/HG-TC-NEW/telemetry", b'{"vehicles_car": 4}', NOW)
    assert result.rows == [("HG-TC-NEW", "vehicles_car", NOW, 4.0, 0)]
    assert result.unknown_devices == {"HG-TC-NEW"}
    assert texts(result) == []
    status = decoder.decode("occ/v1/traffic/HG-TC-NEW/status", b"online", NOW)
    assert status.unknown_devices == {"HG-TC-NEW"}
    bad_kind = decoder.decode("occ/v1/radar/HG-R-1/telemetry", b'{"x": 4}', NOW)
    assert only_reject(bad_kind) == "unknown device HG-R-1 of unknown kind 'radar'"
    known = decoder.decode(TOPIC, b'{"rain_mm": 1}', NOW)
    assert known.unknown_devices == set()


def test_set_devices_refreshes_cached_topic_lookups(decoder: Decoder) -> None:
    topic = "occ/v1/hydromet/HG-NEW/telemetry"
    assert only_reject(decoder.decode(topic, b'{"rain_mm": 1}', NOW)) == "unknown device HG-NEW"
    decoder.set_devices({**DEVICES, "HG-NEW": Device("HG-NEW", "hydromet")})
    assert decoder.decode(topic, b'{"rain_mm": 1}', NOW).rows == [("HG-NEW", "rain_mm", NOW, 1.0, 0)]
    decoder.set_devices({"HG-NEW": Device("HG-NEW", "camera")})
    assert texts(decoder.decode(topic, b'{"rain_mm": 1}', NOW)) == [
        "topic kind 'hydromet' does not match kind 'camera' registered for device HG-NEW"
    ]


def test_reject_list_is_bounded(decoder: Decoder) -> None:
    result = decode(decoder, [{"snow_cm": i} for i in range(1000)])
    assert len(result.rejects) == MAX_REJECT_REASONS
    assert result.rejects[0] == (RejectCode.UNKNOWN_METRIC, "record 0: unknown metric 'snow_cm'")
    assert result.dropped_rejects == 1000 - MAX_REJECT_REASONS
    assert result.reject_counts == {RejectCode.UNKNOWN_METRIC: 1000}  # every reject is counted, kept or not
    assert result.reject_text().endswith(f"; … and {1000 - MAX_REJECT_REASONS} more rejects")


def test_naive_or_local_receive_time_is_normalised_to_utc(decoder: Decoder) -> None:
    naive = decoder.decode(TOPIC, b'{"rain_mm": 1}', NOW.replace(tzinfo=None))
    local = decoder.decode(TOPIC, b'{"rain_mm": 1}', NOW.astimezone(timezone(timedelta(hours=7))))
    assert naive.rows[0][2] == local.rows[0][2] == NOW
    assert naive.rows[0][2].tzinfo is UTC and local.rows[0][2].tzinfo is UTC


def test_hostile_values_are_truncated_in_reasons(decoder: Decoder) -> None:
    result = decode(decoder, {"rain_mm": "x" * 10_000, "y" * 5000: 1})
    assert all(len(reason) < 200 for reason in texts(result))


def test_decode_never_raises_on_garbage(decoder: Decoder) -> None:
    rng = random.Random(8428)
    samples: list[bytes] = [
        b'{"ts": {"a": 1}, "values": {"rain_mm": 1}}',
        b'[{"bn": null}]',
        b'[{"n": 1, "v": 1}]',
        b'[{"n": "rain_mm", "v": 1, "bt": 1e300}]',
        b'[{"n": "rain_mm", "v": 1e308, "u": "mm"}]',
        b'{"values": {"rain_mm": 1e308}, "units": {"rain_mm": "kbit/s"}}',
        b'{"%s": 1}' % (b"\\ud800",),
        b'{"units": {"rain_mm": [1]}, "rain_mm": 1}',
        b'{"ts": "2026-11-27T07:30:00-99:00", "rain_mm": 1}',
        b'{"ts": "9999-12-31T23:59:59-12:00", "rain_mm": 1}',
        b'{"ts": -1e12, "rain_mm": 1}',
    ]
    alphabet = b'{}[]":,0123456789.eE-+ tnruefalsvbmdi_NaIy\\'
    samples += [bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 40))) for _ in range(2000)]
    topics = [TOPIC, GW_TOPIC, f"occ/v1/hydromet/{RG}/event", f"occ/v1/hydromet/{RG}/status"]
    for payload in samples:
        for topic in topics:
            result = decoder.decode(topic, payload, NOW)
            assert RejectCode.DECODER_ERROR not in result.reject_counts, (
                topic,
                payload,
                result,
            )
            for row in result.rows:
                assert row[3] - row[3] == 0.0 and row[2].tzinfo is UTC


# -- status ----------------------------------------------------------------------------------------

STATUS = f"occ/v1/hydromet/{RG}/status"


@pytest.mark.parametrize("payload", [b"offline", b"offline\n", b'"offline"', b'{"status": "offline"}'])
def test_status_plain_and_json(decoder: Decoder, payload: bytes) -> None:
    result = decoder.decode(STATUS, payload, NOW)
    assert result.status == StatusChange(RG, "offline", NOW)
    assert texts(result) == [] and result.rows == []


def test_status_with_timestamp(decoder: Decoder) -> None:
    result = decoder.decode(STATUS, b'{"status": "online", "ts": "2026-11-27T07:59:00+07:00"}', NOW)
    assert result.status == StatusChange(RG, "online", NOW - timedelta(minutes=1))


def test_empty_status_clears_a_retained_message_silently(decoder: Decoder) -> None:
    assert decoder.decode(STATUS, b"", NOW) == Decoded()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"ONLINE", "malformed JSON: unexpected character, expected a JSON value: line 1 column 1 (char 0)"),
        (b'"sleeping"', "status must be 'online' or 'offline', got 'sleeping'"),
        (b'{"status": 1}', "status must be 'online' or 'offline', got 1"),
        (b'{"state": "online"}', "status: unknown key 'state' (expected status, ts, device_id)"),
        (b"[1]", "status must be online, offline or a JSON object, got array"),
        (
            b'{"status": "online", "ts": "soon"}',
            "status: timestamp 'soon' is not ISO-8601 or epoch seconds/ms",
        ),
        (
            b'{"status": "online", "device_id": "HG-X"}',
            f"payload device 'HG-X' does not match topic device {RG}",
        ),
    ],
)
def test_status_rejects(decoder: Decoder, payload: bytes, reason: str) -> None:
    result = decoder.decode(STATUS, payload, NOW)
    assert reason in texts(result)


# -- events ----------------------------------------------------------------------------------------

EVENT = "occ/v1/camera/HG-CAM-01/event"


def test_single_event(decoder: Decoder) -> None:
    payload = {"type": "vehicle.detected", "ts": NOW_EPOCH - 5, "class": "truck", "bbox": [1, 2, 3, 4]}
    result = decode(decoder, payload, topic=EVENT)
    assert result.events == [
        Event(
            "HG-CAM-01",
            NOW - timedelta(seconds=5),
            "vehicle.detected",
            {"class": "truck", "bbox": [1, 2, 3, 4]},
        )
    ]
    assert texts(result) == [] and result.rows == []


def test_event_array_with_bad_items(decoder: Decoder) -> None:
    result = decode(
        decoder,
        [
            {"type": "tamper"},
            {"kind": "tamper"},
            {"type": "door open"},
            {"type": "tamper", "ts": NOW_EPOCH + 3600},
            {"type": "tamper", "device_id": "HG-CAM-02"},
            "tamper",
        ],
        topic=EVENT,
    )
    assert result.events == [Event("HG-CAM-01", NOW, "tamper", {})]
    assert texts(result) == [
        "event 1: missing 'type'",
        "event 2: type 'door open' is invalid (expected [A-Za-z0-9_.-]{1,64})",
        f"event 3: timestamp {NOW_EPOCH + 3600} is 3600 s in the future (device clock ahead?)",
        "event 4: payload device 'HG-CAM-02' does not match topic device HG-CAM-01",
        "event 5: expected an object, got string",
    ]


def test_event_rejects(decoder: Decoder) -> None:
    assert only_reject(decode(decoder, [], topic=EVENT)) == "no events"
    assert (
        only_reject(decode(decoder, 5, topic=EVENT))
        == "event must be a JSON object or array of objects, got number"
    )
    assert (
        only_reject(decoder.decode(EVENT, b'{"type": NaN}', NOW))
        == "non-finite number (NaN/Infinity) is not allowed"
    )


# -- reject codes ----------------------------------------------------------------------------------

EV_TOPIC = f"occ/v1/hydromet/{RG}/event"
ST_TOPIC = f"occ/v1/hydromet/{RG}/status"
CODE_CASES: list[tuple[str, bytes, RejectCode]] = [
    (TOPIC, b"x" * 2_000_000, RejectCode.PAYLOAD_TOO_LARGE),
    ("occ/v1/hydromet/telemetry", b"{}", RejectCode.BAD_TOPIC),
    (f"occ/v1/hydromet/{RG}/config", b"{}", RejectCode.BAD_TOPIC),
    ("occ/v1/hydromet/HG-GHOST/telemetry", b'{"rain_mm": 1}', RejectCode.UNKNOWN_DEVICE),
    (GW_TOPIC, b'{"HG-GHOST": {"rain_mm": 1}}', RejectCode.UNKNOWN_DEVICE),
    (GW_TOPIC, b'[{"bn": "HG-GHOST/", "n": "rain_mm", "v": 1}]', RejectCode.UNKNOWN_DEVICE),
    (f"occ/v1/camera/{RG}/telemetry", b'{"rain_mm": 1}', RejectCode.KIND_MISMATCH),
    (TOPIC, b'{"rain_mm": "\xff"}', RejectCode.NOT_UTF8),
    (TOPIC, b" ", RejectCode.EMPTY_PAYLOAD),
    (TOPIC, b"{", RejectCode.MALFORMED_JSON),
    (TOPIC, b'{"rain_mm": NaN}', RejectCode.NON_FINITE),
    (TOPIC, b"42", RejectCode.BAD_SHAPE),
    (GW_TOPIC, b'{"HG-BQ-RG01": 3}', RejectCode.BAD_SHAPE),
    (TOPIC, b'{"seq": 1, "values": {"rain_mm": 1}}', RejectCode.UNKNOWN_FIELD),
    (ST_TOPIC, b'{"status": "online", "x": 1}', RejectCode.UNKNOWN_FIELD),
    (TOPIC, b"[]", RejectCode.NO_READINGS),
    (TOPIC, b'{"ts": "yesterday", "rain_mm": 1}', RejectCode.BAD_TIMESTAMP),
    (TOPIC, b'[{"n": "rain_mm", "v": 1, "bt": 1e300}]', RejectCode.BAD_TIMESTAMP),
    (TOPIC, b'{"ts": 1895741200, "rain_mm": 1}', RejectCode.TIME_IN_FUTURE),
    (TOPIC, b'{"ts": 1000000000, "rain_mm": 1}', RejectCode.TIME_TOO_OLD),
    (TOPIC, b'{"device_id": "HG-X", "rain_mm": 1}', RejectCode.DEVICE_MISMATCH),
    (TOPIC, b'[{"n": "HG-X/rain_mm", "v": 1}]', RejectCode.DEVICE_MISMATCH),
    (TOPIC, b'{"snow_cm": 1}', RejectCode.UNKNOWN_METRIC),
    (TOPIC, b'{"fps": 1}', RejectCode.METRIC_NOT_ALLOWED),
    (TOPIC, b'{"rain_mm": 1, "units": {"rain_mm": "inch"}}', RejectCode.BAD_UNIT),
    (TOPIC, b'{"rain_mm": "1"}', RejectCode.BAD_VALUE),
    (TOPIC, b'[{"n": "rain_mm", "vb": 1}]', RejectCode.BAD_VALUE),
    (TOPIC, b'[{"n": "rain_mm", "vs": "wet"}]', RejectCode.BAD_SENML),
    (TOPIC, b'[{"bn": 7, "n": "rain_mm", "v": 1}]', RejectCode.BAD_SENML),
    (ST_TOPIC, b'"sleeping"', RejectCode.BAD_STATUS),
    (EV_TOPIC, b'{"ts": 1795741200}', RejectCode.BAD_EVENT),
    (EV_TOPIC, b'{"type": "a b"}', RejectCode.BAD_EVENT),
]


@pytest.mark.parametrize(("topic", "payload", "code"), CODE_CASES)
def test_every_reject_carries_the_code_of_its_cause(
    decoder: Decoder, topic: str, payload: bytes, code: RejectCode
) -> None:
    result = decoder.decode(topic, payload, NOW)
    assert [r.code for r in result.rejects] == [code], result.rejects
    assert result.reject_counts == {code: 1}


def test_the_table_covers_every_code_the_decoder_emits() -> None:
    emitted = {code for _, _, code in CODE_CASES}
    assert emitted == set(RejectCode) - {RejectCode.DECODER_ERROR, RejectCode.STORE_REJECTED}


def test_a_decoder_bug_is_a_coded_reject_not_an_exception(catalog: Catalog) -> None:
    class Broken(Decoder):
        def _record(self, *args: Any) -> None:
            raise ZeroDivisionError("bug")

    result = Broken(catalog, DEVICES).decode(TOPIC, b'{"rain_mm": 1}', NOW)
    assert result.reject_counts == {RejectCode.DECODER_ERROR: 1}
    assert texts(result) == ["internal decoder error: ZeroDivisionError: bug"]


def test_partly_good_messages_count_each_reject_by_code(decoder: Decoder) -> None:
    result = decode(decoder, [{"rain_mm": 1, "snow_cm": 2}, {"ts": "bad", "rain_mm": 1}, {"fps": 3}])
    assert result.stored == 1
    assert result.reject_counts == {
        RejectCode.UNKNOWN_METRIC: 1, RejectCode.BAD_TIMESTAMP: 1, RejectCode.METRIC_NOT_ALLOWED: 1
    }


@pytest.mark.parametrize(
    ("topic", "device"),
    [
        (TOPIC, RG),
        (GW_TOPIC, "HG-GW-01"),
        ("occ/v1/hydromet/HG-GHOST/config", "HG-GHOST"),
        ("occ/v1/hydromet/bad id/telemetry", None),
        ("other/hydromet/X/telemetry", None),
        ("occ/v1/hydromet", None),
    ],
)
def test_device_of_names_the_topic_device_for_dead_letters(decoder: Decoder, topic: str, device: str | None) -> None:
    assert decoder.device_of(topic) == device
