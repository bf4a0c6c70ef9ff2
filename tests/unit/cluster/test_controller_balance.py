"""Leader balancing: transfers reach max - min <= 1 over live nodes, only to caught-up replicas."""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping

import pytest

from weir.cluster.controller import (
    GroupId,
    NodeId,
    Partition,
    Transfer,
    caught_up_replicas,
    leader_spread,
    place_partitions,
    plan_leader_transfers,
)

pytestmark = pytest.mark.timeout(60)

SEEDS = range(1000)


def apply(leaders: dict[GroupId, NodeId], transfers: tuple[Transfer, ...]) -> None:
    for t in transfers:
        assert leaders[t.group_id] == t.from_node
        leaders[t.group_id] = t.to_node


def partitions(nodes: int, count: int, rf: int) -> tuple[Partition, ...]:
    replicas = place_partitions(list(range(1, nodes + 1)), [], 1, count, rf)
    return tuple(Partition(1 + i, r) for i, r in enumerate(replicas))


def test_caught_up_replicas_are_within_the_lag_of_the_leader() -> None:
    match = {1: 100, 2: 36, 3: 35, 4: 0}
    assert caught_up_replicas(match, 100) == {1, 2}
    assert caught_up_replicas(match, 100, lag_entries_max=65) == {1, 2, 3}
    assert caught_up_replicas(match, 100, lag_entries_max=0) == {1}


def test_leadership_goes_back_to_a_returning_node_once_caught_up() -> None:
    groups = partitions(3, 6, 3)
    # Node 1 was down: its two partitions are led by the survivors.
    leaders = {p.group_id: p.preferred_leader for p in groups}
    leaders[1] = 2
    leaders[4] = 3
    everyone = {p.group_id: frozenset({1, 2, 3}) for p in groups}
    lagging = {g: s - {1} for g, s in everyone.items()}
    assert plan_leader_transfers(groups, {1, 2, 3}, leaders, lagging) == ()
    assert plan_leader_transfers(groups, {2, 3}, leaders, everyone) == ()
    plan = plan_leader_transfers(groups, {1, 2, 3}, leaders, everyone)
    assert plan == (Transfer(1, 2, 1), Transfer(4, 3, 1))
    apply(leaders, plan)
    assert leaders == {p.group_id: p.preferred_leader for p in groups}
    assert plan_leader_transfers(groups, {1, 2, 3}, leaders, everyone) == ()


def test_no_transfer_for_groups_without_a_live_leader() -> None:
    groups = partitions(3, 3, 3)
    caught_up = {p.group_id: frozenset({1, 2, 3}) for p in groups}
    assert plan_leader_transfers(groups, {1, 2, 3}, {}, caught_up) == ()
    leaders = {1: 1, 2: 1, 3: 1}
    assert plan_leader_transfers(groups, {2, 3}, leaders, caught_up) == ()


def test_a_chain_moves_leadership_where_no_single_transfer_can() -> None:
    """Node 1 leads 3, node 3 leads 1; only node 2 can take from 1 and only 3 from 2."""
    groups = (
        Partition(1, (1, 2)),
        Partition(2, (1, 2)),
        Partition(3, (1, 2)),
        Partition(4, (2, 3)),
        Partition(5, (2, 3)),
        Partition(6, (3, 1)),
    )
    leaders = {1: 1, 2: 1, 3: 1, 4: 2, 5: 2, 6: 3}
    caught_up = {g: frozenset({1, 2, 3}) for g in leaders}
    plan = plan_leader_transfers(groups, {1, 2, 3}, leaders, caught_up)
    apply(leaders, plan)
    assert leader_spread(leaders, {1, 2, 3}) <= 1
    assert len(plan) == 2


def test_the_number_of_transfers_per_plan_is_bounded() -> None:
    groups = partitions(3, 30, 3)
    leaders = {p.group_id: 1 for p in groups}
    caught_up = {p.group_id: frozenset({1, 2, 3}) for p in groups}
    rounds = 0
    while plan := plan_leader_transfers(groups, {1, 2, 3}, leaders, caught_up, transfers_max=4):
        assert len(plan) <= 4
        apply(leaders, plan)
        rounds += 1
    assert rounds == 5 and leader_spread(leaders, {1, 2, 3}) == 0


def best_spread(
    groups: tuple[Partition, ...],
    live: frozenset[NodeId],
    allowed: Mapping[GroupId, tuple[NodeId, ...]],
) -> int:
    """The smallest max - min reachable, by trying every assignment."""
    ids = sorted(allowed)
    best = None
    for choice in itertools.product(*(allowed[g] for g in ids)):
        spread = leader_spread(dict(zip(ids, choice, strict=True)), live)
        best = spread if best is None else min(best, spread)
    return best if best is not None else 0


@pytest.mark.parametrize("seed", SEEDS)
def test_plans_reach_the_best_spread_and_target_only_live_caught_up_replicas(seed: int) -> None:
    rng = random.Random(seed)
    size = rng.randint(2, 5)
    nodes = list(range(1, size + 1))
    groups: list[Partition] = []
    for _ in range(rng.randint(1, 3)):
        rf = rng.randint(1, min(3, size))
        count = rng.randint(1, 3)
        first = len(groups) + 1
        placed = place_partitions(nodes, groups, first, count, rf)
        groups.extend(Partition(first + i, r) for i, r in enumerate(placed))
    live = frozenset(n for n in nodes if rng.random() < 0.8) or frozenset({1})
    leaders: dict[GroupId, NodeId] = {}
    for p in groups:
        if rng.random() < 0.9:
            leaders[p.group_id] = rng.choice(p.replicas)
    caught_up = {p.group_id: frozenset(n for n in p.replicas if rng.random() < 0.7) for p in groups}
    eligible = {
        p.group_id: tuple(n for n in p.replicas if n in live and n in caught_up[p.group_id])
        for p in groups
    }
    # The oracle's choices: groups with a live leader may move to an eligible
    # replica; the others stay where they are (and count only if live).
    allowed = {
        g: tuple(dict.fromkeys((leader, *eligible[g]))) if leader in live else (leader,)
        for g, leader in leaders.items()
    }
    best = best_spread(tuple(groups), live, allowed)
    transfers_max = rng.choice([1, 2, 32])
    for _ in range(50):
        plan = plan_leader_transfers(groups, live, leaders, caught_up, transfers_max)
        if not plan:
            break
        assert len(plan) <= max(transfers_max, len(live) - 1)
        assert len({t.group_id for t in plan}) == len(plan)
        for t in plan:
            assert t.to_node in live and t.to_node in caught_up[t.group_id], (seed, t)
            assert t.to_node != t.from_node
            # The old leader holds the whole log: it is caught up.
            caught_up[t.group_id] |= {t.from_node}
        apply(leaders, plan)
    else:
        raise AssertionError(f"seed {seed}: plans did not settle")
    assert leader_spread(leaders, live) == best, seed
