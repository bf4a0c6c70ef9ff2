"""Runs one seed and turns any failure into a reproducible report."""

from __future__ import annotations

from weir.cluster.raft import Raft

from .cluster import Cluster, Scenario, SimulationFailure
from .scenarios import SCENARIOS


def scenario_for(seed: int) -> Scenario:
    return SCENARIOS[seed % len(SCENARIOS)]


def run_seed(
    seed: int,
    scenario: Scenario | None = None,
    raft_class: type[Raft] = Raft,
    pytest_args: str = "tests/sim/test_sim.py::test_seeds",
) -> Cluster:
    scenario = scenario or scenario_for(seed)
    cluster = Cluster(seed, scenario, raft_class)
    try:
        cluster.run()
    except Exception as exc:
        raise SimulationFailure(
            f"seed {seed} (scenario {scenario.name}) failed at tick {cluster.now}:"
            f" {type(exc).__name__}: {exc}\n"
            f"  state: {cluster.describe()}\n"
            f"  reproduce: WEIR_SIM_SEED={seed} .venv/bin/pytest {pytest_args}"
        ) from exc
    return cluster
