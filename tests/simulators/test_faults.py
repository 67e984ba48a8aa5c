"""Each sensor fault appears exactly as the scenario asks, and nowhere else (compared with a clean run)."""

from __future__ import annotations

import orjson
import pytest
from simhelpers import JULY, RunSim, scenarios, subset

from simulators.engine import Message
from simulators.fleet import Fleet
from simulators.scenario import ScenarioSpec
from simulators.timeutil import parse_timestamp

FAULTY = ["HG-TP-WL02", "HG-VX-AWS01", "HG-VX-WL01", "HG-BQ-RG03", "HG-MV-AWS01", "HG-TP-TC02", "HG-TP-CAM04",
          "HG-YM-RG01", "HG-TP-AWS01"]
H = 3600.0


def telemetry(messages: list[Message], device: str) -> list[Message]:
    return [m for m in messages if m.channel == "telemetry" and m.device_id == device]


@pytest.fixture(scope="module")
def runs(fleet: Fleet) -> tuple[list[Message], list[Message]]:
    """The same 8 hours with and without the sensor-faults scenario (faults use no randomness)."""
    from simulators.engine import Simulation

    small = subset(fleet, ids=FAULTY)
    out = []
    no_faults: list[ScenarioSpec] = []
    for specs in (no_faults, scenarios("sensor-faults")):
        sim = Simulation(small, start=JULY, seed=4, scenarios=specs)
        messages: list[Message] = []
        for batch in sim.run_until(JULY + 8 * H):
            messages.extend(batch)
        out.append(messages)
    return out[0], out[1]


def paired(runs: tuple[list[Message], list[Message]], device: str) -> list[tuple[Message, Message]]:
    clean, faulty = telemetry(runs[0], device), telemetry(runs[1], device)
    assert len(clean) == len(faulty)
    return list(zip(clean, faulty, strict=True))


def values(m: Message) -> dict:
    return orjson.loads(m.payload)["values"]


def test_untouched_device_is_identical(runs: tuple[list[Message], list[Message]]) -> None:
    assert telemetry(runs[0], "HG-TP-AWS01") == telemetry(runs[1], "HG-TP-AWS01")


def test_stuck_value(runs: tuple[list[Message], list[Message]]) -> None:
    stuck = None
    for clean, bad in paired(runs, "HG-TP-WL02"):
        inside = JULY + 1 * H <= clean.t < JULY + 4 * H
        if inside:
            stuck = values(clean)["water_level_m"] if stuck is None else stuck
            assert values(bad)["water_level_m"] == stuck
            assert values(bad)["rain_mm"] == values(clean)["rain_mm"]  # other metrics unaffected
        else:
            assert bad.payload == clean.payload
    assert stuck is not None


def test_spikes(runs: tuple[list[Message], list[Message]]) -> None:
    spikes = []
    for clean, bad in paired(runs, "HG-VX-AWS01"):
        delta = round(values(bad)["temperature_c"] - values(clean)["temperature_c"], 1)
        if delta:
            spikes.append((clean.t, delta))
    assert [d for _, d in spikes] == [25.0, 25.0, 25.0]
    assert all(JULY + 2 * H <= t < JULY + 5 * H for t, _ in spikes)


def test_drift(runs: tuple[list[Message], list[Message]]) -> None:
    pairs = paired(runs, "HG-VX-WL01")
    for clean, bad in pairs:
        expected = 0.02 * (clean.t - JULY) / H
        delta = values(bad)["water_level_m"] - values(clean)["water_level_m"]
        assert abs(delta - expected) <= 0.011
    last_clean, last_bad = pairs[-1]
    assert values(last_bad)["water_level_m"] - values(last_clean)["water_level_m"] > 0.14


def test_out_of_range(runs: tuple[list[Message], list[Message]]) -> None:
    hits = [clean.t for clean, bad in paired(runs, "HG-BQ-RG03") if values(bad)["rain_mm"] == 999]
    assert len(hits) == 3  # 30 minutes of 10-minute reports
    assert all(JULY + 4 * H <= t < JULY + 4.5 * H for t in hits)


def test_clock_one_hour_ahead(runs: tuple[list[Message], list[Message]]) -> None:
    for clean, bad in paired(runs, "HG-MV-AWS01"):
        ts = parse_timestamp(orjson.loads(bad.payload)["ts"])
        ahead = ts - round(clean.t)
        assert ahead == (3600 if JULY + 1 * H <= clean.t < JULY + 7 * H else 0)
        assert values(bad) == values(clean)


def test_duplicates(runs: tuple[list[Message], list[Message]]) -> None:
    clean = telemetry(runs[0], "HG-TP-TC02")
    bad = telemetry(runs[1], "HG-TP-TC02")
    window = [m for m in clean if JULY + 2 * H <= m.t < JULY + 2.5 * H]
    assert len(bad) == len(clean) + len(window) == len(clean) + 30
    for m in window:
        assert sum(1 for b in bad if b.payload == m.payload) == 2


@pytest.mark.parametrize(("device", "start_h", "end_h", "count"), [("HG-TP-CAM04", 3, 3 + 1 / 6, 5),
                                                                   ("HG-YM-RG01", 5, 6, 6)])
def test_malformed_json(runs: tuple[list[Message], list[Message]], device: str, start_h: float, end_h: float,
                        count: int) -> None:
    broken = []
    for clean, bad in paired(runs, device):
        try:
            orjson.loads(bad.payload)
        except orjson.JSONDecodeError:
            broken.append(clean.t)
            continue
        assert bad.payload == clean.payload
    assert len(broken) == count
    assert all(JULY + start_h * H <= t < JULY + end_h * H for t in broken)


def test_store_and_forward_after_gsm_outage(fleet: Fleet, run_sim: RunSim) -> None:
    station = subset(fleet, ids=["HG-MV-RG01", "HG-MV-AWS01"])
    _, messages = run_sim(station, 6, scenarios=scenarios("gsm-outage"))
    mine = [m for m in messages if m.device_id == "HG-MV-RG01"]
    tele = [m for m in mine if m.channel == "telemetry"]
    assert not [m for m in tele if JULY + 1 * H <= m.t < JULY + 4 * H]  # silent for 3 hours
    first_after = next(m for m in tele if m.t >= JULY + 4 * H)
    backlog = orjson.loads(first_after.payload)
    assert isinstance(backlog, list) and len(backlog) == 18 + 1  # 3 h of 10-minute readings + the current one
    stamps = [parse_timestamp(e["ts"]) for e in backlog]
    assert stamps == sorted(stamps) and stamps[0] >= JULY + 1 * H and all("rain_mm" in e["values"] for e in backlog)
    later = [m for m in tele if m.t > first_after.t]
    assert later and all(isinstance(orjson.loads(m.payload), dict) for m in later)
    status = [(m.t - JULY, m.payload) for m in mine if m.channel == "status"]
    assert status == [(0.0, b"online"), (1 * H + 90, b"offline"), (4 * H, b"online")]
