"""Thin output adapters: MQTT (a pool of connections, one per device, or a gateway) and JSON-lines files.

Connection modes (the trade-off, issue 3 §6):

* `pool` (default): devices are spread over a few connections (4 by default), each with its own client id
  and a Last Will (`offline`, retained) on `occ/v1/gateway/{client_id}/status`. Every device still gets its
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

paho is driven without its network thread: `publish` writes straight to the socket, `pump` handles acks,
keepalive and reconnects through one selector for all connections. QoS 1 messages wait in paho's queue,
which is bounded (`max_queued`); when it is full `send` pumps the network until there is room, so a slow
broker slows the simulator instead of growing memory.
"""

from __future__ import annotations

import base64
import logging
import selectors
import socket
import ssl
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import orjson
import paho.mqtt.client as mqtt

from occ.errors import ServiceError
from simulators.encode import gateway_payload
from simulators.engine import Message

log = logging.getLogger(__name__)

MODES = ("pool", "device", "gateway")
PROTOCOLS = ("3.1.1", "5")


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_mqtt_url(url: str, username: str | None = None, password: str | None = None) -> BrokerAddress:
    """mqtt://[user[:pass]@]host[:port] or mqtts://…; explicit credentials override the URL's."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"unsupported MQTT URL scheme {parts.scheme!r} (use mqtt:// or mqtts://)")
    tls = parts.scheme in ("mqtts", "ssl")
    return BrokerAddress(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or (8883 if tls else 1883),
        tls=tls,
        username=username if username is not None else (unquote(parts.username) if parts.username else None),
        password=password if password is not None else (unquote(parts.password) if parts.password else None),
    )


class Link:
    """One MQTT connection (a paho client without its thread)."""

    def __init__(self, address: BrokerAddress, client_id: str, *, will: tuple[str, bytes] | None,
                 online: tuple[str, bytes] | None = None, keepalive: int = 60, max_inflight: int = 1000,
                 max_queued: int = 20000, protocol: str = "3.1.1") -> None:
        self.address = address
        self.client_id = client_id
        self.online_message = online
        self.will = will
        self.v5 = protocol == "5"
        if self.v5:
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        else:
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
                                 protocol=mqtt.MQTTv311)
        if address.username is not None:
            client.username_pw_set(address.username, address.password)
        if address.tls:
            client.tls_set_context(ssl.create_default_context())
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
        client.max_inflight_messages_set(max_inflight)
        client.max_queued_messages_set(max_queued)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self.client = client
        self.keepalive = keepalive
        self.connected = False
        self.wanted = True  # False while a scenario keeps this device off the network
        self.sock: Any = None
        self.failures = 0
        self.next_attempt = 0.0
        self.lost_logged = False
        self.error: str | None = None

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.error = f"broker refused connection: {reason}"
            return
        self.connected = True
        self.failures = 0
        if self.lost_logged:
            log.warning("MQTT link %s recovered", self.client_id)
            self.lost_logged = False
        if self.online_message is not None:
            client.publish(self.online_message[0], self.online_message[1], qos=1, retain=True)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        was = self.connected
        self.connected = False
        if was and self.wanted and not self.lost_logged:
            log.warning("MQTT link %s lost (%s); reconnecting", self.client_id, reason)
            self.lost_logged = True

    def open(self) -> None:
        """Start connecting (TCP connect and CONNECT are sent; CONNACK arrives through pump)."""
        self.error = None
        if self.v5:
            self.client.connect(self.address.host, self.address.port, keepalive=self.keepalive, clean_start=True)
        else:
            self.client.connect(self.address.host, self.address.port, keepalive=self.keepalive)
        self.sock = self.client.socket()
        if self.sock is not None:
            try:
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def abort(self) -> None:
        """Drop the connection without DISCONNECT, so the broker publishes the Last Will."""
        self.wanted = False
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        """Clean disconnect: the Will is not fired, so say `offline` on its topic first."""
        self.wanted = False
        if self.connected:
            if self.will is not None:
                self.client.publish(self.will[0], self.will[1], qos=1, retain=True)
            self.client.disconnect()
        self.connected = False


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
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.address = address
        self.mode = mode
        self.topic_prefix = topic_prefix
        self.selector = selectors.DefaultSelector()
        self.links: list[Link] = []
        self.gateway_batch = gateway_batch
        self._registered: dict[int, Link] = {}
        self._writers: set[Link] = set()
        self._last_misc = 0.0
        self.sent = 0
        if mode == "device":
            for device_id, status_topic in zip(device_ids, device_status_topics, strict=True):
                self.links.append(Link(address, device_id, will=(status_topic, b"offline"),
                                       online=(status_topic, b"online"), keepalive=keepalive,
                                       max_inflight=100, max_queued=max_queued, protocol=protocol))
        else:
            count = 1 if mode == "gateway" else max(1, connections)
            for k in range(count):
                client_id = client_prefix if mode == "gateway" else f"{client_prefix}-{k}"
                status = f"{topic_prefix}/gateway/{client_id}/status"
                self.links.append(Link(address, client_id, will=(status, b"offline"), online=(status, b"online"),
                                       keepalive=keepalive, max_queued=max_queued, protocol=protocol))
        self.gateway_topic = f"{topic_prefix}/gateway/{client_prefix}/telemetry"

    # ---- connection management -----------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        """Connect every link; raise ServiceError if the broker cannot be reached."""
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

    def _register(self, link: Link) -> None:
        sock = link.client.socket()
        if sock is None:
            return
        fd = sock.fileno()
        old = self._registered.get(fd)
        if old is not None:
            try:
                self.selector.unregister(fd)
            except (KeyError, ValueError):
                pass
        self.selector.register(fd, selectors.EVENT_READ, link)
        self._registered[fd] = link
        link.sock = sock

    def _unregister_dead(self) -> None:
        for fd, link in list(self._registered.items()):
            sock = link.client.socket()
            if sock is None or sock.fileno() != fd:
                try:
                    self.selector.unregister(fd)
                except (KeyError, ValueError):
                    pass
                del self._registered[fd]
                self._writers.discard(link)

    def pump(self, timeout: float = 0.0) -> None:
        """Process network events for every link (acks, keepalive, reconnects) for up to `timeout` s."""
        for link in list(self._writers):
            sock = link.client.socket()
            if sock is None:
                self._writers.discard(link)
                continue
            try:
                self.selector.modify(sock.fileno(), selectors.EVENT_READ | selectors.EVENT_WRITE, link)
            except (KeyError, ValueError):
                self._writers.discard(link)
        if not self._registered:
            time.sleep(timeout)
        events = self.selector.select(timeout) if self._registered else []
        for key, mask in events:
            link = key.data
            if mask & selectors.EVENT_READ:
                link.client.loop_read()
            if mask & selectors.EVENT_WRITE:
                link.client.loop_write()
            if link in self._writers and not link.client.want_write():
                self._writers.discard(link)
                sock = link.client.socket()
                if sock is not None:
                    try:
                        self.selector.modify(sock.fileno(), selectors.EVENT_READ, link)
                    except (KeyError, ValueError):
                        pass
        now = time.monotonic()
        if now - self._last_misc >= 0.5:
            self._last_misc = now
            for link in self.links:
                if link.client.socket() is not None:
                    link.client.loop_misc()
            self._unregister_dead()
            self._reconnect(now)

    def _reconnect(self, now: float) -> None:
        for link in self.links:
            if link.connected or not link.wanted or link.client.socket() is not None or now < link.next_attempt:
                continue
            link.failures += 1
            link.next_attempt = now + min(30.0, 0.5 * 2 ** min(link.failures, 6))
            try:
                link.client.reconnect()
            except OSError:
                continue
            self._register(link)

    # ---- publishing ------------------------------------------------------------------------------------------

    def _link_for(self, message: Message) -> Link:
        if self.mode == "device":
            return self.links[message.device]
        if self.mode == "gateway":
            return self.links[0]
        if message.device >= 0:
            return self.links[message.device % len(self.links)]
        return self.links[zlib.crc32(message.device_id.encode()) % len(self.links)]

    def publish(self, link: Link, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        client = link.client
        while True:
            info = client.publish(topic, payload, qos, retain)
            if info.rc != mqtt.MQTT_ERR_QUEUE_SIZE:
                break
            self.pump(0.05)  # queue full: let acks drain (backpressure)
        if client.want_write():
            self._writers.add(link)
        self.sent += 1

    def send(self, messages: Iterable[Message]) -> None:
        if self.mode == "gateway":
            self._send_gateway(messages)
            return
        for m in messages:
            link = self._link_for(m)
            if self.mode == "device" and m.channel == "status":
                self._device_status(link, m)
                continue
            self.publish(link, m.topic, m.payload, m.qos, m.retain)
        if self._writers:
            self.pump(0.0)

    def _device_status(self, link: Link, m: Message) -> None:
        """Per-device mode: going offline drops the socket so the broker fires the real Last Will."""
        if m.payload == b"offline":
            if link.connected:
                link.abort()
        elif not link.wanted:
            link.wanted = True
            link.next_attempt = 0.0
            link.failures = 0
        elif link.connected:
            self.publish(link, m.topic, m.payload, m.qos, m.retain)

    def _send_gateway(self, messages: Iterable[Message]) -> None:
        link = self.links[0]
        parts: list[tuple[str, bytes]] = []
        for m in messages:
            if m.channel == "telemetry":
                parts.append((m.device_id, m.payload))
                if len(parts) >= self.gateway_batch:
                    self.publish(link, self.gateway_topic, gateway_payload(parts), m.qos, False)
                    parts = []
            else:
                self.publish(link, m.topic, m.payload, m.qos, m.retain)
        if parts:
            self.publish(link, self.gateway_topic, gateway_payload(parts), 1, False)

    def backlog(self) -> int:
        """QoS 1 messages not yet acknowledged plus packets not yet written, over all links."""
        total = 0
        for link in self.links:
            c = link.client
            total += len(getattr(c, "_out_messages", ())) + len(getattr(c, "_out_packet", ()))
        return total

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every message is written and acknowledged (or timeout)."""
        deadline = time.monotonic() + timeout
        while self.backlog():
            if time.monotonic() > deadline or not any(link.connected for link in self.links):
                return False
            self.pump(0.02)
        return True

    def close(self, flush_timeout: float = 10.0) -> None:
        self.flush(flush_timeout)
        for link in self.links:
            link.close()
        for _ in range(10):
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
