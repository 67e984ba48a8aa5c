"""Fixtures for the simulator tests: the shipped catalog, and a helper that runs the engine in memory."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from simhelpers import CONFIG, JULY, RunSim

from simulators.engine import Message, Simulation
from simulators.fleet import Fleet, load_fleet
from simulators.scenario import ScenarioSpec


@pytest.fixture(scope="session")
def fleet() -> Fleet:
    return load_fleet(config_dir=CONFIG)


@pytest.fixture
def run_sim() -> RunSim:
    """run_sim(fleet, hours, start=JULY, seed=1, scenarios=(), **engine options) → (sim, messages)."""

    def run(fleet: Fleet, hours: float, *, start: float = JULY, seed: int = 1,
            scenarios: Sequence[ScenarioSpec] = (), **options: object) -> tuple[Simulation, list[Message]]:
        sim = Simulation(fleet, start=start, seed=seed, scenarios=scenarios, **options)  # type: ignore[arg-type]
        out = sim.initial_messages()
        for batch in sim.run_until(start + hours * 3600.0):
            out.extend(batch)
        return sim, out

    return run


