"""REST API through the aiohttp test client on a real PostgreSQL: auth, roles, pagination, CSV, errors,
and the OpenAPI document against the router."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from occ.store import Store
from tests.web.conftest import PASSWORD, WRITE_HEADERS, login
from web.app import all_routes

Client = TestClient[Any, Any]


async def test_anonymous_gets_401_except_health(client: Client) -> None:
    health = await client.get("/healthz")
    assert health.status == 200 and await health.json() == {"ok": True}
    for route in all_routes():
        if route.handler.occ_access == "public":
            continue
        path = route.path.replace("{device_id}", "HG-TEST-WL01").replace("{name}", "viewer")
        response = await client.request(route.method, path, headers={"Accept": "application/json"})
        assert response.status == 401, (route.method, path, response.status)
        body = await response.json()
        assert body["error"]["code"] == "unauthenticated"
    page = await client.get("/", headers={"Accept": "text/html"}, allow_redirects=False)
    assert page.status == 302 and page.headers["Location"] == "/login"


async def test_login_cookie_and_logout(client: Client) -> None:
    bad = await client.post("/api/login", json={"name": "viewer", "password": "nope"})
    assert bad.status == 401 and (await bad.json())["error"]["code"] == "bad_credentials"
    response = await client.post("/api/login", json={"name": "operator", "password": PASSWORD})
    set_cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie and "occ_session=" in set_cookie
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/"))["occ_session"]
    me = await client.get("/api/me")
    assert (await me.json()) == {"name": "operator", "role": "operator", "kind": "session"}
    out = await client.post("/api/logout", headers=WRITE_HEADERS)
    assert out.status == 200
    client.session.cookie_jar.update_cookies({"occ_session": cookie.value})  # replaying the old cookie fails
    assert (await client.get("/api/me")).status == 401


async def test_bearer_token(client: Client) -> None:
    response = await client.post("/api/login", json={"name": "admin", "password": PASSWORD, "bearer": True})
    token = (await response.json())["token"]
    client.session.cookie_jar.clear()
    users = await client.get("/api/users", headers={"Authorization": f"Bearer {token}"})
    assert users.status == 200
    assert {u["name"] for u in (await users.json())["items"]} == {"viewer", "operator", "admin"}
    # A bearer write needs no CSRF header (a browser cannot attach the token cross-site).
    created = await client.post("/api/users", json={"name": "op2", "role": "operator", "password": "x" * 10},
                                headers={"Authorization": f"Bearer {token}"})
    assert created.status == 201


async def test_login_rate_limit(client: Client) -> None:
    for _ in range(5):
        assert (await client.post("/api/login", json={"name": "viewer", "password": "wrong"})).status == 401
    blocked = await client.post("/api/login", json={"name": "viewer", "password": PASSWORD})
    assert blocked.status == 429 and "Retry-After" in blocked.headers


async def test_csrf_and_origin_on_cookie_writes(client: Client) -> None:
    await login(client, "admin")
    no_header = await client.post("/api/users", json={"name": "x1", "role": "viewer"})
    assert no_header.status == 403 and (await no_header.json())["error"]["code"] == "csrf"
    foreign = await client.post("/api/users", json={"name": "x1", "role": "viewer"},
                                headers={**WRITE_HEADERS, "Origin": "https://evil.example"})
    assert foreign.status == 403 and (await foreign.json())["error"]["code"] == "origin"
    ok = await client.post("/api/users", json={"name": "x1", "role": "viewer"}, headers=WRITE_HEADERS)
    assert ok.status == 201


async def test_devices_latest_status_pagination(client: Client) -> None:
    await login(client, "viewer")
    page = await (await client.get("/api/devices?limit=2")).json()
    assert [d["id"] for d in page["items"]] == ["HG-TEST-CAM1", "HG-TEST-RG01"] and page["next_offset"] == 2
    rest = await (await client.get("/api/devices?limit=2&offset=2")).json()
    assert [d["id"] for d in rest["items"]] == ["HG-TEST-WL01"] and rest["next_offset"] is None
    device = await (await client.get("/api/devices/HG-TEST-WL01")).json()
    assert device["latest"]["water_level_m"]["value"] == 98.0 and device["area"] == "ha-giang-city"
    status = await (await client.get("/api/status")).json()
    assert status["items"][0]["device_id"] == "HG-TEST-CAM1" and status["items"][0]["status"] == "offline"
    latest = await (await client.get("/api/latest?device=HG-TEST-RG01")).json()
    assert [(i["metric"], i["value"]) for i in latest["items"]] == [("rain_mm", 0.0)]
    missing = await client.get("/api/devices/NOPE")
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "not_found"


async def test_history_json_csv_and_errors(client: Client) -> None:
    await login(client, "viewer")
    response = await client.get("/api/devices/HG-TEST-RG01/history?metric=rain_mm&bucket=raw")
    body = await response.json()
    assert response.status == 200 and [v for _, v in body["points"]] == [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]
    total = await (await client.get("/api/devices/HG-TEST-RG01/history?metric=rain_mm&bucket=day&agg=sum")).json()
    assert sum(v for _, v in total["points"]) == 15.0
    csv = await client.get("/api/devices/HG-TEST-RG01/history?metric=rain_mm&bucket=raw&format=csv")
    raw = await csv.read()
    assert raw.startswith(b"\xef\xbb\xbf") and csv.headers["Content-Type"].startswith("text/csv")
    lines = raw.decode("utf-8-sig").splitlines()
    assert lines[0] == "time,device_id,metric,avg" and lines[1].endswith(",HG-TEST-RG01,rain_mm,5.0")
    assert "+07:00" in lines[1]  # site time zone
    for query, fragment in (("", "metric is required"), ("&metric=rain_mm&agg=median", "agg must be one of"),
                            ("&metric=rain_mm&start=yesterday", "start must be an ISO 8601"),
                            ("&metric=rain_mm&bucket=fortnight", "bucket must be")):
        bad = await client.get(f"/api/devices/HG-TEST-RG01/history?x=1{query}")
        assert bad.status == 400, query
        assert fragment in (await bad.json())["error"]["message"]


async def test_events_csv_has_bom_and_vietnamese(client: Client, store: Store) -> None:
    from datetime import UTC, datetime

    from occ.models import Event

    now = datetime.now(UTC)
    await store.write_batch([], events=[Event("HG-TEST-CAM1", now, "road_flooding", {"note": "Ngập đường"})],
                            received_at=now)
    await login(client, "viewer")
    csv = await (await client.get("/api/events?format=csv")).read()
    text = csv.decode("utf-8")
    assert text.startswith("\ufeff") and "Ngập đường" in text
    body = await (await client.get("/api/events?limit=1")).json()
    assert body["items"][0]["type"] == "road_flooding"


async def test_dead_letters_are_admin_only(client: Client) -> None:
    await login(client, "operator")
    assert (await client.get("/api/dead-letters")).status == 403
    client.session.cookie_jar.clear()
    await login(client, "admin")
    assert (await client.get("/api/dead-letters")).status == 200


async def test_kiosk_token_is_read_only(client: Client) -> None:
    await login(client, "admin")
    made = await client.post("/api/users/admin/kiosk-tokens", json={"label": "wall 1"}, headers=WRITE_HEADERS)
    token = (await made.json())["token"]
    client.session.cookie_jar.clear()
    opened = await client.get(f"/kiosk?token={token}", allow_redirects=False)
    assert opened.status == 302 and opened.headers["Location"] == "/?kiosk=1"
    me = await (await client.get("/api/me")).json()
    assert me == {"name": "admin", "role": "viewer", "kind": "kiosk"}  # an admin's kiosk token is still read-only
    denied = await client.post("/api/users", json={"name": "x", "role": "viewer"}, headers=WRITE_HEADERS)
    assert denied.status == 403
    bad = await client.get("/kiosk?token=nope", allow_redirects=False)
    assert bad.status == 401


async def test_openapi_matches_the_router(client: Client) -> None:
    await login(client, "viewer")
    doc = await (await client.get("/api/openapi.json")).json()
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    served = set()
    for resource in client.app.router.resources():
        info = resource.get_info()
        path = info.get("path") or info.get("formatter")
        if path is None:  # the static folder
            continue
        for route in resource:
            if route.method != "HEAD":
                served.add((route.method, path))
    assert served == documented
    for ops in doc["paths"].values():
        for op in ops.values():
            assert op["x-occ-role"] in ("public", "viewer", "operator", "admin")


async def test_metrics_and_json_404(client: Client) -> None:
    await login(client, "viewer")
    metrics = await client.get("/metrics")
    text = await metrics.text()
    assert metrics.status == 200 and "occ_web_ws_clients" in text
    assert "occ_web_event_loop_lag_seconds_count" in text and "occ_web_gc_pause_seconds_count" in text
    unknown = await client.get("/api/nothing-here")
    assert unknown.status in (401, 404)


async def test_rules_list_and_validate(client: Client) -> None:
    await login(client, "viewer")
    rules = await client.get("/api/rules")
    assert rules.status == 200
    names = {r["name"] for r in (await rules.json())["items"]}
    assert "flood-level" in names
    client.session.cookie_jar.clear()
    await login(client, "admin")
    good = ("rules:\n  - name: t\n    kind: threshold\n    metric: rain_mm\n    levels:\n"
            "      - {name: a, severity: 1, enter: 5}\n")
    ok = await client.post("/api/rules/validate", data=good, headers=WRITE_HEADERS)
    assert ok.status == 200 and (await ok.json())["valid"] is True, await ok.text()
    bad = await client.post("/api/rules/validate", data=good.replace("threshold", "thresold"), headers=WRITE_HEADERS)
    body = await bad.json()
    assert bad.status == 422 and body["valid"] is False and "candidate.yaml:" in body["error"]["message"]
