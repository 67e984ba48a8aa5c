"""The MQTT bus: paho-mqtt 2.x driven by the asyncio loop, with no threads.

Why this shape (docs/architecture.md §8): paho's per-message Python cost dominates ingest, and most of it is its
receive path reading each packet in several tiny `recv()` calls, plus thread → asyncio hand-offs.
Here paho's socket I/O runs on the loop through `add_reader`/`add_writer` (no hand-off), and `_sock_recv`
serves paho from a large userspace buffer filled by one `recv()` per readiness event.

Delivery semantics for consumers (`manual_ack=True`): a message is acknowledged only when the consumer calls
`ack(delivery)` after its data is committed. Acks are tied to the connection that delivered the message: after
a reconnect, acks for the old connection are dropped (the broker redelivers those messages on the persistent
session, and writes are idempotent). `pause_reading()` stops reading the socket so a full queue slows the
broker (TCP backpressure) while acks still go out.

Outgoing: at most `max_outgoing` packets wait to be written and at most `max_outgoing` QoS ≥ 1 messages wait
for their PUBACK; beyond that `publish` returns `MQTT_ERR_QUEUE_SIZE` (paho's code) and queues nothing, so a
publisher faster than the broker is slowed instead of growing memory. A consumer's acks never exceed what it
holds unacknowledged, which its own bound limits.

Leaving for good (draining a shared-subscription member): `await unsubscribe(topic)` waits for the UNSUBACK,
and `close(session_expiry_s=0)` ends the session at the broker (MQTT 5 §3.14.2.2.2) once the DISCONNECT,
behind every ack queued before it, has been written.

Reconnect discipline (issue 11 item 10): every failed attempt, refused CONNACKs included, waits a capped
exponential backoff with jitter (occ.backoff); the log says what changed (unreachable, refused, connected,
lost) once per change, never once per attempt. `close()` ends the client in any state, mid-connect included:
the blocking TCP connect runs on a daemon thread that nobody waits for.
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from occ.backoff import Backoff
from occ.errors import BrokerUnavailable

log = logging.getLogger(__name__)

READ_CHUNK = 1 << 18
SOCKET_BUFFER = 1 << 22


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a repr, a log line or a traceback
    tls: bool = False
    ca_file: str | None = None
    """PEM file of the CA that signed the broker's certificate (`?cafile=` in the URL); None: the system's CAs."""

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """`mqtt://user:pass@host:port` (or `mqtts://…?cafile=/path/ca.pem` for TLS); default ports 1883 / 8883."""
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"unsupported MQTT URL scheme {parts.scheme!r} in {url!r}")
        tls = parts.scheme in ("mqtts", "ssl")
        query = parse_qs(parts.query)
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (8883 if tls else 1883),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
            ca_file=query["cafile"][-1] if query.get("cafile") else None,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """Verifies the broker's certificate and host name against `ca_file` (or the system's CAs)."""
        return ssl.create_default_context(cafile=self.ca_file)


@dataclass(frozen=True, slots=True)
class Delivery:
    """Identifies one received QoS ≥ 1 message on one connection, for a later `ack`."""

    mid: int
    qos: int
    generation: int


class _BufferedClient(paho.Client):
    """paho Client tuned for a high message rate (profile in bench/README.md):

    * reads come from one large buffer instead of a syscall per packet fragment, and at most one `recv()`
      happens per readiness callback, so a saturated socket cannot hold the event loop for seconds;
    * messages go straight to one handler, skipping paho's per-message topic matcher and its lock (we never
      register per-topic callbacks).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = memoryview(b"")
        self._rpos = 0
        self._may_recv = True
        self.direct_handler: Callable[[paho.MQTTMessage], None] | None = None

    def buffered(self) -> int:
        return len(self._rbuf) - self._rpos

    def allow_recv(self) -> None:
        self._may_recv = True

    def _sock_recv(self, bufsize: int) -> bytes:
        available = len(self._rbuf) - self._rpos
        if available == 0:
            if self._sock is None:
                raise ConnectionError("socket closed")
            if not self._may_recv:
                raise BlockingIOError  # paho keeps its partial packet; the next callback continues it
            self._may_recv = False
            try:
                data = self._sock.recv(READ_CHUNK)  # BlockingIOError propagates to paho as "try again"
            except ssl.SSLWantReadError:  # TLS: a record not complete yet is "try again" too (as in paho's own)
                self._may_recv = True
                raise BlockingIOError from None
            if not data:
                return b""
            self._rbuf = memoryview(data)
            self._rpos = 0
            available = len(data)
        take = bufsize if bufsize < available else available
        start = self._rpos
        self._rpos = start + take
        return self._rbuf[start : start + take].tobytes()

    def _reset_read_buffer(self) -> None:
        self._rbuf = memoryview(b"")
        self._rpos = 0
        self._may_recv = True

    def _handle_on_message(self, message: paho.MQTTMessage) -> None:
        handler = self.direct_handler
        if handler is None:
            super()._handle_on_message(message)
        else:
            handler(message)


MessageHandler = Callable[[paho.MQTTMessage, Delivery], None]


class MqttClient:
    """One MQTT 5 connection with reconnect, persistent session, re-subscribe and manual acks."""

    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        on_message: MessageHandler | None = None,
        clean_start: bool = False,
        session_expiry_s: int = 7 * 24 * 3600,
        keepalive_s: int = 30,
        manual_ack: bool = False,
        protocol: int = paho.MQTTv5,
        will: tuple[str, bytes, int, bool] | None = None,
        reconnect_max_s: float = 10.0,
        max_outgoing: int = 10_000,
        reconnect_min_s: float = 0.1,
    ) -> None:
        self.address = BrokerAddress.parse(url)
        self.client_id = client_id
        self._on_message = on_message
        self._protocol = protocol
        self._clean_start = clean_start
        self._session_expiry_s = session_expiry_s
        self._keepalive_s = keepalive_s
        self._manual_ack = manual_ack
        self._max_outgoing = max_outgoing
        self._unsubscribes: dict[int, asyncio.Future[None]] = {}
        self._backoff = Backoff(reconnect_min_s, reconnect_max_s)
        self._link = "new"
        """What the log last said about the link: new, unreachable:<error>, refused:<reason>, up, lost."""
        self.last_error: str | None = None
        self._subscriptions: dict[str, int] = {}
        self._generation = 0
        self._paused = False
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._misc_handle: asyncio.TimerHandle | None = None
        self._disconnected = asyncio.Event()
        self.connected = asyncio.Event()
        self.connects = 0
        self.session_present = False
        self._client = self._make_client(will)

    # -- construction -------------------------------------------------------------------------------
    def _make_client(self, will: tuple[str, bytes, int, bool] | None) -> _BufferedClient:
        kwargs: dict[str, Any] = {"client_id": self.client_id, "protocol": self._protocol,
                                  "manual_ack": self._manual_ack}
        if self._protocol != paho.MQTTv5:
            kwargs["clean_session"] = self._clean_start
        client = _BufferedClient(paho.CallbackAPIVersion.VERSION2, **kwargs)
        if logging.getLogger("paho").isEnabledFor(logging.DEBUG):
            client.enable_logger(logging.getLogger("paho"))  # paho logs every packet: only when asked
        if self.address.username:
            client.username_pw_set(self.address.username, self.address.password)
        if self.address.tls:
            client.tls_set_context(self.address.ssl_context())
        if will:
            client.will_set(will[0], will[1], qos=will[2], retain=will[3])
        client.max_queued_messages_set(self._max_outgoing)
        client.max_inflight_messages_set(65535)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_unsubscribe = self._handle_unsubscribe
        client.on_message = self._handle_message
        client.direct_handler = self._handle_direct
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write
        return client

    # -- public API ---------------------------------------------------------------------------------
    @property
    def generation(self) -> int:
        return self._generation

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now (if connected) and again after every reconnect."""
        self._subscriptions[topic] = qos
        if self.connected.is_set():
            self._send_subscribe({topic: qos})

    async def unsubscribe(self, topic: str, *, timeout: float = 10.0) -> None:
        """Unsubscribe (and not again after a reconnect); returns once the broker acknowledged it, or at once
        when not connected (nothing to tell the broker now; the subscription is gone for the next connect)."""
        self._subscriptions.pop(topic, None)
        if not self.connected.is_set():
            return
        rc, mid = self._client.unsubscribe(topic)
        if rc != paho.MQTT_ERR_SUCCESS or mid is None:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unsubscribes[mid] = future
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        finally:
            self._unsubscribes.pop(mid, None)

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The connection task, for a supervisor to watch (it ends only when closed, or by crashing)."""
        return self._task

    @property
    def outgoing(self) -> int:
        """Packets queued and not yet written to the socket."""
        return len(self._client._out_packet)

    async def start(self, *, wait: bool = True, timeout: float = 30.0) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name=f"mqtt:{self.client_id}")
        if wait:
            try:
                await asyncio.wait_for(self.connected.wait(), timeout)
            except TimeoutError:
                raise BrokerUnavailable(str(self.address), self.last_error or "no answer", timeout) from None

    async def close(self, *, session_expiry_s: int | None = None, timeout: float = 5.0) -> None:
        """Disconnect. With `session_expiry_s` (MQTT 5), also set the session's expiry: 0 ends it now.

        The DISCONNECT goes out behind everything already queued (acks included); with `session_expiry_s` this
        waits (up to `timeout`) until it has been written, since a session that merely lost its connection
        keeps holding its messages."""
        self._closing = True
        if self.connected.is_set():
            properties = None
            if session_expiry_s is not None and self._protocol == paho.MQTTv5:
                properties = Properties(PacketTypes.DISCONNECT)
                properties.SessionExpiryInterval = session_expiry_s
            self._client.disconnect(properties=properties)
            self._flush_writes()
            if properties is not None:
                try:
                    await asyncio.wait_for(self._disconnected.wait(), timeout)
                except TimeoutError:
                    log.warning("MQTT DISCONNECT not written within %.0f s", timeout)
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._teardown_socket()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> paho.MQTTMessageInfo:
        """Queue a message; `rc` is `MQTT_ERR_QUEUE_SIZE` (and nothing is queued) at the outgoing bound."""
        if len(self._client._out_packet) >= self._max_outgoing:
            info = paho.MQTTMessageInfo(0)
            info.rc = paho.MQTT_ERR_QUEUE_SIZE
            return info
        return self._client.publish(topic, payload, qos=qos, retain=retain)

    def ack(self, delivery: Delivery) -> bool:
        """Acknowledge a delivery; False when its connection is gone (the broker will redeliver it)."""
        if delivery.generation != self._generation or not self.connected.is_set():
            return False
        self._client.ack(delivery.mid, delivery.qos)
        return True

    def pause_reading(self) -> None:
        if not self._paused:
            self._paused = True
            if self._sock is not None and self._loop is not None:
                self._loop.remove_reader(self._sock)

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            if self._sock is not None and self._loop is not None:
                self._loop.add_reader(self._sock, self._on_readable)
                # Data already in our buffer will not wake the selector again.
                if self._client.buffered():
                    self._loop.call_soon(self._on_readable)

    @property
    def paused(self) -> bool:
        return self._paused

    # -- connection loop ----------------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._closing:
            self._disconnected.clear()
            try:
                await self._connect_once()
            except (OSError, paho.WebsocketConnectionError, ssl.SSLError, ValueError) as exc:
                self.last_error = str(exc) or type(exc).__name__
                delay = self._backoff.next()
                self._set_link(f"unreachable:{type(exc).__name__}:{getattr(exc, 'errno', '')}",
                               "MQTT %s:%d unreachable: %s; retrying with backoff (up to %.0f s)",
                               self.address.host, self.address.port, self.last_error, self._backoff.cap)
                await asyncio.sleep(delay)
                continue
            await self._disconnected.wait()
            if self._closing:
                return
            # Refused at CONNACK or lost: back off either way. A connection that lived resets the backoff in
            # _handle_connect, so one that was up for hours retries at once.
            await asyncio.sleep(self._backoff.next())

    def _set_link(self, state: str, message: str, *args: Any, level: int = logging.WARNING) -> None:
        """Log `message` only when the link's state changes (one line per outage, not one per attempt)."""
        if state != self._link:
            self._link = state
            log.log(level, message, *args)

    async def _connect_once(self) -> None:
        properties = None
        if self._protocol == paho.MQTTv5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self._session_expiry_s
            properties.ReceiveMaximum = 65535
        self._client._reset_read_buffer()
        assert self._loop is not None
        done: asyncio.Future[None] = self._loop.create_future()
        kwargs = dict(
            keepalive=self._keepalive_s,
            clean_start=self._clean_start if self._protocol == paho.MQTTv5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        # The TCP connect blocks; keep it off the loop, on a daemon thread so that nothing (not even interpreter
        # exit) waits for a connect to a host that does not answer.
        threading.Thread(target=self._connect_blocking, args=(done, kwargs), daemon=True,
                         name=f"mqtt-connect:{self.client_id}").start()
        await done
        # connect() ran on another thread; register the socket with the loop here.
        sock = self._client.socket()
        if sock is not None and self._sock is None:
            self._socket_open(self._client, None, sock)
        if self._client.want_write():
            self._register_write(self._client, None, sock)
        self._schedule_misc()

    def _connect_blocking(self, done: asyncio.Future[None], kwargs: dict[str, Any]) -> None:
        error: BaseException | None = None
        try:
            self._client.connect(self.address.host, self.address.port, **kwargs)
        except BaseException as exc:
            error = exc

        def settle() -> None:
            if done.cancelled() or self._closing:
                self._abandon_socket()
            elif error is not None:
                done.set_exception(error)
            else:
                done.set_result(None)

        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop is closed: nobody waits for this connection any more
            self._abandon_socket()

    def _abandon_socket(self) -> None:
        sock = self._client.socket()
        if sock is not None:
            sock.close()

    def _schedule_misc(self) -> None:
        assert self._loop is not None
        if self._misc_handle:
            self._misc_handle.cancel()
        self._misc_handle = self._loop.call_later(1.0, self._on_misc)

    def _on_misc(self) -> None:
        if self._sock is not None:
            if self._paused and self._input_waiting():
                # Reading is paused on purpose (backpressure), so paho sees no bytes arrive and would close a
                # healthy connection after two keepalive periods (a database outage longer than ~60 s).
                # Bytes waiting unread prove the broker is alive; paho still sends its PINGREQs.
                client = self._client
                with client._msgtime_mutex:
                    client._last_bytes_received = paho.time_func()
            self._client.loop_misc()
            self._misc_handle = self._loop.call_later(1.0, self._on_misc) if self._loop else None

    # -- paho callbacks (all on the loop thread, except socket_open during connect) -----------------
    def _socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._loop is None or sock is None or self._closing:
            return
        raw: socket.socket = sock
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        except OSError:
            pass
        if self._in_loop_thread():
            self._attach(raw)
        else:
            try:
                self._loop.call_soon_threadsafe(self._attach, raw)
            except RuntimeError:  # the loop closed while the connect was in flight
                pass

    def _in_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _attach(self, sock: socket.socket) -> None:
        if self._sock is sock or self._loop is None:
            return
        self._sock = sock
        if not self._paused:
            self._loop.add_reader(sock, self._on_readable)

    def _socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._teardown_socket()

    def _teardown_socket(self) -> None:
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock)
            self._loop.remove_writer(self._sock)
        self._sock = None
        if self._misc_handle:
            self._misc_handle.cancel()
            self._misc_handle = None

    def _register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._loop is None:
            return
        if self._in_loop_thread():
            if self._sock is not None:
                self._loop.add_writer(self._sock, self._on_writable)
        else:
            try:
                self._loop.call_soon_threadsafe(self._register_write, client, userdata, sock)
            except RuntimeError:  # the loop closed while the connect was in flight
                pass

    def _unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._loop is not None and self._sock is not None and self._in_loop_thread():
            self._loop.remove_writer(self._sock)

    def _input_waiting(self) -> bool:
        """True when received bytes wait to be read (in our buffer or the socket), without reading them."""
        sock = self._sock
        if self._client.buffered():
            return True
        if sock is None:
            return False
        try:
            if isinstance(sock, ssl.SSLSocket):
                return bool(sock.pending()) or bool(select.select([sock], [], [], 0)[0])
            return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except OSError:  # BlockingIOError: nothing waiting
            return False

    def _on_readable(self) -> None:
        client = self._client
        client.allow_recv()
        # Drain everything one recv() brought in, unless a consumer paused us in between.
        while True:
            rc = client.loop_read()
            if rc != paho.MQTT_ERR_SUCCESS or self._paused or self._sock is None or not client.buffered():
                break

    def _on_writable(self) -> None:
        self._client.loop_write()

    def _flush_writes(self) -> None:
        if self._sock is not None:
            self._client.loop_write()

    def _handle_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if getattr(reason, "is_failure", False):
            self.last_error = f"refused: {reason}"
            self._set_link(f"refused:{reason}", "MQTT connection refused by %s:%d: %s; retrying with backoff",
                           self.address.host, self.address.port, reason, level=logging.ERROR)
            return
        self._generation += 1
        self.connects += 1
        self._backoff.reset()
        self.last_error = None
        self.session_present = bool(getattr(flags, "session_present", False))
        if self._link not in ("new", "up"):
            log.info("MQTT %s to %s:%d (session present: %s)", "reconnected" if self.connects > 1 else "connected",
                     self.address.host, self.address.port, self.session_present)
        self._link = "up"
        if self._subscriptions:
            self._send_subscribe(self._subscriptions)
        self.connected.set()

    def _send_subscribe(self, topics: dict[str, int]) -> None:
        if self._protocol == paho.MQTTv5:
            # Retain handling 1: retained messages only for a new subscription, not on every reconnect.
            entries: Sequence[tuple[str, Any]] = [
                (t, SubscribeOptions(qos=q, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB))
                for t, q in topics.items()
            ]
            self._client.subscribe(list(entries))
        else:
            self._client.subscribe([(t, q) for t, q in topics.items()])

    def _handle_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        self._teardown_socket()
        if was_connected and not self._closing:
            self.last_error = f"connection lost: {reason}"
            self._set_link("lost", "MQTT connection to %s:%d lost: %s", self.address.host, self.address.port, reason)
        self._disconnected.set()

    def _handle_unsubscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        future = self._unsubscribes.get(mid)
        if future is not None and not future.done():
            future.set_result(None)

    def _handle_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._handle_direct(message)

    def _handle_direct(self, message: paho.MQTTMessage) -> None:
        if self._on_message is not None:
            self._on_message(message, Delivery(message.mid, message.qos, self._generation))
