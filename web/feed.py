"""The live feed's pure core: the hub (what the province looks like now, numbered changes) and one session
per websocket client (filter, snapshot, coalesced deltas, resume, bounded backlog). No I/O and no clock of
its own: every call takes `now` (monotonic seconds), so tests drive time by hand. `web/live.py` wires it to
aiohttp and MQTT.

Protocol (documented in README.md, "Live feed"):

    client → {"type": "subscribe", "filter": {"kinds": [...], "areas": [...], "bbox": [w, s, e, n]},
              "resume": SEQ?, "stream": STREAM?}
    server → {"type": "snapshot", "seq": S, "stream": STREAM, "devices": [...], "alerts": [...]}
             (or {"type": "resumed", ...} followed by the missed deltas)
    server → {"type": "delta", "seq": S, "status": [...], "alerts": [...], "readings": [...]}
    server → {"type": "heartbeat", "seq": S, "server_time": ...}
    client → {"type": "ping"}  → {"type": "pong"}
    server → {"type": "error", "code": "...", "message": "..."}

`seq` in a server frame means "you now have every change up to S": a client that reconnects sends the last
seq it saw and gets only what it missed, while the hub still holds it (a bounded ring), else a snapshot.

Session contract (like `occ.codecs.Decoder.decode`): `receive` never raises; every client message yields
frames, an error frame, or (after `max_errors` bad messages) a close with a reason.
"""

from __future__ import annotations

import math
import secrets
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

DeltaKind = Literal["reading", "status", "alert"]

CLOSE_POLICY = 1008
"""RFC 6455 policy violation: bad client messages."""
CLOSE_TOO_SLOW = 4008
"""Application code: the client could not keep up (its backlog overflowed too often or stayed behind)."""
CLOSE_GOING_AWAY = 1001

OPEN_ALERT_STATES = frozenset({"pending", "firing", "recovering", "acknowledged", "open"})


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What the map needs to know about a device that does not change with its readings."""

    id: str
    kind: str
    name: str = ""
    area: str | None = None
    lat: float | None = None
    lon: float | None = None
    attributes: Mapping[str, Any] | None = None


class FilterError(ValueError):
    """A subscribe filter the server cannot use; the message goes back to the client in an error frame."""


@dataclass(frozen=True, slots=True)
class FeedFilter:
    """Which devices a client watches: kinds AND areas AND inside the bounding box (each optional)."""

    kinds: frozenset[str] | None = None
    areas: frozenset[str] | None = None
    bbox: tuple[float, float, float, float] | None = None
    """(west, south, east, north) in degrees."""

    def matches(self, device: DeviceInfo) -> bool:
        if self.kinds is not None and device.kind not in self.kinds:
            return False
        if self.areas is not None and device.area not in self.areas:
            return False
        if self.bbox is not None:
            if device.lat is None or device.lon is None:
                return False
            w, s, e, n = self.bbox
            if not (s <= device.lat <= n and w <= device.lon <= e):
                return False
        return True

    @property
    def everything(self) -> bool:
        return self.kinds is None and self.areas is None and self.bbox is None

    @classmethod
    def parse(cls, raw: Any) -> FeedFilter:
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise FilterError("filter must be an object")
        unknown = set(raw) - {"kinds", "areas", "bbox"}
        if unknown:
            raise FilterError(f"unknown filter field(s): {', '.join(sorted(unknown))}")

        def names(key: str) -> frozenset[str] | None:
            value = raw.get(key)
            if value is None:
                return None
            if not isinstance(value, list) or len(value) > 1000 or not all(
                isinstance(v, str) and 0 < len(v) <= 64 for v in value
            ):
                raise FilterError(f"{key} must be a list of names")
            return frozenset(value)

        bbox = raw.get("bbox")
        box: tuple[float, float, float, float] | None = None
        if bbox is not None:
            if (
                not isinstance(bbox, list)
                or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
            ):
                raise FilterError("bbox must be [west, south, east, north] in degrees")
            w, s, e, n = (float(v) for v in bbox)
            if not (-180 <= w <= e <= 180 and -90 <= s <= n <= 90):
                raise FilterError("bbox must satisfy west <= east and south <= north, within ±180/±90")
            box = (w, s, e, n)
        return cls(names("kinds"), names("areas"), box)


@dataclass(frozen=True, slots=True)
class Delta:
    """One numbered change. `item` is the JSON of the changed thing, encoded once for every client."""

    seq: int
    kind: DeltaKind
    device_id: str
    item: bytes


def delta_frame(seq: int, events: Iterable[Delta], readings: Iterable[Delta]) -> bytes:
    status: list[bytes] = []
    alerts: list[bytes] = []
    for d in events:
        (status if d.kind == "status" else alerts).append(d.item)
    return (b'{"type":"delta","seq":' + str(seq).encode() + b',"status":[' + b",".join(status)
            + b'],"alerts":[' + b",".join(alerts) + b'],"readings":[' + b",".join(d.item for d in readings) + b"]}")


class DeltaBatch:
    """One dispatch's deltas, sorted once for every session. A client that watches everything and had nothing
    else pending gets the batch's frame, built once and shared (a thousand walls cost one encoding)."""

    __slots__ = ("_frame", "deltas", "events", "readings", "seq")

    def __init__(self, deltas: Sequence[Delta]) -> None:
        self.deltas = deltas
        self.readings: dict[str, Delta] = {}
        self.events: list[Delta] = []
        for d in deltas:
            if d.kind == "reading":
                self.readings.pop(d.device_id, None)
                self.readings[d.device_id] = d
            else:
                self.events.append(d)
        self.seq = deltas[-1].seq if deltas else 0
        self._frame: bytes | None = None

    @property
    def built(self) -> bytes | None:
        """The shared frame if some session has taken it already (else None)."""
        return self._frame

    def frame(self) -> bytes:
        if self._frame is None:
            self._frame = delta_frame(self.seq, self.events, self.readings.values())
        return self._frame


class Hub:
    """The current state of everything on the wall, and the last `history` changes, numbered.

    Readings are coalesced per device: at most one reading delta per device per `reading_interval_s`; a
    newer reading inside the interval is held and emitted by `tick` (the delta always carries the device's
    latest values, so nothing is lost by coalescing). Status and alert changes are emitted at once.
    Readings older than what the hub holds for a metric (backfill) do not move the wall backwards.
    """

    def __init__(self, *, reading_interval_s: float = 1.0, history: int = 20_000, snapshot_cache: int = 8) -> None:
        self.reading_interval_s = reading_interval_s
        self.seq = 0
        self.stream = secrets.token_hex(6)
        """Names this hub's numbering: after a server restart seq starts again, so a resume must match it."""
        self.devices: dict[str, DeviceInfo] = {}
        self.devices_version = 0
        self._device_json: dict[str, bytes] = {}
        self._values: dict[str, dict[str, tuple[float, float]]] = {}  # device -> metric -> (epoch ts, value)
        self._reading_item: dict[str, bytes] = {}
        self._status: dict[str, tuple[str, float]] = {}
        self._alerts: dict[str, dict[str, Any]] = {}
        self._alert_item: dict[str, bytes] = {}
        self._last_emit: dict[str, float] = {}
        self._held: set[str] = set()
        self._history: deque[Delta] = deque(maxlen=history)
        self._snapshots: dict[tuple[FeedFilter, int, int], bytes] = {}
        self._snapshot_cache = snapshot_cache

    # -- loading -------------------------------------------------------------------------------------
    def set_devices(self, devices: Iterable[DeviceInfo]) -> None:
        self.devices = {d.id: d for d in devices}
        self._device_json = {
            d.id: orjson.dumps({"id": d.id, "kind": d.kind, "name": d.name, "area": d.area, "lat": d.lat,
                                "lon": d.lon, "attributes": _wall_attributes(d.attributes)})
            for d in self.devices.values()
        }
        self.devices_version += 1
        self._snapshots.clear()

    def load_latest(self, rows: Iterable[tuple[str, str, float, float]]) -> None:
        """(device_id, metric, epoch ts, value) from the store's `latest` table, at start-up."""
        touched: set[str] = set()
        for device_id, metric, ts, value in rows:
            self._values.setdefault(device_id, {})[metric] = (ts, value)
            touched.add(device_id)
        for device_id in touched:
            self._reading_item[device_id] = self._encode_reading(device_id)
        self._snapshots.clear()

    def load_status(self, rows: Iterable[tuple[str, str, float]]) -> None:
        for device_id, status, ts in rows:
            self._status[device_id] = (status, ts)
        self._snapshots.clear()

    def load_alerts(self, alerts: Iterable[Mapping[str, Any]]) -> None:
        for alert in alerts:
            key = alert_key(alert)
            if key and is_open(alert):
                self._alerts[key] = dict(alert)
                self._alert_item[key] = orjson.dumps(alert)
        self._snapshots.clear()

    # -- changes -------------------------------------------------------------------------------------
    def _emit(self, kind: DeltaKind, device_id: str, item: bytes) -> Delta:
        self.seq += 1
        delta = Delta(self.seq, kind, device_id, item)
        self._history.append(delta)
        return delta

    def _encode_reading(self, device_id: str) -> bytes:
        metrics = self._values.get(device_id, {})
        newest = max((ts for ts, _ in metrics.values()), default=0.0)
        return orjson.dumps({"id": device_id, "ts": _iso(newest),
                             "values": {m: v for m, (_, v) in sorted(metrics.items())}})

    def reading(self, device_id: str, ts: float, values: Mapping[str, float], now: float) -> list[Delta]:
        """New readings of one device (epoch `ts`). Returns the deltas to fan out now (maybe none: held)."""
        metrics = self._values.setdefault(device_id, {})
        changed = False
        for metric, value in values.items():
            current = metrics.get(metric)
            if current is None or ts >= current[0]:
                metrics[metric] = (ts, value)
                changed = True
        if not changed:
            return []
        last = self._last_emit.get(device_id)
        if last is not None and now - last < self.reading_interval_s:
            self._held.add(device_id)
            return []
        return [self._emit_reading(device_id, now)]

    def _emit_reading(self, device_id: str, now: float) -> Delta:
        self._last_emit[device_id] = now
        self._held.discard(device_id)
        item = self._reading_item[device_id] = self._encode_reading(device_id)
        return self._emit("reading", device_id, item)

    def tick(self, now: float) -> list[Delta]:
        """Emit held readings whose interval has passed."""
        if not self._held:
            return []
        due = [d for d in self._held if now - self._last_emit.get(d, -math.inf) >= self.reading_interval_s]
        return [self._emit_reading(d, now) for d in sorted(due)]

    def status(self, device_id: str, status: str, ts: float) -> list[Delta]:
        current = self._status.get(device_id)
        if current is not None and (ts < current[1] or current[0] == status):
            return []
        self._status[device_id] = (status, ts)
        item = orjson.dumps({"id": device_id, "status": status, "since": _iso(ts)})
        return [self._emit("status", device_id, item)]

    def alert(self, alert: Mapping[str, Any]) -> list[Delta]:
        """An alert change as the alerts service published it; open ones are kept for snapshots."""
        key = alert_key(alert)
        if not key:
            return []
        item = orjson.dumps(alert)
        if is_open(alert):
            self._alerts[key] = dict(alert)
            self._alert_item[key] = item
        else:
            self._alerts.pop(key, None)
            self._alert_item.pop(key, None)
        return [self._emit("alert", str(alert.get("device_id") or ""), item)]

    # -- reading back --------------------------------------------------------------------------------
    @property
    def oldest_seq(self) -> int:
        """The oldest change still held; a client that saw oldest_seq - 1 or later can resume."""
        return self._history[0].seq if self._history else self.seq + 1

    def since(self, seq: int) -> list[Delta] | None:
        """Changes after `seq`, or None when some of them are no longer held (the client needs a snapshot)."""
        if seq > self.seq or seq < 0:
            return None
        if seq == self.seq:
            return []
        if seq + 1 < self.oldest_seq:
            return None
        start = len(self._history) - (self.seq - seq)
        return list(self._history)[start:]

    def open_alerts(self) -> list[dict[str, Any]]:
        return list(self._alerts.values())

    def visible(self, feed_filter: FeedFilter) -> frozenset[str] | None:
        """Device ids a filter lets through (None: everything, including devices not yet registered)."""
        if feed_filter.everything:
            return None
        return frozenset(d.id for d in self.devices.values() if feed_filter.matches(d))

    def snapshot(self, feed_filter: FeedFilter, now_epoch: float) -> bytes:
        """A snapshot frame; cached per (filter, seq), so a thousand walls reconnecting at once cost one."""
        key = (feed_filter, self.seq, self.devices_version)
        cached = self._snapshots.get(key)
        if cached is not None:
            return cached
        visible = self.visible(feed_filter)
        parts: list[bytes] = []
        ids = self.devices.keys() if visible is None else visible
        for device_id in sorted(ids):
            static = self._device_json[device_id]
            status = self._status.get(device_id)
            reading = self._reading_item.get(device_id)
            extra = b'"status":' + (orjson.dumps(status[0]) if status else b"null")
            if reading is not None:
                extra += b',"reading":' + reading
            parts.append(static[:-1] + b"," + extra + b"}")
        alerts = [
            item for key, item in self._alert_item.items()
            if visible is None or str(self._alerts[key].get("device_id")) in visible
        ]
        frame = (
            b'{"type":"snapshot","seq":' + str(self.seq).encode() + b',"stream":"' + self.stream.encode() + b'"'
            + b',"server_time":' + orjson.dumps(_iso(now_epoch))
            + b',"devices":[' + b",".join(parts) + b'],"alerts":[' + b",".join(alerts) + b"]}"
        )
        if len(self._snapshots) >= self._snapshot_cache:
            self._snapshots.pop(next(iter(self._snapshots)))
        self._snapshots[key] = frame
        return frame


WALL_ATTRIBUTES = ("alarm_levels_m", "river", "station_type", "official")
"""Device attributes the wall uses (KPIs, chart lines); the rest stays in the REST API."""


def _wall_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: attributes[k] for k in WALL_ATTRIBUTES if attributes and k in attributes}


def alert_key(alert: Mapping[str, Any]) -> str:
    """Identity of an alert episode in the feed (its id, else its fingerprint)."""
    key = alert.get("id", alert.get("fingerprint"))
    return "" if key is None else str(key)


def is_open(alert: Mapping[str, Any]) -> bool:
    return str(alert.get("state", "")) in OPEN_ALERT_STATES


def error_frame(code: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "code": code, "message": message})


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


class FeedSession:
    """One client's view of the feed: parses its messages, filters and queues changes, builds frames.

    Bounded: readings are coalesced per device (the newest delta replaces an older one), status and alert
    changes queue up to `max_pending`; past that the backlog is dropped and the client gets a fresh snapshot
    instead. A client that needs more than `max_snapshots` of those within `snapshot_window_s`, or whose
    oldest queued change waits longer than `max_lag_s`, is closed with CLOSE_TOO_SLOW and a reason.
    """

    def __init__(
        self,
        hub: Hub,
        *,
        now: float,
        max_message_bytes: int = 4096,
        max_errors: int = 5,
        max_pending: int = 2000,
        max_snapshots: int = 3,
        snapshot_window_s: float = 60.0,
        max_lag_s: float = 30.0,
        heartbeat_s: float = 15.0,
    ) -> None:
        self.hub = hub
        self.max_message_bytes = max_message_bytes
        self.max_errors = max_errors
        self.max_pending = max_pending
        self.max_snapshots = max_snapshots
        self.snapshot_window_s = snapshot_window_s
        self.max_lag_s = max_lag_s
        self.heartbeat_s = heartbeat_s
        self.filter: FeedFilter | None = None
        self.errors = 0
        self.closed: Close | None = None
        self.snapshots_sent = 0
        self.overflows = 0
        self._visible: frozenset[str] | None = None
        self._visible_version = -1
        self._control: deque[bytes] = deque()
        self._events: deque[Delta] = deque()
        self._readings: dict[str, Delta] = {}
        self._shared: DeltaBatch | None = None
        self._need_snapshot = False
        self._snapshot_times: deque[float] = deque()
        self._behind_since: float | None = None
        self._offered_seq = 0
        self._last_sent = now

    # -- client messages -----------------------------------------------------------------------------
    def receive(self, message: str | bytes, now: float) -> None:
        if self.closed:
            return
        if isinstance(message, bytes):
            self._error("binary_not_supported", "send JSON text frames")
            return
        if len(message) > self.max_message_bytes:
            self._error("too_large", f"messages are limited to {self.max_message_bytes} bytes")
            return
        try:
            doc = orjson.loads(message)
        except orjson.JSONDecodeError:
            self._error("malformed", "not valid JSON")
            return
        if not isinstance(doc, dict) or not isinstance(doc.get("type"), str):
            self._error("malformed", 'expected an object with a "type"')
            return
        kind = doc["type"]
        if kind == "ping":
            self._control.append(b'{"type":"pong"}')
        elif kind == "subscribe":
            self._subscribe(doc, now)
        else:
            self._error("unknown_type", f"unknown message type {kind[:40]!r}")

    def _error(self, code: str, message: str) -> None:
        self.errors += 1
        if self.errors >= self.max_errors:
            self.closed = Close(CLOSE_POLICY, f"too many bad messages (last: {code})")
            return
        self._control.append(error_frame(code, message))

    def _subscribe(self, doc: dict[str, Any], now: float) -> None:
        try:
            feed_filter = FeedFilter.parse(doc.get("filter"))
        except FilterError as exc:
            self._error("bad_filter", str(exc))
            return
        resume = doc.get("resume")
        if resume is not None and (not isinstance(resume, int) or isinstance(resume, bool)):
            self._error("bad_resume", "resume must be the integer seq of the last frame received")
            return
        self.filter = feed_filter
        self._refresh_visible()
        self._events.clear()
        self._readings.clear()
        self._shared = None
        self._behind_since = None
        self._offered_seq = self.hub.seq
        stream = doc.get("stream")
        missed = self.hub.since(resume) if resume is not None and stream == self.hub.stream else None
        if missed is None or resume is None:
            self._need_snapshot = True
            return
        self._need_snapshot = False
        self._control.append(
            orjson.dumps({"type": "resumed", "seq": resume, "stream": self.hub.stream, "missed": len(missed)})
        )
        self._offered_seq = resume
        self.offer(missed, now)

    def _refresh_visible(self) -> None:
        if self.filter is not None:
            self._visible = self.hub.visible(self.filter)
            self._visible_version = self.hub.devices_version

    # -- changes from the hub ------------------------------------------------------------------------
    def offer(self, deltas: Sequence[Delta] | DeltaBatch, now: float) -> None:
        """Queue the changes this client watches (call with every delta the hub emits, in order)."""
        batch = deltas if isinstance(deltas, DeltaBatch) else None
        items: Sequence[Delta] = deltas.deltas if isinstance(deltas, DeltaBatch) else deltas
        if self.closed or self.filter is None or not items:
            return
        self._offered_seq = items[-1].seq
        if self._need_snapshot:
            return  # the snapshot will carry it
        if self._visible_version != self.hub.devices_version:
            self._refresh_visible()
        visible = self._visible
        if batch is not None and visible is None:
            if self._shared is None and not self._events and not self._readings:
                self._shared = batch  # the common case: up to date, watching everything
            else:
                self._unshare()
                for delta in batch.readings.values():
                    self._readings.pop(delta.device_id, None)
                self._readings.update(batch.readings)
                self._events.extend(batch.events)
            if self._behind_since is None:
                self._behind_since = now
            if len(self._events) > self.max_pending:
                self._overflow(now)
            return
        self._unshare()
        added = False
        for delta in items:
            if visible is not None and delta.device_id not in visible:
                continue
            if delta.kind == "reading":
                self._readings.pop(delta.device_id, None)  # re-insert: dict order follows seq
                self._readings[delta.device_id] = delta
            else:
                self._events.append(delta)
            added = True
        if not added:
            return
        if self._behind_since is None:
            self._behind_since = now
        if len(self._events) > self.max_pending:
            self._overflow(now)

    def _unshare(self) -> None:
        shared = self._shared
        if shared is not None:
            self._shared = None
            self._readings.update(shared.readings)
            self._events.extend(shared.events)

    def _overflow(self, now: float) -> None:
        self.overflows += 1
        self._shared = None
        self._events.clear()
        self._readings.clear()
        self._behind_since = None
        while self._snapshot_times and now - self._snapshot_times[0] > self.snapshot_window_s:
            self._snapshot_times.popleft()
        self._snapshot_times.append(now)
        if len(self._snapshot_times) > self.max_snapshots:
            self.closed = Close(CLOSE_TOO_SLOW, "client too slow: it fell behind repeatedly")
            return
        self._need_snapshot = True

    @property
    def snapshot_due(self) -> bool:
        """The next frame is a (large) snapshot."""
        return self._need_snapshot and self.filter is not None

    @property
    def wants_send(self) -> bool:
        pending = self._control or self._need_snapshot or self._events or self._readings or self._shared
        return bool(pending) and not self.closed

    def take(self, now: float, now_epoch: float) -> list[bytes]:
        """Every frame due now, in order; the adapter sends them and calls again when woken."""
        if self.closed:
            return []
        frames: list[bytes] = list(self._control)
        self._control.clear()
        if self.filter is not None and self._need_snapshot:
            self._need_snapshot = False
            self.snapshots_sent += 1
            self._offered_seq = self.hub.seq
            frames.append(self.hub.snapshot(self.filter, now_epoch))
        elif self._shared is not None:
            frames.append(self._shared.frame())
            self._shared = None
        elif self._events or self._readings:
            frames.append(delta_frame(self._offered_seq, self._events, self._readings.values()))
            self._events.clear()
            self._readings.clear()
        self._behind_since = None
        if frames:
            self._last_sent = now
        return frames

    def tick(self, now: float, now_epoch: float) -> None:
        """Heartbeat when idle; close a client whose backlog has waited too long."""
        if self.closed:
            return
        if self._behind_since is not None and now - self._behind_since > self.max_lag_s:
            self.closed = Close(CLOSE_TOO_SLOW, f"client too slow: changes waited over {self.max_lag_s:.0f} s")
            return
        if self.filter is not None and now - self._last_sent >= self.heartbeat_s and not self.wants_send:
            self._control.append(
                b'{"type":"heartbeat","seq":' + str(self._offered_seq).encode()
                + b',"server_time":' + orjson.dumps(_iso(now_epoch)) + b"}"
            )
            self._last_sent = now

    @property
    def seq(self) -> int:
        return self._offered_seq
