"""Runs batches of seeds, in this process or spread over the machine's cores.

Seeds are independent and deterministic, so a sweep is split into chunks
run by worker processes (spawned, so they share nothing with the test
process). Workers return failure reports instead of raising, and the caller
asserts on them; each report carries its reproduce command.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

from weir.cluster.host.policy import POLICY, HostPolicy
from weir.cluster.raft import Raft

from . import broken
from .cluster import SimulationFailure
from .run import run_host_seed, run_seed
from .scenarios import HOST_SCENARIOS, SCENARIOS

CHUNK_SEEDS = 50


def run_chunk(
    seeds: list[int],
    variant: str | None,
    scenario: str | None,
    host: bool = False,
    stop_at_first: bool = False,
) -> list[str]:
    """Runs `seeds`; returns one report per failing seed (only the first if `stop_at_first`).

    `host`: the multi-group hosts of host.py; `variant` then names a broken
    `HostPolicy` instead of a broken `Raft`.
    """
    if host:
        return _run_host_chunk(seeds, variant, scenario, stop_at_first)
    raft_class = getattr(broken, variant) if variant else Raft
    chosen = next((s for s in SCENARIOS if s.name == scenario), None)
    pytest_args = "tests/sim/test_sim.py::test_seeds"
    if variant:
        pytest_args = f"tests/sim/test_broken.py -k {variant}"
    failures = []
    for seed in seeds:
        try:
            run_seed(seed, chosen, raft_class, pytest_args)
        except SimulationFailure as exc:
            failures.append(str(exc))
            if stop_at_first:
                break
    return failures


def _run_host_chunk(
    seeds: list[int], variant: str | None, scenario: str | None, stop_at_first: bool
) -> list[str]:
    policy: HostPolicy = getattr(broken, variant)() if variant else POLICY
    chosen = next((s for s in HOST_SCENARIOS if s.name == scenario), None)
    pytest_args = "tests/sim/test_sim.py::test_host_seeds"
    if variant:
        pytest_args = f"tests/sim/test_broken.py -k {variant}"
    failures = []
    for seed in seeds:
        try:
            run_host_seed(seed, chosen, policy, pytest_args)
        except SimulationFailure as exc:
            failures.append(str(exc))
            if stop_at_first:
                break
    return failures


def sweep(
    seeds: range,
    variant: str | None = None,
    scenario: str | None = None,
    stop_at_first: bool = False,
    host: bool = False,
) -> list[str]:
    """Runs every seed (or until the first failure) on all cores; returns failure reports."""
    chunks = [list(seeds[i : i + CHUNK_SEEDS]) for i in range(0, len(seeds), CHUNK_SEEDS)]
    workers = max(1, min(os.cpu_count() or 1, len(chunks)))
    failures: list[str] = []
    if workers == 1:
        for chunk in chunks:
            failures.extend(run_chunk(chunk, variant, scenario, host, stop_at_first))
            if failures and stop_at_first:
                break
        return failures
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [
            pool.submit(run_chunk, chunk, variant, scenario, host, stop_at_first)
            for chunk in chunks
        ]
        for future in futures:
            failures.extend(future.result())
            if failures and stop_at_first:
                pool.shutdown(cancel_futures=True)
                break
    return failures
