"""Who is asking, and may they: the aiohttp side of web security.

* Credentials: the `occ_session` cookie (HttpOnly, SameSite=Strict) set by `POST /api/login`, or
  `Authorization: Bearer TOKEN` (a session or kiosk token). Kiosk tokens are read-only whatever the user's role.
* Every route declares the least role it needs (viewer < operator < admin); anonymous requests get 401,
  except the few public routes (health, login page and its assets).
* CSRF: a write authenticated by the cookie must carry `X-OCC-Request: 1` (a cross-site form cannot set a
  header, and a cross-site script cannot without a CORS preflight we never grant), and its Origin, when sent,
  must be ours. Bearer-token writes are not exposed to CSRF.
* The websocket checks Origin the same way (browsers send it on every websocket handshake).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from aiohttp import web

from occ.store.users import Role, UserStore
from web.auth import allows, token_hash
from web.errors import api_error

log = logging.getLogger(__name__)

COOKIE = "occ_session"
CSRF_HEADER = "X-OCC-Request"
TOKEN_CACHE_S = 5.0
"""A revoked token stops working within this many seconds in every web process."""
TOUCH_EVERY_S = 60.0
PUBLIC_ASSETS = frozenset({"/static/login.css", "/static/login.js"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Access = Literal["public", "viewer", "operator", "admin"]


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: Role
    """Effective role (a kiosk token is always viewer)."""
    kind: Literal["session", "kiosk"]
    via_cookie: bool
    token_hash: bytes


PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("occ_principal", Principal)


def access(level: Access) -> Callable[[Handler], Handler]:
    """Declare the least role a handler needs ('public' for no login)."""

    def mark(handler: Handler) -> Handler:
        handler.occ_access = level  # type: ignore[attr-defined]
        return handler

    return mark


def handler_access(request: web.Request) -> Access:
    if request.path in PUBLIC_ASSETS:
        return "public"
    handler = request.match_info.handler
    level = getattr(handler, "occ_access", None)
    if level is None:  # static files and anything undeclared: viewer
        return "viewer"
    return level


class TokenCache:
    """Looks tokens up in the store, caching answers for a few seconds (one query per page load, not per call)."""

    def __init__(self, users: UserStore, *, session_hours: float, clock: Callable[[], float] = time.monotonic):
        self.users = users
        self.session_ttl = timedelta(hours=session_hours)
        self.clock = clock
        self._cache: dict[bytes, tuple[float, Principal | None]] = {}
        self._touched: dict[bytes, float] = {}

    async def principal(self, token: str, *, via_cookie: bool) -> Principal | None:
        digest = token_hash(token)
        now = self.clock()
        hit = self._cache.get(digest)
        if hit is not None and now - hit[0] < TOKEN_CACHE_S:
            found = hit[1]
        else:
            wall = datetime.now(UTC)
            owner = await self.users.owner(digest, now=wall)
            found = None
            if owner is not None:
                role: Role = "viewer" if owner.kind == "kiosk" else owner.user.role
                found = Principal(owner.user.name, role, owner.kind, via_cookie, digest)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now, found)
            if found is not None and now - self._touched.get(digest, -TOUCH_EVERY_S) >= TOUCH_EVERY_S:
                self._touched[digest] = now
                expires = wall + self.session_ttl if owner is not None and owner.kind == "session" else None
                await self.users.touch(digest, now=wall, expires_at=expires)
        if found is not None and found.via_cookie != via_cookie:
            found = Principal(found.name, found.role, found.kind, via_cookie, found.token_hash)
        return found

    def forget(self, digest: bytes) -> None:
        self._cache.pop(digest, None)


def origin_allowed(request: web.Request, extra: frozenset[str]) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser cross-origin request (curl, scripts); auth still applies
    own = f"{request.scheme}://{request.host}"
    return origin == own or origin in extra


def credentials(request: web.Request) -> tuple[str, bool] | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip(), False
    cookie = request.cookies.get(COOKIE)
    if cookie:
        return cookie, True
    return None


def auth_middleware(cache: TokenCache, allowed_origins: frozenset[str]) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        level = handler_access(request)
        if level == "public":
            return await handler(request)
        creds = credentials(request)
        principal = await cache.principal(creds[0], via_cookie=creds[1]) if creds else None
        if principal is None:
            if request.method == "GET" and "text/html" in request.headers.get("Accept", "") and \
                    not request.path.startswith("/api/"):
                raise web.HTTPFound("/login")
            raise api_error(401, "unauthenticated", "log in first (session cookie or Authorization: Bearer)")
        writing = request.method not in ("GET", "HEAD", "OPTIONS")
        if writing and principal.via_cookie:
            if request.headers.get(CSRF_HEADER) != "1":
                raise api_error(403, "csrf", f"writes with the session cookie need the header {CSRF_HEADER}: 1")
            if not origin_allowed(request, allowed_origins):
                raise api_error(403, "origin", "request from a foreign origin")
        if not allows(principal.role, level):
            raise api_error(403, "forbidden", f"needs role {level} (you are {principal.role})")
        request[PRINCIPAL] = principal
        return await handler(request)

    return middleware
