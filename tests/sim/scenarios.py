"""The mix of scenarios CI runs; seed N runs SCENARIOS[N % len(SCENARIOS)]."""

from __future__ import annotations

from .cluster import Scenario

SCENARIOS: tuple[Scenario, ...] = (
    Scenario("lossy", drop=0.15, duplicate=0.1, delay_ticks_max=4, crash=0.01),
    Scenario("partitions", partition=0.05, crash=0.01, drop=0.05),
    Scenario("crashes", crash=0.04, crash_in_ready=0.01, down_ticks_max=20),
    Scenario("five", nodes=5, partition=0.04, crash=0.03, crash_in_ready=0.005),
    Scenario("transfer", transfer=0.05, crash=0.02, partition=0.02),
    Scenario(
        "snapshots",
        bootstrap_log=True,
        compact=0.05,
        crash=0.03,
        partition=0.04,
        crash_in_ready=0.005,
    ),
    Scenario(
        "membership", bootstrap_log=True, membership=0.05, crash=0.01, partition=0.02, compact=0.02
    ),
    # One entry per append and one append in flight, leaders cut off as soon as
    # they win: old-term entries linger on minorities, as in the paper's Figure 8.
    Scenario(
        "figure8",
        append_entries_max=1,
        inflight_messages_max=1,
        heal_ticks_max=300,
        crash=0.02,
        isolate_leader=0.08,
        isolate_new_leader=0.5,
        propose=0.8,
        down_ticks_max=12,
    ),
    Scenario("no_prevote", pre_vote=False, check_quorum=False, partition=0.04, crash=0.02),
)
