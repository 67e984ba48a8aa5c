"""JSON errors for the REST API: one shape everywhere, `{"error": {"status", "code", "message"}}`.

Handlers raise `api_error(...)` (or ValueError for bad input); the middleware turns anything else into the
same shape, so a client never has to parse HTML or a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from occ.errors import OccError, StoreUnavailable

log = logging.getLogger(__name__)

_CLASSES: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest, 401: web.HTTPUnauthorized, 403: web.HTTPForbidden, 404: web.HTTPNotFound,
    405: web.HTTPMethodNotAllowed, 409: web.HTTPConflict, 413: web.HTTPRequestEntityTooLarge,
    429: web.HTTPTooManyRequests, 500: web.HTTPInternalServerError, 503: web.HTTPServiceUnavailable,
}


def error_body(status: int, code: str, message: str) -> str:
    return orjson.dumps({"error": {"status": status, "code": code, "message": message}}).decode()


def api_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.HTTPException:
    cls = _CLASSES.get(status, web.HTTPBadRequest)
    if cls is web.HTTPMethodNotAllowed:
        return web.HTTPMethodNotAllowed("", [], text=error_body(status, code, message),
                                        content_type="application/json")
    return cls(text=error_body(status, code, message), content_type="application/json", headers=headers)


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        code = exc.reason.lower().replace(" ", "_")
        raise api_error(exc.status, code, exc.text if exc.text and not exc.text.startswith(str(exc.status))
                        else exc.reason) from None
    except StoreUnavailable as exc:
        log.warning("database unavailable for %s %s: %s", request.method, request.path, exc)
        raise api_error(503, "database_unavailable", "the database is unavailable; try again shortly") from None
    except OccError as exc:
        if isinstance(exc, LookupError):
            raise api_error(404, "not_found", str(exc)) from None
        if isinstance(exc, ValueError):
            raise api_error(400, "bad_request", str(exc)) from None
        raise api_error(409, "conflict", str(exc)) from None
    except ValueError as exc:  # parameter parsing (web.params) and the store's argument checks
        raise api_error(400, "bad_request", str(exc)) from None
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        raise api_error(500, "internal", "unexpected server error (logged)") from None
