"""The asyncio adapter around `occ.mqtt.protocol`: one persistent MQTT 5 subscriber connection that reconnects.

It owns only I/O: a TCP (or TLS) connection via `loop.create_connection`, whose transport reads the socket in
large chunks (asyncio's 256 KiB per readiness event) with TCP_NODELAY set (docs/architecture.md §8; Nagle doubled p99 on
loopback); keepalive timers; reconnect with capped exponential backoff and jitter. Each chunk goes to the
protocol core, and the PUBLISH frames parsed from it reach the consumer as one list (`on_publishes`), so the
per-message cost is the parse and nothing else.

Delivery semantics match `occ.bus.MqttClient` (ingest can use either): a QoS 1 message is acknowledged only
when the consumer calls `ack(delivery)` after committing it; acks are tied to the connection that delivered
the message (`Delivery.generation`); acks made in one loop iteration leave as one socket write, in the order
they were made. `pause_reading()` stops reading the socket so TCP backpressure holds the broker; acks and
PINGREQs still go out. Buffers are bounded: what one read brings (256 KiB), one partial packet (at most the
maximum packet size) and the write buffer (`write_limit`, past which reading pauses too).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import Callable
from typing import Any

from occ.bus import BrokerAddress, Delivery
from occ.mqtt.protocol import MAX_PACKET_SIZE, Closed, ConnAck, MqttClientProtocol, Publish, State, SubAck, UnsubAck

log = logging.getLogger(__name__)

__all__ = ["Delivery", "MqttSubscriber", "Publish", "handle"]

SOCKET_BUFFER = 1 << 22
CONNECT_TIMEOUT_S = 15.0
COALESCE_BELOW = 32 * 1024
"""A read smaller than this means the socket was nearly empty: we keep up with live traffic, and the broker
writes each message as it comes, so reading at once would cost one wakeup, one parse call and one hand-over per
message or two. Waiting `read_coalesce_s` lets a few milliseconds of messages gather in the socket instead
(receive-side Nagle; ingest lingers 10 ms per batch anyway). A larger read means a backlog: no wait."""

PublishHandler = Callable[[list[Publish], int], None]
"""Called with the PUBLISH frames of one read and the connection's generation (for `Delivery` or `handle`)."""


def handle(packet_id: int, generation: int) -> int:
    """A delivery handle as a plain int, (generation << 16) | packet id: `ack` takes it like a `Delivery`, and
    building one per message costs an integer operation instead of an object (this is per message)."""
    return (generation << 16) | packet_id


class _Connection(asyncio.Protocol):
    """asyncio's protocol callbacks, forwarded to the subscriber (one object per TCP connection)."""

    def __init__(self, owner: MqttSubscriber, proto: MqttClientProtocol) -> None:
        self.owner = owner
        self.proto = proto
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.Event()
        self.write_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.owner._received(self, data)

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.proto.connection_lost(f"{exc}" if exc else "closed by the broker")
        self.lost.set()
        self.owner._lost(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.owner._apply_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.owner._apply_reading()


class MqttSubscriber:
    """A persistent-session MQTT 5 subscriber with manual acks, built on the sans-I/O core."""

    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        on_publishes: PublishHandler,
        clean_start: bool = False,
        session_expiry_s: int = 7 * 24 * 3600,
        keepalive_s: int = 30,
        receive_maximum: int = 65535,
        maximum_packet_size: int = MAX_PACKET_SIZE,
        reconnect_min_s: float = 0.2,
        reconnect_max_s: float = 10.0,
        write_limit: int = 1 << 20,
        read_coalesce_s: float = 0.002,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = BrokerAddress.parse(url)
        self.client_id = client_id
        self._on_publishes = on_publishes
        self._options: dict[str, Any] = dict(
            client_id=client_id, keepalive_s=keepalive_s, clean_start=clean_start, session_expiry_s=session_expiry_s,
            receive_maximum=receive_maximum, maximum_packet_size=maximum_packet_size,
            username=self.address.username, password=self.address.password, clock=clock,
        )
        self._clock = clock
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._write_limit = write_limit
        self._read_coalesce_s = read_coalesce_s
        self._holding = False
        self._subscriptions: dict[str, int] = {}
        self._conn: _Connection | None = None
        self._generation = 0
        self._paused = False
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._acks: list[int] = []
        self._ack_scheduled = False
        self._replies: dict[int, asyncio.Future[SubAck | UnsubAck]] = {}
        self._connack: asyncio.Future[ConnAck] | None = None
        self.connected = asyncio.Event()
        self.connects = 0
        self.session_present = False
        self.protocol_errors = 0

    # -- public API (the subset of occ.bus.MqttClient that ingest uses) -----------------------------------------
    @property
    def generation(self) -> int:
        return self._generation

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The connection task (reconnects by itself; ends only on `close()` or an unexpected error)."""
        return self._task

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now (if connected) and again on every reconnect."""
        self._subscriptions[topic] = qos
        conn = self._conn
        if conn is not None and self.connected.is_set():
            self._request(conn, conn.proto.subscribe([(topic, qos)]))

    async def unsubscribe(self, topic: str, *, timeout: float = 10.0) -> None:
        """Forget `topic` and, if connected, wait for the broker's UNSUBACK."""
        self._subscriptions.pop(topic, None)
        conn = self._conn
        if conn is None or not self.connected.is_set():
            return
        reply = self._request(conn, conn.proto.unsubscribe([topic]))
        async with asyncio.timeout(timeout):
            await _until(reply, conn.lost)

    async def start(self, *, wait: bool = True, timeout: float = 30.0) -> None:
        self._task = asyncio.create_task(self._run(), name=f"mqtt:{self.client_id}")
        self._task.add_done_callback(self._run_done)
        if wait:
            await asyncio.wait_for(self.connected.wait(), timeout)

    async def close(self, *, session_expiry_s: int | None = None, timeout: float = 1.0) -> None:
        """Send pending acks, then DISCONNECT and stop. The session stays on the broker for the CONNECT expiry,
        or for `session_expiry_s` when given (0 ends it now: a worker leaving a shared group for good)."""
        self._closing = True
        conn = self._conn
        if conn is not None and conn.transport is not None and conn.proto.state is State.CONNECTED:
            self._flush_acks()
            conn.proto.disconnect(session_expiry_s=session_expiry_s)
            self._write(conn)
            conn.transport.close()
            try:
                async with asyncio.timeout(timeout):  # let the DISCONNECT leave before the socket is torn down
                    await conn.lost.wait()
            except TimeoutError:
                pass
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._teardown()

    def ack(self, delivery: Delivery | int) -> bool:
        """Acknowledge one delivery (a `Delivery` or an int `handle`); acks made in the same loop iteration leave
        in one write, in order. False when its connection is gone (the broker redelivers it on the resumed
        session)."""
        if type(delivery) is int:
            generation, packet_id = delivery >> 16, delivery & 0xFFFF
        else:
            assert isinstance(delivery, Delivery)
            generation, packet_id = delivery.generation, delivery.mid
        if generation != self._generation or self._conn is None:
            return False
        self._acks.append(packet_id)
        if not self._ack_scheduled:
            self._ack_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_acks)
        return True

    def ack_many(self, packet_ids: list[int], generation: int) -> int:
        """Acknowledge a committed batch now, as one write; returns how many PUBACKs went out."""
        if generation != self._generation or self._conn is None:
            return 0
        self._flush_acks()
        sent = self._conn.proto.ack(packet_ids)
        self._write(self._conn)
        return sent

    def pause_reading(self) -> None:
        if not self._paused:
            self._paused = True
            self._apply_reading()

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            self._apply_reading()

    # -- connection loop ----------------------------------------------------------------------------------------
    def _run_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("MQTT connection loop for %s stopped: %r", self.client_id, task.exception())

    async def _run(self) -> None:
        delay = self._reconnect_min_s
        failing = False
        try:
            while not self._closing:
                try:
                    conn = await self._connect_once()
                except (OSError, TimeoutError, ConnectionError) as exc:
                    if not failing or delay >= self._reconnect_max_s:
                        log.warning("MQTT %s:%d unreachable: %s", self.address.host, self.address.port,
                                    str(exc) or type(exc).__name__)
                    failing = True
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, self._reconnect_max_s)
                    continue
                failing = False
                delay = self._reconnect_min_s
                await conn.lost.wait()
                if self._closing:
                    return
                await asyncio.sleep(delay * (0.5 + random.random()))
        finally:
            self._teardown()

    async def _connect_once(self) -> _Connection:
        loop = asyncio.get_running_loop()
        proto = MqttClientProtocol(**self._options)
        conn = _Connection(self, proto)
        self._generation += 1  # deliveries are tied to this TCP connection, from its first byte on
        self._connack = loop.create_future()
        ctx = self.address.ssl_context() if self.address.tls else None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await loop.create_connection(lambda: conn, self.address.host, self.address.port, ssl=ctx)
                assert conn.transport is not None
                sock = conn.transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
                conn.transport.set_write_buffer_limits(high=self._write_limit)
                self._conn = conn
                self._apply_reading()
                proto.connect()
                self._write(conn)
                connack = await _until(self._connack, conn.lost)
                if connack.reason_code >= 0x80:
                    closed = proto.closed
                    raise ConnectionRefusedError(closed.reason if closed else f"CONNACK 0x{connack.reason_code:02x}")
                self.connects += 1
                self.session_present = connack.session_present
                if self._subscriptions:
                    reply = self._request(conn, proto.subscribe(list(self._subscriptions.items())))
                    suback = await _until(reply, conn.lost)
                    if isinstance(suback, SubAck) and suback.failed:
                        log.error("MQTT subscription to %s refused by %s:%d (reason codes %s)",
                                  ", ".join(self._subscriptions), self.address.host, self.address.port,
                                  ", ".join(f"0x{c:02x}" for c in suback.reason_codes))
                        raise ConnectionRefusedError("subscription refused")
                if conn.lost.is_set():
                    closed = proto.closed
                    raise ConnectionError(closed.reason if closed else "connection closed during the handshake")
        except BaseException:
            if conn.transport is not None:
                conn.transport.abort()
            if self._conn is conn:
                self._conn = None
            raise
        if self.connects > 1:
            log.info("MQTT reconnected to %s:%d (session present: %s)", self.address.host, self.address.port,
                     self.session_present)
        self._schedule_tick(proto.tick())
        self.connected.set()
        return conn

    def _teardown(self) -> None:
        self.connected.clear()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        conn, self._conn = self._conn, None
        if conn is not None and conn.transport is not None:
            conn.transport.abort()

    # -- callbacks from _Connection -----------------------------------------------------------------------------
    def _received(self, conn: _Connection, data: bytes) -> None:
        proto = conn.proto
        publishes = proto.receive_data(data)
        if publishes:
            self._on_publishes(publishes, self._generation)
        if proto.events_pending:
            self._handle_events(conn)
        self._write(conn)
        if proto.state is State.CLOSED and conn.transport is not None:
            conn.transport.close()
        elif len(data) < COALESCE_BELOW and self._read_coalesce_s > 0 and not self._holding:
            self._holding = True
            self._apply_reading()
            asyncio.get_running_loop().call_later(self._read_coalesce_s, self._release_reads)

    def _release_reads(self) -> None:
        self._holding = False
        self._apply_reading()

    def _handle_events(self, conn: _Connection) -> None:
        for event in conn.proto.events_received():
            if isinstance(event, ConnAck):
                if self._connack is not None and not self._connack.done():
                    self._connack.set_result(event)
            elif isinstance(event, SubAck | UnsubAck):
                reply = self._replies.pop(event.packet_id, None)
                if reply is not None and not reply.done():
                    reply.set_result(event)
                elif isinstance(event, SubAck) and event.failed:
                    log.error("MQTT subscription refused by %s:%d (reason codes %s)", self.address.host,
                              self.address.port, ", ".join(f"0x{c:02x}" for c in event.reason_codes))
            elif isinstance(event, Closed) and event.error is not None:
                self.protocol_errors += 1
                log.error("MQTT protocol error from %s:%d: %s (reason code 0x%02x); reconnecting",
                          self.address.host, self.address.port, event.reason, event.reason_code)

    def _lost(self, conn: _Connection) -> None:
        if self._conn is not conn:
            return
        was_connected = self.connected.is_set()
        self._conn = None
        self.connected.clear()
        self._acks.clear()
        self._replies.clear()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        closed = conn.proto.closed
        if was_connected and not self._closing and conn.proto.failure is None:
            why = closed.reason if closed is not None else "connection closed"
            if closed is not None and closed.initiator == "server":
                why = f"server disconnected ({why})"
            log.warning("MQTT connection to %s:%d lost: %s", self.address.host, self.address.port, why)

    # -- I/O helpers --------------------------------------------------------------------------------------------
    def _request(self, conn: _Connection, packet_id: int) -> asyncio.Future[SubAck | UnsubAck]:
        """Send what the protocol queued and return a future for the reply to `packet_id`."""
        reply: asyncio.Future[SubAck | UnsubAck] = asyncio.get_running_loop().create_future()
        self._replies[packet_id] = reply
        self._write(conn)
        return reply

    def _write(self, conn: _Connection) -> None:
        data = conn.proto.data_to_send()
        if data and conn.transport is not None and not conn.transport.is_closing():
            conn.transport.write(data)

    def _flush_acks(self) -> None:
        self._ack_scheduled = False
        acks = self._acks
        conn = self._conn
        if not acks or conn is None:
            return
        self._acks = []
        conn.proto.ack(acks)
        self._write(conn)

    def _apply_reading(self) -> None:
        """Read unless the consumer paused us or the broker is not taking our writes (bounded write buffer)."""
        conn = self._conn
        if conn is None or conn.transport is None or conn.transport.is_closing():
            return
        conn.proto.reading_paused = self._paused or conn.write_paused
        pause = self._paused or conn.write_paused or self._holding
        if pause and conn.transport.is_reading():
            conn.transport.pause_reading()
        elif not pause and not conn.transport.is_reading():
            conn.transport.resume_reading()

    def _schedule_tick(self, deadline: float | None) -> None:
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        if deadline is not None:
            delay = max(0.05, deadline - self._clock())
            self._tick_handle = asyncio.get_running_loop().call_later(delay, self._on_tick)

    def _on_tick(self) -> None:
        self._tick_handle = None
        conn = self._conn
        if conn is None:
            return
        deadline = conn.proto.tick()
        self._write(conn)
        if conn.proto.state is State.CLOSED:
            self._handle_events(conn)
            if conn.transport is not None:
                conn.transport.close()
            return
        self._schedule_tick(deadline)


async def _until(future: asyncio.Future[Any], lost: asyncio.Event) -> Any:
    """The future's result, or ConnectionError if the connection is lost first."""
    lost_wait = asyncio.ensure_future(lost.wait())
    try:
        await asyncio.wait([future, lost_wait], return_when=asyncio.FIRST_COMPLETED)
    finally:
        lost_wait.cancel()
    if future.done():
        return future.result()
    raise ConnectionError("connection closed during the MQTT handshake")
