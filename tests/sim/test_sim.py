"""Deterministic simulation of Raft clusters under faults (see docs/raft.md).

`WEIR_SIM_SEEDS` sets how many seeds the sweep runs (default 10,000, what CI
runs; `make sim SEEDS=N`); `WEIR_SIM_HOST_SEEDS` how many seeds run the
multi-group hosts of host.py (default 1,500: each seed runs 2-4 groups). `WEIR_SIM_SEED=N` runs just seed N, in this process, so a failure
can be debugged; every failure report prints that command.
"""

from __future__ import annotations

import os

import pytest

from .pool import run_chunk, sweep
from .run import host_scenario_for, run_host_seed, run_seed, scenario_for
from .scenarios import HOST_SCENARIOS, SCENARIOS

SEEDS = int(os.environ.get("WEIR_SIM_SEEDS", "10000"))
HOST_SEEDS = int(os.environ.get("WEIR_SIM_HOST_SEEDS", "1500"))
ONE_SEED = os.environ.get("WEIR_SIM_SEED")
# Seeds per scenario run inside the test process (so coverage sees the core).
IN_PROCESS_SEEDS = 6


@pytest.mark.sim
# 10,000 seeds take 70-100 s on 2 idle cores; the bound leaves room for a busy machine.
@pytest.mark.timeout(max(300, SEEDS // 25))
def test_seeds() -> None:
    """Every seed keeps Raft's safety properties and converges once healed."""
    if ONE_SEED is not None:
        run_seed(int(ONE_SEED))
        return
    failures = sweep(range(SEEDS))
    assert not failures, f"{len(failures)} of {SEEDS} seeds failed:\n" + "\n".join(failures[:5])


@pytest.mark.sim
@pytest.mark.timeout(60)
@pytest.mark.parametrize("scenario", [s.name for s in SCENARIOS])
def test_scenario_in_process(scenario: str) -> None:
    index = [s.name for s in SCENARIOS].index(scenario)
    seeds = [index + len(SCENARIOS) * k for k in range(IN_PROCESS_SEEDS)]
    assert all(scenario_for(seed).name == scenario for seed in seeds)
    failures = run_chunk(seeds, None, None)
    assert not failures, "\n".join(failures)


@pytest.mark.sim
def test_same_seed_same_history() -> None:
    """Time and randomness are inputs: a seed replays exactly."""
    first, second = run_seed(5), run_seed(5)
    assert first.now == second.now
    assert first.checker.acked == second.checker.acked
    assert first.checker.leaders == second.checker.leaders


@pytest.mark.sim
# 1,500 seeds take about 30 s on 2 idle cores.
@pytest.mark.timeout(max(180, HOST_SEEDS // 10))
def test_host_seeds() -> None:
    """Several groups per node through the host's policy: safety per group, liveness, free idling."""
    if ONE_SEED is not None:
        run_host_seed(int(ONE_SEED))
        return
    failures = sweep(range(HOST_SEEDS), host=True)
    assert not failures, f"{len(failures)} of {HOST_SEEDS} seeds failed:\n" + "\n".join(
        failures[:5]
    )


@pytest.mark.sim
@pytest.mark.timeout(60)
@pytest.mark.parametrize("scenario", [s.name for s in HOST_SCENARIOS])
def test_host_scenario_in_process(scenario: str) -> None:
    index = [s.name for s in HOST_SCENARIOS].index(scenario)
    seeds = [index + len(HOST_SCENARIOS) * k for k in range(IN_PROCESS_SEEDS)]
    assert all(host_scenario_for(seed).name == scenario for seed in seeds)
    failures = run_chunk(seeds, None, None, host=True)
    assert not failures, "\n".join(failures)


@pytest.mark.sim
def test_host_same_seed_same_history() -> None:
    first, second = run_host_seed(7), run_host_seed(7)
    assert first.now == second.now
    assert [c.acked for c in first.checkers.values()] == [c.acked for c in second.checkers.values()]
    assert first.describe() == second.describe()
