"""Alert SQL (issue 6): episodes, transitions, acknowledgements, silences, maintenance windows, incidents,
the webhook outbox and the engine's state snapshots. The `Store` facade exposes these functions as methods.

Contracts that matter for restart safety (docs/architecture.md §5):
* `commit_alerts` writes the engine's transitions, incident changes, the step's journal row (its inputs) and
  webhook outbox rows in ONE transaction; the alerts service acknowledges its MQTT messages only after it
  returns. `checkpoint_engine` writes the engine state and drops the journal it covers, in one transaction;
  `load_engine_recovery` reads both back consistently (checkpoint + the journal after it).
* One open episode per fingerprint is enforced by the unique partial index `alert_episodes_open_uq`.
* Transitions are the outbox of the alert stream: `published_at` stays null until the service has published
  them, so a crash between commit and publish republishes (at least once; consumers dedupe on the id).
* Operators (CLI, web) change episodes only through `acknowledge_alert` / `resolve_alert`, which lock the row
  (`FOR UPDATE`) like the engine does, so the two never interleave inside one episode.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from typing import Any

import asyncpg

from occ.errors import OccError

__all__ = [
    "AlertEpisode",
    "AlertNotFound",
    "AlertStateError",
    "AlertTransition",
    "CommitResult",
    "EngineRecovery",
    "EpisodeWrite",
    "Incident",
    "IncidentWrite",
    "MaintenanceWindow",
    "Silence",
    "iso",
    "validate_matchers",
]

MATCHER_OPS = ("=", "!=", "=~", "!~")
OPEN_STATES = ("firing", "recovering")
ACTIVE_STATES = ("pending", "firing", "recovering")


class AlertNotFound(OccError, LookupError):
    """No alert episode (or silence) with that id."""


class AlertStateError(OccError, ValueError):
    """The operation does not apply to the episode in its current state, or its input is invalid."""


def iso(value: datetime | None) -> str | None:
    """UTC ISO 8601 with Z, the wire format of every alert timestamp."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def validate_matchers(matchers: Any) -> list[dict[str, str]]:
    """Check `[{label, op, value}]` and return it normalised; AlertStateError names what is wrong."""
    if not isinstance(matchers, list) or not matchers:
        raise AlertStateError("matchers must be a non-empty list of {label, op, value}")
    out: list[dict[str, str]] = []
    for i, m in enumerate(matchers):
        if not isinstance(m, Mapping) or set(m) - {"label", "op", "value"} or "label" not in m or "value" not in m:
            raise AlertStateError(f"matcher {i}: expected {{label, op, value}}")
        op = str(m.get("op", "="))
        if op not in MATCHER_OPS:
            raise AlertStateError(f"matcher {i}: op {op!r} is not one of {', '.join(MATCHER_OPS)}")
        value = str(m["value"])
        if op in ("=~", "!~"):
            try:
                re.compile(value)
            except re.error as exc:
                raise AlertStateError(f"matcher {i}: bad regular expression {value!r}: {exc}") from None
        out.append({"label": str(m["label"]), "op": op, "value": value})
    return out


# --- value objects ----------------------------------------------------------------------------------------

_EPISODE_COLUMNS = (
    "e.id, e.fingerprint, e.rule, e.kind, e.device_id, e.area, e.labels, e.state, e.severity, e.peak_severity, "
    "e.level, e.value, e.threshold, e.message_vi, e.message_en, e.started_at, e.fired_at, e.changed_at, "
    "e.resolved_at, e.late, e.muted, e.flapping, e.incident_id, e.acked_by, e.acked_at, e.ack_note, "
    "e.ack_expires_at, e.escalation_step, e.resolved_by"
)


@dataclass(frozen=True, slots=True)
class AlertEpisode:
    id: int
    fingerprint: str
    rule: str
    kind: str
    device_id: str | None
    area: str | None
    labels: dict[str, Any]
    state: str
    severity: int
    peak_severity: int
    level: str
    value: float | None
    threshold: float | None
    message_vi: str
    message_en: str
    started_at: datetime
    fired_at: datetime | None
    changed_at: datetime
    resolved_at: datetime | None
    late: bool
    muted: str | None
    flapping: bool
    incident_id: int | None
    acked_by: str | None
    acked_at: datetime | None
    ack_note: str | None
    ack_expires_at: datetime | None
    escalation_step: int
    resolved_by: str | None

    @property
    def acked(self) -> dict[str, Any] | None:
        if self.acked_by is None:
            return None
        return {"by": self.acked_by, "at": iso(self.acked_at), "note": self.ack_note or "",
                "expires_at": iso(self.ack_expires_at)}

    def to_json(self) -> dict[str, Any]:
        """The MQTT contract's shape (without `seq`, `previous_*`, `reason`, `actor`, which belong to a
        transition)."""
        return {
            "v": 1, "id": self.id, "fingerprint": self.fingerprint, "rule": self.rule, "kind": self.kind,
            "device_id": self.device_id, "area": self.area, "labels": self.labels, "severity": self.severity,
            "peak_severity": self.peak_severity, "level": self.level, "state": self.state, "value": self.value,
            "threshold": self.threshold, "unit": self.labels.get("unit", ""), "message_vi": self.message_vi,
            "message_en": self.message_en, "started_at": iso(self.started_at), "fired_at": iso(self.fired_at),
            "changed_at": iso(self.changed_at), "resolved_at": iso(self.resolved_at), "late": self.late,
            "muted": self.muted, "acked": self.acked, "incident_id": self.incident_id,
        }


@dataclass(frozen=True, slots=True)
class AlertTransition:
    id: int
    episode_id: int
    ts: datetime
    recorded_at: datetime
    from_state: str
    to_state: str
    from_severity: int | None
    to_severity: int | None
    reason: str
    actor: str
    late: bool
    muted: str | None
    payload: dict[str, Any]
    published_at: datetime | None


@dataclass(frozen=True, slots=True)
class Silence:
    id: int
    matchers: list[dict[str, str]]
    starts_at: datetime
    ends_at: datetime
    author: str
    comment: str
    created_at: datetime
    deleted_at: datetime | None

    def active(self, at: datetime) -> bool:
        return self.deleted_at is None and self.starts_at <= at < self.ends_at


@dataclass(frozen=True, slots=True)
class MaintenanceWindow:
    id: int
    name: str
    matchers: list[dict[str, str]]
    weekdays: list[int]
    start_local: time
    duration_s: int
    timezone: str
    author: str
    comment: str


@dataclass(frozen=True, slots=True)
class Incident:
    id: int
    group_key: str
    rule: str
    area: str | None
    state: str
    severity: int
    members: int
    peak_members: int
    title_vi: str
    title_en: str
    opened_at: datetime
    changed_at: datetime
    resolved_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {"v": 1, "id": self.id, "group_key": self.group_key, "rule": self.rule, "area": self.area,
                "state": self.state, "severity": self.severity, "members": self.members,
                "peak_members": self.peak_members, "title_vi": self.title_vi, "title_en": self.title_en,
                "opened_at": iso(self.opened_at), "changed_at": iso(self.changed_at),
                "resolved_at": iso(self.resolved_at)}


# --- what the engine commits ------------------------------------------------------------------------------

@dataclass(slots=True)
class EpisodeWrite:
    """One engine transition: the episode's new row values plus the transition's own fields."""

    fingerprint: str
    rule: str
    kind: str
    device_id: str | None
    area: str | None
    labels: dict[str, Any]
    from_state: str
    state: str
    from_severity: int | None
    severity: int
    peak_severity: int
    level: str
    value: float | None
    threshold: float | None
    message_vi: str
    message_en: str
    started_at: datetime
    fired_at: datetime | None
    changed_at: datetime
    resolved_at: datetime | None
    late: bool
    muted: str | None
    flapping: bool
    reason: str
    group_key: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    """Extra wire fields (device_name, ...); id, seq and the episode fields are filled in here."""
    notify: Sequence[str] = ()
    """Webhook targets to enqueue for this transition (in the same transaction)."""


@dataclass(slots=True)
class IncidentWrite:
    group_key: str
    rule: str
    area: str | None
    state: str
    severity: int
    members: int
    peak_members: int
    title_vi: str
    title_en: str
    opened_at: datetime
    changed_at: datetime
    resolved_at: datetime | None
    notify: Sequence[str] = ()


@dataclass(slots=True)
class CommitResult:
    published: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    """(transition id, kind 'alert'|'incident', payload) in commit order, to publish after commit."""
    dropped: list[str] = field(default_factory=list)
    """Fingerprints whose episode an operator resolved meanwhile: the engine must stand down."""


# --- engine side ------------------------------------------------------------------------------------------

async def load_engine_state(conn: asyncpg.Connection) -> dict[str, bytes]:
    rows = await conn.fetch("SELECT key, data FROM alert_engine_state")
    return {r["key"]: bytes(r["data"]) for r in rows}


@dataclass(slots=True)
class EngineRecovery:
    """What a restarting engine needs: the last checkpoint and the journal recorded after it, in order."""

    state: dict[str, bytes]
    journal_seq: int
    """The journal position the checkpoint reflects (0 = none)."""
    journal: list[tuple[int, bytes]]
    """(seq, records) after `journal_seq`, oldest first."""

    @property
    def last_seq(self) -> int:
        return self.journal[-1][0] if self.journal else self.journal_seq


async def load_engine_recovery(conn: asyncpg.Connection) -> EngineRecovery:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        state = await load_engine_state(conn)
        seq = await conn.fetchval("SELECT journal_seq FROM alert_engine_checkpoint") or 0
        rows = await conn.fetch("SELECT seq, records FROM alert_engine_journal WHERE seq > $1 ORDER BY seq", seq)
    return EngineRecovery(state, int(seq), [(int(r["seq"]), bytes(r["records"])) for r in rows])


async def _write_state(conn: asyncpg.Connection, state: Mapping[str, bytes | None], at: datetime) -> None:
    upserts = sorted((k, v) for k, v in state.items() if v is not None)  # key order: no lock-order deadlock
    deletes = sorted(k for k, v in state.items() if v is None)
    if upserts:
        await conn.execute(
            "INSERT INTO alert_engine_state AS s (key, data, updated_at) "
            "SELECT k, d, $3 FROM unnest($1::text[], $2::bytea[]) AS u(k, d) "
            "ON CONFLICT (key) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
            [k for k, _ in upserts], [v for _, v in upserts], at,
        )
    if deletes:
        await conn.execute("DELETE FROM alert_engine_state WHERE key = ANY($1::text[])", deletes)


async def checkpoint_engine(
    conn: asyncpg.Connection, *, state: Mapping[str, bytes | None], journal_seq: int, taken_at: datetime
) -> None:
    """Write the engine state as of journal position `journal_seq` and drop the journal up to it, atomically:
    a restart sees either the previous checkpoint with its journal, or this one with the journal after it."""
    async with conn.transaction():
        await _write_state(conn, state, taken_at)
        await conn.execute(
            "INSERT INTO alert_engine_checkpoint (id, journal_seq, taken_at) VALUES (true, $1, $2) "
            "ON CONFLICT (id) DO UPDATE SET journal_seq = excluded.journal_seq, taken_at = excluded.taken_at",
            journal_seq, taken_at,
        )
        await conn.execute("DELETE FROM alert_engine_journal WHERE seq <= $1", journal_seq)


async def commit_alerts(
    conn: asyncpg.Connection,
    *,
    episodes: Sequence[EpisodeWrite],
    incidents: Sequence[IncidentWrite] = (),
    state: Mapping[str, bytes | None] | None = None,
    journal: tuple[int, bytes] | None = None,
    recorded_at: datetime,
) -> CommitResult:
    """Write one engine step in ONE transaction (the caller acknowledges MQTT only after this returns): its
    transitions, incident changes, webhook outbox rows and either its journal row (`journal`: seq, records) or
    engine state rows (`state`).

    Set-based: a step's transitions take a fixed number of statements whatever their count (episode updates,
    episode inserts, transition ids, transitions, notifications). Episodes are updated in fingerprint order
    (no deadlock between engine and operators). A transition of an episode that is no longer open (resolved by
    an operator meanwhile) is dropped and its fingerprint reported, so the engine stands down instead of
    resurrecting it."""
    result = CommitResult()
    async with conn.transaction():
        incident_ids: dict[str, int] = {}
        for inc in incidents:
            inc_id, payload = await _write_incident(conn, inc)
            incident_ids[inc.group_key] = inc_id
            result.published.append((inc_id, "incident", payload))
        if episodes:
            written = await _write_episodes(conn, episodes, recorded_at, incident_ids)
            notify_ids: list[int] = []
            notify_targets: list[str] = []
            notify_payloads: list[dict[str, Any]] = []
            for ep, done in zip(episodes, written, strict=True):
                if done is None:
                    if ep.fingerprint not in result.dropped:
                        result.dropped.append(ep.fingerprint)
                    continue
                seq, payload = done
                result.published.append((seq, "alert", payload))
                for target in ep.notify:
                    notify_ids.append(seq)
                    notify_targets.append(target)
                    notify_payloads.append(payload)
            if notify_ids:
                await conn.execute(
                    "INSERT INTO alert_notifications (transition_id, target, step, payload, next_at) "
                    "SELECT t, g, 0, p, $4 FROM unnest($1::bigint[], $2::text[], $3::jsonb[]) AS u(t, g, p) "
                    "ON CONFLICT DO NOTHING",
                    notify_ids, notify_targets, notify_payloads, recorded_at,
                )
        for inc in incidents:
            for target in inc.notify:
                # Incident notifications hang off the newest transition of the batch when there is one; an
                # incident change always comes with at least one member transition.
                seqs = [s for s, kind, _ in result.published if kind == "alert"]
                if seqs:
                    payload = next(p for s, k, p in result.published if k == "incident" and
                                   p["group_key"] == inc.group_key)
                    await conn.execute(
                        "INSERT INTO alert_notifications (transition_id, target, step, payload, next_at) "
                        "VALUES ($1, $2, -1, $3, $4) ON CONFLICT DO NOTHING",
                        seqs[-1], target, payload, recorded_at,
                    )
        if state:
            await _write_state(conn, state, recorded_at)
        if journal is not None:
            await conn.execute(
                "INSERT INTO alert_engine_journal (seq, records, recorded_at) VALUES ($1, $2, $3)",
                journal[0], journal[1], recorded_at,
            )
    return result


async def _write_incident(conn: asyncpg.Connection, inc: IncidentWrite) -> tuple[int, dict[str, Any]]:
    row = await conn.fetchrow(
        "SELECT id, opened_at FROM alert_incidents WHERE group_key = $1 AND state = 'open' FOR UPDATE",
        inc.group_key,
    )
    if row is None:
        inc_id = await conn.fetchval(
            "INSERT INTO alert_incidents (group_key, rule, area, state, severity, members, peak_members, "
            "title_vi, title_en, opened_at, changed_at, resolved_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
            inc.group_key, inc.rule, inc.area, inc.state, inc.severity, inc.members, inc.peak_members,
            inc.title_vi, inc.title_en, inc.opened_at, inc.changed_at, inc.resolved_at,
        )
    else:
        inc_id = row["id"]
        await conn.execute(
            "UPDATE alert_incidents SET state = $2, severity = $3, members = $4, peak_members = $5, "
            "title_vi = $6, title_en = $7, changed_at = $8, resolved_at = $9 WHERE id = $1",
            inc_id, inc.state, inc.severity, inc.members, inc.peak_members, inc.title_vi, inc.title_en,
            inc.changed_at, inc.resolved_at,
        )
    payload = {"v": 1, "id": inc_id, "group_key": inc.group_key, "rule": inc.rule, "area": inc.area,
               "state": inc.state, "severity": inc.severity, "members": inc.members,
               "peak_members": inc.peak_members, "title_vi": inc.title_vi, "title_en": inc.title_en,
               "opened_at": iso(inc.opened_at), "changed_at": iso(inc.changed_at),
               "resolved_at": iso(inc.resolved_at)}
    return int(inc_id), payload


@dataclass(slots=True)
class _Segment:
    """The transitions of one episode within one step: `new` opens it (first from_state 'ok'), otherwise it
    continues the episode open in the database. The row gets the values of the last transition."""

    new: bool
    items: list[int]
    episode_id: int | None = None
    incident_id: int | None = None
    acked: dict[str, Any] | None = None


_UPDATE_EPISODES = (
    "UPDATE alert_episodes e SET state = u.state, severity = u.severity, peak_severity = u.peak, level = u.level, "
    "value = u.value, threshold = u.threshold, message_vi = u.mvi, message_en = u.men, fired_at = u.fired, "
    "changed_at = u.changed, resolved_at = u.resolved, late = u.late, muted = u.muted, flapping = u.flapping, "
    "incident_id = coalesce(u.incident, e.incident_id) "
    "FROM unnest($1::text[], $2::text[], $3::smallint[], $4::smallint[], $5::text[], $6::float8[], $7::float8[], "
    "$8::text[], $9::text[], $10::timestamptz[], $11::timestamptz[], $12::timestamptz[], $13::bool[], $14::text[], "
    "$15::bool[], $16::bigint[]) AS u(fp, state, severity, peak, level, value, threshold, mvi, men, fired, changed, "
    "resolved, late, muted, flapping, incident) "
    "WHERE e.fingerprint = u.fp AND e.state <> 'resolved' "
    "RETURNING u.fp, e.id, e.incident_id, e.acked_by, e.acked_at, e.ack_note, e.ack_expires_at"
)


def _row_values(eps: Sequence[EpisodeWrite], incident_ids: Sequence[int | None]) -> list[list[Any]]:
    """Columns (for unnest) of the episode UPDATE: one entry per episode, from its last transition."""
    cols: list[list[Any]] = [[] for _ in range(16)]
    for ep, inc in zip(eps, incident_ids, strict=True):
        for col, value in zip(cols, (
                ep.fingerprint, ep.state, ep.severity, ep.peak_severity, ep.level, ep.value, ep.threshold,
                ep.message_vi, ep.message_en, ep.fired_at, ep.changed_at, ep.resolved_at, ep.late, ep.muted,
                ep.flapping, inc), strict=True):
            col.append(value)
    return cols


async def _update_open(conn: asyncpg.Connection, segs: list[_Segment], eps: Sequence[EpisodeWrite],
                       incident_of: Mapping[int, int | None]) -> None:
    """One UPDATE for the open episodes these segments continue (one segment per fingerprint), in fingerprint
    order; fills in each segment's episode id, incident and acknowledgement (none found: left None)."""
    segs = sorted(segs, key=lambda sg: eps[sg.items[-1]].fingerprint)
    last = [eps[sg.items[-1]] for sg in segs]
    rows = await conn.fetch(_UPDATE_EPISODES, *_row_values(last, [incident_of[sg.items[-1]] for sg in segs]))
    by_fp = {r["fp"]: r for r in rows}
    for sg, ep in zip(segs, last, strict=True):
        row = by_fp.get(ep.fingerprint)
        if row is None:
            continue  # resolved by an operator while the engine still held it open
        sg.episode_id = row["id"]
        sg.incident_id = row["incident_id"]
        if row["acked_by"] is not None:
            sg.acked = {"by": row["acked_by"], "at": iso(row["acked_at"]), "note": row["ack_note"] or "",
                        "expires_at": iso(row["ack_expires_at"])}


async def _write_episodes(
    conn: asyncpg.Connection, eps: Sequence[EpisodeWrite], recorded_at: datetime, incident_ids: Mapping[str, int]
) -> list[tuple[int, dict[str, Any]] | None]:
    """Every transition of a step in a fixed number of statements; per transition (seq, payload) or None when
    its episode is no longer open."""
    incident_of: dict[int, int | None] = {}
    missing = sorted({ep.group_key for ep in eps if ep.group_key and ep.group_key not in incident_ids})
    latest: dict[str, int] = dict(incident_ids)
    if missing:
        found = await conn.fetch(
            "SELECT DISTINCT ON (group_key) group_key, id FROM alert_incidents WHERE group_key = ANY($1::text[]) "
            "ORDER BY group_key, id DESC", missing)
        latest.update({r["group_key"]: r["id"] for r in found})
    for i, ep in enumerate(eps):
        incident_of[i] = latest.get(ep.group_key) if ep.group_key else None
    # Split into episodes: a transition from `ok` opens one; the others continue the open one.
    segments: list[_Segment] = []
    current: dict[str, _Segment] = {}
    for i, ep in enumerate(eps):
        seg = current.get(ep.fingerprint)
        if ep.from_state == "ok" or seg is None:
            seg = _Segment(new=ep.from_state == "ok", items=[])
            segments.append(seg)
            current[ep.fingerprint] = seg
        seg.items.append(i)
        if ep.state == "resolved":
            current.pop(ep.fingerprint, None)
    new = [sg for sg in segments if sg.new]
    ids = await conn.fetchrow(
        "SELECT array(SELECT nextval(pg_get_serial_sequence('alert_episodes', 'id')) FROM generate_series(1, $1)) "
        "AS episodes, array(SELECT nextval(pg_get_serial_sequence('alert_transitions', 'id')) "
        "FROM generate_series(1, $2)) AS transitions", len(new), len(eps))
    # 1. Episodes open in the database (one UPDATE), before new ones: a step can resolve one and open the next.
    existing = [sg for sg in segments if not sg.new]
    if existing:
        await _update_open(conn, existing, eps, incident_of)
    # 2. New episodes (one INSERT, ids drawn above). One already open for the fingerprint (the engine thought it
    # closed, e.g. after a rule change) makes the insert a no-op: that segment then updates the open one.
    if new:
        drawn = sorted(ids["episodes"])
        for sg, episode_id in zip(new, drawn, strict=True):
            sg.episode_id = episode_id
            sg.incident_id = incident_of[sg.items[-1]]
        first = [eps[sg.items[0]] for sg in new]
        last = [eps[sg.items[-1]] for sg in new]
        inserted = {r["id"] for r in await conn.fetch(
            "INSERT INTO alert_episodes (id, fingerprint, rule, kind, device_id, area, labels, state, severity, "
            "peak_severity, level, value, threshold, message_vi, message_en, started_at, fired_at, changed_at, "
            "resolved_at, late, muted, flapping, incident_id) OVERRIDING SYSTEM VALUE "
            "SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], "
            "$7::jsonb[], $8::text[], $9::smallint[], $10::smallint[], $11::text[], $12::float8[], $13::float8[], "
            "$14::text[], $15::text[], $16::timestamptz[], $17::timestamptz[], $18::timestamptz[], "
            "$19::timestamptz[], $20::bool[], $21::text[], $22::bool[], $23::bigint[]) "
            "ON CONFLICT (fingerprint) WHERE state <> 'resolved' DO NOTHING RETURNING id",
            [sg.episode_id for sg in new], [f.fingerprint for f in first], [f.rule for f in first],
            [f.kind for f in first], [f.device_id for f in first], [f.area for f in first],
            [f.labels for f in first], [x.state for x in last], [x.severity for x in last],
            [x.peak_severity for x in last], [x.level for x in last], [x.value for x in last],
            [x.threshold for x in last], [x.message_vi for x in last], [x.message_en for x in last],
            [f.started_at for f in first], [x.fired_at for x in last], [x.changed_at for x in last],
            [x.resolved_at for x in last], [x.late for x in last], [x.muted for x in last],
            [x.flapping for x in last], [sg.incident_id for sg in new],
        )}
        for sg in new:
            if sg.episode_id not in inserted:  # rare: continue the open one, one by one (in step order)
                sg.episode_id = None
                await _update_open(conn, [sg], eps, incident_of)
    # 3. Transitions (one INSERT), ids in step order; the payload is what is published.
    seqs = sorted(ids["transitions"])
    out: list[tuple[int, dict[str, Any]] | None] = [None] * len(eps)
    rows: list[tuple[Any, ...]] = []
    for sg in segments:
        if sg.episode_id is None:
            continue
        for i in sg.items:
            ep = eps[i]
            seq = seqs[i]
            payload = {
                "v": 1, "seq": seq, "id": sg.episode_id, "fingerprint": ep.fingerprint, "rule": ep.rule,
                "kind": ep.kind, "device_id": ep.device_id, "device_name": "", "area": ep.area, "labels": ep.labels,
                "severity": ep.severity, "peak_severity": ep.peak_severity, "level": ep.level, "state": ep.state,
                "previous_state": ep.from_state, "previous_severity": ep.from_severity, "value": ep.value,
                "threshold": ep.threshold, "unit": ep.labels.get("unit", ""), "message_vi": ep.message_vi,
                "message_en": ep.message_en, "started_at": iso(ep.started_at), "fired_at": iso(ep.fired_at),
                "changed_at": iso(ep.changed_at), "resolved_at": iso(ep.resolved_at), "reason": ep.reason,
                "actor": "engine", "late": ep.late, "muted": ep.muted, "acked": sg.acked,
                "incident_id": sg.incident_id if sg.incident_id is not None else incident_of[i],
                **ep.payload,
            }
            out[i] = (seq, payload)
            rows.append((seq, sg.episode_id, ep.changed_at, ep.from_state, ep.state, ep.from_severity, ep.severity,
                         ep.reason, ep.late, ep.muted, payload))
    if rows:
        rows.sort()
        cols = list(zip(*rows, strict=True))
        await conn.execute(
            "INSERT INTO alert_transitions (id, episode_id, ts, recorded_at, from_state, to_state, from_severity, "
            "to_severity, reason, actor, late, muted, payload) OVERRIDING SYSTEM VALUE "
            "SELECT i, e, t, $12, f, s, fs, ts, r, 'engine', l, m, p FROM unnest($1::bigint[], $2::bigint[], "
            "$3::timestamptz[], $4::text[], $5::text[], $6::smallint[], $7::smallint[], $8::text[], $9::bool[], "
            "$10::text[], $11::jsonb[]) AS u(i, e, t, f, s, fs, ts, r, l, m, p) ORDER BY i",
            *[list(c) for c in cols], recorded_at,
        )
    return out


async def unpublished(conn: asyncpg.Connection, limit: int = 1000) -> list[tuple[int, dict[str, Any], str]]:
    """Transitions not yet published: (id, payload, actor), oldest first."""
    rows = await conn.fetch(
        "SELECT id, payload, actor FROM alert_transitions WHERE published_at IS NULL ORDER BY id LIMIT $1", limit
    )
    return [(r["id"], r["payload"], r["actor"]) for r in rows]


async def mark_published(conn: asyncpg.Connection, ids: Sequence[int], at: datetime) -> None:
    if ids:
        await conn.execute(
            "UPDATE alert_transitions SET published_at = $2 WHERE id = ANY($1::bigint[]) AND published_at IS NULL",
            list(ids), at,
        )


# --- operators (CLI, web) ---------------------------------------------------------------------------------

def _episode(row: Mapping[str, Any]) -> AlertEpisode:
    return AlertEpisode(**dict(row))


async def _operator_transition(
    conn: asyncpg.Connection, episode: AlertEpisode, *, to_state: str, reason: str, actor: str, at: datetime
) -> None:
    seq = await conn.fetchval("SELECT nextval(pg_get_serial_sequence('alert_transitions', 'id'))")
    payload = {**episode.to_json(), "seq": seq, "previous_state": episode.state,
               "previous_severity": episode.severity, "state": to_state, "reason": reason, "actor": actor,
               "device_name": "", "changed_at": iso(at)}
    if to_state == "resolved":
        payload["resolved_at"] = iso(at)
    await conn.execute(
        "INSERT INTO alert_transitions (id, episode_id, ts, recorded_at, from_state, to_state, from_severity, "
        "to_severity, reason, actor, late, muted, payload) OVERRIDING SYSTEM VALUE "
        "VALUES ($1, $2, $3, $3, $4, $5, $6, $6, $7, $8, $9, $10, $11)",
        seq, episode.id, at, episode.state, to_state, episode.severity, reason, actor, episode.late,
        episode.muted, payload,
    )


async def _lock_open(conn: asyncpg.Connection, episode_id: int) -> AlertEpisode:
    row = await conn.fetchrow(f"SELECT {_EPISODE_COLUMNS} FROM alert_episodes e WHERE e.id = $1 FOR UPDATE",
                              episode_id)
    if row is None:
        raise AlertNotFound(f"no alert with id {episode_id}")
    episode = _episode(row)
    if episode.state == "resolved":
        raise AlertStateError(f"alert {episode_id} is already resolved")
    return episode


async def acknowledge_alert(
    conn: asyncpg.Connection, episode_id: int, *, user: str, note: str = "", expires_at: datetime | None = None,
    now: datetime | None = None,
) -> AlertEpisode:
    now = now or datetime.now(UTC)
    if not user:
        raise AlertStateError("acknowledging needs a user name")
    if expires_at is not None and expires_at <= now:
        raise AlertStateError("the acknowledgement would already have expired")
    async with conn.transaction():
        await _lock_open(conn, episode_id)
        await conn.execute(
            "INSERT INTO alert_acks (episode_id, acked_by, note, acked_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
            episode_id, user, note, now, expires_at,
        )
        row = await conn.fetchrow(
            f"UPDATE alert_episodes e SET acked_by = $2, acked_at = $3, ack_note = $4, ack_expires_at = $5 "
            f"WHERE e.id = $1 RETURNING {_EPISODE_COLUMNS}",
            episode_id, user, now, note, expires_at,
        )
        updated = _episode(row)
        reason = f"acknowledged by {user}" + (f": {note}" if note else "")
        await _operator_transition(conn, updated, to_state=updated.state, reason=reason, actor=user, at=now)
    return updated


async def resolve_alert(
    conn: asyncpg.Connection, episode_id: int, *, user: str, note: str = "", now: datetime | None = None
) -> AlertEpisode:
    now = now or datetime.now(UTC)
    if not user:
        raise AlertStateError("resolving needs a user name")
    async with conn.transaction():
        episode = await _lock_open(conn, episode_id)
        row = await conn.fetchrow(
            f"UPDATE alert_episodes e SET state = 'resolved', resolved_at = $2, changed_at = $2, resolved_by = $3 "
            f"WHERE e.id = $1 RETURNING {_EPISODE_COLUMNS}",
            episode_id, now, user,
        )
        reason = f"resolved by {user}" + (f": {note}" if note else "")
        await _operator_transition(conn, episode, to_state="resolved", reason=reason, actor=user, at=now)
    return _episode(row)


async def list_alerts(
    conn: asyncpg.Connection,
    *,
    state: str = "open",
    min_severity: int | None = None,
    area: str | None = None,
    device_id: str | None = None,
    rule: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 200,
    before_id: int | None = None,
) -> list[AlertEpisode]:
    conditions: list[str] = []
    args: list[Any] = []

    def add(sql: str, value: Any) -> None:
        args.append(value)
        conditions.append(sql.replace("?", f"${len(args)}"))

    states = {"open": OPEN_STATES, "active": ACTIVE_STATES, "all": None}.get(state, (state,))
    if states is not None:
        if any(s not in ("pending", "firing", "recovering", "resolved") for s in states):
            raise AlertStateError(f"unknown state filter {state!r}")
        add("e.state = ANY(?::text[])", list(states))
    if min_severity is not None:
        add("e.severity >= ?", min_severity)
    if area is not None:
        add("e.area = ?", area)
    if device_id is not None:
        add("e.device_id = ?", device_id)
    if rule is not None:
        add("e.rule = ?", rule)
    if since is not None:
        add("e.changed_at >= ?", since)
    if until is not None:
        add("e.changed_at < ?", until)
    if before_id is not None:
        add("e.id < ?", before_id)
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    args.append(limit)
    rows = await conn.fetch(
        f"SELECT {_EPISODE_COLUMNS} FROM alert_episodes e{where} ORDER BY e.changed_at DESC, e.id DESC "
        f"LIMIT ${len(args)}",
        *args,
    )
    return [_episode(r) for r in rows]


async def open_alerts(conn: asyncpg.Connection) -> list[AlertEpisode]:
    rows = await conn.fetch(
        f"SELECT {_EPISODE_COLUMNS} FROM alert_episodes e WHERE e.state <> 'resolved' "
        "ORDER BY e.severity DESC, e.changed_at DESC, e.id"
    )
    return [_episode(r) for r in rows]


async def alerts_last_seq(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT coalesce(max(id), 0) FROM alert_transitions"))


async def get_alert(conn: asyncpg.Connection, episode_id: int) -> AlertEpisode | None:
    row = await conn.fetchrow(f"SELECT {_EPISODE_COLUMNS} FROM alert_episodes e WHERE e.id = $1", episode_id)
    return _episode(row) if row else None


async def alert_transitions(
    conn: asyncpg.Connection, episode_id: int | None = None, *, since_seq: int | None = None, limit: int = 500
) -> list[AlertTransition]:
    conditions: list[str] = []
    args: list[Any] = []
    if episode_id is not None:
        args.append(episode_id)
        conditions.append(f"episode_id = ${len(args)}")
    if since_seq is not None:
        args.append(since_seq)
        conditions.append(f"id > ${len(args)}")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    args.append(limit)
    rows = await conn.fetch(
        "SELECT id, episode_id, ts, recorded_at, from_state, to_state, from_severity, to_severity, reason, actor, "
        f"late, muted, payload, published_at FROM alert_transitions{where} ORDER BY id LIMIT ${len(args)}",
        *args,
    )
    return [AlertTransition(**dict(r)) for r in rows]


# --- silences, maintenance, incidents ---------------------------------------------------------------------

_SILENCE_COLUMNS = "id, matchers, starts_at, ends_at, author, comment, created_at, deleted_at"


async def create_silence(
    conn: asyncpg.Connection, matchers: Any, *, starts_at: datetime, ends_at: datetime, author: str,
    comment: str = "",
) -> Silence:
    checked = validate_matchers(matchers)
    if ends_at <= starts_at:
        raise AlertStateError("a silence must end after it starts")
    if not author:
        raise AlertStateError("a silence needs an author")
    row = await conn.fetchrow(
        f"INSERT INTO alert_silences (matchers, starts_at, ends_at, author, comment) VALUES ($1, $2, $3, $4, $5) "
        f"RETURNING {_SILENCE_COLUMNS}",
        checked, starts_at, ends_at, author, comment,
    )
    return Silence(**dict(row))


async def list_silences(
    conn: asyncpg.Connection, *, active_at: datetime | None = None, include_deleted: bool = False
) -> list[Silence]:
    conditions = [] if include_deleted else ["deleted_at IS NULL"]
    args: list[Any] = []
    if active_at is not None:
        args.append(active_at)
        conditions.append("starts_at <= $1 AND ends_at > $1")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    rows = await conn.fetch(f"SELECT {_SILENCE_COLUMNS} FROM alert_silences{where} ORDER BY id", *args)
    return [Silence(**dict(r)) for r in rows]


async def current_silences(conn: asyncpg.Connection, now: datetime) -> list[Silence]:
    """Silences not deleted that have not ended (the engine also needs those starting later)."""
    rows = await conn.fetch(
        f"SELECT {_SILENCE_COLUMNS} FROM alert_silences WHERE deleted_at IS NULL AND ends_at > $1 ORDER BY id", now
    )
    return [Silence(**dict(r)) for r in rows]


async def get_silence(conn: asyncpg.Connection, silence_id: int) -> Silence | None:
    row = await conn.fetchrow(f"SELECT {_SILENCE_COLUMNS} FROM alert_silences WHERE id = $1", silence_id)
    return Silence(**dict(row)) if row else None


async def delete_silence(conn: asyncpg.Connection, silence_id: int, now: datetime | None = None) -> bool:
    status = await conn.execute(
        "UPDATE alert_silences SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL",
        silence_id, now or datetime.now(UTC),
    )
    return status.endswith(" 1")


_MAINT_COLUMNS = "id, name, matchers, weekdays, start_local, duration_s, timezone, author, comment"


async def create_maintenance(
    conn: asyncpg.Connection, *, name: str, matchers: Any, start_local: time, duration_s: int,
    weekdays: Iterable[int] = (1, 2, 3, 4, 5, 6, 7), timezone: str = "Asia/Ho_Chi_Minh", author: str = "",
    comment: str = "",
) -> MaintenanceWindow:
    checked = validate_matchers(matchers)
    days = sorted(set(int(d) for d in weekdays))
    if not days or any(d < 1 or d > 7 for d in days):
        raise AlertStateError("weekdays must be ISO weekday numbers 1 (Monday) .. 7 (Sunday)")
    if duration_s <= 0:
        raise AlertStateError("duration must be positive")
    row = await conn.fetchrow(
        "INSERT INTO alert_maintenance (name, matchers, weekdays, start_local, duration_s, timezone, author, "
        f"comment) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {_MAINT_COLUMNS}",
        name, checked, days, start_local, duration_s, timezone, author, comment,
    )
    return MaintenanceWindow(**dict(row))


async def list_maintenance(conn: asyncpg.Connection) -> list[MaintenanceWindow]:
    rows = await conn.fetch(f"SELECT {_MAINT_COLUMNS} FROM alert_maintenance WHERE deleted_at IS NULL ORDER BY id")
    return [MaintenanceWindow(**{**dict(r), "weekdays": list(r["weekdays"])}) for r in rows]


async def delete_maintenance(conn: asyncpg.Connection, window_id: int) -> bool:
    status = await conn.execute(
        "UPDATE alert_maintenance SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL", window_id
    )
    return status.endswith(" 1")


_INCIDENT_COLUMNS = ("id, group_key, rule, area, state, severity, members, peak_members, title_vi, title_en, "
                     "opened_at, changed_at, resolved_at")


async def list_incidents(
    conn: asyncpg.Connection, *, state: str = "open", area: str | None = None, limit: int = 100
) -> list[Incident]:
    conditions: list[str] = []
    args: list[Any] = []
    if state != "all":
        args.append(state)
        conditions.append(f"state = ${len(args)}")
    if area is not None:
        args.append(area)
        conditions.append(f"area = ${len(args)}")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    args.append(limit)
    rows = await conn.fetch(
        f"SELECT {_INCIDENT_COLUMNS} FROM alert_incidents{where} ORDER BY opened_at DESC, id DESC "
        f"LIMIT ${len(args)}", *args,
    )
    return [Incident(**dict(r)) for r in rows]


# --- webhook outbox ---------------------------------------------------------------------------------------

async def due_notifications(conn: asyncpg.Connection, now: datetime, limit: int = 100) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT id, transition_id, target, step, payload, attempts FROM alert_notifications "
        "WHERE status = 'pending' AND next_at <= $1 ORDER BY next_at, id LIMIT $2", now, limit,
    )
    return [dict(r) for r in rows]


async def notification_done(
    conn: asyncpg.Connection, notification_id: int, *, ok: bool, now: datetime, error: str | None = None,
    retry_at: datetime | None = None,
) -> None:
    if ok:
        await conn.execute(
            "UPDATE alert_notifications SET status = 'sent', sent_at = $2, attempts = attempts + 1 WHERE id = $1",
            notification_id, now,
        )
    elif retry_at is not None:
        await conn.execute(
            "UPDATE alert_notifications SET attempts = attempts + 1, next_at = $2, last_error = $3 WHERE id = $1",
            notification_id, retry_at, error,
        )
    else:
        await conn.execute(
            "UPDATE alert_notifications SET status = 'failed', attempts = attempts + 1, last_error = $2 "
            "WHERE id = $1", notification_id, error,
        )


async def enqueue_escalation(
    conn: asyncpg.Connection, transition_id: int, target: str, step: int, payload: dict[str, Any], now: datetime,
    episode_id: int,
) -> bool:
    """Queue an escalation step once (unique on transition, target, step) and record the step on the episode."""
    async with conn.transaction():
        status = await conn.execute(
            "INSERT INTO alert_notifications (transition_id, target, step, payload, next_at) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING", transition_id, target, step, payload, now,
        )
        await conn.execute(
            "UPDATE alert_episodes SET escalation_step = greatest(escalation_step, $2) WHERE id = $1",
            episode_id, step,
        )
    return status.endswith(" 1")


async def unacked_firing(conn: asyncpg.Connection, now: datetime) -> list[tuple[AlertEpisode, int]]:
    """Firing episodes nobody has acknowledged (or whose acknowledgement expired), with their latest
    transition id: the input of escalation."""
    rows = await conn.fetch(
        f"SELECT {_EPISODE_COLUMNS}, (SELECT max(t.id) FROM alert_transitions t WHERE t.episode_id = e.id) AS seq "
        "FROM alert_episodes e WHERE e.state = 'firing' AND NOT e.late AND e.muted IS NULL "
        "AND (e.acked_by IS NULL OR e.ack_expires_at <= $1)", now,
    )
    out = []
    for r in rows:
        d = dict(r)
        seq = d.pop("seq")
        out.append((AlertEpisode(**d), int(seq)))
    return out


# --- the facade's methods ---------------------------------------------------------------------------------

class AlertStoreMethods:
    """Mixed into `occ.store.Store`: every alert query as a method that takes a pooled connection."""

    def _connection(self) -> Any:  # provided by Store
        raise NotImplementedError

    async def load_engine_state(self) -> dict[str, bytes]:
        async with self._connection() as conn:
            return await load_engine_state(conn)

    async def load_engine_recovery(self) -> EngineRecovery:
        async with self._connection() as conn:
            return await load_engine_recovery(conn)

    async def checkpoint_engine(self, *, state: Mapping[str, bytes | None], journal_seq: int,
                                taken_at: datetime) -> None:
        async with self._connection() as conn:
            await checkpoint_engine(conn, state=state, journal_seq=journal_seq, taken_at=taken_at)

    async def commit_alerts(
        self, *, episodes: Sequence[EpisodeWrite], incidents: Sequence[IncidentWrite] = (),
        state: Mapping[str, bytes | None] | None = None, journal: tuple[int, bytes] | None = None,
        recorded_at: datetime,
    ) -> CommitResult:
        async with self._connection() as conn:
            return await commit_alerts(conn, episodes=episodes, incidents=incidents, state=state, journal=journal,
                                       recorded_at=recorded_at)

    async def unpublished_alert_transitions(self, limit: int = 1000) -> list[tuple[int, dict[str, Any], str]]:
        async with self._connection() as conn:
            return await unpublished(conn, limit)

    async def mark_alerts_published(self, ids: Sequence[int], at: datetime) -> None:
        async with self._connection() as conn:
            await mark_published(conn, ids, at)

    async def acknowledge_alert(self, episode_id: int, *, user: str, note: str = "",
                                expires_at: datetime | None = None) -> AlertEpisode:
        async with self._connection() as conn:
            return await acknowledge_alert(conn, episode_id, user=user, note=note, expires_at=expires_at)

    async def resolve_alert(self, episode_id: int, *, user: str, note: str = "") -> AlertEpisode:
        async with self._connection() as conn:
            return await resolve_alert(conn, episode_id, user=user, note=note)

    async def list_alerts(self, **filters: Any) -> list[AlertEpisode]:
        async with self._connection() as conn:
            return await list_alerts(conn, **filters)

    async def open_alerts(self) -> list[AlertEpisode]:
        async with self._connection() as conn:
            return await open_alerts(conn)

    async def alerts_last_seq(self) -> int:
        async with self._connection() as conn:
            return await alerts_last_seq(conn)

    async def get_alert(self, episode_id: int) -> AlertEpisode | None:
        async with self._connection() as conn:
            return await get_alert(conn, episode_id)

    async def alert_transitions(self, episode_id: int | None = None, *, since_seq: int | None = None,
                                limit: int = 500) -> list[AlertTransition]:
        async with self._connection() as conn:
            return await alert_transitions(conn, episode_id, since_seq=since_seq, limit=limit)

    async def create_silence(self, matchers: Any, *, starts_at: datetime, ends_at: datetime, author: str,
                             comment: str = "") -> Silence:
        async with self._connection() as conn:
            return await create_silence(conn, matchers, starts_at=starts_at, ends_at=ends_at, author=author,
                                        comment=comment)

    async def list_silences(self, *, active_at: datetime | None = None,
                            include_deleted: bool = False) -> list[Silence]:
        async with self._connection() as conn:
            return await list_silences(conn, active_at=active_at, include_deleted=include_deleted)

    async def current_silences(self, now: datetime) -> list[Silence]:
        async with self._connection() as conn:
            return await current_silences(conn, now)

    async def get_silence(self, silence_id: int) -> Silence | None:
        async with self._connection() as conn:
            return await get_silence(conn, silence_id)

    async def delete_silence(self, silence_id: int) -> bool:
        async with self._connection() as conn:
            return await delete_silence(conn, silence_id)

    async def create_maintenance(self, **fields: Any) -> MaintenanceWindow:
        async with self._connection() as conn:
            return await create_maintenance(conn, **fields)

    async def list_maintenance(self) -> list[MaintenanceWindow]:
        async with self._connection() as conn:
            return await list_maintenance(conn)

    async def delete_maintenance(self, window_id: int) -> bool:
        async with self._connection() as conn:
            return await delete_maintenance(conn, window_id)

    async def list_incidents(self, *, state: str = "open", area: str | None = None,
                             limit: int = 100) -> list[Incident]:
        async with self._connection() as conn:
            return await list_incidents(conn, state=state, area=area, limit=limit)

    async def due_notifications(self, now: datetime, limit: int = 100) -> list[dict[str, Any]]:
        async with self._connection() as conn:
            return await due_notifications(conn, now, limit)

    async def notification_done(self, notification_id: int, *, ok: bool, now: datetime,
                                error: str | None = None, retry_at: datetime | None = None) -> None:
        async with self._connection() as conn:
            await notification_done(conn, notification_id, ok=ok, now=now, error=error, retry_at=retry_at)

    async def enqueue_escalation(self, transition_id: int, target: str, step: int, payload: dict[str, Any],
                                 now: datetime, episode_id: int) -> bool:
        async with self._connection() as conn:
            return await enqueue_escalation(conn, transition_id, target, step, payload, now, episode_id)

    async def unacked_firing(self, now: datetime) -> list[tuple[AlertEpisode, int]]:
        async with self._connection() as conn:
            return await unacked_firing(conn, now)
