"""Property-based tests of the decoder contract (issue 11 item 12): for arbitrary and mutated payloads of every
form — object, array, SenML, gateway, status, event — `Decoder.decode` never raises, never hits its own
internal-error path, and accounts for every reading: stored as a sane row, or rejected with a code."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from occ.catalog import Catalog
from occ.codecs import MAX_REJECT_REASONS, Decoder
from occ.models import ID_PATTERN, Decoded, Device, RejectCode

CATALOG = Catalog.default()
DEVICES = {
    "HG-RG-01": Device("HG-RG-01", "hydromet"),
    "HG-RG-02": Device("HG-RG-02", "hydromet"),
    "HG-TC-01": Device("HG-TC-01", "traffic"),
    "HG-CAM-01": Device("HG-CAM-01", "camera"),
}
NOW = datetime(2026, 11, 27, 1, 0, tzinfo=UTC)
KIND_METRICS = {kind: [m.name for m in CATALOG.metrics_for_kind(kind)] for kind in CATALOG.kinds}
ALL_METRICS = sorted({name for names in KIND_METRICS.values() for name in names})
FUZZ = settings(max_examples=120, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow])
"""Examples per property: generation dominates (~10 ms each); 120 × 9 properties keeps the file near 15 s."""

# -- building blocks ---------------------------------------------------------------------------------------

names = st.one_of(st.sampled_from(ALL_METRICS), st.sampled_from(["snow_cm", "ts", "", "rain_mm "]), st.text(max_size=8))
units = st.sampled_from(["mm", "m", "cm", "Cel", "K", "degF", "km/h", "%RH", "%", "inch", "", "V", "mV"])
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -1, 1e308, -1e308, 5e-324, 101.0, 99.5]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
), max_leaves=8)
values_anything = st.one_of(numbers, numbers, json_values)  # mostly numbers, sometimes anything
epochs = st.one_of(
    st.integers(min_value=int((NOW - timedelta(days=500)).timestamp()), max_value=int(NOW.timestamp()) + 3600),
    st.integers(min_value=int((NOW - timedelta(days=500)).timestamp() * 1000), max_value=int(NOW.timestamp() * 1000)),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(),
)
iso_times = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
    timezones=st.one_of(st.none(), st.just(UTC), st.timezones()),
).map(lambda d: d.isoformat())
timestamps = st.one_of(epochs, iso_times, st.text(max_size=20), json_values)
telemetry_topics = st.one_of(
    st.sampled_from([f"occ/v1/{d.kind}/{d.id}/telemetry" for d in DEVICES.values()]),
    st.sampled_from([
        "occ/v1/hydromet/HG-GHOST/telemetry", "occ/v1/camera/HG-RG-01/telemetry", "occ/v1/hydromet/telemetry",
        "occ/v2/hydromet/HG-RG-01/telemetry", "occ/v1/hydromet/a b/telemetry",
    ]),
)
all_topics = st.one_of(
    telemetry_topics,
    st.sampled_from([f"occ/v1/{d.kind}/{d.id}/{ch}" for d in DEVICES.values() for ch in ("event", "status")]),
    st.just("occ/v1/gateway/HG-GW-01/telemetry"),
    st.text(max_size=40),
)
received = st.one_of(
    st.just(NOW),
    st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.one_of(st.none(), st.just(UTC))
    ),
)


@st.composite
def records(draw: st.DrawFn, *, with_ts: bool = True) -> dict[str, Any]:
    """A telemetry record: flat `{metric: v}` or `{"ts", "values", "units"}`, with plausible and wild parts."""
    values = draw(st.dictionaries(names, values_anything, max_size=6))
    record: dict[str, Any] = {}
    if draw(st.booleans()):
        record["values"] = values
        if draw(st.booleans()):
            record["units"] = draw(st.dictionaries(st.sampled_from(list(values) or ["rain_mm"]), units, max_size=3))
    else:
        record.update(values)
    if with_ts and draw(st.booleans()):
        record["ts"] = draw(timestamps)
    return record


@st.composite
def senml_packs(draw: st.DrawFn, *, devices: list[str] | None = None) -> list[Any]:
    pack: list[Any] = []
    for index in range(draw(st.integers(min_value=1, max_value=6))):
        rec: dict[str, Any] = {}
        if index == 0 or draw(st.integers(0, 4)) == 0:
            if draw(st.booleans()):
                prefixes = [d + "/" for d in devices] if devices else ["", "urn:dev:x:"]
                rec["bn"] = draw(st.sampled_from(prefixes))
            if draw(st.booleans()):
                rec["bt"] = draw(st.one_of(st.just(NOW.timestamp()), numbers))
            if draw(st.integers(0, 3)) == 0:
                rec["bu"] = draw(units)
        rec["n"] = draw(st.one_of(st.sampled_from(ALL_METRICS), names, scalars))
        field = draw(st.sampled_from(["v", "v", "v", "vb", "vs", "vd", "s", None]))
        if field is not None:
            rec[field] = draw(values_anything if field in ("v", "s") else scalars)
        if draw(st.integers(0, 3)) == 0:
            rec["t"] = draw(st.one_of(st.integers(-100_000, 100), numbers, scalars))
        if draw(st.integers(0, 5)) == 0:
            rec[draw(st.sampled_from(["u", "ut", "x_", "extra"]))] = draw(scalars)
        pack.append(rec)
    return pack


@st.composite
def telemetry_docs(draw: st.DrawFn) -> Any:
    form = draw(st.sampled_from(["object", "array", "senml", "anything"]))
    if form == "object":
        return draw(records())
    if form == "array":
        return draw(st.lists(st.one_of(records(), records(), json_values), max_size=8))
    if form == "senml":
        return draw(senml_packs())
    return draw(json_values)


@st.composite
def gateway_docs(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 3)) == 0:
        return draw(senml_packs(devices=[*DEVICES, "HG-GHOST"]))
    keys = st.one_of(st.sampled_from([*DEVICES, "HG-GHOST", "bad id", ""]), st.text(max_size=8))
    return draw(st.dictionaries(keys, st.one_of(records(), st.lists(records(), max_size=4), json_values), max_size=4))


event_docs = st.one_of(
    st.fixed_dictionaries({"type": st.one_of(st.sampled_from(["incident", "tamper", "a b", ""]), scalars)},
                          optional={"ts": timestamps, "device_id": st.sampled_from([*DEVICES, "HG-X"]),
                                    "data": json_values}),
    st.lists(json_values, max_size=4),
    json_values,
)
status_docs = st.one_of(
    st.sampled_from(["online", "offline", "sleeping", ""]),
    st.fixed_dictionaries({"status": st.one_of(st.sampled_from(["online", "offline"]), scalars)},
                          optional={"ts": timestamps, "device_id": st.sampled_from([*DEVICES, "HG-X"]),
                                    "extra": scalars}),
    json_values,
)


def dumps(doc: Any) -> bytes:
    """JSON bytes; non-finite floats as the NaN/Infinity literals some devices send (orjson writes null)."""
    try:
        return json.dumps(doc, allow_nan=True).encode()
    except (TypeError, ValueError):
        return orjson.dumps(doc)


@st.composite
def mutated(draw: st.DrawFn, payload: bytes) -> bytes:
    """`payload` with a few byte-level edits: flips, cuts, insertions, duplications."""
    data = bytearray(payload)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete", "dup"]))
        pos = draw(st.integers(min_value=0, max_value=len(data)))
        if op == "flip" and pos < len(data):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from([b"{", b"}", b"[", b"]", b'"', b",", b":", b"\\", b"\x00", b"\xff",
                                                  b"NaN", b"-", b"e999", b"null", b"1"]))
        elif op == "delete" and pos < len(data):
            del data[pos]
        elif op == "dup":
            data[pos:pos] = data[max(0, pos - 8):pos]
    return bytes(data)


# -- the contract --------------------------------------------------------------------------------------------


def decoder() -> Decoder:
    return Decoder(CATALOG, DEVICES, max_payload_bytes=4096)


def check(result: Decoded, topic: str, at: datetime) -> None:
    """What must hold for any input: no internal error, every reject coded, every row storable."""
    assert RejectCode.DECODER_ERROR not in result.reject_counts, result.rejects
    assert all(isinstance(r.code, RejectCode) and r.text for r in result.rejects)
    assert len(result.rejects) <= MAX_REJECT_REASONS
    assert sum(result.reject_counts.values()) == len(result.rejects) + result.dropped_rejects
    now = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    for device_id, metric, ts, value, quality in result.rows:
        kind = DEVICES[device_id].kind if device_id in DEVICES else None
        assert kind is not None and metric in KIND_METRICS[kind], (device_id, metric)
        assert type(value) is float and math.isfinite(value)
        assert ts.tzinfo is UTC and now - timedelta(days=400) <= ts <= now + timedelta(seconds=300)
        assert quality in (0, 1)
    for event in result.events:
        assert ID_PATTERN.fullmatch(event.type) and event.ts.tzinfo is not None
    assert not result.unknown_devices  # auto_register is off


@FUZZ
@given(topic=telemetry_topics, doc=telemetry_docs(), at=received)
def test_telemetry_of_any_shape_is_stored_or_rejected_with_a_code(topic: str, doc: Any, at: datetime) -> None:
    payload = dumps(doc)
    check(decoder().decode(topic, payload, at), topic, at)


@FUZZ
@given(doc=gateway_docs(), at=received)
def test_gateway_payloads(doc: Any, at: datetime) -> None:
    topic = "occ/v1/gateway/HG-GW-01/telemetry"
    check(decoder().decode(topic, dumps(doc), at), topic, at)


@FUZZ
@given(device=st.sampled_from(sorted(DEVICES)), doc=event_docs, at=received)
def test_events(device: str, doc: Any, at: datetime) -> None:
    topic = f"occ/v1/{DEVICES[device].kind}/{device}/event"
    result = decoder().decode(topic, dumps(doc), at)
    check(result, topic, at)
    assert all(e.device_id == device for e in result.events)


@FUZZ
@given(device=st.sampled_from(sorted(DEVICES)), doc=status_docs, plain=st.booleans(), at=received)
def test_status(device: str, doc: Any, plain: bool, at: datetime) -> None:
    topic = f"occ/v1/{DEVICES[device].kind}/{device}/status"
    payload = doc.encode() if plain and isinstance(doc, str) else dumps(doc)
    result = decoder().decode(topic, payload, at)
    check(result, topic, at)
    assert result.status is None or result.status.status in ("online", "offline")


@FUZZ
@given(data=st.data(), topic=all_topics, at=received)
@example(data=None, topic="occ/v1/hydromet/HG-RG-01/telemetry", at=NOW)
def test_mutated_payloads_of_every_form(data: st.DataObject | None, topic: str, at: datetime) -> None:
    if data is None:  # the explicit example: a truncated SenML pack
        payload = b'[{"bn":"HG-RG-01/","bt":1795741200,"n":"rain_mm","v":1'
    else:
        doc = data.draw(st.one_of(telemetry_docs(), gateway_docs(), event_docs, status_docs))
        payload = data.draw(mutated(dumps(doc)))
    check(decoder().decode(topic, payload, at), topic, at)


@FUZZ
@given(payload=st.binary(max_size=300), topic=all_topics, at=received)
def test_arbitrary_bytes(payload: bytes, topic: str, at: datetime) -> None:
    check(decoder().decode(topic, payload, at), topic, at)


# -- accounting: every reading is stored or rejected -------------------------------------------------------


@FUZZ
@given(values=st.dictionaries(st.one_of(st.sampled_from(ALL_METRICS), st.text(min_size=1, max_size=6)),
                              values_anything, min_size=1, max_size=10),
       envelope=st.booleans())
def test_every_value_of_a_record_is_one_row_or_one_reject(values: dict[str, Any], envelope: bool) -> None:
    values = {k: v for k, v in values.items() if k not in ("ts", "device_id", "units", "values")}
    if not values:
        return
    doc = {"ts": int(NOW.timestamp()) - 60, "values": values} if envelope else values
    result = decoder().decode("occ/v1/hydromet/HG-RG-01/telemetry", dumps(doc), NOW)
    check(result, "", NOW)
    assert len(result.rows) + len(result.rejects) == len(values), (values, result)


@FUZZ
@given(pack=st.lists(st.fixed_dictionaries({"n": st.one_of(st.sampled_from(ALL_METRICS), st.text(max_size=6)),
                                            "v": values_anything}), min_size=1, max_size=10))
def test_every_senml_record_is_one_row_or_one_reject(pack: list[dict[str, Any]]) -> None:
    pack[0] = {"bn": "HG-RG-01/", "bt": NOW.timestamp() - 60, **pack[0]}
    result = decoder().decode("occ/v1/hydromet/HG-RG-01/telemetry", dumps(pack), NOW)
    check(result, "", NOW)
    assert len(result.rows) + len(result.rejects) == len(pack), (pack, result)


@FUZZ
@given(batch=st.lists(st.dictionaries(st.sampled_from(KIND_METRICS["hydromet"]), numbers, min_size=1, max_size=4)
                      .map(lambda v: {"ts": int(NOW.timestamp()) - 600, "values": v}), min_size=1, max_size=30))
def test_backfill_arrays_keep_every_good_reading(batch: list[dict[str, Any]]) -> None:
    result = decoder().decode("occ/v1/hydromet/HG-RG-01/telemetry", dumps(batch), NOW)
    check(result, "", NOW)
    finite = sum(1 for rec in batch for v in rec["values"].values() if math.isfinite(float(v)))
    assert len(result.rows) == finite
    assert len(result.rows) + sum(result.reject_counts.values()) == sum(len(rec["values"]) for rec in batch)
