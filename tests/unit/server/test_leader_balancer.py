"""LeaderBalancer rounds: a settled node skips planning until something it plans from changes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from weir.cluster.controller.model import NodeInfo, Partition
from weir.server.cluster_leaders import BALANCE_SETTLED_REPLAN_S, LeaderBalancer, LeaderWatch

pytestmark = pytest.mark.timeout(10)

ME = 1
NODES = (1, 2, 3)


@dataclass
class FakeHost:
    """Leaders, progress and liveness as a RaftHost would report them to node 1."""

    leaders: dict[int, int]
    node_id: int = ME
    progress_of: dict[int, dict[int, int]] = field(default_factory=dict)
    transfers: list[tuple[int, int]] = field(default_factory=list)
    last: int = 10

    def groups(self) -> list[int]:
        return sorted(self.leaders)

    def leader(self, group_id: int) -> int:
        return self.leaders[group_id]

    def is_leader(self, group_id: int) -> bool:
        return self.leaders[group_id] == ME

    def progress(self, group_id: int) -> dict[int, int]:
        return self.progress_of.get(group_id, dict.fromkeys(NODES, self.last))

    def last_index(self, group_id: int) -> int:
        return self.last

    def peer_alive(self, node_id: int) -> bool:
        return True

    def transfer_leadership(self, group_id: int, to: int) -> None:
        self.transfers.append((group_id, to))


@dataclass
class FakeState:
    parts: tuple[Partition, ...]
    version: int = 1

    def partitions(self) -> tuple[Partition, ...]:
        return self.parts

    def nodes(self) -> tuple[NodeInfo, ...]:
        return tuple(NodeInfo(n, f"127.0.0.1:{7000 + n}") for n in NODES)


@dataclass
class FakeMetadata:
    state: FakeState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def partitions(count: int) -> tuple[Partition, ...]:
    """Groups 1..count, preferred leaders round robin over the nodes."""
    return tuple(
        Partition(g, tuple(NODES[(g + i) % 3] for i in range(3))) for g in range(1, count + 1)
    )


def balancer(host: FakeHost, state: FakeState, clock: Clock) -> tuple[LeaderBalancer, LeaderWatch]:
    watch = LeaderWatch(host, clock)
    metadata = cast(Any, FakeMetadata(state))
    return LeaderBalancer(host, metadata, watch, clock, cooldown_s=1.0), watch


def preferred_leaders(parts: tuple[Partition, ...]) -> dict[int, int]:
    return {p.group_id: p.preferred_leader for p in parts}


def test_a_settled_node_plans_again_only_when_its_inputs_change_or_after_the_replan_interval() -> (
    None
):
    parts = partitions(30)
    host = FakeHost(preferred_leaders(parts))
    clock = Clock()
    state = FakeState(parts)
    leaders, watch = balancer(host, state, clock)
    assert leaders.balance_once() == [] and leaders.plans == 1
    for _ in range(5):
        clock.now += 0.5
        assert leaders.balance_once() == []
    assert leaders.plans == 1, "a settled node planned again with nothing changed"
    # A leader change anywhere is planned from.
    watch.on_leader(3, 1)
    clock.now += 2.0  # past the group's cooldown
    leaders.balance_once()
    assert leaders.plans == 2
    # So is a new controller state (a topic created, a node added...).
    state.version += 1
    leaders.balance_once()
    assert leaders.plans == 3
    # And nothing is skipped for longer than the replan interval.
    clock.now += BALANCE_SETTLED_REPLAN_S
    leaders.balance_once()
    assert leaders.plans == 4
    assert host.transfers == []


def test_an_unbalanced_node_plans_every_round_until_a_transfer_can_start() -> None:
    parts = partitions(6)
    # Node 1 leads everything; its followers have not caught up.
    host = FakeHost(dict.fromkeys(range(1, 7), ME))
    host.last = 1000
    host.progress_of = {g: {1: 1000, 2: 0, 3: 0} for g in range(1, 7)}
    clock = Clock()
    leaders, _ = balancer(host, FakeState(parts), clock)
    assert leaders.balance_once() == []
    clock.now += 0.5
    assert leaders.balance_once() == []
    assert leaders.plans == 2, "a node over its share must keep planning"
    # The followers catch up (no leader change, no new state): the next round moves leaders.
    host.progress_of = {}
    clock.now += 0.5
    started = leaders.balance_once()
    assert leaders.plans == 3
    assert {h.to_node for h in started} == {2, 3}
    assert len(host.transfers) == len(started) == 4
