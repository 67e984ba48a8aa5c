"""`occ web`: the aiohttp application (REST + live websocket + wall page) and the service around it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from occ.catalog import Catalog
from occ.codecs import Decoder
from occ.config import Config
from occ.errors import ServiceError
from occ.lifecycle import unless_stopped
from occ.metrics import Registry
from occ.stalls import StallWatch, watch_loop
from occ.store import Store
from web import api
from web.auth import LoginLimiter
from web.errors import error_middleware
from web.live import GATEWAY, LiveGateway, websocket
from web.security import TokenCache, auth_middleware

log = logging.getLogger(__name__)

LIVE_ROUTES = [api.Route("GET", "/ws", websocket, "Live feed (websocket; protocol in README.md)", "wall",
                         json=False)]


def all_routes() -> list[api.Route]:
    from web import alerts_api, rules_api

    return [*api.ROUTES, *alerts_api.ROUTES, *rules_api.ROUTES, *LIVE_ROUTES]


@web.middleware
async def security_headers(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    if not response.prepared:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if response.content_type == "text/html":
            # Nothing off the server: scripts, styles, images and sockets from our origin only (tiles excepted).
            response.headers.setdefault(
                "Content-Security-Policy",
                "default-src 'self'; img-src 'self' data: blob: https: http:; style-src 'self' 'unsafe-inline'; "
                "connect-src 'self' ws: wss:; media-src 'self' data:; frame-ancestors 'none'",
            )
    return response


def build_app(context: api.WebContext, gateway: LiveGateway) -> web.Application:
    app = web.Application(middlewares=[error_middleware, security_headers,
                                       auth_middleware(context.tokens, context.allowed_origins)],
                          client_max_size=api.MAX_BODY)
    app[api.CONTEXT] = context
    app[GATEWAY] = gateway
    routes = all_routes()
    app[api.ROUTE_TABLE] = routes
    api.add_routes(app, routes)
    app.router.add_static("/static", api.STATIC, follow_symlinks=False)

    async def lifecycle(app: web.Application) -> Any:
        await gateway.start()
        yield
        await gateway.stop()

    app.cleanup_ctx.append(lifecycle)
    return app


def load_outlines(config_dir: Path) -> dict[str, Any]:
    path = config_dir / "areas-outlines.geojson"
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data
    except FileNotFoundError:
        return {"type": "FeatureCollection", "features": []}
    except ValueError as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {"type": "FeatureCollection", "features": []}


class WebService:
    """Store + gateway + HTTP server, started and stopped together (`occ web`)."""

    def __init__(self, config: Config, *, port: int | None = None, store: Store | None = None) -> None:
        self.config = config
        self.port = config.web.port if port is None else port
        self.store = store
        self._own_store = store is None
        self.runner: web.AppRunner | None = None
        self.bound_port: int | None = None
        self.gateway: LiveGateway | None = None
        self.app: web.Application | None = None
        self.stalls: StallWatch | None = None
        self._stall_task: asyncio.Task[None] | None = None
        self._unhook_gc: Callable[[], None] | None = None
        self.started = time.monotonic()

    async def build(self) -> web.Application:
        """The application (store opened, nothing listening yet; the gateway starts with the app)."""
        config = self.config
        if self.store is None:
            db = config.database
            if not db.url:
                raise ServiceError("web needs a database: set OCC_DATABASE_URL or start `occ up`")
            self.store = await Store.connect(db.url, pool_size=db.pool_size, migrate=False,
                                             timescaledb=db.timescaledb, timezone=config.site.timezone)
        registry = Registry()
        self.stalls = StallWatch(registry, "occ_web")
        catalog_path = config.config_path / "metrics.yaml"
        catalog = Catalog.load(catalog_path) if catalog_path.exists() else Catalog.default()
        decoder = Decoder(catalog, {}, prefix=config.mqtt.topic_prefix, local_tz=config.site.timezone)
        w = config.web
        self.gateway = LiveGateway(
            store=self.store, decoder=decoder, mqtt_url=config.mqtt.url, client_id=w.client_id,
            topic_prefix=config.mqtt.topic_prefix, reading_interval_s=w.reading_interval_s, flush_ms=w.flush_ms,
            urgent_ms=w.urgent_ms,
            heartbeat_s=w.heartbeat_s, max_pending=w.client_max_pending, max_lag_s=w.client_max_lag_s,
            history=w.history, registry=registry,
        )
        origins = frozenset(o.strip().rstrip("/") for o in w.allowed_origins.split(",") if o.strip())
        context = api.WebContext(
            store=self.store,
            tokens=TokenCache(self.store.users, session_hours=w.session_hours),
            site_name=config.site.name,
            site_tz=ZoneInfo(config.site.timezone),
            hydro_day_start_hour=config.site.hydro_day_start_hour,
            limiter=LoginLimiter(max_failures=w.login_max_failures, window_s=w.login_window_s),
            allowed_origins=origins,
            cookie_secure=w.cookie_secure,
            session_hours=w.session_hours,
            kiosk_days=w.kiosk_days,
            tile_url=w.tile_url,
            tile_attribution=w.tile_attribution,
            areas=load_outlines(config.config_path),
            registry=registry,
            health=self.health,
            config_dir=str(config.config_path.resolve()),
        )
        self.app = build_app(context, self.gateway)
        return self.app

    async def start(self) -> None:
        app = await self.build()
        w = self.config.web
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, w.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            raise ServiceError(f"web cannot listen on {w.host}:{self.port}: {exc.strerror or exc}") from None
        server: Any = site._server
        self.bound_port = int(server.sockets[0].getsockname()[1]) if server and server.sockets else self.port
        if self.stalls is not None:
            self._stall_task = asyncio.create_task(watch_loop(self.stalls), name="web-stall-watch")
            self._unhook_gc = self.stalls.install_gc()
        log.info("web on http://%s:%d", w.host, self.bound_port)

    def health(self) -> dict[str, Any]:
        gateway = self.gateway
        ok = gateway is not None and gateway.healthy
        # the stall watch only sleeps and counts; if it ended anyway, something is wrong with this process
        ok = ok and (self._stall_task is None or not self._stall_task.done())
        return {"ok": ok, "mqtt": gateway.connected if gateway else False}

    async def stop(self) -> None:
        if self._unhook_gc is not None:
            self._unhook_gc()
            self._unhook_gc = None
        if self._stall_task is not None:
            self._stall_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stall_task
            self._stall_task = None
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self.store is not None and self._own_store:
            await self.store.close()


async def run(config: Config, *, stop: asyncio.Event) -> None:
    service = WebService(config)
    try:
        # A start still waiting (for the database or broker) must end on a signal too (issue 11 item 4).
        if await unless_stopped(service.start(), stop):
            await stop.wait()
    finally:
        await service.stop()
