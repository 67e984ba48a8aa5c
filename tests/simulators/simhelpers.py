"""Helpers shared by the simulator tests (fixtures are in conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from simulators.engine import Message, Simulation
from simulators.fleet import Fleet, load_fleet
from simulators.scenario import ScenarioSpec, load_scenarios
from simulators.timeutil import parse_timestamp

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
JULY = parse_timestamp("2026-07-14T00:00:00+07:00")
WEEKDAY_MORNING = parse_timestamp("2026-11-23T06:00:00+07:00")  # a Monday

RunSim = Callable[..., tuple[Simulation, list[Message]]]


def subset(fleet: Fleet, ids: Sequence[str] = (), kinds: Sequence[str] = ()) -> Fleet:
    devices = [d for d in fleet.devices if d.id in ids or d.kind in kinds]
    return Fleet(devices, fleet.areas, fleet.metrics)


def scenarios(*names: str) -> list[ScenarioSpec]:
    return load_scenarios(list(names), CONFIG, load_fleet(config_dir=CONFIG).metrics)


class Subscriber:
    """A paho subscriber on its own thread that records (topic, payload, retain) in arrival order."""

    def __init__(self, mqtt_url: str, topic: str, *, qos: int = 1) -> None:
        import threading
        import uuid

        import paho.mqtt.client as paho

        from simulators.publisher import parse_mqtt_url

        address = parse_mqtt_url(mqtt_url)
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"simtest-sub-{uuid.uuid4().hex[:8]}",
                             protocol=paho.MQTTv311)
        client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos)
        client.on_subscribe = lambda c, u, mid, rc, p: self._subscribed.set()
        client.on_message = self._on_message
        client.connect(address.host, address.port)
        client.loop_start()
        self.client = client
        assert self._subscribed.wait(10), "subscription not acknowledged"

    def _on_message(self, client: object, userdata: object, msg: object) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))  # type: ignore[attr-defined]

    def wait_for(self, predicate: Callable[[list[tuple[str, bytes, bool]]], bool], timeout: float = 20.0) -> bool:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if predicate(list(self.messages)):
                    return True
            time.sleep(0.05)
        return False

    def snapshot(self) -> list[tuple[str, bytes, bool]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def clear_retained(mqtt_url: str, topics: Sequence[str]) -> None:
    """Remove retained messages a test left on the shared broker."""
    import uuid

    import paho.mqtt.client as paho

    from simulators.publisher import parse_mqtt_url

    address = parse_mqtt_url(mqtt_url)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"simtest-clean-{uuid.uuid4().hex[:8]}")
    client.connect(address.host, address.port)
    client.loop_start()
    infos = [client.publish(t, b"", qos=1, retain=True) for t in topics]
    for info in infos:
        info.wait_for_publish(10)
    client.disconnect()
    client.loop_stop()
