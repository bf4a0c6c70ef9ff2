"""The mix of scenarios CI runs; seed N runs SCENARIOS[N % len(SCENARIOS)]."""

from __future__ import annotations

from .cluster import Scenario
from .host import HostScenario

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "lossy",
        drop=0.15,
        duplicate=0.1,
        delay_ticks_max=4,
        crash=0.01,
        long_delay=0.005,
        defer_ready=0.3,
    ),
    Scenario(
        "partitions", partition=0.05, crash=0.01, drop=0.05, keep_down=0.5, calm_transfer=0.02
    ),
    Scenario(
        "crashes",
        crash=0.04,
        crash_in_ready=0.01,
        down_ticks_max=20,
        write_fail=0.01,
        defer_ready=0.3,
        keep_down=0.3,
    ),
    Scenario(
        "five",
        nodes=5,
        partition=0.04,
        crash=0.03,
        crash_in_ready=0.005,
        keep_down=0.5,
        defer_ready=0.2,
        calm_transfer=0.02,
    ),
    Scenario(
        "transfer", transfer=0.05, crash=0.02, partition=0.02, calm_transfer=0.03, defer_ready=0.2
    ),
    Scenario(
        "snapshots",
        bootstrap_log=True,
        compact=0.05,
        compact_any=True,
        crash=0.03,
        partition=0.04,
        crash_in_ready=0.005,
        defer_ready=0.4,
        write_fail=0.005,
    ),
    Scenario(
        "membership",
        bootstrap_log=True,
        membership=0.05,
        crash=0.01,
        partition=0.02,
        compact=0.02,
        defer_ready=0.2,
    ),
    # Changes of every type at any moment, the leader often cut off right after
    # proposing one, so config entries linger uncommitted on minorities.
    Scenario(
        "membership_any",
        bootstrap_log=True,
        membership=0.08,
        membership_any=True,
        isolate_after_conf=0.3,
        crash=0.01,
        partition=0.02,
        compact=0.02,
        compact_any=True,
        defer_ready=0.3,
        keep_down=0.3,
    ),
    # The asyncio host: Readies held for a while, failing writes, slow messages.
    Scenario(
        "async",
        bootstrap_log=True,
        defer_ready=0.6,
        defer_ticks_max=4,
        write_fail=0.01,
        crash_in_ready=0.01,
        long_delay=0.005,
        crash=0.02,
        partition=0.03,
        compact=0.03,
        compact_any=True,
        calm_transfer=0.02,
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

# Multi-group hosts (tests/sim/host.py): the host's quiescence, send order and
# outcome rules under faults; seed N runs HOST_SCENARIOS[N % len(HOST_SCENARIOS)].
HOST_SCENARIOS: tuple[HostScenario, ...] = (
    # Mostly idle groups that go quiet, leaders' nodes cut off or crashed,
    # and often a leader's node gone for good at heal.
    HostScenario(
        "host_quiet",
        propose=0.1,
        crash=0.02,
        partition=0.03,
        isolate_leader=0.03,
        defer_turn=0.3,
        keep_leader_down=0.6,
    ),
    # Five nodes, four groups with different voter sets, storage faults.
    HostScenario(
        "host_five",
        nodes=5,
        groups=4,
        crash=0.03,
        partition=0.04,
        isolate_leader=0.02,
        defer_turn=0.3,
        write_fail=0.01,
        crash_in_turn=0.01,
        compact=0.02,
        keep_leader_down=0.5,
    ),
    # Four nodes, groups of three: slow fsyncs, failed writes, crashes inside
    # turns, transfers and compaction.
    HostScenario(
        "host_storage",
        nodes=4,
        groups=3,
        drop=0.08,
        duplicate=0.05,
        crash=0.02,
        partition=0.02,
        defer_turn=0.6,
        defer_ticks_max=4,
        write_fail=0.02,
        crash_in_turn=0.02,
        transfer=0.03,
        compact=0.03,
        keep_leader_down=0.3,
    ),
)
