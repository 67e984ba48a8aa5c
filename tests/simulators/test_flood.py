"""The flash-flood scenario: > 200 mm in 24 h and the Lô crossing I → II → III in its planned windows."""

from __future__ import annotations

import pytest
from simhelpers import JULY, scenarios, subset

from simulators.engine import Simulation
from simulators.fleet import Fleet
from simulators.scenario import check_expectations


@pytest.mark.parametrize(("seed", "tick_s"), [(7, 60.0), (1, 300.0)])
def test_flood_crosses_each_alarm_level_in_its_window(fleet: Fleet, seed: int, tick_s: float) -> None:
    hydromet = subset(fleet, kinds=["hydromet"])
    specs = scenarios("flash-flood-bac-quang")
    watch = [(x.device, x.metric) for s in specs for x in s.expects]
    sim = Simulation(hydromet, start=JULY, seed=seed, scenarios=specs, watch=watch, tick_s=tick_s)
    for _ in sim.run_until(JULY + 5 * 86400):
        pass
    results = check_expectations(specs, JULY, sim.watch, hydromet)
    assert len(results) == 5
    for expect, ok, detail in results:
        assert ok, f"{expect.name}: {detail}"
    level = sim.watch[("HG-BQ-WL01", "water_level_m")]
    # I → II → III in order, then below I again by the end
    alarms = hydromet.by_id()["HG-BQ-WL01"].attributes["alarm_levels_m"]
    first = {k: next(t for t, v in level if v >= alarms[k]) for k in ("I", "II", "III")}
    assert first["I"] < first["II"] < first["III"]
    assert level[-1][1] < alarms["I"]
