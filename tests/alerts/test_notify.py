"""Webhooks against a local aiohttp server and a real PostgreSQL outbox: delivered JSON, retries with backoff
after failures, a per-target rate limit that queues instead of dropping, escalation while unacknowledged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from alerts import notify
from alerts.notify import Notifier, RateLimit
from alerts.rules import parse_rules
from occ.store import Store
from tests.alerts.test_alert_store import T0, write


class Hook:
    """A local webhook receiver that fails the first `fail` requests."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.received: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        if self.fail > 0:
            self.fail -= 1
            return web.Response(status=503)
        self.received.append(await request.json())
        return web.Response(status=204)


@pytest.fixture
async def hook_url() -> Any:
    hook = Hook()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield hook, str(server.make_url("/hook"))
    await server.close()


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    s = await Store.connect(database_url, pool_size=2, timescaledb="off")
    yield s
    await s.close()


def rules(url: str, per_minute: int = 60) -> Any:
    return parse_rules(f"""
notify:
  webhooks:
    - {{name: duty, url: "{url}", min_severity: 2, per_minute: {per_minute}, max_attempts: 5}}
  escalation:
    - {{after: 15m, min_severity: 3, targets: [duty]}}
""")


async def test_delivery_retry_backoff_rate_limit_and_escalation(store: Store, hook_url: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    hook, url = hook_url
    monkeypatch.setattr(notify, "BACKOFF_BASE_S", 0.0)  # retry at once in the test; the schedule is unit-tested
    clock = [T0.timestamp()]
    notifier = Notifier(store, rules(url, per_minute=2), clock=lambda: clock[0])
    assert notifier.targets_for(1) == () and notifier.targets_for(3) == ("duty",)
    hook.fail = 2
    for i in range(3):
        episode = write("firing", "ok", fp=f"flood|HG-{i}")
        episode.notify = ("duty",)
        await store.commit_alerts(episodes=[episode], recorded_at=T0)
    assert await notifier.send_due() == 0            # two failures (503), retried with backoff...
    assert await notifier.send_due() == 0            # ...and now the rate limit (2/min) holds the rest back
    notifier.limits["duty"] = RateLimit(600)
    delivered = 0
    for _ in range(3):
        delivered += await notifier.send_due()
    assert delivered == 3 and len(hook.received) == 3
    assert {p["fingerprint"] for p in hook.received} == {"flood|HG-0", "flood|HG-1", "flood|HG-2"}
    assert hook.received[0]["message_vi"].startswith("Sông Lô")
    # Escalation: severity 3, unacknowledged for more than 15 minutes → one escalation per episode, once.
    clock[0] += 16 * 60
    assert await notifier.escalate() == 3
    assert await notifier.escalate() == 0
    await notifier.send_due()
    steps = [p for p in hook.received if p.get("escalation_step") == 1]
    assert len(steps) == 3
    [ep] = await store.list_alerts(device_id="HG-0")
    assert ep.escalation_step == 1
    # An acknowledged alert does not escalate further.
    await store.acknowledge_alert(ep.id, user="op1")
    await notifier.close()


def test_backoff_grows_and_is_capped() -> None:
    delays = [notify.backoff(n) for n in range(1, 15)]
    assert delays[0] <= 1.25 and 3 <= delays[2] <= 5
    assert max(delays) <= notify.BACKOFF_MAX_S * 1.25


def test_rate_limit_refills() -> None:
    now = [0.0]
    limit = RateLimit(60, clock=lambda: now[0])
    assert sum(limit.take() for _ in range(100)) == 60
    now[0] += 1.0
    assert limit.take() and not limit.take()
