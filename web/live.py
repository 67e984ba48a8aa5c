"""The live gateway: its own MQTT session feeds the hub (web/feed.py), and every websocket client gets a
`FeedSession` and a writer task of its own, so a slow screen only ever waits for itself.

The gateway loads the current state from the store once at start-up and then follows the bus: telemetry
(QoS 0 — display only), device status (QoS 1) and alert changes (QoS 1). It never polls the database for
changes; it reads the registry again only when a device it does not know shows up (rate-limited).

Fan-out: MQTT messages are decoded and applied to the hub as they arrive; the resulting deltas are handed to
the sessions in batches — at once when an alert or status changed (but at most one such fan-out per
`urgent_ms`, so a storm of 200 alert changes in a second costs each client a few dozen frames, not 200), else
every `flush_ms` — and each writer task sends whatever its session has accumulated. A writer blocked on a slow
socket leaves its session to coalesce (and eventually to ask for a snapshot, or to be closed); nobody else
waits.

A batch that every up-to-date, watch-everything client receives is encoded once, websocket header included,
and the same bytes are written to each of those clients' transports (server frames are unmasked and we do not
compress, so the bytes are identical for everyone).
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
import weakref
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import paho.mqtt.client as paho
from aiohttp import WSMsgType, web

from occ.bus import Delivery, MqttClient
from occ.codecs import Decoder
from occ.metrics import Registry
from occ.store import Store
from occ.topics import alerts_reload_topic
from web.errors import api_error
from web.feed import CLOSE_GOING_AWAY, Delta, DeltaBatch, DeviceInfo, FeedSession, Hub
from web.security import PRINCIPAL, access, origin_allowed

log = logging.getLogger(__name__)

MAX_CLIENT_MESSAGE = 4096
UNKNOWN_REFRESH_S = 10.0
SEND_TIMEOUT_S = 30.0
INLINE_BUFFER_BYTES = 16 * 1024
INLINE_FRAMES_BYTES = 32 * 1024
"""A client whose socket buffer holds less than INLINE_BUFFER_BYTES gets up to INLINE_FRAMES_BYTES written
directly by the dispatcher: well under the transport's 64 KiB high-water mark, so the write never waits, and
the common case costs no task switch. Everything else goes through the client's own writer task."""
SNAPSHOTS_IN_FLIGHT = 16
SNAPSHOT_DRAINED_BYTES = 256 * 1024
DISPATCH_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def text_frame(payload: bytes) -> bytes:
    """An unmasked, uncompressed, final websocket TEXT frame (RFC 6455 §5.2) as a server sends it."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + payload


def device_info(d: Any) -> DeviceInfo:
    return DeviceInfo(d.id, d.kind, d.name, d.area, d.lat, d.lon, d.attributes)


class LiveClient:
    """One websocket: its session, a wake-up event and the writer task that drains the session."""

    __slots__ = ("__weakref__", "backlog", "busy", "principal", "session", "task", "transport", "wake", "ws")

    def __init__(self, ws: web.WebSocketResponse, session: FeedSession, principal: str,
                 transport: asyncio.Transport | None) -> None:
        self.ws = ws
        self.session = session
        self.principal = principal
        self.transport = transport
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.busy = False
        """The writer task is sending (frames must then go through it, in order)."""
        self.backlog: list[bytes] = []
        """Frames taken by the dispatcher but too large to send inline; the writer sends them first."""

    def can_send_inline(self) -> bool:
        transport = self.transport
        return (not self.busy and not self.backlog and transport is not None and not transport.is_closing()
                and not self.ws.closed and transport.get_write_buffer_size() < INLINE_BUFFER_BYTES)


class LiveGateway:
    def __init__(
        self,
        *,
        store: Store | None,
        decoder: Decoder,
        mqtt_url: str | None,
        client_id: str = "occ-web",
        topic_prefix: str = "occ/v1",
        reading_interval_s: float = 1.0,
        flush_ms: int = 100,
        urgent_ms: int = 20,
        heartbeat_s: float = 15.0,
        max_pending: int = 2000,
        max_lag_s: float = 30.0,
        history: int = 20_000,
        registry: Registry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.decoder = decoder
        self.mqtt_url = mqtt_url
        self.client_id = client_id
        self.prefix = topic_prefix.rstrip("/")
        self.hub = Hub(reading_interval_s=reading_interval_s, history=history)
        self.flush_s = flush_ms / 1000
        self.urgent_s = urgent_ms / 1000
        self.heartbeat_s = heartbeat_s
        self.max_pending = max_pending
        self.max_lag_s = max_lag_s
        self.clock = clock
        self.clients: weakref.WeakSet[LiveClient] = weakref.WeakSet()
        self.bus: MqttClient | None = None
        self._pending: list[Delta] = []
        self._pending_since: float | None = None
        self._urgent = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_refresh = -UNKNOWN_REFRESH_S
        self._refreshing = False
        self._alert_seq: dict[str, int] = {}
        self._snapshot_gate = asyncio.Semaphore(SNAPSHOTS_IN_FLIGHT)
        registry = registry or Registry()
        self.failure: BaseException | None = None
        self.m_messages = registry.counter("occ_web_mqtt_messages_total", "MQTT messages by channel", ("channel",))
        self.m_bad = registry.counter("occ_web_mqtt_rejected_total", "MQTT messages the gateway could not use")
        self.m_frames = registry.counter("occ_web_ws_frames_total", "Frames sent to websocket clients")
        self.m_closed = registry.counter("occ_web_ws_closed_total", "Websocket clients closed by the server",
                                         ("reason",))
        self.m_dispatch = registry.histogram("occ_web_feed_dispatch_seconds",
                                             "Wall time of one fan-out of a batch to every client", DISPATCH_BUCKETS)
        self.m_delay = registry.histogram("occ_web_feed_delay_seconds", "From the first change of a batch reaching "
                                          "the gateway to its fan-out", DISPATCH_BUCKETS)
        registry.gauge("occ_web_ws_clients", "Connected websocket clients", fn=lambda: float(len(self.clients)))
        registry.gauge("occ_web_feed_seq", "Live feed sequence number", fn=lambda: float(self.hub.seq))

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.store is not None:
            await self.load()
        self._task = asyncio.create_task(self._dispatcher(), name="live-dispatch")
        self._task.add_done_callback(self._dispatcher_done)
        if self.mqtt_url:
            suffix = f"{int(time.time() * 1000) % 10**8}"
            self.bus = MqttClient(self.mqtt_url, client_id=f"{self.client_id}-{suffix}", on_message=self._on_message,
                                  clean_start=True, session_expiry_s=0)
            self.bus.subscribe(f"{self.prefix}/+/+/telemetry", qos=0)
            self.bus.subscribe(f"{self.prefix}/+/+/status", qos=1)
            self.bus.subscribe(f"{self.prefix}/_sys/alerts/#", qos=1)
            await self.bus.start(wait=False)

    async def stop(self) -> None:
        for client in list(self.clients):
            await self._close(client, CLOSE_GOING_AWAY, "server shutting down")
        if self.bus is not None:
            await self.bus.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def load(self) -> None:
        """The state at start-up: registry, latest values, statuses and open alerts (once)."""
        assert self.store is not None
        devices = await self.store.list_devices()
        self.hub.set_devices(device_info(d) for d in devices)
        self.decoder.set_devices({d.id: d for d in devices})
        await self._load_gateway_accounts()
        self.hub.load_latest((r.device_id, r.metric, r.ts.timestamp(), r.value) for r in await self.store.latest())
        self.hub.load_status((s.device_id, s.status, s.since.timestamp()) for s in await self.store.device_status())
        open_alerts = getattr(self.store, "open_alerts", None)
        if open_alerts is not None:
            self.hub.load_alerts(a.to_json() for a in await open_alerts())

    def _dispatcher_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.failure = task.exception()
            log.error("live dispatcher failed: %r (health now fails)", self.failure)

    @property
    def healthy(self) -> bool:
        return self.failure is None and (self._task is None or not self._task.done())

    @property
    def connected(self) -> bool:
        return self.bus is None or self.bus.connected.is_set()

    def request_rules_reload(self) -> bool:
        """Ask the alerts service(s) to reload their rules (QoS 1); False when the broker is not reachable now."""
        if self.bus is None or not self.bus.connected.is_set():
            return False
        info = self.bus.publish(alerts_reload_topic(self.prefix), b"{}", qos=1)
        return info.rc == paho.MQTT_ERR_SUCCESS

    # -- MQTT ----------------------------------------------------------------------------------------
    def _on_message(self, message: paho.MQTTMessage, delivery: Delivery) -> None:
        topic = message.topic
        payload = bytes(message.payload)
        now = self.clock()
        try:
            if topic.startswith(self.prefix + "/_sys/"):
                self.m_messages.inc(1, "alert")
                deltas = self._alert(payload)
                urgent = True
            else:
                decoded = self.decoder.decode(topic, payload, datetime.now(UTC))
                deltas = []
                urgent = False
                if decoded.status is not None:
                    self.m_messages.inc(1, "status")
                    s = decoded.status
                    deltas += self.hub.status(s.device_id, s.status, s.ts.timestamp())
                    urgent = bool(deltas)
                if decoded.rows:
                    self.m_messages.inc(1, "telemetry")
                    deltas += self._readings(decoded.rows, now)
                if decoded.rejects and not decoded.rows and decoded.status is None:
                    self.m_bad.inc()
                    if self._unknown_device(topic):
                        self._refresh_registry()
        except Exception:  # one bad message must never stop the feed
            self.m_bad.inc()
            log.exception("live gateway could not apply a message on %s", topic)
            return
        if deltas:
            if not self._pending:
                self._pending_since = now
            self._pending.extend(deltas)
            if urgent:
                self._urgent.set()

    def _readings(self, rows: Sequence[tuple[str, str, datetime, float, int]], now: float) -> list[Delta]:
        by_device: dict[tuple[str, float], dict[str, float]] = {}
        for device_id, metric, when, value, _quality in rows:
            by_device.setdefault((device_id, when.timestamp()), {})[metric] = value
        deltas: list[Delta] = []
        for (device_id, epoch), values in sorted(by_device.items(), key=lambda kv: kv[0][1]):
            deltas += self.hub.reading(device_id, epoch, values, now)
        return deltas

    def _alert(self, payload: bytes) -> list[Delta]:
        try:
            alert = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.m_bad.inc()
            return []
        if not isinstance(alert, dict) or "id" not in alert:
            self.m_bad.inc()
            return []
        key = str(alert["id"])
        seq = alert.get("seq")
        if isinstance(seq, int):  # delivery is at least once: drop what we already applied
            if seq <= self._alert_seq.get(key, -1):
                return []
            self._alert_seq[key] = seq
            if len(self._alert_seq) > 100_000:
                self._alert_seq.clear()
        return self.hub.alert(alert)

    async def _load_gateway_accounts(self) -> None:
        """The gateways with MQTT credentials, as ingest loads them: the live view drops what ingest would."""
        assert self.store is not None
        self.decoder.set_gateway_accounts(a.username for a in await self.store.credentials.accounts(role="gateway"))

    def _unknown_device(self, topic: str) -> bool:
        parts = topic.split("/")
        return len(parts) >= 4 and parts[-2] not in self.hub.devices and parts[-3] != "gateway"

    def _refresh_registry(self) -> None:
        now = self.clock()
        if self.store is None or self._refreshing or now - self._last_refresh < UNKNOWN_REFRESH_S:
            return
        self._last_refresh = now
        self._refreshing = True
        task = asyncio.get_running_loop().create_task(self._reload_devices())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # errors are logged inside

    async def _reload_devices(self) -> None:
        assert self.store is not None
        try:
            devices = await self.store.list_devices()
            self.hub.set_devices(device_info(d) for d in devices)
            self.decoder.set_devices({d.id: d for d in devices})
            await self._load_gateway_accounts()
        except Exception as exc:
            log.warning("could not reload the device registry: %s", exc)
        finally:
            self._refreshing = False

    # -- fan-out -------------------------------------------------------------------------------------
    async def _dispatcher(self) -> None:
        next_flush = self.clock() + self.flush_s
        last_end = -math.inf
        while True:
            timeout = max(0.0, next_flush - self.clock())
            try:
                await asyncio.wait_for(self._urgent.wait(), timeout)
            except TimeoutError:
                pass
            now = self.clock()
            hold = min(last_end + self.urgent_s, next_flush) - now
            if self._urgent.is_set() and hold > 0:
                await asyncio.sleep(hold)  # coalesce a burst of urgent changes into one fan-out
                now = self.clock()
            self._urgent.clear()
            if now >= next_flush:
                self._pending.extend(self.hub.tick(now))
                next_flush = now + self.flush_s
                self._tick_clients(now)
            await self.dispatch(now)
            last_end = self.clock()

    async def dispatch(self, now: float) -> None:
        """Hand the accumulated deltas to every session; write small frames to clients that keep up at once,
        and wake the writer task of any other client that has something to send."""
        deltas, self._pending = self._pending, []
        if deltas and self._pending_since is not None:
            self.m_delay.observe(max(0.0, now - self._pending_since))
        self._pending_since = None
        batch = DeltaBatch(deltas) if deltas else None
        shared: bytes | None = None
        shared_wire = b""
        epoch = time.time()
        started = time.perf_counter()
        sent = 0
        for client in list(self.clients):
            session = client.session
            if batch is not None:
                session.offer(batch, now)
            if session.closed is not None:
                self._schedule_close(client)
            elif session.wants_send:
                if session.snapshot_due or not client.can_send_inline():
                    client.wake.set()
                    continue
                frames = session.take(now, epoch)
                if sum(len(f) for f in frames) > INLINE_FRAMES_BYTES:
                    client.backlog.extend(frames)
                    client.wake.set()
                    continue
                transport = client.transport
                assert transport is not None  # can_send_inline checked it
                try:
                    for frame in frames:
                        if frame is shared:
                            wire = shared_wire  # the same bytes for every client watching everything
                        else:
                            wire = text_frame(frame)
                            if batch is not None and frame is batch.built:
                                shared, shared_wire = frame, wire
                        transport.write(wire)
                        sent += 1
                except (ConnectionError, RuntimeError):
                    self._drop(client)
        if sent:
            self.m_frames.inc(sent)
        if batch is not None:
            self.m_dispatch.observe(time.perf_counter() - started)

    def _tick_clients(self, now: float) -> None:
        epoch = time.time()
        for client in list(self.clients):
            client.session.tick(now, epoch)
            if client.session.closed is not None:
                self._schedule_close(client)
            elif client.session.wants_send:
                client.wake.set()

    def _schedule_close(self, client: LiveClient) -> None:
        if client in self.clients:
            self.clients.discard(client)
            closed = client.session.closed
            assert closed is not None
            task = asyncio.get_running_loop().create_task(self._close(client, closed.code, closed.reason))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _close(self, client: LiveClient, code: int, reason: str) -> None:
        self.clients.discard(client)
        self.m_closed.inc(1, reason.split(":")[0][:40])
        if code != CLOSE_GOING_AWAY:
            log.info("closing websocket client", extra={"fields": {"user": client.principal, "code": code,
                                                                   "reason": reason}})
        if client.task is not None and client.task is not asyncio.current_task():
            client.task.cancel()
        try:
            await asyncio.wait_for(client.ws.close(code=code, message=reason.encode()[:120]), 2.0)
        except (TimeoutError, ConnectionError, RuntimeError):
            if client.transport is not None:
                client.transport.abort()

    async def _send_snapshot(self, client: LiveClient, frame: bytes) -> None:
        """Snapshots are large (≈150 bytes a device): a thousand walls connecting at once would each park one
        in their socket buffer. A few go out at a time, each until the kernel has taken most of it."""
        async with self._snapshot_gate:
            await asyncio.wait_for(client.ws.send_frame(frame, WSMsgType.TEXT), SEND_TIMEOUT_S)
            transport = client.transport
            deadline = self.clock() + SEND_TIMEOUT_S
            while transport is not None and not transport.is_closing() and \
                    transport.get_write_buffer_size() > SNAPSHOT_DRAINED_BYTES and self.clock() < deadline:
                await asyncio.sleep(0.005)

    async def _writer(self, client: LiveClient) -> None:
        session = client.session
        ws = client.ws
        try:
            while True:
                await client.wake.wait()
                client.wake.clear()
                client.busy = True
                frames, client.backlog = client.backlog, []
                frames += session.take(self.clock(), time.time())
                for frame in frames:
                    if frame.startswith(b'{"type":"snapshot"'):
                        await self._send_snapshot(client, frame)
                    else:
                        await asyncio.wait_for(ws.send_frame(frame, WSMsgType.TEXT), SEND_TIMEOUT_S)
                    self.m_frames.inc()
                client.busy = False
                if session.closed is not None:
                    self._schedule_close(client)
                    return
        except (ConnectionError, TimeoutError, RuntimeError) as exc:
            # The socket is gone or stuck: drop the connection; the reader loop ends and cleans up.
            log.debug("websocket send failed for %s: %r", client.principal, exc)
            self._drop(client)

    def _drop(self, client: LiveClient) -> None:
        self.clients.discard(client)
        if client.transport is not None:
            client.transport.abort()

    # -- websocket endpoint --------------------------------------------------------------------------
    async def websocket(self, request: web.Request, allowed_origins: frozenset[str]) -> web.StreamResponse:
        if not origin_allowed(request, allowed_origins):
            raise api_error(403, "origin", "websocket from a foreign origin")
        ws = web.WebSocketResponse(max_msg_size=MAX_CLIENT_MESSAGE * 4, compress=False, heartbeat=30.0)
        await ws.prepare(request)
        principal = request[PRINCIPAL]
        session = FeedSession(self.hub, now=self.clock(), max_message_bytes=MAX_CLIENT_MESSAGE,
                              max_pending=self.max_pending, max_lag_s=self.max_lag_s, heartbeat_s=self.heartbeat_s)
        client = LiveClient(ws, session, principal.name, request.transport)
        client.task = asyncio.create_task(self._writer(client), name=f"ws-writer:{principal.name}")
        self.clients.add(client)
        await ws.send_frame(orjson.dumps({"type": "hello", "user": principal.name, "role": principal.role,
                                          "stream": self.hub.stream, "seq": self.hub.seq}), WSMsgType.TEXT)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    session.receive(msg.data, self.clock())
                elif msg.type == WSMsgType.BINARY:
                    session.receive(msg.data, self.clock())
                else:
                    break
                if session.closed is not None:
                    break
                if session.wants_send:
                    client.wake.set()
        finally:
            self.clients.discard(client)
            if client.task is not None and not client.task.done():
                client.task.cancel()
                try:
                    await client.task
                except (asyncio.CancelledError, Exception):
                    pass
            if not ws.closed:
                if session.closed is not None:
                    await self._close(client, session.closed.code, session.closed.reason)
                else:
                    await ws.close()
        return ws


@access("viewer")
async def websocket(request: web.Request) -> web.StreamResponse:
    from web.api import CONTEXT

    gateway: LiveGateway = request.app[GATEWAY]
    return await gateway.websocket(request, request.app[CONTEXT].allowed_origins)


GATEWAY: web.AppKey[LiveGateway] = web.AppKey("occ_live_gateway", LiveGateway)
