"""Alert tables and store methods against a real PostgreSQL: one open episode per fingerprint, transitions
as an outbox, operator acknowledge/resolve, silences."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from occ.store import AlertNotFound, AlertStateError, Store
from occ.store.alerts import EpisodeWrite, IncidentWrite

T0 = datetime(2026, 7, 16, 5, 0, tzinfo=UTC)


def write(state: str, from_state: str, severity: int = 3, *, at: datetime = T0, fp: str = "flood|HG-BQ-WL01",
          group: str | None = None) -> EpisodeWrite:
    return EpisodeWrite(
        fingerprint=fp, rule="flood", kind="threshold", device_id=fp.split("|")[1], area="bac-quang",
        labels={"metric": "water_level_m", "unit": "m"}, from_state=from_state, state=state,
        from_severity=None if from_state == "ok" else 2, severity=severity, peak_severity=severity, level="II",
        value=63.83, threshold=63.5, message_vi="Sông Lô tại Tân Quang vượt báo động II 0,33 m",
        message_en="Lô river at Tân Quang 0.33 m above alarm level II", started_at=T0,
        fired_at=at if state != "pending" else None, changed_at=at,
        resolved_at=at if state == "resolved" else None, late=False, muted=None, flapping=False,
        reason="test", group_key=group,
    )


@pytest.fixture
async def store(database_url: str):
    s = await Store.connect(database_url, pool_size=2, timescaledb="off")
    yield s
    await s.close()


async def test_episode_lifecycle_transitions_and_outbox(store: Store) -> None:
    r1 = await store.commit_alerts(episodes=[write("firing", "ok")], state={"i:x": b"abc"}, recorded_at=T0)
    seq1, kind, payload = r1.published[0]
    assert kind == "alert" and payload["seq"] == seq1 and payload["previous_state"] == "ok"
    episode_id = payload["id"]
    r2 = await store.commit_alerts(episodes=[write("recovering", "firing", at=T0 + timedelta(hours=1))],
                                   state={"i:x": None}, recorded_at=T0)
    assert r2.published[0][2]["id"] == episode_id and r2.published[0][0] > seq1
    assert await store.load_engine_state() == {}
    assert [t[0] for t in await store.unpublished_alert_transitions()] == [seq1, r2.published[0][0]]
    await store.mark_alerts_published([seq1], T0)
    assert [t[0] for t in await store.unpublished_alert_transitions()] == [r2.published[0][0]]
    [open_one] = await store.open_alerts()
    assert open_one.state == "recovering" and open_one.to_json()["message_vi"].endswith("0,33 m")
    assert await store.alerts_last_seq() == r2.published[0][0]


async def test_one_open_episode_per_fingerprint_is_enforced(store: Store, database_url: str) -> None:
    await store.commit_alerts(episodes=[write("firing", "ok")], recorded_at=T0)
    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO alert_episodes (fingerprint, rule, kind, state, severity, peak_severity, started_at, "
                "changed_at) VALUES ('flood|HG-BQ-WL01', 'flood', 'threshold', 'pending', 2, 2, now(), now())")
    finally:
        await conn.close()


async def test_acknowledge_resolve_and_engine_stands_down(store: Store) -> None:
    r = await store.commit_alerts(episodes=[write("firing", "ok")], recorded_at=T0)
    episode_id = r.published[0][2]["id"]
    acked = await store.acknowledge_alert(episode_id, user="op1", note="đang xử lý")
    assert acked.acked_by == "op1" and acked.state == "firing"
    resolved = await store.resolve_alert(episode_id, user="op1")
    assert resolved.state == "resolved" and resolved.resolved_by == "op1"
    with pytest.raises(AlertStateError):
        await store.resolve_alert(episode_id, user="op1")
    with pytest.raises(AlertNotFound):
        await store.acknowledge_alert(999999, user="op1")
    history = await store.alert_transitions(episode_id)
    assert [(t.from_state, t.to_state, t.actor) for t in history] == [
        ("ok", "firing", "engine"), ("firing", "firing", "op1"), ("firing", "resolved", "op1")]
    # The engine still thinks the episode is open: its next transition is dropped, not resurrected.
    r2 = await store.commit_alerts(episodes=[write("recovering", "firing")], recorded_at=T0)
    assert r2.dropped == ["flood|HG-BQ-WL01"] and r2.published == []
    assert await store.list_alerts(state="open") == []
    assert len(await store.list_alerts(state="all", area="bac-quang", min_severity=3)) == 1


async def test_silences_and_incidents(store: Store) -> None:
    silence = await store.create_silence([{"label": "area", "op": "=", "value": "bac-quang"}],
                                         starts_at=T0, ends_at=T0 + timedelta(hours=2), author="op1")
    assert [s.id for s in await store.list_silences(active_at=T0 + timedelta(hours=1))] == [silence.id]
    with pytest.raises(AlertStateError):
        await store.create_silence([{"label": "area", "op": "~", "value": "x"}], starts_at=T0,
                                   ends_at=T0 + timedelta(hours=1), author="op1")
    assert await store.delete_silence(silence.id)
    assert await store.list_silences() == []
    inc = IncidentWrite(group_key="cam-offline|ha-giang-city", rule="cam-offline", area="ha-giang-city",
                        state="open", severity=2, members=2, peak_members=2, title_vi="2 camera mất kết nối",
                        title_en="2 cameras offline", opened_at=T0, changed_at=T0, resolved_at=None)
    r = await store.commit_alerts(
        episodes=[write("firing", "ok", fp="cam-offline|HG-TP-CAM01", group=inc.group_key),
                  write("firing", "ok", fp="cam-offline|HG-TP-CAM02", group=inc.group_key)],
        incidents=[inc], recorded_at=T0)
    incident_id = r.published[0][0]
    assert {p["incident_id"] for _, k, p in r.published if k == "alert"} == {incident_id}
    [listed] = await store.list_incidents(area="ha-giang-city")
    assert listed.members == 2
