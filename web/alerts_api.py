"""Alert routes: list (filters, CSV), one alert and its transitions, acknowledge and resolve (operators),
silences and incidents — over the store methods of the alerts contract (occ/store/alerts.py).

An acknowledgement or resolve is written by the store; the alerts service publishes the resulting transition
on the alert topic within about a second, and every wall updates from that (the REST answer carries the
updated episode at once for the operator who clicked).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from occ.store.alerts import AlertEpisode, AlertStateError, Silence
from web import params
from web.api import PAGE, RANGE, Param, Route, body_text, csv_response, ctx, json_response, local, paged, principal
from web.api import read_json as read_body
from web.errors import api_error
from web.security import access

STATES = ("open", "active", "all", "pending", "firing", "recovering", "resolved")


def _episode_id(request: web.Request) -> int:
    raw = request.match_info["alert_id"]
    if not raw.isdigit():
        raise api_error(404, "not_found", f"no alert {raw!r}")
    return int(raw)


def _alert_json(episode: AlertEpisode) -> dict[str, Any]:
    return episode.to_json()


@access("viewer")
async def list_alerts(request: web.Request) -> web.Response:
    """Alerts, newest change first: filter by state, severity, area, device, rule and time of last change."""
    c = ctx(request)
    q = request.query
    limit, offset = params.page(q)
    fmt = params.choice(q, "format", ("json", "csv"), "json")
    severity = params.integer(q, "min_severity", 0, lo=0, hi=5)
    episodes = await c.store.list_alerts(
        state=params.choice(q, "state", STATES, "open"), min_severity=severity or None,
        area=params.text(q, "area"), device_id=params.text(q, "device"), rule=params.text(q, "rule"),
        since=params.when(q, "start", c.site_tz), until=params.when(q, "end", c.site_tz), limit=offset + limit + 1,
    )
    window = episodes[offset : offset + limit]
    if fmt == "csv":
        tz = c.site_tz
        return csv_response(
            ["id", "severity", "level", "state", "rule", "device_id", "area", "value", "threshold", "message_vi",
             "message_en", "started_at", "fired_at", "changed_at", "resolved_at", "acked_by", "ack_note"],
            ((e.id, e.severity, e.level, e.state, e.rule, e.device_id or "", e.area or "",
              "" if e.value is None else e.value, "" if e.threshold is None else e.threshold, e.message_vi,
              e.message_en, local(e.started_at, tz), local(e.fired_at, tz), local(e.changed_at, tz),
              local(e.resolved_at, tz), e.acked_by or "", e.ack_note or "") for e in window),
            "alerts.csv",
        )
    return json_response(paged([_alert_json(e) for e in window], limit, offset, more=len(episodes) > offset + limit))


@access("viewer")
async def get_alert(request: web.Request) -> web.Response:
    episode = await ctx(request).store.get_alert(_episode_id(request))
    if episode is None:
        raise api_error(404, "not_found", f"no alert {request.match_info['alert_id']}")
    return json_response(_alert_json(episode))


@access("viewer")
async def alert_transitions(request: web.Request) -> web.Response:
    episode_id = _episode_id(request)
    limit = params.integer(request.query, "limit", 200, lo=1, hi=params.MAX_LIMIT)
    rows = await ctx(request).store.alert_transitions(episode_id, limit=limit)
    items = [{"seq": t.id, "ts": t.ts.isoformat(), "from_state": t.from_state, "to_state": t.to_state,
              "from_severity": t.from_severity, "to_severity": t.to_severity, "reason": t.reason, "actor": t.actor,
              "late": t.late, "muted": t.muted} for t in rows]
    return json_response({"items": items, "limit": limit, "offset": 0, "next_offset": None})


@access("operator")
async def acknowledge(request: web.Request) -> web.Response:
    """Acknowledge (with a note; optional `expires_in_s` after which the acknowledgement lapses)."""
    episode_id = _episode_id(request)
    doc = await read_body(request)
    note = body_text(doc, "note", max_len=1000)
    expires = doc.get("expires_in_s")
    valid = isinstance(expires, int) and not isinstance(expires, bool) and 0 < expires <= 7 * 86400
    if expires is not None and not valid:
        raise api_error(400, "bad_request", "expires_in_s must be an integer number of seconds up to 7 days")
    expires_at = datetime.now(UTC) + timedelta(seconds=expires) if expires else None
    try:
        episode = await ctx(request).store.acknowledge_alert(episode_id, user=principal(request).name, note=note,
                                                             expires_at=expires_at)
    except AlertStateError as exc:
        raise api_error(409, "conflict", str(exc)) from None
    return json_response(_alert_json(episode))


@access("operator")
async def resolve(request: web.Request) -> web.Response:
    """Resolve by hand (with a note); the engine keeps the condition quiet until it clears."""
    episode_id = _episode_id(request)
    doc = await read_body(request)
    note = body_text(doc, "note", max_len=1000)
    try:
        episode = await ctx(request).store.resolve_alert(episode_id, user=principal(request).name, note=note)
    except AlertStateError as exc:
        raise api_error(409, "conflict", str(exc)) from None
    return json_response(_alert_json(episode))


def _silence_json(s: Silence) -> dict[str, Any]:
    return {"id": s.id, "matchers": s.matchers, "starts_at": s.starts_at.isoformat(), "ends_at": s.ends_at.isoformat(),
            "author": s.author, "comment": s.comment, "created_at": s.created_at.isoformat(),
            "deleted_at": s.deleted_at.isoformat() if s.deleted_at else None}


@access("viewer")
async def list_silences(request: web.Request) -> web.Response:
    active = request.query.get("active") in ("1", "true")
    silences = await ctx(request).store.list_silences(active_at=datetime.now(UTC) if active else None)
    return json_response({"items": [_silence_json(s) for s in silences], "limit": len(silences), "offset": 0,
                          "next_offset": None})


@access("operator")
async def create_silence(request: web.Request) -> web.Response:
    """Mute matching alerts for a while: `{"matchers": [{"label", "op", "value"}], "duration_s" | "ends_at",
    "starts_at"?, "comment"}`."""
    c = ctx(request)
    doc = await read_body(request)
    now = datetime.now(UTC)
    q = {k: str(v) for k, v in doc.items() if k in ("starts_at", "ends_at") and isinstance(v, str)}
    starts = params.when(q, "starts_at", c.site_tz) or now  # type: ignore[arg-type]
    ends = params.when(q, "ends_at", c.site_tz)  # type: ignore[arg-type]
    duration = doc.get("duration_s")
    if ends is None:
        if not isinstance(duration, int) or isinstance(duration, bool) or not 0 < duration <= 90 * 86400:
            raise api_error(400, "bad_request", "give ends_at or duration_s (seconds, up to 90 days)")
        ends = starts + timedelta(seconds=duration)
    if ends <= starts:
        raise api_error(400, "bad_request", "ends_at must be after starts_at")
    silence = await c.store.create_silence(doc.get("matchers"), starts_at=starts, ends_at=ends,
                                           author=principal(request).name,
                                           comment=body_text(doc, "comment", max_len=1000))
    return json_response(_silence_json(silence), status=201)


@access("operator")
async def delete_silence(request: web.Request) -> web.Response:
    raw = request.match_info["silence_id"]
    if not raw.isdigit() or not await ctx(request).store.delete_silence(int(raw)):
        raise api_error(404, "not_found", f"no active silence {raw!r}")
    return json_response({"id": int(raw), "deleted": True})


@access("viewer")
async def list_incidents(request: web.Request) -> web.Response:
    q = request.query
    limit = params.integer(q, "limit", 100, lo=1, hi=params.MAX_LIMIT)
    incidents = await ctx(request).store.list_incidents(state=params.choice(q, "state", ("open", "resolved", "all"),
                                                                            "open"),
                                                        area=params.text(q, "area"), limit=limit)
    return json_response({"items": [i.to_json() for i in incidents], "limit": limit, "offset": 0,
                          "next_offset": None})


ALERT_ID = Param("alert_id", where="path", type="integer", required=True)
NOTE = ("note",)

ROUTES: list[Route] = [
    Route("GET", "/api/alerts", list_alerts, "Alerts (filter; JSON or CSV)", "alerts",
          params=(Param("state", enum=STATES), Param("min_severity", type="integer"), Param("area"), Param("device"),
                  Param("rule"), *RANGE, *PAGE, Param("format", enum=("json", "csv"))), csv=True),
    Route("GET", "/api/alerts/{alert_id}", get_alert, "One alert episode", "alerts", params=(ALERT_ID,)),
    Route("GET", "/api/alerts/{alert_id}/transitions", alert_transitions, "An episode's transitions", "alerts",
          params=(ALERT_ID, Param("limit", type="integer"))),
    Route("POST", "/api/alerts/{alert_id}/ack", acknowledge, "Acknowledge (operator)", "alerts", params=(ALERT_ID,),
          body=("note", "expires_in_s")),
    Route("POST", "/api/alerts/{alert_id}/resolve", resolve, "Resolve by hand (operator)", "alerts",
          params=(ALERT_ID,), body=NOTE),
    Route("GET", "/api/silences", list_silences, "Silences", "alerts", params=(Param("active"),)),
    Route("POST", "/api/silences", create_silence, "Create a silence (operator)", "alerts",
          body=("matchers", "starts_at", "ends_at", "duration_s", "comment")),
    Route("DELETE", "/api/silences/{silence_id}", delete_silence, "Delete a silence (operator)", "alerts",
          params=(Param("silence_id", where="path", type="integer", required=True),)),
    Route("GET", "/api/incidents", list_incidents, "Grouped incidents (storm control)", "alerts",
          params=(Param("state", enum=("open", "resolved", "all")), Param("area"), Param("limit", type="integer"))),
]
