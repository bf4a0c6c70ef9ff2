"""Runs one seed and turns any failure into a reproducible report."""

from __future__ import annotations

from weir.cluster.host.policy import POLICY, HostPolicy
from weir.cluster.raft import Raft

from .cluster import Cluster, Scenario, SimulationFailure
from .host import HostCluster, HostScenario
from .scenarios import HOST_SCENARIOS, SCENARIOS


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


def host_scenario_for(seed: int) -> HostScenario:
    return HOST_SCENARIOS[seed % len(HOST_SCENARIOS)]


def run_host_seed(
    seed: int,
    scenario: HostScenario | None = None,
    policy: HostPolicy = POLICY,
    pytest_args: str = "tests/sim/test_sim.py::test_host_seeds",
) -> HostCluster:
    scenario = scenario or host_scenario_for(seed)
    cluster = HostCluster(seed, scenario, policy)
    try:
        cluster.run()
    except Exception as exc:
        raise SimulationFailure(
            f"seed {seed} (host scenario {scenario.name}) failed at tick {cluster.now}:"
            f" {type(exc).__name__}: {exc}\n"
            f"  state: {cluster.describe()}\n"
            f"  reproduce: WEIR_SIM_SEED={seed} .venv/bin/pytest {pytest_args}"
        ) from exc
    return cluster
