"""Pure decoding of device MQTT messages into reading rows, events and status changes (docs/architecture.md §2).

`Decoder.decode(topic, payload, received_at)` is the ingest hot path: no I/O, no clock (the receive time is
an input), never raises. Whatever cannot be stored is described, precisely and per part, in
`Decoded.rejects`, each with a stable `RejectCode` (what callers decide and count by) and a text for people;
good readings in the same message are still returned. Readings outside the catalog's
plausible range are kept with `Quality.OUT_OF_RANGE`.

Telemetry forms accepted on one topic: an object (`{"ts", "values"}` or flat `{"metric": v}`), an array of
such objects (store-and-forward backfill), SenML JSON (RFC 8428), and on `{prefix}/gateway/{id}/telemetry`
an object keyed by device id. Cost is kept low by caching per topic (parsed topic + registry lookup) and per
(kind, metric, unit) (range and conversion), and by sharing one datetime object per record.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Final
from zoneinfo import ZoneInfo

import orjson

from occ.catalog import Catalog
from occ.errors import DecodeError
from occ.models import ID_PATTERN, Decoded, Device, Event, Quality, Reject, RejectCode, StatusChange, Topic

log = logging.getLogger(__name__)

__all__ = ["MAX_REJECT_REASONS", "Decoder"]

MAX_REJECT_REASONS: Final = 100
"""Reasons kept per message; a fully bad backfill of 10,000 records gets 100 reasons and a count."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS_THRESHOLD: Final = 1e11
_SENML_RELATIVE: Final = 2**28  # RFC 8428 §4.5.3: a resolved time below 2**28 is relative to now
_OUT_OF_RANGE: Final = int(Quality.OUT_OF_RANGE)
_ROUTE_CACHE_MAX: Final = 100_000
_SMALL_CACHE_MAX: Final = 4096

_FLAT_RESERVED: Final = frozenset(("ts", "device_id", "units"))
_ENVELOPE_KEYS: Final = frozenset(("ts", "values", "device_id", "units"))
_EVENT_RESERVED: Final = frozenset(("type", "ts", "device_id"))
_STATUS_KEYS: Final = frozenset(("status", "ts", "device_id"))
_SENML_FIELDS: Final = frozenset(
    ("bn", "bt", "bu", "bv", "bs", "bver", "n", "u", "v", "vs", "vb", "vd", "s", "t", "ut")
)
_SENML_VALUES: Final = frozenset(("v", "vb", "vs", "vd", "s"))
_SENML_BASE: Final = frozenset(("bn", "bt", "bu", "bv", "bs", "bver"))
_SENML_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:./_-]*$")  # RFC 8428 §4.5.1
_STATUSES: Final = {"online": "online", "offline": "offline"}
_NO_DOC: Final = object()
_NO_READINGS: Final = Reject(RejectCode.NO_READINGS, "no readings")
_NO_PLANS: dict[str, tuple[str, float, float]] = {}

C = RejectCode

# (kind, reject, unregistered): result of looking a device up in the registry
_Resolved = tuple[str | None, Reject | None, bool]
# (channel, device_id, kind, unregistered, is_gateway): what a topic means, cached per topic string
_Route = tuple[str, str, str, bool, bool]
# (canonical metric name, scale, shift, lo, hi) for a reading sent in a non-catalog unit
_UnitPlan = tuple[str, float, float, float, float]


def _jtype(value: Any) -> str:
    """The JSON name of a decoded value's type, for reasons."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _show(value: Any, limit: int = 64) -> str:
    """Render a payload value for a reason, bounded so a hostile payload cannot bloat dead letters."""
    if isinstance(value, str):
        text = repr(value)
    elif isinstance(value, dict | list):
        try:
            text = orjson.dumps(value).decode()
        except TypeError:
            text = repr(value)
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _where(device: str | None, index: int | None) -> str:
    if device is None:
        return "" if index is None else f"record {index}: "
    return f"device {device}: " if index is None else f"device {device} record {index}: "


def _prefixed(prefix: str, reject: Reject) -> Reject:
    return Reject(reject.code, prefix + reject.text) if prefix else reject


def _value_reason(name: str, value: Any) -> Reject:
    metric = _show(name)
    if value is None:
        return Reject(C.BAD_VALUE, f"value of {metric} is null, expected a number")
    if isinstance(value, float):
        return Reject(C.BAD_VALUE, f"value of {metric} is not finite ({value}), expected a finite number")
    kind = _jtype(value)
    article = "an" if kind[0] in "ao" else "a"
    return Reject(C.BAD_VALUE, f"value of {metric} is {article} {kind} ({_show(value, 40)}), expected a number")


class _SenmlTime(float):
    """A resolved SenML time (bt + t), labelled as such in reasons."""


def _label(raw: Any) -> str:
    if isinstance(raw, _SenmlTime):
        return f"{float(raw):.15g} (bt+t)"
    return _show(raw)


def _span(seconds: float) -> str:
    if seconds < 2 * 86400:
        return f"{round(seconds)} s"
    days = seconds / 86400
    return f"{days:.0f} days" if days == int(days) else f"{days:.1f} days"


_NON_FINITE = Reject(C.NON_FINITE, "non-finite number (NaN/Infinity) is not allowed")


def _json_error(payload: bytes, exc: orjson.JSONDecodeError) -> Reject:
    """Explain why a payload is not JSON; only runs on the error path."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as err:
        return Reject(C.NOT_UTF8, f"payload is not valid UTF-8 (byte {err.start})")
    if not text.strip():
        return Reject(C.EMPTY_PAYLOAD, "empty payload")
    if "infinity" in str(exc):  # orjson: a literal such as 1e400 overflows a double
        return _NON_FINITE
    # orjson rejects the NaN/Infinity literals that Python's json writes by default; ask the stdlib parser
    # whether that is all that is wrong (its result is never used as data).
    constants: list[str] = []

    def note(literal: str) -> float:
        constants.append(literal)
        return 0.0

    try:
        json.loads(text, parse_constant=note)
    except ValueError:
        pass
    if constants:
        return _NON_FINITE
    return Reject(C.MALFORMED_JSON, f"malformed JSON: {exc}")


class Decoder:
    """Turns one MQTT message into `Decoded`; pure, never raises, safe to share between threads.

    `devices` is the registry (id → Device); replace it with `set_devices` when it changes. With
    `auto_register`, messages from unknown devices on `{prefix}/{kind}/{id}/...` are kept and the ids are
    reported in `Decoded.unknown_devices` (the caller registers them as unprovisioned).
    `gateway_accounts` are the gateway ids that hold MQTT credentials (replace with `set_gateway_accounts`):
    such a gateway, which the broker authenticates, speaks in its gateway payloads only for the devices whose
    registry attribute `gateway` names it (possibly none); any other gateway id is unrestricted there.
    """

    __slots__ = (
        "_auto_register",
        "_bounds",
        "_catalog",
        "_devices",
        "_future",
        "_gateway_accounts",
        "_gateway_members",
        "_max_future_s",
        "_max_past_s",
        "_max_payload",
        "_names",
        "_past",
        "_plans",
        "_prefix",
        "_restricted",
        "_routes",
        "_tz",
        "_unit_plans",
    )

    def __init__(
        self,
        catalog: Catalog,
        devices: Mapping[str, Device],
        *,
        prefix: str = "occ/v1",
        max_payload_bytes: int = 1_048_576,
        max_future_s: float = 300,
        max_past_s: float = 400 * 86400,
        local_tz: str | tzinfo = "Asia/Ho_Chi_Minh",
        auto_register: bool = False,
        gateway_accounts: Iterable[str] = (),
    ) -> None:
        self._catalog = catalog
        self._prefix = prefix.rstrip("/")
        self._max_payload = max_payload_bytes
        self._max_future_s = max_future_s
        self._max_past_s = max_past_s
        self._future = timedelta(seconds=max_future_s)
        self._past = timedelta(seconds=max_past_s)
        self._tz: tzinfo = ZoneInfo(local_tz) if isinstance(local_tz, str) else local_tz
        self._auto_register = auto_register
        self._bounds: tuple[datetime, datetime, datetime] = (_EPOCH, _EPOCH, _EPOCH)
        # kind -> metric -> (canonical name, lo, hi): readings sent in the catalog unit need nothing else
        self._plans: dict[str, dict[str, tuple[str, float, float]]] = {
            kind: {
                m.name: (
                    m.name,
                    -math.inf if m.min is None else m.min,
                    math.inf if m.max is None else m.max,
                )
                for m in catalog.metrics_for_kind(kind)
            }
            for kind in catalog.kinds
        }
        self._unit_plans: dict[tuple[str, str, str], _UnitPlan | Reject] = {}
        self._names: dict[str, tuple[str | None, str] | Reject] = {}
        self._devices: Mapping[str, Device] = {}
        self._gateway_members: dict[str, frozenset[str]] = {}
        self._gateway_accounts: frozenset[str] = frozenset(gateway_accounts)
        self._restricted: dict[str, frozenset[str]] = {}
        self._routes: dict[str, _Route | Reject] = {}
        self.set_devices(devices)

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    def set_devices(self, devices: Mapping[str, Device]) -> None:
        """Replace the registry (e.g. after a device was added); cached topic lookups are dropped."""
        self._devices = dict(devices)
        self._routes = {}
        # Issue 7: a gateway with credentials speaks for the devices that name it in their `gateway` attribute
        # only (the broker's ACL cannot see device ids inside a gateway payload).
        members: dict[str, set[str]] = {}
        for device in self._devices.values():
            gateway = device.attributes.get("gateway") if isinstance(device.attributes, dict) else None
            if isinstance(gateway, str):
                members.setdefault(gateway, set()).add(device.id)
        self._gateway_members = {g: frozenset(ids) for g, ids in members.items()}
        self._restrict()

    def set_gateway_accounts(self, gateway_ids: Iterable[str]) -> None:
        """Replace the set of gateway ids that hold MQTT credentials (role gateway in `mqtt_accounts`)."""
        self._gateway_accounts = frozenset(gateway_ids)
        self._restrict()

    def _restrict(self) -> None:
        # Restricted exactly when the broker authenticates the gateway: an id without an account (open broker,
        # legacy) could be published under by anyone, so holding it to its devices would prove nothing.
        self._restricted = {g: self._gateway_members.get(g, frozenset()) for g in self._gateway_accounts}

    def device_of(self, topic: str) -> str | None:
        """The device (or gateway) id a topic names, if it has a valid one: for dead letters, whatever else is
        wrong with the topic or the message."""
        if not topic.startswith(self._prefix + "/"):
            return None
        parts = topic[len(self._prefix) + 1 :].split("/")
        if len(parts) < 2 or not ID_PATTERN.fullmatch(parts[1]):
            return None
        return parts[1]

    # -- entry point -----------------------------------------------------------------------------------

    def decode(self, topic: str, payload: bytes, received_at: datetime) -> Decoded:
        """Decode one message received at `received_at` (aware; naive is taken as UTC)."""
        out = Decoded()
        try:
            self._decode(topic, payload, received_at, out)
        except Exception as exc:  # a decoder bug must cost one dead-lettered message, not the ingest loop
            log.exception("decoder failed on topic %s", topic)
            out.rejects.append(Reject(C.DECODER_ERROR, f"internal decoder error: {type(exc).__name__}: {exc}"))
        rejects = out.rejects
        if rejects:
            counts = out.reject_counts
            for reject in rejects:
                counts[reject.code] = counts.get(reject.code, 0) + 1
            if len(rejects) > MAX_REJECT_REASONS:
                out.dropped_rejects = len(rejects) - MAX_REJECT_REASONS
                del rejects[MAX_REJECT_REASONS:]
        return out

    def _decode(self, topic: str, payload: bytes, now: datetime, out: Decoded) -> None:
        if now.tzinfo is not UTC:
            now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
        size = len(payload)
        if size > self._max_payload:
            out.rejects.append(
                Reject(C.PAYLOAD_TOO_LARGE, f"payload of {size} bytes exceeds the limit of {self._max_payload} bytes")
            )
            return
        route = self._routes.get(topic)
        if route is None:
            route = self._route(topic)
            if len(self._routes) >= _ROUTE_CACHE_MAX:  # bounded: random topics must not grow memory
                self._routes = {}
            self._routes[topic] = route
        if type(route) is Reject:
            out.rejects.append(route)
            return
        channel, device_id, kind, unregistered, is_gateway = route  # type: ignore[misc]
        if channel == "telemetry":
            doc = self._loads(payload, out)
            if doc is _NO_DOC:
                return
            if is_gateway:
                self._gateway(doc, out, now)
                members = self._restricted.get(device_id)
                if members is not None and out.rows:
                    _only_members(device_id, members, out)
            elif type(doc) is dict:
                self._record(doc, device_id, kind, None, None, out, now)
            elif type(doc) is list:
                self._array(doc, device_id, kind, out, now)
            else:
                out.rejects.append(Reject(C.BAD_SHAPE, f"telemetry must be a JSON object or array, got {_jtype(doc)}"))
            if unregistered and out.rows:
                out.unknown_devices.add(device_id)
        elif channel == "status":
            self._status(payload, device_id, out, now)
            if unregistered and out.status is not None:
                out.unknown_devices.add(device_id)
        else:
            self._events(payload, device_id, out, now)
            if unregistered and out.events:
                out.unknown_devices.add(device_id)

    # -- topic and registry ----------------------------------------------------------------------------

    def _route(self, topic: str) -> _Route | Reject:
        try:
            parsed = Topic.parse(topic, self._prefix)
        except DecodeError as exc:
            return Reject(C.BAD_TOPIC, exc.reason)
        if not ID_PATTERN.fullmatch(parsed.device_id) or not ID_PATTERN.fullmatch(parsed.kind):
            # ID_PATTERN ends in `$`, which also matches before a trailing newline: use fullmatch
            return Reject(C.BAD_TOPIC, f"invalid device id {parsed.device_id!r} or kind {parsed.kind!r} in topic")
        if parsed.is_gateway and parsed.channel == "telemetry":
            # the devices are named in the payload; the gateway itself need not be registered
            return (parsed.channel, parsed.device_id, parsed.kind, False, True)
        kind, reason, unregistered = self._resolve(parsed.device_id, parsed.kind)
        if reason is not None or kind is None:
            return reason or Reject(C.UNKNOWN_DEVICE, f"unknown device {parsed.device_id}")
        return (parsed.channel, parsed.device_id, kind, unregistered, False)

    def _resolve(self, device_id: str, topic_kind: str | None) -> _Resolved:
        """Registry lookup; `topic_kind` None means the kind comes from the registry only (gateways)."""
        device = self._devices.get(device_id)
        if device is not None:
            if topic_kind is not None and device.kind != topic_kind:
                return (
                    None,
                    Reject(
                        C.KIND_MISMATCH,
                        f"topic kind {topic_kind!r} does not match kind {device.kind!r} "
                        f"registered for device {device_id}",
                    ),
                    False,
                )
            return device.kind, None, False
        if not self._auto_register:
            return None, Reject(C.UNKNOWN_DEVICE, f"unknown device {device_id}"), False
        if topic_kind is None:
            reason = f"unknown device {device_id} (a gateway message cannot register it: kind unknown)"
            return None, Reject(C.UNKNOWN_DEVICE, reason), False
        if topic_kind not in self._catalog.kinds:
            return None, Reject(C.UNKNOWN_DEVICE, f"unknown device {device_id} of unknown kind {topic_kind!r}"), False
        return topic_kind, None, True

    # -- JSON ------------------------------------------------------------------------------------------

    @staticmethod
    def _loads(payload: bytes, out: Decoded) -> Any:
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            out.rejects.append(_json_error(bytes(payload), exc))
            return _NO_DOC

    # -- timestamps ------------------------------------------------------------------------------------

    def _timestamp(self, raw: Any, now: datetime) -> datetime | Reject:
        """Parse an ISO-8601 string or epoch seconds/ms into aware UTC, or say why it cannot be used."""
        kind = type(raw)
        if kind is str:
            try:
                ts = datetime.fromisoformat(raw)
            except ValueError:
                return Reject(C.BAD_TIMESTAMP, f"timestamp {_show(raw)} is not ISO-8601 or epoch seconds/ms")
            tz = ts.tzinfo
            # naive means the operations center's local time; "Z"/"+00:00" parse to UTC already (and
            # astimezone costs ~0.3 µs, a tenth of the whole message)
            if tz is not UTC:
                try:
                    ts = ts.replace(tzinfo=self._tz).astimezone(UTC) if tz is None else ts.astimezone(UTC)
                except OverflowError:
                    return Reject(C.BAD_TIMESTAMP, f"timestamp {_show(raw)} is out of range")
        elif kind is int or kind is float:
            try:
                # epoch seconds, or milliseconds above 1e11 (1e11 s is the year 5138)
                ts = datetime.fromtimestamp(raw / 1000 if raw > _MS_THRESHOLD else raw, UTC)
            except (OverflowError, OSError, ValueError):
                return Reject(C.BAD_TIMESTAMP, f"timestamp {_show(raw)} is out of range")
        else:
            return Reject(
                C.BAD_TIMESTAMP, f"timestamp must be an ISO-8601 string or epoch seconds/ms, got {_jtype(raw)}"
            )
        return self._check_time(ts, raw, now)

    def _check_time(self, ts: datetime, raw: Any, now: datetime) -> datetime | Reject:
        """`ts` if within the accepted window around `now`, else the reason (naming the value as sent)."""
        bounds = self._bounds
        if bounds[0] is not now:  # computed once per message, not once per backfill record
            bounds = self._bounds = (now, now - self._past, now + self._future)
        if bounds[1] <= ts <= bounds[2]:
            return ts
        if ts > now + self._future:
            ahead = (ts - now).total_seconds()
            return Reject(
                C.TIME_IN_FUTURE, f"timestamp {_label(raw)} is {_span(ahead)} in the future (device clock ahead?)"
            )
        if ts < now - self._past:
            age = (now - ts).total_seconds()
            return Reject(
                C.TIME_TOO_OLD, f"timestamp {_label(raw)} is {_span(age)} old (limit {_span(self._max_past_s)})"
            )
        return ts

    # -- readings --------------------------------------------------------------------------------------

    def _metric_reason(self, name: str, kind: str) -> Reject:
        if self._catalog.metric(name) is None:
            return Reject(C.UNKNOWN_METRIC, f"unknown metric {_show(name)}")
        return Reject(C.METRIC_NOT_ALLOWED, f"metric {_show(name)} is not allowed for kind {kind!r}")

    def _unit_plan(self, kind: str, name: str, unit: Any) -> _UnitPlan | Reject:
        if type(unit) is not str:
            return Reject(C.BAD_UNIT, f"unit of {_show(name)} must be a string, got {_jtype(unit)}")
        key = (kind, name, unit)
        plan = self._unit_plans.get(key)
        if plan is None:
            plan = self._build_unit_plan(kind, name, unit)
            if len(self._unit_plans) >= _SMALL_CACHE_MAX:
                self._unit_plans = {}
            self._unit_plans[key] = plan
        return plan

    def _build_unit_plan(self, kind: str, name: str, unit: str) -> _UnitPlan | Reject:
        base = self._plans.get(kind, _NO_PLANS).get(name)
        spec = self._catalog.metric(name)
        if base is None or spec is None:
            return self._metric_reason(name, kind)
        try:
            scale, shift = self._catalog.conversion(unit, spec.unit)
        except DecodeError as exc:
            return Reject(C.BAD_UNIT, f"{_show(name)}: {exc.reason}")
        return (base[0], scale, shift, base[1], base[2])

    def _add(
        self,
        device_id: str,
        kind: str,
        name: str,
        value: Any,
        unit: Any,
        ts: datetime,
        out: Decoded,
    ) -> Reject | None:
        """Validate one reading and append its row; return the reject when it is not stored."""
        if unit is None:
            plan = self._plans.get(kind, _NO_PLANS).get(name)
            if plan is None:
                return self._metric_reason(name, kind)
            metric, lo, hi = plan
            scale = None
        else:
            unit_plan = self._unit_plan(kind, name, unit)
            if type(unit_plan) is Reject:
                return unit_plan
            metric, scale, shift, lo, hi = unit_plan  # type: ignore[misc]
        vt = type(value)
        if vt is not float and vt is not int:  # bool is not int here: type(True) is bool
            return _value_reason(name, value)
        if scale is not None:
            value = value * scale + shift
        value = float(value)
        if value - value != 0.0:  # inf or nan
            return _value_reason(name, value)
        out.rows.append((device_id, metric, ts, value, 0 if lo <= value <= hi else _OUT_OF_RANGE))
        return None

    def _record(
        self,
        obj: dict[str, Any],
        device_id: str,
        kind: str,
        index: int | None,
        gateway_key: str | None,
        out: Decoded,
        now: datetime,
    ) -> None:
        """One `{"ts", "values"}` or flat object."""
        values = obj.get("values")
        flat = values is None
        if flat:
            if "values" in obj:
                out.rejects.append(
                    Reject(C.BAD_SHAPE, f"{_where(gateway_key, index)}'values' is null, expected an object")
                )
                return
            values = obj
        elif type(values) is not dict:
            out.rejects.append(
                Reject(C.BAD_SHAPE, f"{_where(gateway_key, index)}'values' must be an object, got {_jtype(values)}")
            )
            return
        elif not _ENVELOPE_KEYS.issuperset(obj):
            for key in obj:
                if key not in _ENVELOPE_KEYS:
                    out.rejects.append(
                        Reject(
                            C.UNKNOWN_FIELD,
                            f"{_where(gateway_key, index)}unknown key {_show(key)} next to 'values' "
                            "(expected ts, values, units, device_id)",
                        )
                    )
        raw_ts = obj.get("ts")
        if raw_ts is None:
            ts = now
        else:
            parsed = self._timestamp(raw_ts, now)
            if type(parsed) is Reject:
                out.rejects.append(_prefixed(_where(gateway_key, index), parsed))
                return
            ts = parsed  # type: ignore[assignment]
        claimed = obj.get("device_id")
        if claimed is not None and claimed != device_id:
            what = "gateway key" if gateway_key is not None else "topic device"
            out.rejects.append(
                Reject(
                    C.DEVICE_MISMATCH,
                    f"{_where(gateway_key, index)}payload device {_show(claimed)} does not match {what} {device_id}",
                )
            )
            return
        units = obj.get("units")
        if units is not None and type(units) is not dict:
            out.rejects.append(
                Reject(C.BAD_SHAPE, f"{_where(gateway_key, index)}'units' must be an object, got {_jtype(units)}")
            )
            return

        plans = self._plans.get(kind, _NO_PLANS)
        rows = out.rows
        count = 0
        for name, value in values.items():
            if flat and name in _FLAT_RESERVED:
                continue
            count += 1
            plan = plans.get(name) if units is None or name not in units else None
            vt = type(value)
            if plan is not None and (vt is float or vt is int):  # the common case, inlined
                metric, lo, hi = plan
                value = float(value)
                if value - value == 0.0:
                    rows.append((device_id, metric, ts, value, 0 if lo <= value <= hi else _OUT_OF_RANGE))
                    continue
            unit = units.get(name) if units is not None else None
            reason = self._add(device_id, kind, name, value, unit, ts, out)
            if reason is not None:
                out.rejects.append(_prefixed(_where(gateway_key, index), reason))
        if count == 0:
            out.rejects.append(Reject(C.NO_READINGS, f"{_where(gateway_key, index)}no readings"))

    def _array(self, doc: list[Any], device_id: str, kind: str, out: Decoded, now: datetime) -> None:
        if not doc:
            out.rejects.append(_NO_READINGS)
            return
        first = doc[0]
        if type(first) is dict and ("n" in first or "bn" in first or "v" in first or "bt" in first):
            self._senml(doc, device_id, kind, out, now)
            return
        for index, item in enumerate(doc):
            if type(item) is dict:
                self._record(item, device_id, kind, index, None, out, now)
            else:
                out.rejects.append(Reject(C.BAD_SHAPE, f"record {index}: expected an object, got {_jtype(item)}"))

    def _gateway(self, doc: Any, out: Decoded, now: datetime) -> None:
        """`{device_id: [ {ts, values}, ... ] | {ts, values}}`, or SenML whose names carry the device ids."""
        if type(doc) is list:
            if doc and type(doc[0]) is dict and ("n" in doc[0] or "bn" in doc[0]):
                self._senml(doc, None, None, out, now)
            else:
                out.rejects.append(
                    Reject(
                        C.BAD_SHAPE,
                        "gateway payload must be an object keyed by device id (or SenML naming the devices)",
                    )
                )
            return
        if type(doc) is not dict:
            out.rejects.append(
                Reject(C.BAD_SHAPE, f"gateway payload must be an object keyed by device id, got {_jtype(doc)}")
            )
            return
        if not doc:
            out.rejects.append(_NO_READINGS)
            return
        for device_id, body in doc.items():
            if not ID_PATTERN.fullmatch(device_id):
                out.rejects.append(
                    Reject(C.BAD_SHAPE, f"invalid device id {_show(device_id)} (expected [A-Za-z0-9_.-]{{1,64}})")
                )
                continue
            kind, reason, _ = self._resolve(device_id, None)
            if reason is not None or kind is None:
                out.rejects.append(reason or Reject(C.UNKNOWN_DEVICE, f"unknown device {device_id}"))
                continue
            if type(body) is dict:
                self._record(body, device_id, kind, None, device_id, out, now)
            elif type(body) is list:
                if not body:
                    out.rejects.append(Reject(C.NO_READINGS, f"device {device_id}: no readings"))
                for index, item in enumerate(body):
                    if type(item) is dict:
                        self._record(item, device_id, kind, index, device_id, out, now)
                    else:
                        out.rejects.append(
                            Reject(
                                C.BAD_SHAPE,
                                f"device {device_id} record {index}: expected an object, got {_jtype(item)}",
                            )
                        )
            else:
                out.rejects.append(
                    Reject(
                        C.BAD_SHAPE, f"device {device_id}: expected an object or array of objects, got {_jtype(body)}"
                    )
                )

    # -- SenML (RFC 8428) ------------------------------------------------------------------------------

    def _split_name(self, name: str) -> tuple[str | None, str] | Reject:
        """`bn+n` → (device id or None, metric): the metric follows the last '/' or ':', the device id is the
        segment before it (`HG-BQ-01/rain_mm`, `urn:dev:occ:HG-BQ-01:rain_mm`)."""
        split = self._names.get(name)
        if split is None:
            if not _SENML_NAME.match(name):
                split = Reject(C.BAD_SENML, f"invalid SenML name {_show(name)}")
            else:
                cut = max(name.rfind("/"), name.rfind(":"))
                metric = name[cut + 1 :]
                prefix = name[:cut] if cut >= 0 else ""
                device = prefix[max(prefix.rfind("/"), prefix.rfind(":")) + 1 :] if prefix else None
                if not metric:
                    split = Reject(C.BAD_SENML, f"SenML name {_show(name)} has no metric after the last '/' or ':'")
                elif device is not None and not ID_PATTERN.fullmatch(device):
                    split = Reject(C.BAD_SENML, f"SenML name {_show(name)}: invalid device id {_show(device)}")
                else:
                    split = (device, metric)
            if len(self._names) >= _SMALL_CACHE_MAX:
                self._names = {}
            self._names[name] = split
        return split

    def _senml(
        self, pack: list[Any], topic_device: str | None, topic_kind: str | None, out: Decoded, now: datetime
    ) -> None:
        """A SenML pack; `topic_device` None (gateway topic) means every name must carry its device id."""
        rejects = out.rejects
        base_name = ""
        base_time: float = 0.0
        base_unit: str | None = None
        base_value: float = 0.0
        last_time: float | None = None
        last_ts: datetime | Reject = now
        resolved: dict[str, _Resolved] = {}
        readings = 0
        for index, rec in enumerate(pack):
            if type(rec) is not dict:
                rejects.append(Reject(C.BAD_SENML, f"SenML record {index}: expected an object, got {_jtype(rec)}"))
                continue
            has_base = not _SENML_BASE.isdisjoint(rec)
            if has_base:  # base fields apply to this record and every later one (RFC 8428 §4.1)
                base = self._senml_base(rec, base_name, base_time, base_unit, base_value)
                if type(base) is Reject:
                    # later records would be misread without their base fields: reject the rest of the pack
                    rejects.append(
                        Reject(base.code, f"SenML record {index}: {base.text} (this and later records rejected)")
                    )
                    return
                base_name, base_time, base_unit, base_value = base  # type: ignore[misc]
            if not _SENML_FIELDS.issuperset(rec):
                unknown = [k for k in rec if k not in _SENML_FIELDS and k.endswith("_")]
                if unknown:  # RFC 8428 §4.4: fields ending in '_' must be understood; others are ignored
                    field = _show(unknown[0])
                    rejects.append(
                        Reject(C.BAD_SENML, f"SenML record {index}: unsupported must-understand field {field}")
                    )
                    continue
            name = rec.get("n")
            if name is None:
                if _SENML_VALUES.isdisjoint(rec):
                    if not has_base:
                        rejects.append(
                            Reject(C.BAD_SENML, f"SenML record {index}: neither a name (n) nor a value (v, vb)")
                        )
                    continue  # a record that only sets base fields
                name = base_name
            elif type(name) is not str:
                rejects.append(Reject(C.BAD_SENML, f"SenML record {index}: n must be a string, got {_jtype(name)}"))
                continue
            elif base_name:
                name = base_name + name
            if not name:
                rejects.append(Reject(C.BAD_SENML, f"SenML record {index}: no name (n/bn)"))
                continue
            split = self._names.get(name)
            if split is None:
                split = self._split_name(name)
            if type(split) is Reject:
                rejects.append(_prefixed(f"SenML record {index}: ", split))
                continue
            device, metric = split
            if topic_device is not None:
                if device is not None and device != topic_device:
                    rejects.append(
                        Reject(
                            C.DEVICE_MISMATCH,
                            f"SenML record {index} ({_show(name)}): name is for device {device}, "
                            f"topic device is {topic_device}",
                        )
                    )
                    continue
                device, kind = topic_device, topic_kind
            elif device is None:
                rejects.append(
                    Reject(
                        C.BAD_SENML,
                        f"SenML record {index} ({_show(name)}): a gateway pack needs the device id in the name "
                        "(bn 'DEVICE/' or 'urn:dev:...:DEVICE:')",
                    )
                )
                continue
            else:
                found = resolved.get(device)
                if found is None:
                    found = resolved[device] = self._resolve(device, None)
                kind, reason, _ = found
                if reason is not None or kind is None:
                    reason = reason or Reject(C.UNKNOWN_DEVICE, f"unknown device {device}")
                    rejects.append(_prefixed(f"SenML record {index} ({_show(name)}): ", reason))
                    continue
            assert kind is not None
            value = rec.get("v")
            if value is None:
                value = self._senml_other_value(rec)
                if type(value) is Reject:
                    rejects.append(_prefixed(f"SenML record {index} ({_show(name)}): ", value))
                    continue
            elif type(value) is not float and type(value) is not int:
                rejects.append(
                    Reject(
                        C.BAD_VALUE,
                        f"SenML record {index} ({_show(name)}): v must be a number, "
                        f"got {_jtype(value)} ({_show(value, 40)})",
                    )
                )
                continue
            elif base_value:
                value = value + base_value
            # time is bt + t in seconds; below 2**28 it is relative to now (RFC 8428 §4.5.3)
            t = rec.get("t")
            if t is None:
                when = base_time
            elif type(t) is float or type(t) is int:
                when = base_time + t
            else:
                rejects.append(
                    Reject(C.BAD_SENML, f"SenML record {index} ({_show(name)}): t must be a number, got {_jtype(t)}")
                )
                continue
            if when != last_time:  # records of one pack usually share a time: share the datetime too
                last_time = when
                last_ts = self._senml_time(when, now)
            if type(last_ts) is Reject:
                rejects.append(_prefixed(f"SenML record {index} ({_show(name)}): ", last_ts))
                continue
            readings += 1
            unit = rec.get("u", base_unit)
            if unit is None and (type(value) is float or type(value) is int):  # common case, inlined
                plan = self._plans.get(kind, _NO_PLANS).get(metric)
                if plan is not None:
                    metric, lo, hi = plan
                    value = float(value)
                    if value - value == 0.0:
                        out.rows.append(
                            (device, metric, last_ts, value, 0 if lo <= value <= hi else _OUT_OF_RANGE)  # type: ignore[arg-type]
                        )
                        continue
            reason = self._add(device, kind, metric, value, unit, last_ts, out)  # type: ignore[arg-type]
            if reason is not None:
                rejects.append(_prefixed(f"SenML record {index} ({_show(name)}): ", reason))
        if readings == 0 and not rejects:
            rejects.append(_NO_READINGS)

    @staticmethod
    def _senml_base(
        rec: dict[str, Any], name: str, time: float, unit: str | None, value: float
    ) -> tuple[str, float, str | None, float] | Reject:
        """New base (name, time, unit, value) from a record's bn/bt/bu/bv, or the reason they are invalid."""
        bn, bt, bu, bv = rec.get("bn", name), rec.get("bt", time), rec.get("bu", unit), rec.get("bv", value)
        if type(bn) is not str:
            return Reject(C.BAD_SENML, f"bn must be a string, got {_jtype(bn)}")
        if type(bt) is not int and type(bt) is not float:
            return Reject(C.BAD_SENML, f"bt must be a number, got {_jtype(bt)}")
        if bu is not None and type(bu) is not str:
            return Reject(C.BAD_SENML, f"bu must be a string, got {_jtype(bu)}")
        if type(bv) is not int and type(bv) is not float:
            return Reject(C.BAD_SENML, f"bv must be a number, got {_jtype(bv)}")
        return bn, float(bt), bu, float(bv)

    @staticmethod
    def _senml_other_value(rec: dict[str, Any]) -> float | Reject:
        """The value of a record without `v`: vb as 1.0/0.0, or why there is no numeric value."""
        if "v" in rec:
            return Reject(C.BAD_VALUE, "v must be a number, got null")
        if "vb" in rec:
            value = rec["vb"]
            if type(value) is not bool:
                return Reject(C.BAD_VALUE, f"vb must be true or false, got {_jtype(value)}")
            return 1.0 if value else 0.0
        if "vs" in rec:
            return Reject(C.BAD_SENML, "vs (string value) is not supported for numeric metrics")
        if "vd" in rec:
            return Reject(C.BAD_SENML, "vd (data value) is not supported for numeric metrics")
        if "s" in rec:
            return Reject(C.BAD_SENML, "sum (s) without a value is not supported")
        return Reject(C.BAD_SENML, "no value (v or vb)")

    def _senml_time(self, when: float, now: datetime) -> datetime | Reject:
        if when == 0:
            return now
        try:
            if when < _SENML_RELATIVE:
                return self._check_time(now + timedelta(seconds=when), _SenmlTime(when), now)
            return self._check_time(datetime.fromtimestamp(when, UTC), _SenmlTime(when), now)
        except (OverflowError, OSError, ValueError):
            return Reject(C.BAD_TIMESTAMP, f"time {when} is out of range")

    # -- events and status -----------------------------------------------------------------------------

    def _events(self, payload: bytes, device_id: str, out: Decoded, now: datetime) -> None:
        doc = self._loads(payload, out)
        if doc is _NO_DOC:
            return
        if type(doc) is dict:
            items, indexed = [doc], False
        elif type(doc) is list:
            if not doc:
                out.rejects.append(Reject(C.NO_READINGS, "no events"))
                return
            items, indexed = doc, True
        else:
            out.rejects.append(
                Reject(C.BAD_SHAPE, f"event must be a JSON object or array of objects, got {_jtype(doc)}")
            )
            return
        for index, item in enumerate(items):
            where = f"event {index}: " if indexed else "event: "
            if type(item) is not dict:
                out.rejects.append(Reject(C.BAD_SHAPE, f"{where}expected an object, got {_jtype(item)}"))
                continue
            etype = item.get("type")
            if etype is None:
                out.rejects.append(Reject(C.BAD_EVENT, f"{where}missing 'type'"))
                continue
            if type(etype) is not str or not ID_PATTERN.fullmatch(etype):
                out.rejects.append(
                    Reject(C.BAD_EVENT, f"{where}type {_show(etype)} is invalid (expected [A-Za-z0-9_.-]{{1,64}})")
                )
                continue
            claimed = item.get("device_id")
            if claimed is not None and claimed != device_id:
                out.rejects.append(
                    Reject(
                        C.DEVICE_MISMATCH,
                        f"{where}payload device {_show(claimed)} does not match topic device {device_id}",
                    )
                )
                continue
            raw_ts = item.get("ts")
            ts = now
            if raw_ts is not None:
                parsed = self._timestamp(raw_ts, now)
                if type(parsed) is Reject:
                    out.rejects.append(_prefixed(where, parsed))
                    continue
                ts = parsed  # type: ignore[assignment]
            data = {k: v for k, v in item.items() if k not in _EVENT_RESERVED}
            out.events.append(Event(device_id, ts, etype, data))

    def _status(self, payload: bytes, device_id: str, out: Decoded, now: datetime) -> None:
        body = payload.strip()
        if not body:
            return  # an empty retained message clears the retained status: nothing to record
        plain = _STATUSES.get(body.decode("utf-8", "replace"))
        if plain is not None:
            out.status = StatusChange(device_id, plain, now)  # type: ignore[arg-type]
            return
        doc = self._loads(payload, out)
        if doc is _NO_DOC:
            return
        ts = now
        if type(doc) is str:
            value: Any = doc
        elif type(doc) is dict:
            value = doc.get("status")
            for key in doc:
                if key not in _STATUS_KEYS:
                    out.rejects.append(
                        Reject(C.UNKNOWN_FIELD, f"status: unknown key {_show(key)} (expected status, ts, device_id)")
                    )
            claimed = doc.get("device_id")
            if claimed is not None and claimed != device_id:
                out.rejects.append(
                    Reject(
                        C.DEVICE_MISMATCH, f"payload device {_show(claimed)} does not match topic device {device_id}"
                    )
                )
                return
            if doc.get("ts") is not None:
                parsed = self._timestamp(doc["ts"], now)
                if type(parsed) is Reject:
                    out.rejects.append(_prefixed("status: ", parsed))
                    return
                ts = parsed  # type: ignore[assignment]
        else:
            out.rejects.append(
                Reject(C.BAD_STATUS, f"status must be online, offline or a JSON object, got {_jtype(doc)}")
            )
            return
        status = _STATUSES.get(value) if type(value) is str else None
        if status is None:
            out.rejects.append(Reject(C.BAD_STATUS, f"status must be 'online' or 'offline', got {_show(value)}"))
            return
        out.status = StatusChange(device_id, status, ts)  # type: ignore[arg-type]


def _only_members(gateway_id: str, members: frozenset[str], out: Decoded) -> None:
    """Drop the readings of devices not assigned to this gateway, each with a reason (issue 7)."""
    foreign = {row[0] for row in out.rows} - members
    if not foreign:
        return
    out.rows = [row for row in out.rows if row[0] in members]
    why = ("its registry attribute `gateway` names another or none" if members else
           "a gateway with MQTT credentials speaks only for devices whose registry attribute `gateway` names it, "
           "and none does")
    for device_id in sorted(foreign):
        out.rejects.append(Reject(C.DEVICE_MISMATCH,
                                  f"device {device_id} is not assigned to gateway {gateway_id} ({why})"))
