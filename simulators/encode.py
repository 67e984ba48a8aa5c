"""Payload encoders for the MQTT contract (docs/architecture.md §2): object, array, SenML and gateway forms.

The models produce float arrays; values are rounded here to what a real sensor would send (0.2 mm buckets,
cm of stage, whole vehicles) and NaN means "this device has no such sensor" and is left out of the payload.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import orjson

DECIMALS: dict[str, int] = {
    "rain_mm": 1,
    "water_level_m": 2,
    "temperature_c": 1,
    "humidity_pct": 0,
    "wind_speed_ms": 1,
    "wind_dir_deg": 0,
    "pressure_hpa": 1,
    "battery_v": 2,
    "signal_dbm": 0,
    "vehicles_motorbike": 0,
    "vehicles_car": 0,
    "vehicles_truck": 0,
    "speed_kmh": 1,
    "occupancy_pct": 1,
    "fps": 1,
    "bitrate_kbps": 0,
}
INTEGER_METRICS = frozenset(m for m, d in DECIMALS.items() if d == 0)

Values = dict[str, float | int]


def round_values(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {m: np.round(v, DECIMALS.get(m, 3)) for m, v in values.items()}


def rows(values: dict[str, np.ndarray], n: int) -> list[Values]:
    """Column arrays → one {metric: number} dict per device, skipping NaN (sensor absent)."""
    out: list[Values] = [{} for _ in range(n)]
    for metric, column in values.items():
        as_int = metric in INTEGER_METRICS
        finite = np.isfinite(column)
        col = column.tolist()
        if finite.all():
            if as_int:
                for row, v in zip(out, col, strict=False):
                    row[metric] = int(v)
            else:
                for row, v in zip(out, col, strict=False):
                    row[metric] = v
        else:
            for i in np.flatnonzero(finite).tolist():
                out[i][metric] = int(col[i]) if as_int else col[i]
    return out


def object_payload(ts: str | float | int, values: Values) -> bytes:
    return orjson.dumps({"ts": ts, "values": values})


def array_payload(entries: Iterable[tuple[str | float | int, Values]]) -> bytes:
    return orjson.dumps([{"ts": ts, "values": v} for ts, v in entries])


def senml_payload(t: float, values: Values, units: dict[str, str], base_name: str | None = None) -> bytes:
    """RFC 8428 SenML: base time on the first record, one record per metric with its catalog unit."""
    records: list[dict[str, Any]] = []
    for i, (name, v) in enumerate(values.items()):
        rec: dict[str, Any] = {}
        if i == 0:
            if base_name:
                rec["bn"] = base_name
            rec["bt"] = t
        rec["n"] = name
        unit = units.get(name)
        if unit:
            rec["u"] = unit
        rec["v"] = v
        records.append(rec)
    return orjson.dumps(records)


def senml_series(entries: Sequence[tuple[float, Values]], units: dict[str, str]) -> bytes:
    """SenML pack covering several times: `bt` from the first entry, `t` relative for the rest."""
    records: list[dict[str, Any]] = []
    bt = entries[0][0] if entries else 0.0
    for k, (t, values) in enumerate(entries):
        for name, v in values.items():
            rec: dict[str, Any] = {}
            if not records:
                rec["bt"] = bt
            elif k:
                rec["t"] = t - bt
            rec["n"] = name
            if units.get(name):
                rec["u"] = units[name]
            rec["v"] = v
            records.append(rec)
    return orjson.dumps(records)


def gateway_payload(parts: Sequence[tuple[str, bytes]]) -> bytes:
    """`{device_id: [ {ts, values}, … ]}` assembled from already-encoded object or array payloads (no
    re-encoding: an object becomes a one-element list)."""
    grouped: dict[str, list[bytes]] = {}
    for device_id, payload in parts:
        body = payload[1:-1] if payload[:1] == b"[" else payload
        grouped.setdefault(device_id, []).append(body)
    chunks = [orjson.dumps(d) + b":[" + b",".join(b for b in bodies if b) + b"]" for d, bodies in grouped.items()]
    return b"{" + b",".join(chunks) + b"}"


def malformed(payload: bytes, style: str) -> bytes:
    """Corrupt a payload the way broken firmware does: cut short, a bare NaN (not JSON), or line noise."""
    if style == "truncated":
        return payload[: max(1, len(payload) * 2 // 3)]
    if style == "nan":
        text = payload.decode()
        head, sep, _ = text.partition(":")
        # replace the first metric value with NaN, keeping the rest valid-looking
        values_at = text.find('"values":{')
        if values_at >= 0:
            colon = text.find(":", values_at + 10)
            end = colon + 1
            while end < len(text) and text[end] not in ",}":
                end += 1
            return (text[: colon + 1] + "NaN" + text[end:]).encode()
        return (head + sep + "NaN}").encode()
    return b"\x00\x13ATCMD+ERR " + payload[:8] + b"\xff}"
