"""Camera outage storm and the QL2 rush-hour jam."""

from __future__ import annotations

import orjson
from simhelpers import JULY, WEEKDAY_MORNING, RunSim, scenarios, subset

from simulators.fleet import Fleet


def test_camera_outage_storm(fleet: Fleet, run_sim: RunSim) -> None:
    cameras = subset(fleet, kinds=["camera"])
    _, messages = run_sim(cameras, 2, scenarios=scenarios("camera-outage-storm"), seed=3)
    status = [m for m in messages if m.channel == "status" and m.t > JULY]
    off = {m.device_id: m.t for m in status if m.payload == b"offline"}
    on = {m.device_id: m.t for m in status if m.payload == b"online"}
    city = {d.id for d in cameras.devices if d.area == "ha-giang-city"}
    storm = {d for d, t in off.items() if JULY + 1800 <= t < JULY + 1860}
    assert len(storm) == 30 and storm <= city
    for device in storm:
        assert on[device] - off[device] == 20 * 60  # back 20 minutes after going down
        silent = [m for m in messages if m.device_id == device and m.channel != "status"
                  and off[device] <= m.t < on[device]]
        assert not silent
    assert max(off[d] for d in storm) - min(off[d] for d in storm) < 60


def test_rush_hour_jam_on_ql2(fleet: Fleet, run_sim: RunSim) -> None:
    traffic = subset(fleet, kinds=["traffic"], ids=["HG-VX-CAM08"])
    _, messages = run_sim(traffic, 14, start=WEEKDAY_MORNING, scenarios=scenarios("rush-hour-jam-ql2"), seed=2)
    jam_from, jam_to = WEEKDAY_MORNING + 11 * 3600, WEEKDAY_MORNING + 12.5 * 3600  # 17:00 … 18:30
    ql2 = {d.id for d in traffic.devices if d.kind == "traffic" and d.attributes.get("road") == "QL2"
           and d.area in ("ha-giang-city", "vi-xuyen")}
    assert len(ql2) >= 4
    for device in ql2:
        rows = [(m.t, orjson.loads(m.payload)["values"]) for m in messages
                if m.device_id == device and m.channel == "telemetry"]
        before = [v for t, v in rows if WEEKDAY_MORNING + 3 * 3600 <= t < WEEKDAY_MORNING + 9 * 3600]
        during = [v for t, v in rows if jam_from + 900 <= t < jam_to - 900]
        assert min(v["speed_kmh"] for v in before) > 30, device
        assert sum(v["speed_kmh"] for v in during) / len(during) < 15, device
        assert sum(v["occupancy_pct"] for v in during) / len(during) > 50, device
    other = [orjson.loads(m.payload)["values"]["speed_kmh"] for m in messages
             if m.device_id == "HG-BQ-TC11" and jam_from + 900 <= m.t < jam_to - 900 and m.channel == "telemetry"]
    assert min(other) > 30  # QL2 in Vĩnh Tuy is not part of the jam
    accident = [orjson.loads(m.payload) for m in messages if m.device_id == "HG-VX-CAM08" and m.channel == "event"
                and b"accident" in m.payload]
    assert accident and accident[0]["type"] == "incident" and accident[0]["ts"].endswith("T17:06:00+07:00")
