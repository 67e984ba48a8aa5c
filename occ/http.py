"""The small HTTP side every OCC service exposes: `/healthz` (JSON, 503 when unhealthy) and `/metrics`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from occ.metrics import Registry

log = logging.getLogger(__name__)

HealthCheck = Callable[[], dict[str, Any]]
"""Returns at least {"ok": bool}; the rest is shown to the operator as is."""


def health_app(registry: Registry, health: HealthCheck) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        report = health()
        return web.json_response(report, status=200 if report.get("ok") else 503)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=registry.render(), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


async def start_health_server(
    registry: Registry, health: HealthCheck, *, host: str, port: int
) -> tuple[web.AppRunner, int]:
    """Start the server; port 0 picks a free one. Returns the runner (for cleanup) and the bound port."""
    runner = web.AppRunner(health_app(registry, health), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = port
    server: Any = site._server
    sockets = getattr(server, "sockets", None)
    if sockets:
        bound = int(sockets[0].getsockname()[1])
    log.debug("health/metrics on http://%s:%d", host, bound)
    return runner, bound
