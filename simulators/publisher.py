"""Thin output adapters: MQTT (a pool of connections, one per device, or a gateway) and JSON-lines files.

Connection modes (the trade-off, issue 3 §6):

* `pool` (default): devices are spread over a few connections (4 by default), each with its own client id
  and a Last Will (`offline`, retained) on `occ/sim/{client_id}/status`. Every device still gets its
  retained `online`/`offline` status, so the wall display and the alert rules see per-device state; what is
  lost is the broker firing a *per-device* Last Will when the simulator dies — then only the pool's Will fires,
  and the platform notices the devices through the deadman rules (no data for N × report interval). Cheap:
  10,000 devices cost 4 sockets.
* `device`: one MQTT connection per device, client id = device id, Will = `offline` on the device's status
  topic; a scenario outage aborts the socket so the broker itself publishes the Will, exactly as in the
  field. Costs a socket, a broker session and a keepalive per device (mind `ulimit -n` and the broker's
  connection limit at 10,000 devices).
* `gateway`: one connection for everything; telemetry goes out as gateway messages
  `{device_id: [{ts, values}]}` on `occ/v1/gateway/{gateway_id}/telemetry`, status and events on the device
  topics. The Will is the gateway's status.

The connections' own status (`online` on connect, `offline` as Will or on a clean stop) lives outside the device
tree, under `occ/sim/` (`link_status_prefix`), because ingest stores only registered devices and would
dead-letter the simulator's connections; set it to `occ/v1/gateway` when those ids are registered as devices of
kind `gateway`.

Transports: `raw` (default) builds PUBLISH packets itself (`simulators.wire`) and writes a whole batch with one
`send()`; `paho` goes through paho-mqtt driven without its network thread. Either way one selector services all
connections (acks, keepalive, reconnect with backoff, logged once per outage), and every queue is bounded: QoS 1
messages wait in an in-flight table of at most 1,000 per connection, unwritten bytes in a 4 MB buffer; when
either is full `publish` services the network until there is room, so a slow broker slows the simulator
instead of growing its memory.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import selectors
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import orjson
import paho.mqtt.client as mqtt

from occ.bus import BrokerAddress
from occ.errors import ServiceError
from simulators import wire
from simulators.encode import gateway_payload
from simulators.engine import Message

log = logging.getLogger(__name__)

MODES = ("pool", "device", "gateway")
PROTOCOLS = ("3.1.1", "5")
TRANSPORTS = ("raw", "paho")


def parse_mqtt_url(url: str, username: str | None = None, password: str | None = None) -> BrokerAddress:
    """mqtt://[user[:pass]@]host[:port] or mqtts://…; explicit credentials override the URL's."""
    address = BrokerAddress.parse(url)
    return dataclasses.replace(
        address,
        username=username if username is not None else address.username,
        password=password if password is not None else address.password,
    )


SESSION_TAKEN_OVER = 0x8E
"""MQTT 5 DISCONNECT reason: another connection with the same client id took this one's place."""
CLASH_WINDOW_S = 10.0
CLASH_REPEATS = 3
"""MQTT 3.1.1 has no reason code: a connection the broker closes this soon after it was accepted, this many
times in a row, is taken for a client id clash (two simulators with one id kick each other off in a loop)."""


class LinkBase:
    """What MqttOutput needs of one MQTT connection; `RawLink` and `PahoLink` implement it."""

    client_id: str
    connected: bool
    wanted: bool  # False while a scenario keeps this device off the network
    error: str | None
    failures: int
    next_attempt: float
    lost_logged: bool

    def _init_state(self, client_id: str, will: tuple[str, bytes] | None,
                    online: tuple[str, bytes] | None) -> None:
        self.client_id = client_id
        self.will = will
        self.online_message = online
        self.connected = False
        self.wanted = True
        self.error = None
        self.failures = 0
        self.next_attempt = 0.0
        self.lost_logged = False
        self._drop_logged = False
        self.clear_status_on_close = False
        """Delete the retained link status on a clean stop (per-run client ids would otherwise pile up)."""
        self.connected_at = 0.0
        self.quick_kicks = 0
        self.clash_reported = False

    def _up(self) -> None:
        self.connected = True
        self.connected_at = time.monotonic()
        self.failures = 0
        self._drop_logged = False
        if self.lost_logged:
            if not self.clash_reported:
                log.warning("MQTT link %s recovered", self.client_id)
            self.lost_logged = False

    def _down(self, reason: object, *, by_broker: bool = False, taken_over: bool = False) -> None:
        """The connection ended. `by_broker`: the broker closed it (not a network error or our own doing);
        `taken_over`: it said why, MQTT 5 reason 0x8E (session taken over)."""
        was = self.connected
        self.connected = False
        if not (was and self.wanted):
            return
        if taken_over or (by_broker and time.monotonic() - self.connected_at < CLASH_WINDOW_S):
            self.quick_kicks += 1
        else:
            self.quick_kicks = 0
        if not self.clash_reported and (taken_over or self.quick_kicks >= CLASH_REPEATS):
            # Reported once; the loop of lost/recovered lines it would cause says nothing more (issue 9).
            log.error("MQTT client id %s is in use by another client: the broker %s. Give each simulator its own "
                      "--client-prefix (the default is unique per run)", self.client_id,
                      "handed its session to the other connection" if taken_over
                      else f"closed this connection {self.quick_kicks} times right after accepting it")
            self.clash_reported = True
        if not self.lost_logged:
            if not self.clash_reported:
                log.warning("MQTT link %s lost (%s); reconnecting", self.client_id, reason)
            self.lost_logged = True

    def open(self) -> None:
        """Connect (TCP + CONNECT sent; CONNACK arrives through handle_read). Raises OSError."""
        raise NotImplementedError

    def fileno(self) -> int | None:
        raise NotImplementedError

    def handle_read(self) -> None:
        raise NotImplementedError

    def handle_write(self) -> None:
        raise NotImplementedError

    def want_write(self) -> bool:
        raise NotImplementedError

    def tick(self, now: float) -> None:
        """Keepalive and timeouts."""
        raise NotImplementedError

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        """Queue a message; False when the link's bounded queue is full (pump, then retry)."""
        raise NotImplementedError

    def backlog(self) -> int:
        """Messages not yet written or (QoS 1) not yet acknowledged."""
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the connection without DISCONNECT, so the broker publishes the Last Will."""
        raise NotImplementedError

    def close(self) -> None:
        """Clean disconnect; the Will is not fired, so `offline` is said on its topic first."""
        raise NotImplementedError


class RawLink(LinkBase):
    """A lean publisher connection: PUBLISH packets are built by `simulators.wire` into one buffer and written
    with one `send()` per batch; PUBACKs are matched by packet id. QoS 1 messages stay in a bounded in-flight
    table until acknowledged and are resent (DUP) after a reconnect; QoS 0 messages still unwritten when a
    connection drops are lost, as QoS 0 allows."""

    def __init__(self, address: BrokerAddress, client_id: str, *, will: tuple[str, bytes] | None,
                 online: tuple[str, bytes] | None = None, keepalive: int = 60, max_inflight: int = 1000,
                 max_buffer: int = 4 << 20, protocol: str = "3.1.1") -> None:
        self._init_state(client_id, will, online)
        self.address = address
        self.keepalive = keepalive
        self.max_inflight = max_inflight
        self.max_buffer = max_buffer
        self.v5 = protocol == "5"
        self.sock: socket.socket | None = None
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.inflight: dict[int, bytes] = {}
        self._next_id = 1
        self._topics: dict[str, bytes] = {}
        self._last_out = 0.0
        self._ping_sent = 0.0
        self.rejected = 0
        self.dropped = 0  # QoS 0 messages published while the connection was down
        self._drop_logged = False

    def open(self) -> None:
        self.error = None
        host, port = self.address.host, self.address.port
        sock = socket.create_connection((host, port), timeout=10.0)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.address.tls:
                sock = self.address.ssl_context().wrap_socket(sock, server_hostname=host)
            sock.setblocking(False)
        except BaseException:
            sock.close()  # an error path must not leave the socket to the garbage collector (issue 11 item 14)
            raise
        self.sock = sock
        self.rbuf.clear()
        will = (self.will[0], self.will[1], 1, True) if self.will else None
        packet = wire.connect(self.client_id, keepalive=self.keepalive, v5=self.v5, will=will,
                              username=self.address.username, password=self.address.password)
        # unacknowledged QoS 1 messages go again after the new CONNECT; unwritten QoS 0 ones are dropped
        self.wbuf = bytearray(packet)
        for held in self.inflight.values():
            self.wbuf += bytes((held[0] | wire.DUP_FLAG,)) + held[1:]
        self._ping_sent = 0.0
        self._last_out = time.monotonic()
        self.handle_write()

    def fileno(self) -> int | None:
        return self.sock.fileno() if self.sock is not None else None

    def _lost(self, reason: object, *, by_broker: bool = False, taken_over: bool = False) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self._down(reason, by_broker=by_broker, taken_over=taken_over)

    def handle_read(self) -> None:
        if self.sock is None:
            return
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError as exc:
            self._lost(exc, by_broker=isinstance(exc, ConnectionResetError))
            return
        if not data:
            self._lost("closed by broker", by_broker=True)
            return
        self.rbuf += data
        try:
            for first, body in wire.packets(self.rbuf):
                kind = first & 0xF0
                if kind == wire.PUBACK:
                    pid = (body[0] << 8) | body[1]
                    self.inflight.pop(pid, None)
                    if self.v5 and len(body) > 2 and body[2] >= 0x80:
                        self.rejected += 1
                        if self.rejected == 1:
                            log.warning("broker refused a message from %s (reason 0x%02x)", self.client_id, body[2])
                elif kind == wire.PINGRESP:
                    self._ping_sent = 0.0
                elif kind == wire.CONNACK:
                    code = body[1] if len(body) > 1 else 0xFF
                    if code:
                        why = wire.CONNACK_REASONS_311.get(code, f"reason 0x{code:02x}")
                        self.error = f"broker refused connection: {why}"
                        self._lost(self.error)
                        return
                    self._up()
                    if self.online_message is not None:
                        self.publish(self.online_message[0], self.online_message[1], 1, True)
                elif kind == wire.DISCONNECT:
                    code = body[0] if body else 0
                    self._lost(f"DISCONNECT from broker (reason 0x{code:02x})", by_broker=True,
                               taken_over=code == SESSION_TAKEN_OVER)
                    return
        except ValueError as exc:
            self._lost(exc)

    def handle_write(self) -> None:
        if self.sock is None or not self.wbuf:
            return
        try:
            sent = self.sock.send(self.wbuf)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        del self.wbuf[:sent]
        self._last_out = time.monotonic()

    def want_write(self) -> bool:
        return bool(self.wbuf) and self.sock is not None

    def tick(self, now: float) -> None:
        if self.sock is None or not self.connected:
            return
        if self._ping_sent and now - self._ping_sent > self.keepalive:
            self._lost("no PINGRESP within the keepalive")
        elif not self._ping_sent and now - self._last_out >= self.keepalive / 2:
            self.wbuf += wire.PINGREQ_PACKET
            self._ping_sent = now
            self.handle_write()

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        field = self._topics.get(topic)
        if field is None:
            field = wire.topic_field(topic)
            if len(self._topics) < 100_000:
                self._topics[topic] = field
        if qos:
            if len(self.inflight) >= self.max_inflight:
                return False
            pid = self._next_id
            while pid in self.inflight:
                pid = pid % 65535 + 1
            self._next_id = pid % 65535 + 1
            packet = wire.publish(field, payload, qos, retain, pid, self.v5)
            self.inflight[pid] = packet
            if self.sock is not None:
                self.wbuf += packet
        else:
            if len(self.wbuf) >= self.max_buffer:
                self.handle_write()
                if len(self.wbuf) >= self.max_buffer:
                    return False
            if self.sock is not None:
                self.wbuf += wire.publish(field, payload, 0, retain, 0, self.v5)
            else:
                self.dropped += 1
                if not self._drop_logged:
                    log.warning("MQTT link %s is down: QoS 0 messages are dropped until it reconnects",
                                self.client_id)
                    self._drop_logged = True
        return True

    def backlog(self) -> int:
        return len(self.inflight) + (1 if self.wbuf and self.sock is not None else 0)

    def abort(self) -> None:
        self.wanted = False
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._lost("aborted")
        self.inflight.clear()
        self.wbuf.clear()

    def close(self) -> None:
        self.wanted = False
        if self.sock is not None and self.connected:
            if self.will is not None:
                self.publish(self.will[0], self.will[1], 1, not self.clear_status_on_close)
                if self.clear_status_on_close:
                    self.publish(self.will[0], b"", 1, True)  # an empty retained message deletes the retained one
            self.wbuf += wire.DISCONNECT_PACKET
            deadline = time.monotonic() + 2.0
            while self.wbuf and self.sock is not None and time.monotonic() < deadline:
                self.handle_write()
                if self.wbuf:
                    time.sleep(0.005)
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.connected = False


class PahoLink(LinkBase):
    """The same connection through paho-mqtt, driven without its network thread (`--transport paho`)."""

    def __init__(self, address: BrokerAddress, client_id: str, *, will: tuple[str, bytes] | None,
                 online: tuple[str, bytes] | None = None, keepalive: int = 60, max_inflight: int = 1000,
                 max_queued: int = 20000, protocol: str = "3.1.1") -> None:
        self._init_state(client_id, will, online)
        self.address = address
        self.v5 = protocol == "5"
        if self.v5:
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        else:
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
                                 protocol=mqtt.MQTTv311)
        if address.username is not None:
            client.username_pw_set(address.username, address.password)
        if address.tls:
            client.tls_set_context(address.ssl_context())
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
        client.max_inflight_messages_set(max_inflight)
        client.max_queued_messages_set(max_queued)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self.client = client
        self.keepalive = keepalive
        self._opened = False

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.error = f"broker refused connection: {reason}"
            return
        self._up()
        if self.online_message is not None:
            client.publish(self.online_message[0], self.online_message[1], qos=1, retain=True)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        code = getattr(reason, "value", None)
        self._down(reason, by_broker=self.wanted and code != 0, taken_over=code == SESSION_TAKEN_OVER)

    def open(self) -> None:
        self.error = None
        if self._opened:
            self.client.reconnect()
        elif self.v5:
            self.client.connect(self.address.host, self.address.port, keepalive=self.keepalive, clean_start=True)
        else:
            self.client.connect(self.address.host, self.address.port, keepalive=self.keepalive)
        self._opened = True
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def fileno(self) -> int | None:
        sock = self.client.socket()
        return sock.fileno() if sock is not None else None

    def handle_read(self) -> None:
        self.client.loop_read()

    def handle_write(self) -> None:
        self.client.loop_write()

    def want_write(self) -> bool:
        return self.client.want_write()

    def tick(self, now: float) -> None:
        if self.client.socket() is not None:
            self.client.loop_misc()

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        return self.client.publish(topic, payload, qos, retain).rc != mqtt.MQTT_ERR_QUEUE_SIZE

    def backlog(self) -> int:
        c = self.client
        return len(getattr(c, "_out_messages", ())) + len(getattr(c, "_out_packet", ()))

    def abort(self) -> None:
        self.wanted = False
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.wanted = False
        if self.connected:
            if self.will is not None:
                self.client.publish(self.will[0], self.will[1], qos=1, retain=not self.clear_status_on_close)
                if self.clear_status_on_close:
                    self.client.publish(self.will[0], b"", qos=1, retain=True)
            self.client.disconnect()
        self.connected = False


def make_link(transport: str, address: BrokerAddress, client_id: str, **options: Any) -> LinkBase:
    if transport == "paho":
        return PahoLink(address, client_id, **options)
    if transport == "raw":
        options.pop("max_queued", None)
        return RawLink(address, client_id, **options)
    raise ValueError(f"transport must be one of {TRANSPORTS}")


class MqttOutput:
    """Routes simulator messages to MQTT connections (see the module docstring for the modes)."""

    def __init__(
        self,
        address: BrokerAddress,
        *,
        mode: str = "pool",
        connections: int = 4,
        client_prefix: str = "occ-sim",
        topic_prefix: str = "occ/v1",
        device_ids: Sequence[str] = (),
        device_status_topics: Sequence[str] = (),
        keepalive: int = 60,
        max_queued: int = 20000,
        gateway_batch: int = 200,
        protocol: str = "3.1.1",
        transport: str = "raw",
        link_status_prefix: str = "occ/sim",
        gateway_id: str | None = None,
        per_run_ids: bool = False,
        credentials: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        """`per_run_ids`: the client ids are unique to this run, so a clean stop deletes the connections'
        retained status instead of leaving `offline` behind for every run (a crash still leaves its Will).
        `gateway_id` (default: the client prefix) names the gateway in gateway mode. `credentials` (id →
        (username, password), issue 7): in device mode each device connects with its own, in gateway mode the
        gateway with its own; a connection without an entry uses the address's."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.address = address
        self.mode = mode
        self.topic_prefix = topic_prefix
        self.selector = selectors.DefaultSelector()
        self.links: list[LinkBase] = []
        self.gateway_batch = gateway_batch
        self._registered: dict[int, LinkBase] = {}
        self._writers: set[LinkBase] = set()
        self._dirty: set[LinkBase] = set()
        self._last_misc = 0.0
        self.sent = 0
        self.stop: threading.Event | None = None  # set by the runner: stop waiting for a full queue to drain
        common = {"keepalive": keepalive, "protocol": protocol, "max_queued": max_queued}
        credentials = credentials or {}

        def as_(name: str) -> BrokerAddress:
            if name not in credentials:
                return address
            username, password = credentials[name]
            return dataclasses.replace(address, username=username, password=password)

        if mode == "device":
            for device_id, status_topic in zip(device_ids, device_status_topics, strict=True):
                self.links.append(make_link(transport, as_(device_id), device_id, will=(status_topic, b"offline"),
                                            online=(status_topic, b"online"), max_inflight=100, **common))
        else:
            count = 1 if mode == "gateway" else max(1, connections)
            for k in range(count):
                client_id = client_prefix if mode == "gateway" else f"{client_prefix}-{k}"
                status = f"{link_status_prefix}/{client_id}/status"
                account = as_(gateway_id or client_prefix) if mode == "gateway" else address
                link = make_link(transport, account, client_id, will=(status, b"offline"),
                                 online=(status, b"online"), **common)
                link.clear_status_on_close = per_run_ids
                self.links.append(link)
        self.gateway_topic = f"{topic_prefix}/gateway/{gateway_id or client_prefix}/telemetry"

    # ---- connection management -----------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        """Connect every link; raise ServiceError if the broker cannot be reached or refuses."""
        for link in self.links:
            try:
                link.open()
            except OSError as exc:
                raise ServiceError(f"cannot connect to MQTT broker {self.address}: {exc}") from exc
            self._register(link)
        deadline = time.monotonic() + timeout
        while not all(link.connected for link in self.links):
            failed = next((link for link in self.links if link.error), None)
            if failed is not None:
                raise ServiceError(f"MQTT broker {self.address}: {failed.error}")
            if time.monotonic() > deadline:
                down = sum(not link.connected for link in self.links)
                raise ServiceError(f"MQTT broker {self.address}: {down} connection(s) not accepted in {timeout:g} s")
            self.pump(0.05)

    def _register(self, link: LinkBase) -> None:
        fd = link.fileno()
        if fd is None:
            return
        if fd in self._registered:
            try:
                self.selector.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass
        self.selector.register(fd, selectors.EVENT_READ, link)
        self._registered[fd] = link

    def _unregister_dead(self) -> None:
        for fd, link in list(self._registered.items()):
            if link.fileno() != fd:
                try:
                    self.selector.unregister(fd)
                except (KeyError, ValueError, OSError):
                    pass
                del self._registered[fd]
                self._writers.discard(link)

    def _flush_dirty(self) -> None:
        """Write what publishes queued; links whose socket is full wait for writability in pump."""
        for link in self._dirty:
            link.handle_write()
            if link.want_write():
                self._writers.add(link)
        self._dirty.clear()

    def pump(self, timeout: float = 0.0) -> None:
        """Process network events for every link (acks, keepalive, reconnects) for up to `timeout` s."""
        self._flush_dirty()
        for link in list(self._writers):
            fd = link.fileno()
            if fd is None or fd not in self._registered:
                self._writers.discard(link)
                continue
            self.selector.modify(fd, selectors.EVENT_READ | selectors.EVENT_WRITE, link)
        if self._registered:
            events = self.selector.select(timeout)
        else:
            time.sleep(timeout)
            events = []
        for key, mask in events:
            link = key.data
            if mask & selectors.EVENT_READ:
                link.handle_read()
                if link.want_write():  # e.g. `online` queued on CONNACK
                    self._dirty.add(link)
            if mask & selectors.EVENT_WRITE:
                link.handle_write()
            if link in self._writers and not link.want_write():
                self._writers.discard(link)
                fd = link.fileno()
                if fd is not None and fd in self._registered:
                    self.selector.modify(fd, selectors.EVENT_READ, link)
        now = time.monotonic()
        if now - self._last_misc >= 0.5:
            self._last_misc = now
            for link in self.links:
                link.tick(now)
            self._unregister_dead()
            self._reconnect(now)
        self._flush_dirty()

    def _reopen(self, link: LinkBase) -> None:
        """Reconnect now (the device comes back); on failure the periodic reconnect retries."""
        self._unregister_dead()
        try:
            link.open()
        except OSError:
            link.next_attempt = time.monotonic() + 1.0
            return
        self._register(link)

    def _reconnect(self, now: float) -> None:
        for link in self.links:
            if link.connected or not link.wanted or link.fileno() is not None or now < link.next_attempt:
                continue
            link.failures += 1
            link.next_attempt = now + min(30.0, 0.5 * 2 ** min(link.failures, 6))
            try:
                link.open()
            except OSError:
                continue
            self._register(link)

    # ---- publishing ------------------------------------------------------------------------------------------

    def _link_for(self, message: Message) -> LinkBase:
        if self.mode == "device":
            return self.links[message.device]
        if self.mode == "gateway":
            return self.links[0]
        if message.device >= 0:
            return self.links[message.device % len(self.links)]
        return self.links[zlib.crc32(message.device_id.encode()) % len(self.links)]

    def publish(self, link: LinkBase, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Queue one message; when the link's queue is full, service the network until it has room."""
        while not link.publish(topic, payload, qos, retain):
            if self.stop is not None and self.stop.is_set():
                return
            self._dirty.add(link)
            self.pump(0.05)
        self._dirty.add(link)
        self.sent += 1

    def send(self, messages: Iterable[Message]) -> None:
        if self.mode == "gateway":
            self._send_gateway(messages)
        else:
            for m in messages:
                link = self._link_for(m)
                if self.mode == "device" and m.channel == "status":
                    self._device_status(link, m)
                    continue
                self.publish(link, m.topic, m.payload, m.qos, m.retain)
        self._flush_dirty()

    def _device_status(self, link: LinkBase, m: Message) -> None:
        """Per-device mode: going offline drops the socket so the broker fires the real Last Will; coming back
        reconnects, and the connection announces `online` itself (on CONNACK), as a device does."""
        if m.payload == b"offline":
            if link.connected:
                link.abort()
        elif not link.wanted:
            link.wanted = True
            link.failures = 0
            self._reopen(link)

    def _send_gateway(self, messages: Iterable[Message]) -> None:
        link = self.links[0]
        parts: list[tuple[str, bytes]] = []
        qos = 1
        for m in messages:
            if m.channel == "telemetry":
                parts.append((m.device_id, m.payload))
                qos = m.qos
                if len(parts) >= self.gateway_batch:
                    self.publish(link, self.gateway_topic, gateway_payload(parts), qos, False)
                    parts = []
            else:
                self.publish(link, m.topic, m.payload, m.qos, m.retain)
        if parts:
            self.publish(link, self.gateway_topic, gateway_payload(parts), qos, False)

    def backlog(self) -> int:
        """QoS 1 messages not yet acknowledged plus data not yet written, over all links."""
        return sum(link.backlog() for link in self.links)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every message is written and acknowledged, reconnecting as needed (False on timeout)."""
        deadline = time.monotonic() + timeout
        while self.backlog():
            if time.monotonic() > deadline or not any(link.wanted for link in self.links):
                return False
            self.pump(0.02)
        return True

    def close(self, flush_timeout: float = 10.0) -> None:
        self.flush(flush_timeout)
        for link in self.links:
            link.close()
        for _ in range(5):
            self.pump(0.01)
        self.selector.close()


class JsonlOutput:
    """Writes messages as JSON lines: {"t", "topic", "qos", "retain", "payload"} (or "payload_b64" when the
    payload is not UTF-8, e.g. a simulated garbage fault), the format `--replay` reads back."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fh: IO[bytes] = self.path.open("wb")
        self.sent = 0

    def send(self, messages: Iterable[Message]) -> None:
        fh = self._fh
        for m in messages:
            doc: dict[str, Any] = {"t": m.t, "topic": m.topic, "qos": m.qos, "retain": m.retain}
            try:
                doc["payload"] = m.payload.decode("utf-8")
            except UnicodeDecodeError:
                doc["payload_b64"] = base64.b64encode(m.payload).decode()
            fh.write(orjson.dumps(doc))
            fh.write(b"\n")
            self.sent += 1

    def pump(self, timeout: float = 0.0) -> None:
        if timeout > 0:
            time.sleep(timeout)

    def close(self, flush_timeout: float = 0.0) -> None:
        self._fh.close()


def read_jsonl(path: str | Path) -> Iterable[Message]:
    """Messages from a file written by JsonlOutput, in file order."""
    with Path(path).open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                doc = orjson.loads(line)
                payload = (base64.b64decode(doc["payload_b64"]) if "payload_b64" in doc
                           else doc["payload"].encode("utf-8"))
                topic = doc["topic"]
                parts = topic.split("/")
                device_id = parts[-2] if len(parts) >= 2 else ""
                channel = parts[-1] if parts else ""
                yield Message(float(doc["t"]), -1, topic, payload, int(doc.get("qos", 1)),
                              bool(doc.get("retain", False)), device_id, channel)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{lineno}: not a simulator JSON line ({exc})") from None
