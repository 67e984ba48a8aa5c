"""The live feed's pure core with a hand-driven clock: snapshot + deltas, coalescing, resume, filters,
slow-client isolation, and the "never raises" contract for client messages."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from web.feed import CLOSE_POLICY, CLOSE_TOO_SLOW, DeviceInfo, FeedFilter, FeedSession, FilterError, Hub

DEVICES = [
    DeviceInfo("WL1", "hydromet", "Trạm Lô", "ha-giang-city", 22.82, 104.98),
    DeviceInfo("RG1", "hydromet", "Mưa Bắc Quang", "bac-quang", 22.42, 104.82),
    DeviceInfo("CAM1", "camera", "Camera", "ha-giang-city", 22.81, 104.97),
]
EPOCH = 1_800_000_000.0


def make_hub(**kw: Any) -> Hub:
    hub = Hub(**kw)
    hub.set_devices(DEVICES)
    return hub


def frames(session: FeedSession, now: float) -> list[dict[str, Any]]:
    return [orjson.loads(f) for f in session.take(now, EPOCH + now)]


def subscribe(session: FeedSession, now: float = 0.0, **doc: Any) -> list[dict[str, Any]]:
    session.receive(orjson.dumps({"type": "subscribe", **doc}).decode(), now)
    return frames(session, now)


def alert(aid: int, device: str, state: str = "firing", severity: int = 3, seq: int = 1) -> dict[str, Any]:
    return {"v": 1, "seq": seq, "id": aid, "device_id": device, "area": "ha-giang-city", "state": state,
            "severity": severity}


def test_snapshot_then_deltas() -> None:
    hub = make_hub()
    hub.load_latest([("WL1", "water_level_m", EPOCH - 60, 98.5)])
    hub.load_status([("CAM1", "offline", EPOCH - 600)])
    hub.load_alerts([alert(7, "RG1"), alert(8, "RG1", state="resolved")])
    session = FeedSession(hub, now=0.0)
    [snap] = subscribe(session)
    assert snap["type"] == "snapshot" and snap["seq"] == 0 and snap["stream"] == hub.stream
    by_id = {d["id"]: d for d in snap["devices"]}
    assert by_id["WL1"]["reading"]["values"] == {"water_level_m": 98.5}
    assert by_id["CAM1"]["status"] == "offline" and by_id["RG1"]["status"] is None
    assert [a["id"] for a in snap["alerts"]] == [7]  # resolved alerts are not on the wall

    session.offer(hub.reading("WL1", EPOCH, {"water_level_m": 101.2}, now=1.0), 1.0)
    session.offer(hub.alert(alert(9, "WL1", severity=4, seq=2)), 1.0)
    session.offer(hub.status("CAM1", "online", EPOCH), 1.0)
    [delta] = frames(session, 1.0)
    assert delta["type"] == "delta" and delta["seq"] == hub.seq == 3
    assert delta["readings"] == [{"id": "WL1", "ts": "2027-01-15T08:00:00Z", "values": {"water_level_m": 101.2}}]
    assert delta["alerts"][0]["id"] == 9 and delta["status"] == [{"id": "CAM1", "status": "online",
                                                                    "since": "2027-01-15T08:00:00Z"}]
    assert frames(session, 1.1) == []  # nothing new


def test_readings_coalesce_per_device_at_most_once_per_interval() -> None:
    hub = make_hub(reading_interval_s=1.0)
    session = FeedSession(hub, now=0.0)
    subscribe(session)
    assert len(hub.reading("RG1", EPOCH, {"rain_mm": 1.0}, now=10.0)) == 1
    assert hub.reading("RG1", EPOCH + 1, {"rain_mm": 2.0}, now=10.3) == []  # held
    assert hub.reading("RG1", EPOCH + 2, {"rain_mm": 3.0, "temp_c": 20.0}, now=10.6) == []
    assert hub.tick(10.9) == []
    [held] = hub.tick(11.0)
    assert orjson.loads(held.item)["values"] == {"rain_mm": 3.0, "temp_c": 20.0}  # the newest, merged
    # Backfill (older than what the hub has) never moves the wall backwards.
    assert hub.reading("RG1", EPOCH - 3600, {"rain_mm": 50.0}, now=20.0) == []
    # Many readings of one device waiting for a slow client stay one entry.
    for i in range(50):
        session.offer(hub.reading("WL1", EPOCH + i, {"water_level_m": float(i)}, now=30.0 + i * 1.5), 30 + i * 1.5)
    [delta] = frames(session, 120.0)
    assert delta["readings"] == [{"id": "WL1", "ts": orjson.loads(hub._reading_item["WL1"])["ts"],
                                  "values": {"water_level_m": 49.0}}]


def test_filters_by_kind_area_and_bbox() -> None:
    hub = make_hub()
    cams = FeedSession(hub, now=0.0)
    [snap] = subscribe(cams, filter={"kinds": ["camera"]})
    assert [d["id"] for d in snap["devices"]] == ["CAM1"]
    south = FeedSession(hub, now=0.0)
    [snap] = subscribe(south, filter={"bbox": [104.0, 22.0, 105.0, 22.5]})
    assert [d["id"] for d in snap["devices"]] == ["RG1"]
    area = FeedSession(hub, now=0.0)
    [snap] = subscribe(area, filter={"areas": ["ha-giang-city"], "kinds": ["hydromet"]})
    assert [d["id"] for d in snap["devices"]] == ["WL1"]
    deltas = hub.reading("RG1", EPOCH, {"rain_mm": 5.0}, now=1.0) + hub.alert(alert(1, "WL1"))
    for s in (cams, south, area):
        s.offer(deltas, 1.0)
    assert frames(cams, 1.0) == []
    assert [r["id"] for r in frames(south, 1.0)[0]["readings"]] == ["RG1"]
    [only_alert] = frames(area, 1.0)
    assert only_alert["readings"] == [] and [a["id"] for a in only_alert["alerts"]] == [1]


@pytest.mark.parametrize("bad", [
    {"kinds": "camera"}, {"bbox": [1, 2, 3]}, {"bbox": [105, 22, 104, 23]}, {"colour": ["red"]}, [1],
    {"bbox": [1, 2, 3, float("nan")]},
])
def test_bad_filters_are_refused(bad: Any) -> None:
    with pytest.raises(FilterError):
        FeedFilter.parse(bad)


def test_resume_from_last_seq_or_snapshot() -> None:
    hub = make_hub(history=5)
    first = FeedSession(hub, now=0.0)
    subscribe(first)
    first.offer(hub.reading("WL1", EPOCH, {"water_level_m": 99.0}, now=1.0), 1.0)
    seen = frames(first, 1.0)[-1]["seq"]
    # Disconnected; two changes happen meanwhile.
    hub.alert(alert(3, "WL1", seq=5))
    hub.reading("RG1", EPOCH, {"rain_mm": 9.0}, now=2.0)
    again = FeedSession(hub, now=3.0)
    resumed, delta = subscribe(again, 3.0, resume=seen, stream=hub.stream)
    assert resumed == {"type": "resumed", "seq": seen, "stream": hub.stream, "missed": 2}
    assert delta["seq"] == hub.seq and [a["id"] for a in delta["alerts"]] == [3]
    assert [r["id"] for r in delta["readings"]] == ["RG1"]
    # Up to date: nothing but the confirmation.
    current = FeedSession(hub, now=3.0)
    assert [f["type"] for f in subscribe(current, 3.0, resume=hub.seq, stream=hub.stream)] == ["resumed"]
    # Too far behind (the ring holds 5 changes), or another server's numbering: a fresh snapshot.
    for i in range(6):
        hub.alert(alert(10 + i, "RG1", seq=10 + i))
    late = FeedSession(hub, now=4.0)
    assert [f["type"] for f in subscribe(late, 4.0, resume=seen, stream=hub.stream)] == ["snapshot"]
    other = FeedSession(hub, now=4.0)
    assert [f["type"] for f in subscribe(other, 4.0, resume=hub.seq, stream="elsewhere")] == ["snapshot"]


def test_slow_client_gets_snapshot_then_is_closed_and_others_unaffected() -> None:
    hub = make_hub()
    slow = FeedSession(hub, now=0.0, max_pending=10, max_snapshots=2, snapshot_window_s=60)
    fast = FeedSession(hub, now=0.0, max_pending=10)
    subscribe(slow)
    subscribe(fast)
    for i in range(11):  # the slow client takes nothing: its backlog overflows
        deltas = hub.alert(alert(100 + i, "WL1", seq=i))
        slow.offer(deltas, 1.0)
        fast.offer(deltas, 1.0)
        assert len(frames(fast, 1.0)[0]["alerts"]) == 1  # the fast one keeps getting each change
    assert slow.overflows == 1
    [snap] = frames(slow, 2.0)
    assert snap["type"] == "snapshot" and snap["seq"] == hub.seq and len(snap["alerts"]) == 11
    for i in range(11):
        slow.offer(hub.alert(alert(200 + i, "WL1", seq=100 + i)), 3.0)
    assert frames(slow, 3.0)[0]["type"] == "snapshot"  # second snapshot within the window: still allowed
    for i in range(11):
        slow.offer(hub.alert(alert(300 + i, "WL1", seq=200 + i)), 4.0)
    assert frames(slow, 4.0) == [] and slow.closed is not None and slow.closed.code == CLOSE_TOO_SLOW
    assert "too slow" in slow.closed.reason and fast.closed is None


def test_client_that_stays_behind_is_closed() -> None:
    hub = make_hub()
    session = FeedSession(hub, now=0.0, max_lag_s=30)
    subscribe(session)
    session.offer(hub.alert(alert(1, "WL1")), 10.0)
    session.tick(39.0, EPOCH)
    assert session.closed is None
    session.tick(41.0, EPOCH)
    assert session.closed is not None and session.closed.code == CLOSE_TOO_SLOW


def test_heartbeat_when_idle() -> None:
    hub = make_hub()
    session = FeedSession(hub, now=0.0, heartbeat_s=15)
    subscribe(session)
    session.tick(10.0, EPOCH)
    assert frames(session, 10.0) == []
    session.tick(15.0, EPOCH + 15)
    [beat] = frames(session, 15.0)
    assert beat["type"] == "heartbeat" and beat["seq"] == 0 and beat["server_time"].endswith("Z")


@pytest.mark.parametrize("message, code", [
    ("not json", "malformed"), ("[1, 2]", "malformed"), ('{"no": "type"}', "malformed"),
    ('{"type": "launch"}', "unknown_type"), ('{"type": "subscribe", "filter": {"bbox": 3}}', "bad_filter"),
    ('{"type": "subscribe", "resume": "x"}', "bad_resume"), ("x" * 5000, "too_large"),
    (b"\x00\x01", "binary_not_supported"), ('{"type": "subscribe", "filter": {"kinds": [1e400]}}', "malformed"),
])
def test_bad_client_messages_get_error_frames(message: str | bytes, code: str) -> None:
    session = FeedSession(make_hub(), now=0.0)
    session.receive(message, 0.0)
    [frame] = frames(session, 0.0)
    assert frame["type"] == "error" and frame["code"] == code and session.closed is None


def test_repeated_bad_messages_close_with_reason() -> None:
    session = FeedSession(make_hub(), now=0.0, max_errors=3)
    session.receive('{"type": "ping"}', 0.0)
    assert frames(session, 0.0) == [{"type": "pong"}]
    for _ in range(3):
        session.receive("garbage", 0.0)
    assert session.closed is not None and session.closed.code == CLOSE_POLICY
    assert "too many bad messages" in session.closed.reason


def test_batches_share_one_frame_and_merge_with_a_backlog() -> None:
    from web.feed import DeltaBatch

    hub = make_hub()
    a, b, behind = (FeedSession(hub, now=0.0) for _ in range(3))
    for s in (a, b, behind):
        subscribe(s)
    first = DeltaBatch(hub.reading("WL1", EPOCH, {"water_level_m": 99.0}, now=1.0) + hub.alert(alert(5, "RG1")))
    for s in (a, b, behind):
        s.offer(first, 1.0)
    [fa], [fb] = a.take(1.0, EPOCH), b.take(1.0, EPOCH)
    assert fa is fb  # encoded once for every up-to-date client
    second = DeltaBatch(hub.reading("WL1", EPOCH + 5, {"water_level_m": 99.5}, now=2.0)
                        + hub.status("CAM1", "offline", EPOCH))
    behind.offer(second, 2.0)  # `behind` never took `first`: both merge, readings coalesced per device
    [merged] = frames(behind, 2.0)
    assert merged["seq"] == hub.seq
    assert [r["values"] for r in merged["readings"]] == [{"water_level_m": 99.5}]
    assert [x["id"] for x in merged["alerts"]] == [5] and [x["id"] for x in merged["status"]] == ["CAM1"]
