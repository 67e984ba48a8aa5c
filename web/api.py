"""REST handlers and the route table they are served from (the OpenAPI document is built from the same table,
and a test checks the running router against it).

Conventions: JSON in and out; lists are `{"items": [...], "limit", "offset", "next_offset"}`; errors are
`{"error": {"status", "code", "message"}}`; times are ISO 8601 (naive query times are read in the site time
zone); `?format=csv` on history, events and alerts gives UTF-8 CSV with a BOM, times in the site time zone.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from aiohttp import web

from occ.metrics import Registry
from occ.store import Store
from occ.store.users import User
from web import params
from web.auth import LoginLimiter, check_role, dummy_verify, hash_password, new_token, token_hash, verify_password
from web.errors import api_error
from web.security import COOKIE, PRINCIPAL, Access, Principal, TokenCache, access, origin_allowed

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY = 64 * 1024


@dataclass
class WebContext:
    """Everything the handlers share; one per server (stored in the app under CONTEXT)."""

    store: Store
    tokens: TokenCache
    site_name: str = "Hà Giang IOC"
    site_tz: ZoneInfo = field(default_factory=lambda: ZoneInfo("Asia/Ho_Chi_Minh"))
    hydro_day_start_hour: int = 7
    limiter: LoginLimiter = field(default_factory=LoginLimiter)
    allowed_origins: frozenset[str] = frozenset()
    cookie_secure: bool = False
    session_hours: float = 12.0
    kiosk_days: int = 365
    tile_url: str = ""
    tile_attribution: str = ""
    areas: dict[str, Any] = field(default_factory=dict)
    """GeoJSON FeatureCollection of area outlines (config/areas-outlines.geojson)."""
    registry: Registry = field(default_factory=Registry)
    health: Any = None
    """Callable returning {"ok": bool, ...}; set by the service."""
    clock: Any = time.monotonic
    kpi_cache: tuple[float, dict[str, Any]] | None = None
    config_dir: str = "config"


CONTEXT: web.AppKey[WebContext] = web.AppKey("occ_web_context", WebContext)
ROUTE_TABLE: web.AppKey[Sequence[Any]] = web.AppKey("occ_web_routes", list)


def ctx(request: web.Request) -> WebContext:
    return request.app[CONTEXT]


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS), status=status,
                        content_type="application/json")


def paged(items: Sequence[Any], limit: int, offset: int, *, more: bool) -> dict[str, Any]:
    return {"items": list(items), "limit": limit, "offset": offset, "next_offset": offset + limit if more else None}


def local(ts: datetime | None, tz: ZoneInfo) -> str:
    return "" if ts is None else ts.astimezone(tz).isoformat()


def csv_response(header: Sequence[str], rows: Iterable[Sequence[Any]], filename: str) -> web.Response:
    """UTF-8 with a BOM so spreadsheet tools show Vietnamese names; RFC 4180 quoting."""
    buffer = io.StringIO()
    buffer.write("\ufeff")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return web.Response(body=buffer.getvalue().encode("utf-8"), content_type="text/csv", charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})


async def read_json(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise api_error(413, "too_large", f"request bodies are limited to {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise api_error(413, "too_large", f"request bodies are limited to {MAX_BODY} bytes")
    if not raw:
        return {}
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise api_error(400, "malformed", "the body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise api_error(400, "malformed", "the body must be a JSON object")
    return doc


def body_text(doc: dict[str, Any], name: str, *, required: bool = False, max_len: int = 2000) -> str:
    value = doc.get(name, "")
    if value is None:
        value = ""
    if not isinstance(value, str) or len(value) > max_len:
        raise api_error(400, "bad_request", f"{name} must be a string of at most {max_len} characters")
    if required and not value:
        raise api_error(400, "bad_request", f"{name} is required")
    return value


# --- public -------------------------------------------------------------------------------------------------


@access("public")
async def healthz(request: web.Request) -> web.Response:
    """Liveness for load balancers: reveals nothing but ok / not ok."""
    health = ctx(request).health
    ok = bool(health()["ok"]) if health else True
    return json_response({"ok": ok}, status=200 if ok else 503)


@access("public")
async def login_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "login.html", headers={"Cache-Control": "no-store"})


def _client_key(request: web.Request) -> str:
    return f"addr:{request.remote or '?'}"


@access("public")
async def login(request: web.Request) -> web.Response:
    """Exchange a name and password for a session (cookie, or `{"bearer": true}` for a token in the body)."""
    c = ctx(request)
    if not origin_allowed(request, c.allowed_origins):
        raise api_error(403, "origin", "login from a foreign origin")
    doc = await read_json(request)
    name = body_text(doc, "name", required=True, max_len=64)
    password = body_text(doc, "password", required=True, max_len=1024)
    now = c.clock()
    keys = (_client_key(request), f"user:{name}")
    blocked = [k for k in keys if not c.limiter.allowed(k, now)]
    if blocked:
        wait = max(c.limiter.retry_after(k, now) for k in blocked)
        raise api_error(429, "too_many_attempts", f"too many failed logins; try again in {wait:.0f} s",
                        headers={"Retry-After": str(int(wait) + 1)})
    user = await c.store.users.get(name)
    if user is None or user.disabled:
        dummy_verify(password)
        ok = False
    else:
        ok = verify_password(password, user.password_hash)
    if not ok or user is None:
        for k in keys:
            c.limiter.failed(k, now)
        log.info("failed login", extra={"fields": {"user": name, "remote": request.remote}})
        raise api_error(401, "bad_credentials", "wrong user name or password")
    for k in keys:
        c.limiter.succeeded(k)
    token = new_token()
    expires = datetime.now(UTC) + timedelta(hours=c.session_hours)
    await c.store.users.add_token(user.id, token_hash(token), kind="session", expires_at=expires,
                                  label=request.headers.get("User-Agent", "")[:200])
    body: dict[str, Any] = {"name": user.name, "role": user.role, "expires_at": expires.isoformat()}
    if doc.get("bearer") is True:
        body["token"] = token
        return json_response(body)
    response = json_response(body)
    response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=c.cookie_secure, path="/",
                        max_age=int(c.kiosk_days * 86400))
    return response


@access("public")
async def kiosk_login(request: web.Request) -> web.Response:
    """`/kiosk?token=…`: store a kiosk token in the cookie and open the wall in kiosk mode (the token leaves
    the address bar at once)."""
    c = ctx(request)
    token = request.query.get("token", "")
    owner = await c.tokens.principal(token, via_cookie=True) if token else None
    if owner is None or owner.kind != "kiosk":
        raise api_error(401, "bad_token", "unknown, expired or revoked kiosk token")
    response = web.HTTPFound("/?kiosk=1")
    response.set_cookie(COOKIE, token, httponly=True, samesite="Lax", secure=c.cookie_secure, path="/",
                        max_age=int(c.kiosk_days * 86400))
    raise response


# --- session ------------------------------------------------------------------------------------------------


@access("viewer")
async def logout(request: web.Request) -> web.Response:
    c = ctx(request)
    who = principal(request)
    if who.kind == "session":
        await c.store.users.revoke(who.token_hash)
        c.tokens.forget(who.token_hash)
    response = json_response({"ok": True})
    response.del_cookie(COOKIE, path="/")
    return response


@access("viewer")
async def me(request: web.Request) -> web.Response:
    who = principal(request)
    return json_response({"name": who.name, "role": who.role, "kind": who.kind})


@access("viewer")
async def site_config(request: web.Request) -> web.Response:
    """What the wall page needs to draw itself."""
    c = ctx(request)
    return json_response({"site_name": c.site_name, "timezone": c.site_tz.key, "tile_url": c.tile_url,
                          "tile_attribution": c.tile_attribution, "hydro_day_start_hour": c.hydro_day_start_hour})


@access("viewer")
async def areas(request: web.Request) -> web.Response:
    return json_response(ctx(request).areas)


# --- devices, latest, status, history, events ---------------------------------------------------------------


def device_json(d: Any) -> dict[str, Any]:
    return {"id": d.id, "kind": d.kind, "name": d.name, "lat": d.lat, "lon": d.lon, "area": d.area,
            "attributes": d.attributes, "provisioned": d.provisioned}


@access("viewer")
async def list_devices(request: web.Request) -> web.Response:
    q = request.query
    limit, offset = params.page(q, default_limit=1000)
    devices = await ctx(request).store.list_devices(kind=params.text(q, "kind"), area=params.text(q, "area"))
    window = devices[offset : offset + limit]
    return json_response(paged([device_json(d) for d in window], limit, offset, more=len(devices) > offset + limit))


async def _device(request: web.Request) -> Any:
    device = await ctx(request).store.get_device(request.match_info["device_id"])
    if device is None:
        raise api_error(404, "not_found", f"no device {request.match_info['device_id']!r}")
    return device


@access("viewer")
async def get_device(request: web.Request) -> web.Response:
    device = await _device(request)
    store = ctx(request).store
    latest = await store.latest([device.id])
    status = await store.device_status([device.id])
    return json_response({
        **device_json(device),
        "latest": {v.metric: {"ts": v.ts.isoformat(), "value": v.value, "quality": v.quality} for v in latest},
        "status": status[0].status if status else None,
        "status_since": status[0].since.isoformat() if status else None,
    })


@access("viewer")
async def latest_values(request: web.Request) -> web.Response:
    q = request.query
    limit, offset = params.page(q, default_limit=1000)
    rows = await ctx(request).store.latest(params.names(q, "device"), params.names(q, "metric"))
    window = rows[offset : offset + limit]
    items = [{"device_id": r.device_id, "metric": r.metric, "ts": r.ts.isoformat(), "value": r.value,
              "quality": r.quality, "received_at": r.received_at.isoformat()} for r in window]
    return json_response(paged(items, limit, offset, more=len(rows) > offset + limit))


@access("viewer")
async def device_statuses(request: web.Request) -> web.Response:
    q = request.query
    limit, offset = params.page(q, default_limit=1000)
    rows = await ctx(request).store.device_status(params.names(q, "device"))
    window = rows[offset : offset + limit]
    items = [{"device_id": r.device_id, "status": r.status, "since": r.since.isoformat(),
              "updated_at": r.updated_at.isoformat()} for r in window]
    return json_response(paged(items, limit, offset, more=len(rows) > offset + limit))


@access("viewer")
async def status_history(request: web.Request) -> web.Response:
    device = await _device(request)
    c = ctx(request)
    limit = params.integer(request.query, "limit", 100, lo=1, hi=params.MAX_LIMIT)
    rows = await c.store.status_history(device.id, start=params.when(request.query, "start", c.site_tz),
                                        limit=limit)
    return json_response({"items": [{"ts": ts.isoformat(), "status": s} for ts, s in rows], "limit": limit,
                          "offset": 0, "next_offset": None})


AGGS = ("avg", "min", "max", "sum", "count", "first", "last")
FILLS = ("none", "null", "previous", "linear", "zero")


@access("viewer")
async def history(request: web.Request) -> web.Response:
    """One metric of one device over a time range, bucketed (the store's history query)."""
    device = await _device(request)
    c = ctx(request)
    q = request.query
    metric = params.text(q, "metric")
    if not metric:
        raise ValueError("metric is required")
    tz = params.zone(q, c.site_tz)
    start, end = params.time_range(q, tz, timedelta(hours=24))
    bucket = params.text(q, "bucket", "1h") or "1h"
    agg = params.choice(q, "agg", AGGS, "avg")
    fill = params.choice(q, "fill", FILLS, "none")
    day_start = params.integer(q, "day_start_hour", 0, lo=0, hi=23)
    limit = params.integer(q, "limit", 10_000, lo=1, hi=100_000)
    fmt = params.choice(q, "format", ("json", "csv"), "json")
    points = await c.store.history(device.id, metric, start, end, bucket=bucket, agg=agg,
                                   fill=None if fill == "none" else fill, tz=tz, day_start_hour=day_start,
                                   limit=limit)
    if fmt == "csv":
        return csv_response(["time", "device_id", "metric", agg], ((local(p.bucket, tz), device.id, metric,
                            "" if p.value is None else p.value) for p in points),
                            f"{device.id}-{metric}.csv")
    return json_response({"device_id": device.id, "metric": metric, "bucket": bucket, "agg": agg,
                          "start": start.isoformat(), "end": end.isoformat(), "timezone": tz.key,
                          "points": [[p.bucket.isoformat(), p.value] for p in points]})


@access("viewer")
async def events(request: web.Request) -> web.Response:
    c = ctx(request)
    q = request.query
    limit, offset = params.page(q)
    fmt = params.choice(q, "format", ("json", "csv"), "json")
    rows = await c.store.events(device_ids=params.names(q, "device"), types=params.names(q, "type"),
                                start=params.when(q, "start", c.site_tz), end=params.when(q, "end", c.site_tz),
                                limit=offset + limit + 1)
    window = rows[offset : offset + limit]
    if fmt == "csv":
        return csv_response(["time", "device_id", "type", "data", "received_at"],
                            ((local(e.ts, c.site_tz), e.device_id, e.type,
                              orjson.dumps(e.data).decode(), local(e.received_at, c.site_tz)) for e in window),
                            "events.csv")
    items = [{"device_id": e.device_id, "ts": e.ts.isoformat(), "type": e.type, "data": e.data,
              "received_at": e.received_at.isoformat()} for e in window]
    return json_response(paged(items, limit, offset, more=len(rows) > offset + limit))


@access("admin")
async def dead_letters(request: web.Request) -> web.Response:
    c = ctx(request)
    q = request.query
    limit, offset = params.page(q)
    rows = await c.store.dead_letters(limit=offset + limit + 1, since=params.when(q, "since", c.site_tz))
    window = rows[offset : offset + limit]
    items = [{"id": r.id, "received_at": r.received_at.isoformat(), "topic": r.topic, "reason": r.reason,
              "code": r.code, "device_id": r.device_id, "payload": r.payload[:4096].decode("utf-8", "replace"),
              "payload_bytes": len(r.payload)} for r in window]
    return json_response(paged(items, limit, offset, more=len(rows) > offset + limit))


# --- users --------------------------------------------------------------------------------------------------


def user_json(u: User) -> dict[str, Any]:
    return {"name": u.name, "role": u.role, "disabled": u.disabled, "created_at": u.created_at.isoformat()}


@access("admin")
async def list_users(request: web.Request) -> web.Response:
    users = await ctx(request).store.users.all()
    return json_response({"items": [user_json(u) for u in users], "limit": len(users), "offset": 0,
                          "next_offset": None})


@access("admin")
async def create_user(request: web.Request) -> web.Response:
    """Create or update a user (name, role, password)."""
    doc = await read_json(request)
    name = body_text(doc, "name", required=True, max_len=64)
    role = check_role(body_text(doc, "role", required=True, max_len=16))
    password = body_text(doc, "password", max_len=1024)
    if password and len(password) < 8:
        raise ValueError("password must have at least 8 characters")
    user, created = await ctx(request).store.users.upsert(name, role, hash_password(password) if password else None)
    return json_response(user_json(user), status=201 if created else 200)


@access("admin")
async def disable_user(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not await ctx(request).store.users.set_disabled(name, True):
        raise api_error(404, "not_found", f"no user {name!r}")
    return json_response({"name": name, "disabled": True})


@access("admin")
async def create_kiosk_token(request: web.Request) -> web.Response:
    """A new read-only kiosk token for a user (shown once); `/kiosk?token=…` opens the wall with it."""
    c = ctx(request)
    name = request.match_info["name"]
    user = await c.store.users.get(name)
    if user is None:
        raise api_error(404, "not_found", f"no user {name!r}")
    doc = await read_json(request)
    token = new_token()
    expires = datetime.now(UTC) + timedelta(days=c.kiosk_days)
    await c.store.users.add_token(user.id, token_hash(token), kind="kiosk", expires_at=expires,
                                  label=body_text(doc, "label", max_len=200))
    return json_response({"name": name, "token": token, "expires_at": expires.isoformat(),
                          "url": f"/kiosk?token={token}"}, status=201)


@access("admin")
async def revoke_kiosk_tokens(request: web.Request) -> web.Response:
    c = ctx(request)
    count = await c.store.users.revoke_all(request.match_info["name"], "kiosk")
    c.tokens._cache.clear()
    return json_response({"revoked": count})


@access("viewer")
async def kpis(request: web.Request) -> web.Response:
    """The rain gauge with the most rain over the last 24 h (computed at most once a minute)."""
    c = ctx(request)
    now = c.clock()
    cached = c.kpi_cache
    if cached is not None and now - cached[0] < 60:
        return json_response(cached[1])
    end = datetime.now(UTC)
    devices = [d for d in await c.store.list_devices(kind="hydromet")]
    series = await c.store.history_by_device([d.id for d in devices], "rain_mm", end - timedelta(hours=24), end,
                                             bucket=timedelta(hours=1), agg="sum") if devices else {}
    totals = {device_id: sum(p.value or 0.0 for p in points) for device_id, points in series.items() if points}
    best = max(totals, key=lambda k: totals[k]) if totals else None
    names = {d.id: d.name for d in devices}
    body = {"device_id": best, "name": names.get(best or ""), "value": totals.get(best or ""),
            "start": (end - timedelta(hours=24)).isoformat(), "end": end.isoformat(), "metric": "rain_mm"}
    c.kpi_cache = (now, body)
    return json_response(body)


# --- operations ---------------------------------------------------------------------------------------------


@access("viewer")
async def metrics(request: web.Request) -> web.Response:
    return web.Response(text=ctx(request).registry.render(), content_type="text/plain", charset="utf-8")


@access("viewer")
async def wall(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


@access("viewer")
async def openapi(request: web.Request) -> web.Response:
    from web.openapi import document

    return json_response(document(request.app[ROUTE_TABLE]))


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    where: str = "query"
    type: str = "string"
    description: str = ""
    required: bool = False
    enum: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Any
    summary: str
    tag: str
    params: tuple[Param, ...] = ()
    body: tuple[str, ...] = ()
    """Fields of the JSON body (writes)."""
    csv: bool = False
    json: bool = True

    @property
    def access(self) -> Access:
        level: Access = self.handler.occ_access
        return level


PAGE = (Param("limit", type="integer", description="page size (1–1000)"),
        Param("offset", type="integer", description="items to skip (≤ 10000)"))
RANGE = (Param("start", description="ISO 8601; naive times are in the site time zone"),
         Param("end", description="ISO 8601 (default now)"))
DEVICE_ID = Param("device_id", where="path", required=True)

ROUTES: list[Route] = [
    Route("GET", "/healthz", healthz, "Health (public; reveals only ok / not ok)", "operations", json=True),
    Route("GET", "/metrics", metrics, "Prometheus metrics", "operations", json=False),
    Route("GET", "/login", login_page, "Login page", "session", json=False),
    Route("POST", "/api/login", login, "Log in (session cookie, or a bearer token with bearer=true)", "session",
          body=("name", "password", "bearer")),
    Route("GET", "/kiosk", kiosk_login, "Open the wall in kiosk mode with a kiosk token", "session",
          params=(Param("token", required=True),), json=False),
    Route("POST", "/api/logout", logout, "Log out (revokes the session)", "session"),
    Route("GET", "/api/me", me, "Who am I", "session"),
    Route("GET", "/api/config", site_config, "Site settings for the wall page", "wall"),
    Route("GET", "/api/areas", areas, "Area outlines (GeoJSON)", "wall"),
    Route("GET", "/api/kpis", kpis, "Highest 24 h rain (wall KPI tile)", "wall"),
    Route("GET", "/api/devices", list_devices, "Devices", "devices",
          params=(Param("kind"), Param("area"), *PAGE)),
    Route("GET", "/api/devices/{device_id}", get_device, "One device with its latest values and status", "devices",
          params=(DEVICE_ID,)),
    Route("GET", "/api/devices/{device_id}/history", history, "A metric's history (bucketed)", "devices",
          params=(DEVICE_ID, Param("metric", required=True), *RANGE,
                  Param("bucket", description="raw, day, week, month or a duration such as 15m, 1h"),
                  Param("agg", enum=AGGS), Param("fill", enum=FILLS), Param("tz"),
                  Param("day_start_hour", type="integer"), Param("limit", type="integer"),
                  Param("format", enum=("json", "csv"))), csv=True),
    Route("GET", "/api/devices/{device_id}/status-history", status_history, "Status transitions", "devices",
          params=(DEVICE_ID, Param("start"), Param("limit", type="integer"))),
    Route("GET", "/api/latest", latest_values, "Latest value per device and metric", "devices",
          params=(Param("device", description="comma-separated ids"), Param("metric"), *PAGE)),
    Route("GET", "/api/status", device_statuses, "Device status (online/offline)", "devices",
          params=(Param("device"), *PAGE)),
    Route("GET", "/api/events", events, "Device events, newest first", "devices",
          params=(Param("device"), Param("type"), *RANGE, *PAGE, Param("format", enum=("json", "csv"))), csv=True),
    Route("GET", "/api/dead-letters", dead_letters, "Rejected messages (admin)", "operations",
          params=(Param("since"), *PAGE)),
    Route("GET", "/api/users", list_users, "Users (admin)", "users"),
    Route("POST", "/api/users", create_user, "Create or update a user (admin)", "users",
          body=("name", "role", "password")),
    Route("POST", "/api/users/{name}/disable", disable_user, "Disable a user and revoke its tokens (admin)",
          "users", params=(Param("name", where="path", required=True),)),
    Route("POST", "/api/users/{name}/kiosk-tokens", create_kiosk_token, "New kiosk token (admin)", "users",
          params=(Param("name", where="path", required=True),), body=("label",)),
    Route("DELETE", "/api/users/{name}/kiosk-tokens", revoke_kiosk_tokens, "Revoke a user's kiosk tokens (admin)",
          "users", params=(Param("name", where="path", required=True),)),
    Route("GET", "/api/openapi.json", openapi, "This document", "operations"),
    Route("GET", "/", wall, "The wall page", "wall", params=(Param("kiosk"),), json=False),
]


def add_routes(app: web.Application, routes: Sequence[Route]) -> None:
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler)
