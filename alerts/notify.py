"""Webhook notifications: JSON POST with retries, exponential backoff and a per-target rate limit, plus
escalation steps while an alert stays unacknowledged.

Restart-safe by construction: what to send is an outbox table (`alert_notifications`) written in the same
transaction as the transition that caused it; this loop only sends and records the outcome. A target that is
rate-limited keeps its notifications queued (they go out later, in order), never dropped.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from alerts.rules import RuleSet, WebhookTarget
from occ.errors import StoreUnavailable

log = logging.getLogger(__name__)

POLL_S = 1.0
ESCALATION_EVERY_S = 10.0
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 300.0


class RateLimit:
    """Token bucket: `per_minute` sends, bursts up to the same number."""

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, per_minute)
        self.tokens = self.capacity
        self.clock = clock
        self.last = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def backoff(attempts: int) -> float:
    """Seconds before retry number `attempts` (1-based), with ±25 % jitter."""
    base = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** max(0, attempts - 1))
    return base * (0.75 + 0.5 * random.random())


class Notifier:
    def __init__(self, store: Any, rules: RuleSet, *, clock: Callable[[], float] = time.time,
                 poll_s: float = POLL_S) -> None:
        self.store = store
        self.clock = clock
        self.poll_s = poll_s
        self.targets: dict[str, WebhookTarget] = {}
        self.limits: dict[str, RateLimit] = {}
        self.rules = rules
        self.set_rules(rules)
        self.sent = 0
        self.failed = 0
        self.rate_limited = 0
        self._session: aiohttp.ClientSession | None = None
        self._last_escalation = 0.0

    def set_rules(self, rules: RuleSet) -> None:
        self.rules = rules
        self.targets = {t.name: t for t in rules.targets}
        self.limits = {name: self.limits.get(name) or RateLimit(t.per_minute) for name, t in self.targets.items()}

    def targets_for(self, severity: int) -> tuple[str, ...]:
        return tuple(name for name, t in self.targets.items() if severity >= t.min_severity)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def run(self) -> None:
        while True:
            try:
                if self.targets:
                    await self.send_due()
                    if time.monotonic() - self._last_escalation >= ESCALATION_EVERY_S:
                        self._last_escalation = time.monotonic()
                        await self.escalate()
            except StoreUnavailable:
                pass
            await asyncio.sleep(self.poll_s)

    async def send_due(self) -> int:
        """Send what is due now; returns how many were delivered."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        due = await self.store.due_notifications(now)
        if not due:
            return 0
        if self._session is None:
            self._session = aiohttp.ClientSession()
        delivered = 0
        for item in due:
            target = self.targets.get(item["target"])
            if target is None:
                await self.store.notification_done(item["id"], ok=False, now=now,
                                                   error=f"webhook target {item['target']!r} no longer configured")
                continue
            if not self.limits[target.name].take():
                self.rate_limited += 1
                continue
            error = await self._post(target, item["payload"])
            attempts = item["attempts"] + 1
            if error is None:
                delivered += 1
                self.sent += 1
                await self.store.notification_done(item["id"], ok=True, now=now)
            elif attempts >= target.max_attempts:
                self.failed += 1
                log.error("webhook %s: giving up after %d attempts: %s", target.name, attempts, error)
                await self.store.notification_done(item["id"], ok=False, now=now, error=error)
            else:
                retry_at = now + timedelta(seconds=backoff(attempts))
                if attempts == 1:
                    log.warning("webhook %s failed (%s); retrying with backoff", target.name, error)
                await self.store.notification_done(item["id"], ok=False, now=now, error=error, retry_at=retry_at)
        return delivered

    async def _post(self, target: WebhookTarget, payload: dict[str, Any]) -> str | None:
        assert self._session is not None
        try:
            async with self._session.post(target.url, json=payload,
                                          timeout=aiohttp.ClientTimeout(total=target.timeout_s)) as response:
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"

    async def escalate(self) -> int:
        """Queue escalation steps for firing alerts nobody acknowledged: step k once `after` has passed since
        the alert fired and its severity is at least the step's."""
        steps = sorted(self.rules.escalation, key=lambda e: e.after_s)
        if not steps:
            return 0
        now_ts = self.clock()
        now = datetime.fromtimestamp(now_ts, UTC)
        queued = 0
        for episode, seq in await self.store.unacked_firing(now):
            if episode.fired_at is None:
                continue
            elapsed = now_ts - episode.fired_at.timestamp()
            for number, step in enumerate(steps, start=1):
                if number <= episode.escalation_step or elapsed < step.after_s:
                    continue
                if episode.severity < step.min_severity:
                    continue
                payload = {**episode.to_json(), "seq": seq, "escalation_step": number,
                           "reason": f"not acknowledged {int(elapsed // 60)} min after firing"}
                for target in step.targets:
                    if await self.store.enqueue_escalation(seq, target, number, payload, now, episode.id):
                        queued += 1
        return queued
