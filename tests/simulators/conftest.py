"""Fixtures for the simulator tests: the shipped catalog, and a helper that runs the engine in memory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from simulators.engine import Message, Simulation
from simulators.fleet import Fleet, load_fleet
from simulators.scenario import ScenarioSpec, load_scenarios
from simulators.timeutil import parse_timestamp

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
JULY = parse_timestamp("2026-07-14T00:00:00+07:00")
WEEKDAY_MORNING = parse_timestamp("2026-11-23T06:00:00+07:00")  # a Monday

RunSim = Callable[..., tuple[Simulation, list[Message]]]


@pytest.fixture(scope="session")
def fleet() -> Fleet:
    return load_fleet(config_dir=CONFIG)


def subset(fleet: Fleet, ids: Sequence[str] = (), kinds: Sequence[str] = ()) -> Fleet:
    devices = [d for d in fleet.devices if d.id in ids or d.kind in kinds]
    return Fleet(devices, fleet.areas, fleet.metrics)


def scenarios(*names: str) -> list[ScenarioSpec]:
    return load_scenarios(list(names), CONFIG, load_fleet(config_dir=CONFIG).metrics)


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
