"""Authorization matrix: every write route × every kind of caller. A caller below the route's role gets 403
(anonymous 401); a caller at or above it gets past authorization (the answer may still be 400/404/409)."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from occ.store import Store
from tests.web.conftest import PASSWORD
from web.app import all_routes
from web.auth import RANK, new_token, token_hash

CALLERS = ("anonymous", "kiosk", "viewer", "operator", "admin")
EFFECTIVE = {"kiosk": "viewer", "viewer": "viewer", "operator": "operator", "admin": "admin"}
BODIES: dict[str, dict[str, Any]] = {
    "/api/users": {"name": "matrix-user", "role": "viewer", "password": "long enough pw"},
    "/api/silences": {"matchers": [{"label": "area", "op": "=", "value": "bac-quang"}], "duration_s": 600},
    "/api/login": {"name": "viewer", "password": PASSWORD},
}


async def bearer(client: TestClient[Any, Any], store: Store, caller: str) -> dict[str, str]:
    if caller == "anonymous":
        return {}
    if caller == "kiosk":
        from datetime import UTC, datetime, timedelta

        user = await store.users.get("admin")
        assert user is not None
        token = new_token()
        await store.users.add_token(user.id, token_hash(token), kind="kiosk",
                                    expires_at=datetime.now(UTC) + timedelta(days=1))
        return {"Authorization": f"Bearer {token}"}
    response = await client.post("/api/login", json={"name": caller, "password": PASSWORD, "bearer": True})
    return {"Authorization": f"Bearer {(await response.json())['token']}"}


async def test_every_write_route_for_every_role(client: TestClient[Any, Any], store: Store) -> None:
    writes = [r for r in all_routes() if r.method not in ("GET", "HEAD")]
    assert len(writes) >= 8
    headers = {caller: await bearer(client, store, caller) for caller in CALLERS}
    checked = 0
    for route in writes:
        path = (route.path.replace("{alert_id}", "999999").replace("{name}", "nobody")
                .replace("{silence_id}", "999999"))
        for caller in CALLERS:
            if route.path == "/api/logout" and caller != "anonymous":
                continue  # would end the session the other rows use; covered in test_rest
            client.session.cookie_jar.clear()  # only the bearer token speaks for the caller
            response = await client.request(route.method, path, json=BODIES.get(route.path, {}),
                                            headers=headers[caller])
            if route.access == "public":
                assert response.status not in (401, 403), (route.path, caller, response.status)
            elif caller == "anonymous":
                assert response.status == 401, (route.path, caller, response.status)
            elif RANK[EFFECTIVE[caller]] >= RANK[route.access]:
                assert response.status not in (401, 403), (route.path, caller, await response.text())
            else:
                assert response.status == 403, (route.path, caller, response.status)
                assert (await response.json())["error"]["code"] == "forbidden"
            checked += 1
    assert checked >= len(writes) * 4
