"""`occ alerts`: the asyncio adapter around the pure engine (alerts.engine).

    MQTT (own persistent session, QoS 1, occ.mqtt receive path) ─▶ decode (occ.codecs, same as ingest) ─▶ Engine
        ─▶ Store.commit_alerts ─▶ publish changes (QoS 1, occ/v1/_sys/alerts/{area}/{device}, paho) ─▶ ack

Restart safety (issue 6 §7): one step = take what arrived since the last step, tick, feed, then commit in ONE
transaction the step's transitions and its journal row (the engine's inputs, as the engine recorded them),
publish, then acknowledge. Every `checkpoint_s` (and before any change of rules, devices, silences or
maintenance windows, and at a clean stop) the engine state that changed since the last checkpoint is written
and the journal it covers dropped, in one transaction. A kill -9 before a step's commit loses nothing (the
broker redelivers; the journal ends before that step); at start the engine restores the checkpoint and replays
the journal after it, which rebuilds exactly the state after the last committed step (the engine is
deterministic; tests/alerts/test_journal.py). Redelivered readings of committed steps are then duplicates
(per-series event-time idempotency), and committed transitions not yet published are republished from the
outbox. Nothing re-fires, nothing is lost, consumers dedupe on `seq`.

Why a journal and not a snapshot per step: a reading touches about six engine-state keys (its series, every
instance on it, the device's last-seen time); serialising and upserting them each step cost ~70 % of the
service's CPU at 2,000 msg/s and capped it there (bench/README.md). The journal row is the step's inputs,
a few dozen bytes per reading, and a checkpoint writes each changed key once per interval however many
readings touched it. The price: a restart replays up to `checkpoint_s` of input.

All engine access happens in the one step task, so the engine needs no locks.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho

from alerts.engine import Engine
from alerts.model import IncidentChange, Output, Transition, to_datetime
from alerts.notify import Notifier
from alerts.rules import RuleSet, load_rules, rule_files
from alerts.storm import LabelMatch, SilenceRule, Window
from occ.backoff import Backoff
from occ.bus import MqttClient
from occ.catalog import Catalog
from occ.codecs import Decoder
from occ.config import Config
from occ.errors import ConfigError, StoreUnavailable
from occ.http import start_health_server
from occ.lifecycle import unless_stopped
from occ.metrics import Registry
from occ.mqtt.transport import MqttSubscriber, Publish
from occ.stalls import StallWatch, watch_loop
from occ.store import Store
from occ.store.alerts import EpisodeWrite, IncidentWrite
from occ.topics import alert_topic, alerts_reload_topic, incident_topic

log = logging.getLogger(__name__)

REGISTRY_REFRESH_S = 30.0
SILENCES_REFRESH_S = 5.0
OUTBOX_POLL_S = 1.0
IDLE_JOURNAL_MAX = 1000
"""Inputs of idle steps (ticks) are committed with the next busy step, or once this many have gathered."""
GC_YOUNG_THRESHOLD = 100_000
"""Young collections are rare (as in ingest); see `freeze_long_lived`."""
CAPTURE_DEVICES_PER_STEP = 100
"""Devices a checkpoint in progress captures per step besides those captured because they are changing
(about 10 ms of a step at ~6 keys a device)."""


@dataclass(slots=True)
class Inbound:
    topic: str
    payload: bytes
    received: float
    delivery: int | None
    """occ.mqtt.transport.handle() of a QoS 1 message (acknowledged after its step committed); None for QoS 0."""


class AlertsMetrics:
    def __init__(self, service: AlertsService) -> None:
        r = self.registry = Registry()
        self.received = r.counter("occ_alerts_messages_received_total", "MQTT messages received")
        self.acked = r.counter("occ_alerts_messages_acked_total", "Messages acknowledged after their step committed")
        self.rejected = r.counter("occ_alerts_messages_rejected_total",
                                  "Messages (or parts) the decoder rejected: skipped, not evaluated")
        self.readings = r.counter("occ_alerts_readings_total", "Readings fed to the engine")
        self.transitions = r.counter("occ_alerts_transitions_total", "Alert transitions committed", ["state"])
        self.published = r.counter("occ_alerts_published_total", "Alert and incident messages published")
        self.commit_retries = r.counter("occ_alerts_commit_retries_total", "Commits retried (database down)")
        self.checkpoints = r.counter("occ_alerts_checkpoints_total", "Engine state checkpoints written")
        self.checkpoint_seconds = r.counter("occ_alerts_checkpoint_seconds_total",
                                            "Time spent taking and writing checkpoints")
        self.replayed = r.counter("occ_alerts_replayed_records_total", "Journal records replayed at start")
        self.reloads = r.counter("occ_alerts_rule_reloads_total", "Rule reloads", ["result"])
        self.step_latency = r.histogram("occ_alerts_receive_to_publish_seconds",
                                        "From receiving a batch's oldest message to publishing its alerts",
                                        [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5])
        r.gauge("occ_alerts_instances", "(rule, device) instances in the engine",
                fn=lambda: float(len(service.engine._instances)) if service.engine else 0.0)
        r.gauge("occ_alerts_open_episodes", "Episodes pending, firing or recovering",
                fn=lambda: float(len(service.engine.open_fingerprints())) if service.engine else 0.0)
        r.gauge("occ_alerts_rules", "Rules loaded", fn=lambda: float(len(service.rules.rules)))
        r.gauge("occ_alerts_unacked_messages", "Messages held, not yet acknowledged", fn=lambda: service.unacked)
        r.gauge("occ_alerts_database_up", "1 when the last database operation succeeded",
                fn=lambda: float(service.database_up))
        r.gauge("occ_alerts_mqtt_connected", "1 while connected to the broker",
                fn=lambda: float(bool(service.bus and service.bus.connected.is_set() and service.publisher
                                      and service.publisher.connected.is_set())))
        r.gauge("occ_alerts_duplicates", "Readings skipped as already applied (redelivery, retries)",
                fn=lambda: float(service.engine.stats["duplicates"]) if service.engine else 0.0)


class AlertsService:
    def __init__(
        self,
        *,
        mqtt_url: str,
        database_url: str,
        rules_dir: str | Path = "config/rules",
        rules: RuleSet | None = None,
        client_id: str = "occ-alerts",
        topic_prefix: str = "occ/v1",
        catalog: Catalog | None = None,
        area_names: dict[str, str] | None = None,
        late_after_s: float = 900.0,
        tick_s: float = 1.0,
        linger_s: float = 0.02,
        batch_max: int = 2000,
        max_unacked: int = 20_000,
        http_host: str = "127.0.0.1",
        http_port: int | None = 9102,
        retry_max_s: float = 30.0,
        session_expiry_s: int = 7 * 24 * 3600,
        keepalive_s: int = 30,
        timezone: str = "Asia/Ho_Chi_Minh",
        store_options: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        event_clock: bool = False,
        checkpoint_s: float = 30.0,
        checkpoint_records: int = 200_000,
    ) -> None:
        self.mqtt_url = mqtt_url
        self.database_url = database_url
        self.rules_dir = Path(rules_dir)
        self.client_id = client_id
        self.prefix = topic_prefix
        self.catalog = catalog or Catalog.default()
        self.area_names = area_names or {}
        self.late_after_s = late_after_s
        self.tick_s = tick_s
        self.linger_s = linger_s
        self.batch_max = batch_max
        self.max_unacked = max_unacked
        self.http_host = http_host
        self.http_port = http_port
        self.bound_http_port: int | None = None
        self.retry_max_s = retry_max_s
        self._session_expiry_s = session_expiry_s
        self._keepalive_s = keepalive_s
        self.timezone = timezone
        self._store_options = store_options or {}
        self.clock = clock
        self.event_clock = event_clock
        self.checkpoint_s = checkpoint_s
        """Engine state is written this often (and the journal compacted); a restart replays at most this much."""
        self.checkpoint_records = checkpoint_records
        """... or after this many journal records, whichever comes first (bounds the replay at start)."""
        self.rules = rules if rules is not None else load_rules(rule_files(self.rules_dir))
        self.devices: dict[str, Any] = {}
        self.decoder = Decoder(self.catalog, self.devices, prefix=topic_prefix, local_tz=timezone,
                               max_future_s=300, max_past_s=400 * 86400)
        self.engine: Engine | None = None
        self.store: Store | None = None
        self.bus: MqttSubscriber | None = None
        """Receives (occ.mqtt: bulk parse, batched acks); `publisher` (paho) sends the alert stream."""
        self.publisher: MqttClient | None = None
        self._journal_seq = 0
        self._journal_since_checkpoint = 0
        self._last_checkpoint = 0.0
        self._capturing_at: int | None = None
        """Journal position of the checkpoint being captured (copy-on-write, a little each step), if any."""
        self._checkpoint_write: asyncio.Task[None] | None = None
        self._must_commit = False
        self.notifier: Notifier | None = None
        self.unacked = 0
        self.database_up = False
        self._inbox: list[Inbound] = []
        self._stepping = 0  # messages of the step in progress (taken from the inbox, not yet acknowledged)
        self._in_step = False
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._http_runner: Any = None
        self._pending_publishes: list[tuple[int, paho.MQTTMessageInfo]] = []
        self._last_outbox = 0.0
        self._last_silences = 0.0
        self._last_registry = 0.0
        self._registry_version: Any = None
        self._reload_requested = False
        self.metrics = AlertsMetrics(self)
        self.stalls = StallWatch(self.metrics.registry, "occ_alerts")
        self._unhook_gc: Callable[[], None] | None = None
        self.started = asyncio.Event()
        self.failed: BaseException | None = None

    @classmethod
    def from_config(cls, config: Config, **overrides: Any) -> AlertsService:
        from occ.devices import load_areas

        al, db, mqtt = config.alerts, config.database, config.mqtt
        if not db.url or not mqtt.url:
            raise ConfigError("alerts needs database.url and mqtt.url (OCC_DATABASE_URL, OCC_MQTT_URL)")
        metrics_path = config.config_path / "metrics.yaml"
        areas_path = config.config_path / "areas.yaml"
        if al.clock not in ("wall", "event"):
            raise ConfigError(f"alerts.clock must be wall or event, got {al.clock!r}")
        options: dict[str, Any] = dict(
            mqtt_url=mqtt.url, database_url=db.url, client_id=al.client_id,
            rules_dir=al.rules_dir or config.config_path / "rules", topic_prefix=mqtt.topic_prefix,
            catalog=Catalog.load(metrics_path) if metrics_path.exists() else None,
            area_names={a.id: a.name for a in load_areas(areas_path)} if areas_path.exists() else {},
            late_after_s=al.late_after_s, tick_s=al.tick_ms / 1000, linger_s=al.linger_ms / 1000,
            batch_max=al.batch_max, max_unacked=al.max_unacked, http_host=al.http_host, http_port=al.http_port,
            retry_max_s=al.retry_max_s, session_expiry_s=mqtt.session_expiry_s, keepalive_s=mqtt.keepalive_s,
            timezone=config.site.timezone, event_clock=al.clock == "event", checkpoint_s=al.checkpoint_s,
            store_options=dict(timescaledb=db.timescaledb, retention_days=db.retention_days,
                               compress_after_days=db.compress_after_days, partition_days=db.partition_days,
                               partitions_ahead=db.partitions_ahead, timezone=config.site.timezone),
        )
        options.update(overrides)
        return cls(**options)

    # -- lifecycle ---------------------------------------------------------------------------------------
    @property
    def topics(self) -> list[str]:
        # Device space only (four levels); alert topics under _sys have six and never match.
        return [f"{self.prefix}/+/+/+"]

    @property
    def reload_topic(self) -> str:
        return alerts_reload_topic(self.prefix)

    async def start(self) -> None:
        if self.http_port is not None:
            self._http_runner, self.bound_http_port = await start_health_server(
                self.metrics.registry, self.health, host=self.http_host, port=self.http_port)
        self.store = await self._connect_store()
        devices = await self._retry(self.store.list_devices)
        self._set_devices(devices)
        self._registry_version = await self._retry(self.store.devices_version)
        units = {name: spec.unit for name, spec in self.catalog.metrics.items()}
        intervals = {name: spec.report_interval_s for name, spec in self.catalog.kinds.items()}
        self.engine = Engine(self.rules, devices, late_after_s=self.late_after_s, timezone=self.timezone,
                             area_names=self.area_names, units=units, kind_intervals=intervals,
                             event_clock=self.event_clock)
        recovery = await self._retry(self.store.load_engine_recovery)
        self.engine.restore(recovery.state)
        await self._refresh_silences(force=True, barrier=False)
        replayed = 0
        began = time.monotonic()
        for _seq, records in recovery.journal:
            replayed += self.engine.replay(orjson.loads(records))
        self.metrics.replayed.inc(replayed)
        self._journal_seq = recovery.last_seq
        if recovery.journal:
            log.info("replayed %d journal records (%d steps) after the checkpoint in %.1f s", replayed,
                     len(recovery.journal), time.monotonic() - began)
            await self._checkpoint()  # the replay's effects become the new checkpoint; the journal is compacted
        self.engine.record_inputs()
        self._last_checkpoint = time.monotonic()
        freeze_long_lived()
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
        self.notifier = Notifier(self.store, self.rules, clock=self.clock)
        self.publisher = MqttClient(
            self.mqtt_url, client_id=f"{self.client_id}-pub", clean_start=False,
            session_expiry_s=self._session_expiry_s, keepalive_s=self._keepalive_s,
        )
        self.bus = MqttSubscriber(
            self.mqtt_url, client_id=self.client_id, on_publishes=self._on_publishes, clean_start=False,
            session_expiry_s=self._session_expiry_s, keepalive_s=self._keepalive_s,
        )  # receive maximum 65535 (every packet id): Mosquitto 2.0.11 sent more than a smaller one allowed, and
        # the protocol core then drops the connection; `max_unacked` bounds what we hold by pausing the reads
        for topic in self.topics:
            self.bus.subscribe(topic, qos=1)
        self.bus.subscribe(self.reload_topic, qos=1)
        await self.publisher.start(wait=True, timeout=60)
        await self.bus.start(wait=True, timeout=60)
        self._tasks = [
            asyncio.create_task(self._step_loop(), name="alerts-step"),
            asyncio.create_task(self.notifier.run(), name="alerts-notify"),
            asyncio.create_task(watch_loop(self.stalls), name="alerts-stall-watch"),
        ]
        self._unhook_gc = self.stalls.install_gc()
        for task in self._tasks:
            task.add_done_callback(self._task_done)
        self.started.set()
        log.info("alerts %s: %d rules over %d devices, %d state keys restored; consuming %s "
                 "(health and metrics on http://%s:%s)", self.client_id, len(self.rules.rules), len(devices),
                 len(recovery.state), ", ".join(self.topics), self.http_host, self.bound_http_port)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            # A supervised task died: fail health and let `run` exit non-zero (the supervisor restarts us).
            log.error("alerts task %s failed: %r", task.get_name(), exc, exc_info=exc)
            self.failed = exc

    async def _connect_store(self) -> Store:
        backoff = Backoff(0.5, self.retry_max_s)
        while True:
            try:
                store = await Store.connect(self.database_url, pool_size=4, **self._store_options)
                self.database_up = True
                return store
            except StoreUnavailable as exc:
                if backoff.attempts == 0:
                    log.warning("database unavailable at start (%s); retrying", exc)
                await asyncio.sleep(backoff.next())

    async def _retry(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        backoff = Backoff(0.25, self.retry_max_s)
        down_since: float | None = None
        while True:
            try:
                result = await fn(*args, **kwargs)
            except StoreUnavailable as exc:
                if down_since is None:
                    log.error("database unavailable (%s); holding %d messages and retrying", exc, self.unacked)
                    down_since = time.monotonic()
                self.database_up = False
                self.metrics.commit_retries.inc()
                await asyncio.sleep(backoff.next())
                continue
            if down_since is not None:
                log.warning("database recovered after %.1f s", time.monotonic() - down_since)
            self.database_up = True
            return result

    async def stop(self) -> None:
        if self._unhook_gc is not None:
            self._unhook_gc()
            self._unhook_gc = None
        if self.bus:
            self.bus.pause_reading()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self.store and self._pending_publishes:
            try:
                await self._mark_published()
            except StoreUnavailable:
                pass
        if self.store and self.engine and self.started.is_set() and self.failed is None and self.database_up \
                and not self._in_step:
            # A clean stop leaves no journal to replay. Not when a step was cut short: the engine may then hold
            # inputs whose commit did not happen (their messages are redelivered; the journal replays the rest).
            # One attempt, briefly: under `occ up` the database may be stopping at the same moment.
            try:
                await asyncio.wait_for(self._checkpoint(retry=False), 5)
            except (StoreUnavailable, TimeoutError):
                log.info("no checkpoint at stop (database unavailable): the next start replays the journal")
        if self.notifier:
            await self.notifier.close()
        if self.bus:
            await self.bus.close()
        if self.publisher:
            await self.publisher.close()
        if self.store:
            await self.store.close()
        if self._http_runner:
            await self._http_runner.cleanup()

    def health(self) -> dict[str, Any]:
        mqtt_ok = bool(self.bus and self.bus.connected.is_set() and self.publisher
                       and self.publisher.connected.is_set())
        return {
            "ok": mqtt_ok and self.database_up and self.failed is None,
            "service": "alerts", "client_id": self.client_id, "mqtt_connected": mqtt_ok,
            "database_up": self.database_up, "unacked": self.unacked, "rules": len(self.rules.rules),
            "open_episodes": len(self.engine.open_fingerprints()) if self.engine else 0,
            "failed": repr(self.failed) if self.failed else None,
            **self.stalls.summary(),
        }

    def request_reload(self) -> None:
        """SIGHUP: reload rule files at the next step; a bad file keeps the running rules."""
        self._reload_requested = True
        self._wake.set()

    # -- receive -----------------------------------------------------------------------------------------
    def _on_publishes(self, publishes: list[Publish], generation: int) -> None:
        """The receive path's bulk hand-over: every PUBLISH of one socket read, in arrival order."""
        received = time.time()
        base = generation << 16  # occ.mqtt.transport.handle(), inlined: this loop runs per message
        inbox = self._inbox
        was_empty = not inbox
        reload_topic = self.reload_topic
        for p in publishes:
            if p.topic == reload_topic:
                log.info("rules reload requested over MQTT (%s)", reload_topic)
                self.request_reload()
                if p.qos and self.bus is not None:
                    self.bus.ack(base | p.packet_id)
                continue
            inbox.append(Inbound(p.topic, bytes(p.payload), received, base | p.packet_id if p.qos else None))
        self.unacked = len(inbox) + self._stepping
        if (was_empty and inbox) or len(inbox) >= self.batch_max:
            self._wake.set()
        if self.unacked >= self.max_unacked and self.bus is not None:
            self.bus.pause_reading()

    # -- the one task that touches the engine ------------------------------------------------------------
    async def _step_loop(self) -> None:
        next_tick = 0.0
        while True:
            wait = next_tick - time.monotonic()
            if not self._inbox and wait > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except TimeoutError:
                    pass
                continue
            if self._inbox and self.linger_s > 0 and len(self._inbox) < self.batch_max:
                oldest = self._inbox[0].received
                linger = oldest + self.linger_s - time.time()
                if linger > 0:
                    await asyncio.sleep(linger)
            self._in_step = True  # until the step is done: a stop that cuts it short writes no checkpoint
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + self.tick_s
                await self._housekeeping()
            await self._step()
            self._in_step = False

    async def _housekeeping(self) -> None:
        assert self.store is not None and self.engine is not None
        now = time.monotonic()
        if self._reload_requested:
            self._reload_requested = False
            await self._checkpoint()  # a journal is replayed under the configuration it was recorded with
            self._reload()
        if now - self._last_registry >= REGISTRY_REFRESH_S:
            self._last_registry = now
            try:
                version = await self.store.devices_version()
                if version != self._registry_version:
                    devices = await self.store.list_devices()
                    self._registry_version = version
                    await self._checkpoint()
                    self._set_devices(devices)
                    self.engine.set_devices(devices)
            except StoreUnavailable:
                self.database_up = False
        await self._refresh_silences()
        if now - self._last_outbox >= OUTBOX_POLL_S:
            self._last_outbox = now
            await self._publish_outbox()

    def _set_devices(self, devices: list[Any]) -> None:
        self.devices = {d.id: d for d in devices}
        self.decoder.set_devices(self.devices)

    def _reload(self) -> None:
        assert self.engine is not None
        try:
            rules = load_rules(rule_files(self.rules_dir))
        except ConfigError as exc:
            log.error("rules not reloaded, the running rules stay: %s", exc)
            self.metrics.reloads.inc(1, "rejected")
            return
        self.rules = rules
        self.engine.set_rules(rules)
        if self.notifier:
            self.notifier.set_rules(rules)
        self.metrics.reloads.inc(1, "ok")
        log.info("rules reloaded: %d rules from %d files", len(rules.rules), len(rules.files))

    async def _refresh_silences(self, *, force: bool = False, barrier: bool = True) -> None:
        assert self.store is not None and self.engine is not None
        now = time.monotonic()
        if not force and now - self._last_silences < SILENCES_REFRESH_S:
            return
        self._last_silences = now
        try:
            now = self.engine.now if self.event_clock and self.engine.now is not None else self.clock()
            silences = await self.store.current_silences(to_datetime(now))
            windows = await self.store.list_maintenance()
        except StoreUnavailable:
            self.database_up = False
            return
        rules = [SilenceRule(s.id, tuple(LabelMatch.build(m) for m in s.matchers), s.starts_at.timestamp(),
                             s.ends_at.timestamp()) for s in silences]
        maintenance = [Window(w.name, tuple(LabelMatch.build(m) for m in w.matchers), tuple(w.weekdays),
                              w.start_local, float(w.duration_s)) for w in windows]
        if rules == self.engine.muting.silences and maintenance == self.engine.maintenance_windows:
            return
        if barrier:
            await self._checkpoint()  # a journal is replayed under the silences it was recorded with
        self.engine.set_silences(rules)
        self.engine.set_maintenance(maintenance)

    async def _step(self) -> None:
        """Tick, feed what arrived, commit (transitions + the step's journal row), publish, acknowledge, in that
        order (see the module docstring); a checkpoint when one is due."""
        assert self.engine is not None and self.store is not None
        engine = self.engine
        batch, self._inbox = self._inbox[: self.batch_max], self._inbox[self.batch_max:]
        self._stepping = len(batch)
        out = Output()
        if not self.event_clock:
            # Wall clock: tick first, so lateness is judged against the time the batch arrived.
            tick = engine.tick(self.clock())
            out.transitions.extend(tick.transitions)
            out.incidents.extend(tick.incidents)
        if batch:
            self.metrics.received.inc(len(batch))
            self._feed(batch, out)
        fed = engine.take()
        out.transitions.extend(fed.transitions)
        out.incidents.extend(fed.incidents)
        if self.event_clock and engine.watermark is not None:
            # Event clock: time is the newest event time received; timers due by it run now.
            tick = engine.tick(engine.watermark)
            out.transitions.extend(tick.transitions)
            out.incidents.extend(tick.incidents)
        # A step that received nothing and changed nothing visible is not committed: its inputs (ticks) stay in
        # the engine's journal and go out with the next commit, or are covered by the next checkpoint. Lost in a
        # crash, they are as if the service had stopped a moment earlier: nothing came out of them.
        if batch or out or self._must_commit or engine.journal_size >= IDLE_JOURNAL_MAX:
            self._must_commit = False
            records = engine.take_journal()
            journal = None
            if records:
                self._journal_seq += 1
                self._journal_since_checkpoint += len(records)
                journal = (self._journal_seq, orjson.dumps(records))
            recorded = datetime.now(UTC)
            episodes = [self._episode_write(t) for t in out.transitions]
            incidents = [self._incident_write(c) for c in out.incidents]
            result = await self._retry(self.store.commit_alerts, episodes=episodes, incidents=incidents,
                                       journal=journal, recorded_at=recorded)
            for fp in result.dropped:
                engine.operator_resolved(fp)
                self._must_commit = True  # recorded in the journal: commit it with the next step, idle or not
            for t in out.transitions:
                if t.fingerprint not in result.dropped:
                    self.metrics.transitions.inc(1, t.state)
            self._publish(result.published)
        if batch:
            self._acknowledge(batch)
            self.metrics.step_latency.observe(time.time() - batch[0].received)
        self._stepping = 0
        if self._pending_publishes:
            await self._mark_published()
        self._advance_checkpoint()

    def _advance_checkpoint(self) -> None:
        """Periodic checkpoints without a pause (between steps): start one when due, capture a few devices per
        step (the engine captures the others as they are about to change), then write it in the background
        while steps go on. Only one is written at a time, in order."""
        engine = self.engine
        assert engine is not None
        if self._capturing_at is not None:
            if not engine.continue_checkpoint(CAPTURE_DEVICES_PER_STEP):
                return
            if self._checkpoint_write is not None and not self._checkpoint_write.done():
                return  # the previous one is still being written: this one waits, captured
            state, position = engine.take_checkpoint(), self._capturing_at
            self._capturing_at = None
            self._checkpoint_write = asyncio.create_task(self._write_checkpoint(state, position),
                                                         name="alerts-checkpoint")
            self._checkpoint_write.add_done_callback(self._task_done)
            freeze_long_lived()
        elif self._checkpoint_due() and engine.journal_size == 0 and (
                self._checkpoint_write is None or self._checkpoint_write.done()):
            # No input is pending outside the journal (each busy step commits its own), so the state now is
            # exactly the state at the last committed journal row.
            engine.start_checkpoint()
            self._capturing_at = self._journal_seq
            self._journal_since_checkpoint = 0
            self._last_checkpoint = time.monotonic()

    def _checkpoint_due(self) -> bool:
        if self._journal_since_checkpoint >= self.checkpoint_records:
            return True
        return self._journal_since_checkpoint > 0 and time.monotonic() - self._last_checkpoint >= self.checkpoint_s

    async def _write_checkpoint(self, state: dict[str, bytes | None], position: int, *, retry: bool = True) -> None:
        assert self.store is not None
        began = time.monotonic()
        write = self._retry if retry else _once
        await write(self.store.checkpoint_engine, state=state, journal_seq=position, taken_at=datetime.now(UTC))
        self.metrics.checkpoints.inc()
        self.metrics.checkpoint_seconds.inc(time.monotonic() - began)

    async def _flush_journal(self, *, retry: bool = True) -> None:
        """Commit inputs not committed yet (idle ticks, operator resolves) as a journal row of their own."""
        assert self.engine is not None and self.store is not None
        records = self.engine.take_journal()
        self._must_commit = False
        if records:
            write = self._retry if retry else _once
            await write(self.store.commit_alerts, episodes=[], journal=(self._journal_seq + 1, orjson.dumps(records)),
                        recorded_at=datetime.now(UTC))
            self._journal_seq += 1

    async def _checkpoint(self, *, retry: bool = True) -> None:
        """A whole checkpoint now, at the current journal position (before a configuration change, after the
        replay at start, at a clean stop): whatever a checkpoint in progress captured plus what changed since,
        written after any earlier one. `retry=False` (stopping): one attempt, StoreUnavailable if it fails."""
        assert self.engine is not None and self.store is not None
        await self._flush_journal(retry=retry)
        state = self.engine.take_checkpoint() if self.engine.checkpointing else {}
        state.update(self.engine.snapshot())
        self._capturing_at = None
        if self._checkpoint_write is not None:
            await self._checkpoint_write
            self._checkpoint_write = None
        await self._write_checkpoint(state, self._journal_seq, retry=retry)
        self._journal_since_checkpoint = 0
        self._last_checkpoint = time.monotonic()

    def _feed(self, batch: list[Inbound], out: Output) -> None:
        """Feed a batch. On the event clock, time advances message by message, so timers of every instance
        fall due in event-time order even when one batch spans hours of a replay."""
        assert self.engine is not None
        engine = self.engine
        decode = self.decoder.decode
        readings = 0
        ticked = engine.now
        for message in batch:
            if self.event_clock and engine.watermark is not None and engine.watermark != ticked:
                ticked = engine.watermark
                step = engine.tick(ticked)
                out.transitions.extend(step.transitions)
                out.incidents.extend(step.incidents)
            received_at = datetime.fromtimestamp(message.received, UTC)
            result = decode(message.topic, message.payload, received_at)
            if result.rejects:
                self.metrics.rejected.inc(len(result.rejects))
            if result.rows:
                readings += len(result.rows)
                engine.feed_rows(result.rows)
            for event in result.events:
                engine.feed_event(event.device_id, event.ts.timestamp(), event.type, event.data)
            if result.status is not None:
                ts = result.status.ts.timestamp()
                stamped = self.event_clock and result.status.ts == received_at
                if stamped:
                    # A bare `online`/`offline` carries no event time (the decoder stamps the receive time);
                    # on the event clock it happened "now" in the stream, not at the wall-clock time. Before
                    # any event time is known there is no "now" to place it at.
                    if engine.watermark is None:
                        continue
                    ts = engine.watermark
                engine.feed_status(result.status.device_id, result.status.status, ts, clock=not stamped)
        self.metrics.readings.inc(readings)

    def _episode_write(self, t: Transition) -> EpisodeWrite:
        notify: tuple[str, ...] = ()
        if t.announce and self.notifier is not None:
            notify = self.notifier.targets_for(t.severity)
        return EpisodeWrite(
            fingerprint=t.fingerprint, rule=t.rule, kind=t.kind, device_id=t.device_id, area=t.area,
            labels=t.labels, from_state=t.from_state, state=t.state, from_severity=t.from_severity,
            severity=t.severity, peak_severity=t.peak_severity, level=t.level, value=t.value, threshold=t.threshold,
            message_vi=t.message_vi, message_en=t.message_en, started_at=to_datetime(t.started_at),
            fired_at=to_datetime(t.fired_at) if t.fired_at is not None else None, changed_at=to_datetime(t.ts),
            resolved_at=to_datetime(t.ts) if t.state == "resolved" else None, late=t.late, muted=t.muted,
            flapping=t.flapping, reason=t.reason, group_key=t.group_key,
            payload={"device_name": t.device_name, "announce": t.announce}, notify=notify,
        )

    def _incident_write(self, c: IncidentChange) -> IncidentWrite:
        notify: tuple[str, ...] = ()
        if c.announce and self.notifier is not None:
            notify = self.notifier.targets_for(c.severity)
        return IncidentWrite(
            group_key=c.group_key, rule=c.rule, area=c.area, state=c.state, severity=c.severity, members=c.members,
            peak_members=c.peak_members, title_vi=c.title_vi, title_en=c.title_en,
            opened_at=to_datetime(c.opened_at), changed_at=to_datetime(c.ts),
            resolved_at=to_datetime(c.ts) if c.state == "resolved" else None, notify=notify,
        )

    def _publish(self, items: list[tuple[int, str, dict[str, Any]]]) -> None:
        bus = self.publisher
        if bus is None:
            return
        for seq, kind, payload in items:
            if kind == "incident":
                bus.publish(incident_topic(self.prefix, payload.get("area")), orjson.dumps(payload), qos=1)
            else:
                info = bus.publish(alert_topic(self.prefix, payload.get("area"), payload.get("device_id")),
                                   orjson.dumps(payload), qos=1)
                self._pending_publishes.append((seq, info))
            self.metrics.published.inc()

    async def _mark_published(self) -> None:
        """Record transitions the broker has acknowledged (PUBACK) so a restart does not republish them."""
        assert self.store is not None
        done = [seq for seq, info in self._pending_publishes if info.is_published()]
        if not done:
            return
        self._pending_publishes = [(s, i) for s, i in self._pending_publishes if not i.is_published()]
        try:
            await self.store.mark_alerts_published(done, datetime.now(UTC))
        except StoreUnavailable:
            self.database_up = False  # harmless: they are republished (consumers dedupe on seq)

    async def _publish_outbox(self) -> None:
        """Publish transitions committed but not yet published: operator actions (ack, resolve from the CLI or
        the web API) and, after a crash, the engine's own."""
        assert self.store is not None and self.engine is not None
        inflight = {seq for seq, _ in self._pending_publishes}
        try:
            rows = await self.store.unpublished_alert_transitions()
        except StoreUnavailable:
            self.database_up = False
            return
        items = []
        for seq, payload, actor in rows:
            if seq in inflight:
                continue
            if actor != "engine" and payload.get("state") == "resolved":
                self.engine.operator_resolved(payload["fingerprint"])
                self._must_commit = True
            items.append((seq, "alert", payload))
        if items:
            self._publish(items)

    def _acknowledge(self, batch: list[Inbound]) -> None:
        bus = self.bus
        if bus is not None:
            ack = bus.ack
            for message in batch:
                if message.delivery is not None:
                    ack(message.delivery)  # the acks of one step leave in one socket write
        self.unacked = len(self._inbox)
        self.metrics.acked.inc(len(batch))
        if bus is not None and bus.paused and self.unacked <= self.max_unacked // 2:
            bus.resume_reading()


async def _once(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await fn(*args, **kwargs)


def freeze_long_lived() -> None:
    """Collect, then move every object alive now out of the collector's sight (gc.freeze). The engine holds
    hundreds of thousands of long-lived objects (instances, windows, rate histories, routes) that it builds
    lazily as devices first report; every full collection traversed them all, and a step that happened to
    trigger one stalled for it (py-spy under bench.alerts: ~15 % of the service's time on one allocation line).
    Called at start and after each checkpoint; frozen objects are still freed by reference counting."""
    gc.collect()
    gc.freeze()


async def run(config: Config, *, stop: asyncio.Event | None = None,
              reload: asyncio.Event | None = None) -> int:
    """Run `occ alerts` until `stop` is set; `reload` (SIGHUP) reloads the rules."""
    service = AlertsService.from_config(config)
    stop = stop or asyncio.Event()
    try:
        # A start that waits for a database or broker that is not there yet must still end on a signal.
        if not await unless_stopped(service.start(), stop):
            return 0
        while not stop.is_set():
            waiters = [asyncio.ensure_future(stop.wait())]
            if reload is not None:
                waiters.append(asyncio.ensure_future(reload.wait()))
            _done, pending = await asyncio.wait(waiters, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            for w in pending:
                w.cancel()
            if reload is not None and reload.is_set():
                reload.clear()
                service.request_reload()
            if service.failed is not None:
                return 1
    finally:
        await service.stop()
    return 0
