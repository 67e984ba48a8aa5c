"""The ingest service: MQTT (QoS 1, persistent session, shared subscription) → decode → COPY → ack.

Pipeline, all on one asyncio loop:

    socket ─▶ occ.mqtt (bulk parse) ─▶ IngestFlow ─▶ decode ─▶ writers ─▶ Store.write_batch ─▶ IngestFlow ─▶ ack

The MQTT receive path is `occ.mqtt` (transport "native", the default: one large read parsed in bulk, the acks
of a committed batch in one write) or paho through `occ.bus` (transport "paho", the fallback); both deliver
the same `Delivery` handles and take the same ack/pause/resume calls.

Every decision — when to flush a batch, in which order to acknowledge, when to stop and resume reading, when
and how to retry a write, when to isolate a poison message — is taken by the pure core `ingest.flow.IngestFlow`
(tested with a fake clock in tests/unit/test_flow.py). This module is wiring: it feeds the core what happened
(a message, a commit, a failure, the clock) and carries out the actions it returns.

* Nothing lost: a message is acknowledged only after the transaction holding its readings (or its dead
  letter) commits. If the process dies, the broker redelivers what was not acknowledged.
* Nothing duplicated: writes are idempotent on (device, metric, ts), so redelivery is harmless.
* Bounded: at most `max_unacked` messages and `max_unacked_bytes` payload bytes are held; at either bound the
  socket is no longer read, so TCP backpressure holds the broker (whose queues are configured to queue, not
  drop). Acks still go out.
* Database down: batches are retried with capped exponential backoff and jitter; reading stops at the bound;
  the MQTT connection stays up; on recovery everything held is written and acknowledged in order.
* No silent stalls: every task this service starts (decode, writers, housekeeping, the MQTT connection) is
  supervised. One that crashes marks the service unhealthy, is logged once with its cause, and ends `run()`
  with exit code 1 so that `occ up` (or compose) restarts the worker; what it held unacknowledged is
  redelivered by the broker.
* Draining (`drain()`; `occ ingest` does it on SIGUSR1, `occ ingest --drain` for the session of a worker that
  is gone): unsubscribe, write and acknowledge everything held and everything the broker still had queued for
  this session, then end the session (session expiry 0 on DISCONNECT) so the share group's other members get
  the whole stream.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as paho

from ingest.flow import (
    Ack,
    Action,
    Failure,
    Flush,
    IngestFlow,
    Isolate,
    Pause,
    Resume,
    RetryAt,
    StoreDown,
    StoreRecovered,
    TickAt,
    Write,
)
from occ.bus import Delivery, MqttClient
from occ.catalog import Catalog
from occ.codecs import Decoder
from occ.config import Config
from occ.errors import ConfigError, StoreUnavailable
from occ.http import start_health_server
from occ.lifecycle import unless_stopped
from occ.metrics import Registry
from occ.models import DeadLetter, Decoded, Event, ReadingRow, RejectCode, StatusChange
from occ.mqtt.protocol import Publish
from occ.mqtt.transport import MqttSubscriber
from occ.stalls import StallWatch, watch_loop
from occ.store import Store, WriteResult

log = logging.getLogger(__name__)

REGISTRY_REFRESH_S = 30.0
REGISTRY_RELOAD_S = 600.0
UNKNOWN_CHECK_MIN_S = 0.1
"""Batches with unknown devices re-check the registry, at most this often (a flood of unknown ids must not
turn into a query per batch)."""
POISON_ATTEMPTS = 3
"""A batch that fails this often with an error that is not an outage is written message by message, so one
message the database refuses goes to dead letters instead of blocking the stream."""
MAINTENANCE_EVERY_S = 300.0
MAINTENANCE_BUSY_SHARE = 0.5
"""Store maintenance inside ingest works at most half of the time it runs (its rollup steps are paced): a burst
of it on a busy machine showed as a burst of publish->commit latency (issue 8)."""
DECODE_SLICE = 500
"""Messages decoded between two yields to the event loop. A 5,000-message batch is ~25 ms of decoding; in one
piece it delayed every round trip of the writes in flight by that much."""
TRANSPORTS = ("native", "paho")
_EPOCH = datetime.fromtimestamp(0, UTC)
GC_YOUNG_THRESHOLD = 100_000
"""Collect the young generation after this many more container allocations than frees (CPython's default: 700).
A batch holds every message's decoded form until its commit: with the default, those objects survive many young
collections and are promoted and traversed again and again by the older ones. Measured on (b)-shaped batches:
~1.4 µs of a ~3.7 µs decode per reading went to the collector at 700, ~0 at 100,000. Memory is freed by
reference counting as before; only cyclic garbage waits longer, at most this many objects (issue 8)."""


@dataclass(slots=True)
class Inbound:
    """One received MQTT message, as cheap to build as possible (this is per message)."""

    topic: str
    payload: bytes
    received: float
    delivery: Delivery | int | None
    """What the transport's `ack` takes: a paho-path `Delivery`, or the native path's int handle."""


@dataclass(slots=True)
class DecodedBatch:
    messages: list[Inbound]
    results: list[Decoded] = field(default_factory=list)
    """One per message, kept so a poisoned batch can be written message by message without decoding again."""
    seq: int = 0
    rows: list[ReadingRow] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    statuses: list[StatusChange] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    unprovisioned: dict[str, str] = field(default_factory=dict)
    reject_codes: dict[RejectCode, int] = field(default_factory=dict)
    result: WriteResult | None = None


class IngestMetrics:
    def __init__(self, service: IngestService) -> None:
        r = self.registry = Registry()
        self.received = r.counter("occ_ingest_messages_received_total", "MQTT messages received")
        self.acked = r.counter("occ_ingest_messages_acked_total", "Messages acknowledged after commit")
        self.readings_written = r.counter("occ_ingest_readings_written_total", "Readings stored")
        self.duplicates = r.counter("occ_ingest_readings_duplicate_total",
                                    "Readings already stored (redelivery or device retry)")
        self.events_written = r.counter("occ_ingest_events_written_total", "Device events stored")
        self.dead_lettered = r.counter("occ_ingest_dead_letters_total",
                                       "Rejected parts of messages (the message goes to dead letters), by code",
                                       ["code"])
        self.batches = r.counter("occ_ingest_batches_total", "Batches committed")
        self.write_retries = r.counter("occ_ingest_write_retries_total",
                                       "Batch writes retried (database down, deadlock, stale connection)")
        self.batch_size = r.histogram("occ_ingest_batch_messages", "Messages per committed batch",
                                      [1, 10, 100, 500, 1000, 2000, 5000, 10000])
        self.latency = r.histogram("occ_ingest_receive_to_commit_seconds",
                                   "From receiving a batch's oldest message to its commit",
                                   [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30])
        self.write_time = r.histogram("occ_ingest_write_seconds",
                                      "One batch's write to the store, from the writer taking it to its commit "
                                      "(failed attempts included)",
                                      [0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30])
        r.gauge("occ_ingest_unacked_messages", "Messages held, not yet acknowledged", fn=lambda: service.unacked)
        r.gauge("occ_ingest_unacked_bytes", "Payload bytes held, not yet acknowledged",
                fn=lambda: service.flow.unacked_bytes)
        r.gauge("occ_ingest_queue_limit", "Bound on unacknowledged messages", fn=lambda: service.max_unacked)
        r.gauge("occ_ingest_queue_bytes_limit", "Bound on unacknowledged payload bytes",
                fn=lambda: service.flow.max_unacked_bytes)
        r.gauge("occ_ingest_healthy", "0 once a supervised task crashed (the worker is exiting)",
                fn=lambda: float(service.failure is None))
        r.gauge("occ_ingest_reading_paused", "1 while the socket is not read (queue full)",
                fn=lambda: float(service.bus.paused) if service.bus else 0.0)
        r.gauge("occ_ingest_database_up", "1 when the last database operation succeeded",
                fn=lambda: float(service.database_up))
        r.gauge("occ_ingest_mqtt_connected", "1 while connected to the broker",
                fn=lambda: float(bool(service.bus and service.bus.connected.is_set())))
        r.gauge("occ_ingest_devices_known", "Devices in the registry", fn=lambda: len(service.devices))
        self.rollup_lag = r.gauge("occ_rollup_lag_seconds",
                                  "How long the oldest hour waiting for its rollup has been due (0: maintenance "
                                  "keeps up), as of this worker's last maintenance run")


class IngestService:
    def __init__(
        self,
        *,
        mqtt_url: str,
        database_url: str,
        client_id: str = "occ-ingest",
        share_group: str | None = "occ-ingest",
        topic_prefix: str = "occ/v1",
        batch_max: int = 5000,
        linger_s: float = 0.01,
        read_coalesce_s: float = 0.002,
        flush_when_idle: bool = True,
        max_unacked: int = 50_000,
        max_unacked_bytes: int = 64 * 1024 * 1024,
        max_payload_bytes: int = 1_048_576,
        max_future_s: float = 300,
        max_past_s: float = 400 * 86400,
        auto_register: bool = False,
        local_tz: str = "Asia/Ho_Chi_Minh",
        http_host: str = "127.0.0.1",
        http_port: int | None = 9101,
        retry_max_s: float = 30.0,
        session_expiry_s: int = 7 * 24 * 3600,
        keepalive_s: int = 30,
        pool_size: int = 4,
        writers: int = 2,
        drain_quiet_s: float = 1.0,
        transport: str = "native",
        store_options: dict[str, Any] | None = None,
        catalog: Catalog | None = None,
    ) -> None:
        if transport not in TRANSPORTS:
            raise ConfigError(f"ingest.transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
        self.transport = transport
        self.mqtt_url = mqtt_url
        self.database_url = database_url
        self.client_id = client_id
        self.share_group = share_group
        self.prefix = topic_prefix
        self.max_unacked = max_unacked
        self.retry_max_s = retry_max_s
        self.http_host = http_host
        self.http_port = http_port
        self.bound_http_port: int | None = None
        self.catalog = catalog or Catalog.default()
        self.devices: dict[str, Any] = {}
        self.decoder = Decoder(
            self.catalog, self.devices, prefix=topic_prefix, max_payload_bytes=max_payload_bytes,
            max_future_s=max_future_s, max_past_s=max_past_s, local_tz=local_tz, auto_register=auto_register,
        )
        # Two batches beyond the writers: the next one is decoded while both writers are busy.
        self.flow: IngestFlow[Inbound] = IngestFlow(
            batch_max=batch_max, linger_s=linger_s, max_unacked=max_unacked, max_unacked_bytes=max_unacked_bytes,
            max_batches=writers + 2, clock=time.monotonic, random=random.random,
            retry_initial_s=min(0.25, retry_max_s), retry_max_s=retry_max_s,
            poison_attempts=POISON_ATTEMPTS, flush_when_idle=flush_when_idle,
        )
        self._session_expiry_s = session_expiry_s
        self._keepalive_s = keepalive_s
        self._pool_size = pool_size
        self._store_options = store_options or {}
        self._drain_quiet_s = drain_quiet_s
        self._read_coalesce_s = read_coalesce_s
        self.store: Store | None = None
        self.bus: MqttClient | MqttSubscriber | None = None
        self.database_up = False
        self.writers = writers
        # Both queues are bounded by the flow (at most `max_batches` batches are out); never full.
        self._decodes: asyncio.Queue[Flush[Inbound]] = asyncio.Queue()
        self._writes: asyncio.Queue[Write] = asyncio.Queue()
        self._batches: dict[int, DecodedBatch] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._http_runner: Any = None
        self._last_registry_check = 0.0
        self._registry_version: tuple[int, datetime | None] = (0, None)
        self._gateway_accounts: frozenset[str] = frozenset()
        self._registry_stale = False
        self._store_retries_seen = 0
        self._last_received = 0.0
        self._stopping = False
        self.draining = False
        self.failure: BaseException | None = None
        self.failed = asyncio.Event()
        """Set when a supervised task crashed: the worker must exit non-zero (see `run`)."""
        self.metrics = IngestMetrics(self)
        self.stalls = StallWatch(self.metrics.registry, "occ_ingest")
        self._unhook_gc: Callable[[], None] | None = None
        self.started = asyncio.Event()

    @classmethod
    def from_config(cls, config: Config, **overrides: Any) -> IngestService:
        ing, db, mqtt = config.ingest, config.database, config.mqtt
        if not db.url or not mqtt.url:
            raise ValueError("ingest needs database.url and mqtt.url (OCC_DATABASE_URL, OCC_MQTT_URL)")
        options: dict[str, Any] = dict(
            mqtt_url=mqtt.url, database_url=db.url, client_id=ing.client_id,
            share_group=ing.share_group if ing.shared else None, topic_prefix=mqtt.topic_prefix,
            batch_max=ing.batch_max, linger_s=ing.linger_ms / 1000,
            read_coalesce_s=ing.read_coalesce_ms / 1000, writers=ing.writers, flush_when_idle=ing.flush_when_idle,
            max_unacked=ing.max_unacked,
            max_unacked_bytes=ing.max_unacked_mb * 1024 * 1024,
            max_payload_bytes=ing.max_payload_bytes, max_future_s=ing.max_future_s,
            max_past_s=ing.max_past_days * 86400, auto_register=ing.auto_register, local_tz=config.site.timezone,
            http_host=ing.http_host, http_port=ing.http_port, retry_max_s=ing.retry_max_s,
            session_expiry_s=mqtt.session_expiry_s, keepalive_s=mqtt.keepalive_s, pool_size=db.pool_size,
            transport=ing.transport,
            store_options=dict(timescaledb=db.timescaledb, retention_days=db.retention_days,
                               compress_after_days=db.compress_after_days, partition_days=db.partition_days,
                               partitions_ahead=db.partitions_ahead, timezone=config.site.timezone),
            catalog=Catalog.load(config.config_path / "metrics.yaml")
            if (config.config_path / "metrics.yaml").exists() else None,
        )
        options.update(overrides)
        return cls(**options)

    @property
    def unacked(self) -> int:
        return self.flow.unacked

    # -- lifecycle ----------------------------------------------------------------------------------
    @property
    def topics(self) -> list[str]:
        base = f"{self.prefix}/+/+/+"
        return [f"$share/{self.share_group}/{base}" if self.share_group else base]

    async def start(self, *, subscribe: bool = True) -> None:
        """Connect and start consuming. `subscribe=False` only resumes the persistent session (for `drain`)."""
        if self.http_port is not None:
            self._http_runner, self.bound_http_port = await start_health_server(
                self.metrics.registry, self.health, host=self.http_host, port=self.http_port)
        self.store = await self._connect_store()
        await self._refresh_registry()
        if self.transport == "native":
            self.bus = MqttSubscriber(
                self.mqtt_url, client_id=self.client_id, on_publishes=self._on_publishes, clean_start=False,
                session_expiry_s=self._session_expiry_s, keepalive_s=self._keepalive_s,
                read_coalesce_s=self._read_coalesce_s,
            )
        else:
            self.bus = MqttClient(
                self.mqtt_url, client_id=self.client_id, on_message=self._on_message, manual_ack=True,
                clean_start=False, session_expiry_s=self._session_expiry_s, keepalive_s=self._keepalive_s,
            )
        if subscribe:
            for topic in self.topics:
                self.bus.subscribe(topic, qos=1)
        self._supervise(self._decode_loop(), "decode")
        for i in range(self.writers):
            self._supervise(self._write_loop(), f"write-{i}")
        self._supervise(self._housekeeping_loop(), "housekeeping")
        self._supervise(watch_loop(self.stalls), "stall-watch")
        self._unhook_gc = self.stalls.install_gc()
        await self.bus.start(wait=True, timeout=60)
        if self.bus.task is not None:
            self._watch(self.bus.task, "mqtt")
        self.started.set()
        log.info("ingest %s consuming %s (store: %s, health and metrics on http://%s:%s)", self.client_id,
                 ", ".join(self.topics), self.store.mode, self.http_host, self.bound_http_port)

    async def _connect_store(self) -> Store:
        delay = 0.5
        while True:
            try:
                store = await Store.connect(
                    self.database_url, pool_size=self._pool_size, **{"pool_warm": True, **self._store_options}
                )
                self.database_up = True
                return store
            except StoreUnavailable as exc:
                if delay == 0.5:
                    log.warning("database unavailable at start (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)

    # -- supervision --------------------------------------------------------------------------------
    def _supervise(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=f"ingest-{name}")
        self._tasks.append(task)
        self._watch(task, name)

    def _watch(self, task: asyncio.Task[Any], name: str) -> None:
        def done(task: asyncio.Task[Any]) -> None:
            if task.cancelled():
                return
            exc = task.exception()
            if exc is None and self._stopping:
                return  # the MQTT task ends when the connection is closed on purpose
            self.crashed(exc if exc is not None else RuntimeError(f"task {name} ended"), name)

        task.add_done_callback(done)

    def crashed(self, exc: BaseException, where: str) -> None:
        """A supervised task or callback failed: unhealthy now, logged once, and `run()` exits non-zero."""
        if self.failure is not None:
            return
        self.failure = exc
        self.failed.set()
        if self.bus is not None:
            self.bus.pause_reading()  # hold nothing more; what is held is redelivered after the restart
        log.error("ingest %s: %s crashed (%s: %s); exiting so that the worker is restarted, %d unacknowledged "
                  "messages will be redelivered", self.client_id, where, type(exc).__name__, exc, self.unacked,
                  exc_info=exc)

    # -- stopping and draining ----------------------------------------------------------------------
    async def stop(self, *, drain_timeout: float = 10.0) -> None:
        """Stop reading, write and acknowledge what is held (bounded by `drain_timeout`), then disconnect.

        After a crash nothing more is written or acknowledged: the broker redelivers it to the next worker."""
        if self.bus:
            self.bus.pause_reading()
        if self.failure is None:
            self._apply(self.flow.drain())
            deadline = time.monotonic() + drain_timeout
            while not self.flow.idle and time.monotonic() < deadline and self.database_up and self.failure is None:
                await asyncio.sleep(0.02)
        await self._shutdown()

    async def drain(self, *, timeout: float = 60.0) -> bool:
        """Leave the share group for good: unsubscribe, write and acknowledge everything held and everything
        the broker still delivers to this session, then end the session (expiry 0). True when nothing was left.

        The broker may still send messages it had queued for this session after the UNSUBACK; the session ends
        only once `drain_quiet_s` passed with nothing received and nothing held (and the bound is respected
        meanwhile: reading pauses and resumes as usual)."""
        assert self.bus is not None
        self.draining = True
        log.info("ingest %s draining: leaving %s", self.client_id, ", ".join(self.topics))
        deadline = time.monotonic() + timeout
        self._apply(self.flow.drain())
        for topic in self.topics:
            try:
                await self.bus.unsubscribe(topic, timeout=max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                log.warning("no UNSUBACK for %s", topic)
        while time.monotonic() < deadline and self.failure is None:
            quiet = time.time() - self._last_received >= self._drain_quiet_s
            if self.flow.idle and quiet and self.bus.connected.is_set():
                break
            await asyncio.sleep(0.05)
        clean = self.flow.idle and self.failure is None
        self._stopping = True
        if clean:
            await self.bus.close(session_expiry_s=0)
            log.info("ingest %s drained: session ended, %d messages acknowledged", self.client_id,
                     int(self.metrics.acked.get()))
        else:
            log.error("ingest %s could not drain within %.0f s (%d messages held); the session is kept",
                      self.client_id, timeout, self.unacked)
        await self._shutdown()
        return clean

    async def _shutdown(self) -> None:
        self._stopping = True
        if self._unhook_gc is not None:
            self._unhook_gc()
            self._unhook_gc = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                pass  # already reported by the supervisor
        if self.bus:
            await self.bus.close()
        if self.store:
            await self.store.close()
        if self._http_runner:
            await self._http_runner.cleanup()

    def health(self) -> dict[str, Any]:
        mqtt_ok = bool(self.bus and self.bus.connected.is_set())
        return {
            "ok": mqtt_ok and self.database_up and self.failure is None,
            "service": "ingest",
            "client_id": self.client_id,
            "mqtt_connected": mqtt_ok,
            "database_up": self.database_up,
            "unacked": self.unacked,
            "unacked_bytes": self.flow.unacked_bytes,
            "paused": bool(self.bus and self.bus.paused),
            "draining": self.draining,
            "crashed": None if self.failure is None else type(self.failure).__name__,
            "store_mode": self.store.mode if self.store else None,
            **self.stalls.summary(),
        }

    # -- carrying out the flow's actions ------------------------------------------------------------
    def _apply(self, actions: Sequence[Action[Inbound]]) -> None:
        for action in actions:
            if type(action) is Ack:
                self._acknowledge(action.seq)
            elif type(action) is Flush:
                self._decodes.put_nowait(action)
            elif type(action) is Write:
                self._writes.put_nowait(action)
            elif type(action) is TickAt:
                self._arm_timer(action.at)
            elif type(action) is Pause:
                if self.bus is not None:
                    self.bus.pause_reading()
            elif type(action) is Resume:
                if self.bus is not None and self.failure is None:
                    self.bus.resume_reading()
            elif type(action) is RetryAt:
                self.metrics.write_retries.inc()
            elif type(action) is Isolate:
                log.warning("a batch of %d messages failed %d times; writing it message by message",
                            len(self._batches[action.seq].messages), POISON_ATTEMPTS)
            elif type(action) is StoreDown:
                self.database_up = False
            elif type(action) is StoreRecovered:
                self.database_up = True
                log.warning("database recovered after %.1f s; catching up", action.down_s)

    def _arm_timer(self, at: float) -> None:
        if self._timer is not None and self._timer_at <= at:
            return  # the earlier tick asks again for the later deadline
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.get_running_loop().call_later(max(0.0, at - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self._apply(self.flow.tick())
        except Exception as exc:  # a callback has no task to supervise: report it the same way
            self.crashed(exc, "timer")

    # -- receive path (per message: keep it minimal) -------------------------------------------------
    def _on_message(self, message: paho.MQTTMessage, delivery: Delivery) -> None:
        try:
            payload = bytes(message.payload)
            received = self._last_received = time.time()
            item = Inbound(message._topic.decode("utf-8", "replace"), payload, received,
                           delivery if message.qos else None)
            actions = self.flow.received(item, len(payload))
            if actions:
                self._apply(actions)
            actions = self.flow.settle()  # paho hands over one message at a time
            if actions:
                self._apply(actions)
        except Exception as exc:  # called by paho from a reader callback: no task would see it
            self.crashed(exc, "receive")

    def _on_publishes(self, publishes: list[Publish], generation: int) -> None:
        """The native transport's bulk hand-over: every PUBLISH of one socket read, in arrival order."""
        try:
            received = self._last_received = time.time()
            flow_received = self.flow.received
            base = generation << 16  # occ.mqtt.transport.handle(), inlined: this loop runs per message
            for p in publishes:
                payload = bytes(p.payload)  # the read buffer is shared by the whole read: keep only this message
                item = Inbound(p.topic, payload, received, base | p.packet_id if p.qos else None)
                actions = flow_received(item, len(payload))
                if actions:
                    self._apply(actions)
            actions = self.flow.settle()
            if actions:
                self._apply(actions)
        except Exception as exc:  # called from the transport's data callback: no task would see it
            self.crashed(exc, "receive")

    async def _decode_loop(self) -> None:
        """Decode flushed batches in order and hand them to the writers."""
        while True:
            flush = await self._decodes.get()
            messages = flush.items
            self.metrics.received.inc(len(messages))
            if self._registry_stale:  # devices were registered by a committed batch (set on the ack path)
                self._registry_stale = False
                await self._refresh_registry()
            results: list[Decoded] = []
            for start in range(0, len(messages), DECODE_SLICE):
                if start:
                    await asyncio.sleep(0)  # let a writer whose database answered go on (see DECODE_SLICE)
                results += self._decode(messages[start:start + DECODE_SLICE])
            unknown = [i for i, r in enumerate(results) if RejectCode.UNKNOWN_DEVICE in r.reject_counts]
            if unknown and await self._registry_changed():
                for i in unknown:  # only the messages that named an unknown device are decoded again
                    results[i] = self._decode_one(messages[i])
            batch = self._assemble(messages, results)
            batch.seq = flush.seq
            self._batches[flush.seq] = batch
            self._writes.put_nowait(Write(flush.seq, isolate=False))

    def _decode(self, messages: list[Inbound]) -> list[Decoded]:
        decode = self.decoder.decode
        out = []
        received = -1.0
        now = _EPOCH
        for m in messages:
            if m.received != received:  # one receive time per socket read: convert it once (~0.7 µs each)
                received = m.received
                now = datetime.fromtimestamp(received, UTC)
            out.append(decode(m.topic, m.payload, now))
        return out

    def _decode_one(self, message: Inbound) -> Decoded:
        return self.decoder.decode(message.topic, message.payload, datetime.fromtimestamp(message.received, UTC))

    def _assemble(self, messages: list[Inbound], results: list[Decoded]) -> DecodedBatch:
        batch = DecodedBatch(messages, results)
        rows = batch.rows
        codes = batch.reject_codes
        for message, result in zip(messages, results, strict=True):
            if result.rows:
                rows.extend(result.rows)
            if result.events:
                batch.events.extend(result.events)
            if result.status is not None:
                batch.statuses.append(result.status)
            if result.unknown_devices:
                kind = message.topic[len(self.prefix) + 1 :].split("/", 1)[0]
                for device_id in result.unknown_devices:
                    batch.unprovisioned[device_id] = kind
            if result.rejects:
                stored = result.stored
                reason = result.reject_text()
                if stored:
                    reason = f"partly stored ({stored} items kept): {reason}"
                batch.dead_letters.append(
                    DeadLetter(datetime.fromtimestamp(message.received, UTC), message.topic, message.payload, reason,
                               result.rejects[0].code, self.decoder.device_of(message.topic))
                )
                for code, count in result.reject_counts.items():
                    codes[code] = codes.get(code, 0) + count
        return batch

    async def _registry_changed(self) -> bool:
        """Reload the registry if devices were added or changed since the last load.

        Checked after the message arrived, so a device imported before it published is always found (a timer
        alone would dead-letter its first messages)."""
        assert self.store is not None
        wait = self._last_registry_check + UNKNOWN_CHECK_MIN_S - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self._last_registry_check = time.monotonic()
        return await self._refresh_registry(if_changed=True)

    async def _refresh_registry(self, *, if_changed: bool = False) -> bool:
        """Load the device registry and the gateway accounts; True when the devices were (re)loaded. `if_changed`:
        reload the devices only when the registry's version differs from the one loaded (the periodic check and
        the unknown-device check). Loading 7,000 devices holds this worker's event loop for 60-100 ms on an idle
        machine, several times that on a busy one: done every 30 s by each worker, it was a burst of
        publish->commit latency every ~15 s with two workers (issue 8)."""
        assert self.store is not None
        try:
            version = await self.store.devices_version()  # before the list: a change in between reloads again
            # Gateways with MQTT credentials, revoked ones included (issue 7): revoking never widens what a
            # gateway's payloads may carry (messages still in flight when it is revoked stay held to its devices).
            gateways = frozenset(a.username for a in await self.store.credentials.accounts(role="gateway"))
            devices = None if if_changed and version == self._registry_version else await self.store.list_devices()
        except StoreUnavailable:
            return False
        if devices is not None:
            self.devices = {d.id: d for d in devices}
            self.decoder.set_devices(self.devices)
            self._registry_version = version
        if devices is not None or gateways != self._gateway_accounts:
            self.decoder.set_gateway_accounts(gateways)
            self._gateway_accounts = gateways
        return devices is not None

    # -- write path ---------------------------------------------------------------------------------
    async def _write_loop(self) -> None:
        """One of `writers` concurrent writers: batch k+1's COPY overlaps batch k's commit (bench/README.md).

        The flow decides what happens next (ack in order, retry later, isolate); a failed write is not retried
        here, so a writer is free for the next batch while one waits out its backoff."""
        while True:
            job = await self._writes.get()
            batch = self._batches[job.seq]
            began = time.monotonic()
            try:
                result = await (self._write_isolated(batch) if job.isolate else self._write(batch))
            except StoreUnavailable as exc:
                if self.flow.store_up:
                    log.error("database unavailable (%s); holding %d messages unacknowledged and retrying",
                              exc, self.unacked)
                self._apply(self.flow.failed(job.seq, Failure.OUTAGE))
                continue
            except Exception as exc:
                # Not recognised as an outage (e.g. asyncpg's InternalClientError from a connection broken by a
                # server shutdown, or a message the database refuses): keep the batch and retry; after
                # POISON_ATTEMPTS the flow isolates it message by message.
                if self.flow.store_up:
                    log.error("writing a batch of %d messages failed (%s: %s); holding it and retrying",
                              len(batch.messages), type(exc).__name__, exc)
                self._apply(self.flow.failed(job.seq, Failure.ERROR))
                continue
            finally:
                self.metrics.write_time.observe(time.monotonic() - began)
            batch.result = result
            self._apply(self.flow.committed(job.seq))

    def _acknowledge(self, seq: int) -> None:
        batch = self._batches.pop(seq)
        result = batch.result
        assert result is not None
        committed = time.time()
        bus = self.bus
        if bus is not None:
            for message in batch.messages:
                if message.delivery is not None:
                    bus.ack(message.delivery)  # type: ignore[arg-type]  # each transport gets its own handles
        n = len(batch.messages)
        m = self.metrics
        m.acked.inc(n)
        m.batches.inc()
        m.batch_size.observe(n)
        m.latency.observe(committed - batch.messages[0].received)
        m.readings_written.inc(result.inserted)
        m.duplicates.inc(result.duplicates)
        m.events_written.inc(result.events_inserted)
        for code, count in batch.reject_codes.items():
            m.dead_lettered.inc(count, code)
        if batch.unprovisioned:
            self._registry_stale = True  # reloaded before the next decode: no database round trip here

    async def _write(self, batch: DecodedBatch) -> WriteResult:
        store = self.store
        assert store is not None
        try:
            return await store.write_batch(
                batch.rows, events=batch.events, statuses=batch.statuses, dead_letters=batch.dead_letters,
                unprovisioned=batch.unprovisioned or None, received_at=datetime.now(UTC),
            )
        finally:  # retries the store made inside write_batch (deadlock, stale connection) count too
            if store.write_retries > self._store_retries_seen:
                self.metrics.write_retries.inc(store.write_retries - self._store_retries_seen)
                self._store_retries_seen = store.write_retries

    async def _write_isolated(self, batch: DecodedBatch) -> WriteResult:
        """Write message by message; one the database refuses goes to dead letters with the error as reason.

        Outages (StoreUnavailable) still propagate: they are retried, never dead-lettered."""
        total = WriteResult(inserted=0, duplicates=0)
        for message, decoded in zip(batch.messages, batch.results, strict=True):
            single = self._assemble([message], [decoded])
            try:
                result = await self._write(single)
            except StoreUnavailable:
                raise
            except Exception as exc:
                reason = f"store rejected the message: {type(exc).__name__}: {exc}"
                log.error("dead-lettering a message on %s that the database refuses: %s", message.topic, exc)
                letter = DeadLetter(datetime.fromtimestamp(message.received, UTC), message.topic, message.payload,
                                    reason, RejectCode.STORE_REJECTED, self.decoder.device_of(message.topic))
                result = await self._write(DecodedBatch([message], dead_letters=[letter]))
                codes = batch.reject_codes
                codes[RejectCode.STORE_REJECTED] = codes.get(RejectCode.STORE_REJECTED, 0) + 1
            total = WriteResult(
                inserted=total.inserted + result.inserted, duplicates=total.duplicates + result.duplicates,
                events_inserted=total.events_inserted + result.events_inserted,
                dead_lettered=total.dead_lettered + result.dead_lettered,
            )
        return total

    async def _housekeeping_loop(self) -> None:
        """Registry refresh and store maintenance (plain path: partitions ahead, rollups, retention).

        The registry is checked every ~30 s and reloaded when its version changed; reloaded whatever the version
        says every `REGISTRY_RELOAD_S` (a change the version cannot see: an update committed with an older
        `updated_at` than one already seen)."""
        last_maintenance = 0.0
        last_reload = time.monotonic()
        while True:
            await asyncio.sleep(REGISTRY_REFRESH_S * (0.8 + 0.4 * random.random()))
            reload = time.monotonic() - last_reload >= REGISTRY_RELOAD_S
            if reload:
                last_reload = time.monotonic()
            await self._refresh_registry(if_changed=not reload)
            if self.store is not None and time.monotonic() - last_maintenance >= MAINTENANCE_EVERY_S:
                last_maintenance = time.monotonic()
                try:
                    report = await self.store.maintain(busy_share=MAINTENANCE_BUSY_SHARE)
                    if not report.skipped:
                        self.metrics.rollup_lag.set(report.lag_s)
                except StoreUnavailable:
                    pass
                except Exception as exc:
                    log.error("store maintenance failed (%s: %s); trying again in %.0f s", type(exc).__name__, exc,
                              MAINTENANCE_EVERY_S)


def tune_gc() -> None:
    """For an ingest process: what was loaded so far (modules, catalog) is never traversed again, and young
    collections are rare (`GC_YOUNG_THRESHOLD`)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def loop_exception_handler(
    crashed: Callable[[BaseException, str], None],
) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """The event loop's handler for ingest: an exception that escaped a callback or an unwatched task is a bug and
    crashes the worker like a failed supervised task (it is restarted, nothing acknowledged is lost).

    A report that carries no exception is a library's diagnostic, not a failure of ours: asyncpg reports
    "Resetting connection with an active transaction" this way when the database dies under a COPY, and then
    rolls back and carries on (or the connection fails, which the writer handles). Crashing on it restarted the
    worker on every database crash, so it is logged once per occurrence instead. The decision is by the
    presence of an exception object, never by the message text."""

    def unhandled(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, BaseException):
            crashed(exc, "event loop")
        else:
            log.warning("event loop: %s", context.get("message", "(no message)"))

    return unhandled


async def run(config: Config, *, stop: asyncio.Event | None = None, drain: asyncio.Event | None = None,
              drain_only: bool = False) -> int:
    """Run one ingest worker; returns the process exit code.

    Ends with 0 when `stop` is set (the CLI sets it on SIGINT/SIGTERM; what is held is written and acknowledged
    first) or after a drain (`drain` set — SIGUSR1 — or `drain_only`: resume this client id's session and drain
    it at once); with 1 when a supervised task crashed (see `IngestService.crashed`)."""
    service = IngestService.from_config(config)
    tune_gc()
    stop = stop or asyncio.Event()
    drain = drain or asyncio.Event()
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()

    loop.set_exception_handler(loop_exception_handler(service.crashed))
    try:
        # A start can wait for ever (no database, a refusing broker): a stop signal must end it (issue 11 item 4).
        if not await unless_stopped(service.start(subscribe=not drain_only), stop):
            await service.stop()
            return 0
        if drain_only:
            drain.set()
        waits = {asyncio.ensure_future(e.wait()) for e in (stop, drain, service.failed)}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if service.failure is None and drain.is_set() and not stop.is_set():
            drained = asyncio.ensure_future(service.drain())
            interrupted = asyncio.ensure_future(stop.wait())
            await asyncio.wait({drained, interrupted}, return_when=asyncio.FIRST_COMPLETED)
            interrupted.cancel()
            if drained.done():
                return 0 if drained.result() and service.failure is None else 1
            drained.cancel()
            try:
                await drained
            except asyncio.CancelledError:
                pass
        await service.stop()
        return 1 if service.failure is not None else 0
    finally:
        loop.set_exception_handler(previous)
