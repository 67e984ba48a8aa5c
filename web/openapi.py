"""The OpenAPI 3.1 document, built from the same route table the server is built from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "object", "properties": {
        "status": {"type": "integer"}, "code": {"type": "string"}, "message": {"type": "string"}}}},
}


def document(routes: Sequence[Any]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        op: dict[str, Any] = {
            "summary": route.summary,
            "tags": [route.tag],
            "operationId": f"{route.method.lower()}_{route.handler.__name__}",
            "x-occ-role": route.access,
            "responses": {
                "200": {"description": "OK", "content": _content(route)},
                "400": {"description": "Bad request", "content": {"application/json": {"schema": ERROR_SCHEMA}}},
            },
        }
        if route.access != "public":
            op["security"] = [{"session": []}, {"bearer": []}]
            op["responses"]["401"] = {"description": "Not logged in"}
            op["responses"]["403"] = {"description": f"Needs role {route.access}"}
        else:
            op["security"] = []
        parameters = [
            {"name": p.name, "in": p.where, "required": p.required or p.where == "path",
             "description": p.description,
             "schema": {"type": p.type, **({"enum": list(p.enum)} if p.enum else {})}}
            for p in route.params
        ]
        if parameters:
            op["parameters"] = parameters
        if route.body:
            op["requestBody"] = {"content": {"application/json": {"schema": {
                "type": "object", "properties": {name: {} for name in route.body}}}}}
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "OCC operations center API", "version": "1",
                 "description": "REST API of `occ web`. Writes with the session cookie need the header "
                                "`X-OCC-Request: 1`. Lists are paged with limit/offset."},
        "components": {"securitySchemes": {
            "session": {"type": "apiKey", "in": "cookie", "name": "occ_session"},
            "bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }


def _content(route: Any) -> dict[str, Any]:
    content: dict[str, Any] = {}
    if route.json:
        content["application/json"] = {"schema": {"type": "object"}}
    else:
        content["text/html" if route.path in ("/", "/login") else "text/plain"] = {"schema": {"type": "string"}}
    if route.csv:
        content["text/csv"] = {"schema": {"type": "string"}}
    return content
