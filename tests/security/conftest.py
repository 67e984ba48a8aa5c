"""A closed broker of its own for the security tests (the suite's shared broker stays open for the others):
Mosquitto with accounts and ACLs rendered from a fresh database, kept in sync by AuthSync as in `occ up`."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from occ.bus import BrokerAddress
from occ.embedded import EmbeddedBroker
from occ.embedded.auth_sync import AuthSync, ensure_service_accounts, service_passwords
from occ.embedded.broker import mosquitto_path
from occ.store import Store


@dataclass
class ClosedStack:
    broker: EmbeddedBroker
    database_url: str
    sync: AuthSync
    service_passwords: dict[str, str]

    def service_url(self, name: str, url: str | None = None) -> str:
        address = BrokerAddress.parse(url or self.broker.url)
        scheme = "mqtts" if address.tls else "mqtt"
        query = (url or self.broker.url).partition("?")[2]
        return f"{scheme}://{name}:{self.service_passwords[name]}@{address.host}:{address.port}" + (
            f"?{query}" if query else "")


@pytest.fixture
def closed_stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClosedStack]:
    if mosquitto_path() is None:
        pytest.skip("mosquitto is not installed (rumqttd cannot enforce accounts or ACLs)")
    folder = tmp_path_factory.mktemp("closed")
    folder.chmod(0o755)
    secrets = folder / "secrets"
    secrets.mkdir(mode=0o700)

    async def prepare() -> dict[str, str]:
        store = await Store.connect(database_url, pool_size=1)  # migrates
        await store.close()
        passwords = service_passwords(secrets)
        await ensure_service_accounts(database_url, passwords)
        return passwords

    passwords = asyncio.run(prepare())
    broker = EmbeddedBroker(folder / "broker", kind="mosquitto", auth=True, **_tls_options(folder))
    sync = AuthSync(database_url, lambda f: broker.set_auth(f.passwd, f.acl), interval_s=0.2)
    sync.sync_now()
    broker.start()
    sync.start()
    try:
        yield ClosedStack(broker, database_url, sync, passwords)
    finally:
        sync.stop()
        broker.stop()


def _tls_options(folder: Path) -> dict[str, Any]:
    try:
        from occ.embedded.tls import ensure_tls_files
    except ImportError:
        return {}
    return {"tls": ensure_tls_files(folder / "tls")}


class Client:
    """A paho client on its own network thread that records CONNACK, PUBACK reason codes, messages and the
    disconnect."""

    def __init__(self, url: str, *, username: str | None = None, password: str | None = None,
                 client_id: str | None = None, v5: bool = True) -> None:
        address = BrokerAddress.parse(url)
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"sec-{uuid.uuid4().hex[:8]}",
                                  protocol=paho.MQTTv5 if v5 else paho.MQTTv311)
        user = username if username is not None else address.username
        if user is not None:
            self.client.username_pw_set(user, password if password is not None else address.password)
        if address.tls:
            self.client.tls_set_context(address.ssl_context())
        self.connack: Any = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.acks: dict[int, Any] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda c, u, f, rc, p: self.disconnected.set()
        self.client.on_publish = lambda c, u, mid, rc, p: self.acks.__setitem__(mid, rc)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.connect_async(address.host, address.port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connack = reason
        if reason.is_failure:  # no reconnect loop: the network thread ends here (and closes its sockets)
            client.disconnect()
        self.connected.set()

    def wait_connack(self, timeout: float = 10) -> Any:
        assert self.connected.wait(timeout) or self.disconnected.wait(0.1), "no CONNACK"
        return self.connack

    def publish(self, topic: str, payload: bytes, timeout: float = 10) -> Any:
        """Publish at QoS 1 and return the broker's PUBACK reason code (MQTT 5)."""
        info = self.client.publish(topic, payload, qos=1)
        deadline = time.monotonic() + timeout
        while info.mid not in self.acks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.acks.get(info.mid)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connack(url: str, *, username: str | None = None, password: str | None = None, v5: bool = True,
            timeout: float = 10) -> Any:
    """The broker's answer to one CONNECT (reason code), on this thread (no network thread, no reconnect)."""
    address = BrokerAddress.parse(url)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"sec-{uuid.uuid4().hex[:8]}",
                         protocol=paho.MQTTv5 if v5 else paho.MQTTv311)
    user = username if username is not None else address.username
    if user is not None:
        client.username_pw_set(user, password if password is not None else address.password)
    if address.tls:
        client.tls_set_context(address.ssl_context())
    answer: list[Any] = []
    client.on_connect = lambda c, u, f, reason, p: answer.append(reason)
    try:
        client.connect(address.host, address.port, keepalive=30)
        deadline = time.monotonic() + timeout
        while not answer and time.monotonic() < deadline and client.loop(0.05) == paho.MQTT_ERR_SUCCESS:
            pass
        if answer and not answer[0].is_failure:
            client.disconnect()
    finally:
        sock = client.socket()
        if sock is not None:
            sock.close()
    assert answer, "no CONNACK"
    return answer[0]
