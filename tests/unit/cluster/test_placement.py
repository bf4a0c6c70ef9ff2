"""Replica placement: preferred leaders and replicas stay even across topics."""

from __future__ import annotations

import collections
import random

import pytest

from tests.unit.cluster.controller_gen import cluster
from weir.cluster.controller import (
    ControllerState,
    CreateCoordinatorGroups,
    CreateTopic,
    DeleteTopic,
    NodeInfo,
    Partition,
    RegisterNode,
    Topic,
    TopicConfig,
    place_partitions,
)

pytestmark = pytest.mark.timeout(60)

SEEDS = range(300)


def spreads(state: ControllerState) -> tuple[int, int]:
    """(max - min preferred leaderships, max - min replicas) over registered nodes."""
    leaders: collections.Counter[int] = collections.Counter()
    replicas: collections.Counter[int] = collections.Counter()
    for partition in state.partitions():
        leaders[partition.preferred_leader] += 1
        replicas.update(partition.replicas)
    nodes = [n.node_id for n in state.nodes()]
    return (
        max(leaders[n] for n in nodes) - min(leaders[n] for n in nodes),
        max(replicas[n] for n in nodes) - min(replicas[n] for n in nodes),
    )


def create(state: ControllerState, rng: random.Random, name: str, rf: int) -> Topic:
    topic = state.apply(CreateTopic(name, rng.randint(1, 24), rf, TopicConfig()))
    assert isinstance(topic, Topic), topic
    return topic


def test_three_nodes_one_topic() -> None:
    replicas = place_partitions([1, 2, 3], [], 1, 6, 3)
    assert [r[0] for r in replicas] == [1, 2, 3, 1, 2, 3]
    assert all(sorted(r) == [1, 2, 3] for r in replicas)


def test_existing_preferred_leaderships_count() -> None:
    placed = [Partition(1, (1, 2)), Partition(2, (1, 3)), Partition(3, (2, 3))]
    replicas = place_partitions([1, 2, 3], placed, 4, 3, 2)
    leaders = collections.Counter(p.replicas[0] for p in placed)
    leaders.update(r[0] for r in replicas)
    assert max(leaders.values()) - min(leaders.values()) <= 1


def test_followers_of_one_leader_spread_over_the_others() -> None:
    """When a node fails, the partitions it led fall to different survivors."""
    replicas = place_partitions([1, 2, 3, 4], [], 1, 12, 2)
    followers = collections.defaultdict(collections.Counter)
    for leader, follower in replicas:
        followers[leader][follower] += 1
    assert all(sorted(c.values()) == [1, 1, 1] for c in followers.values()), followers


@pytest.mark.parametrize("seed", SEEDS)
def test_preferred_leaders_stay_even_across_topics(seed: int) -> None:
    """Creations only, any factors: max - min preferred leaders per node <= 1 after each."""
    rng = random.Random(seed)
    nodes = rng.randint(1, 9)
    state = cluster(nodes)
    for t in range(rng.randint(1, 12)):
        if rng.random() < 0.1:
            assert not isinstance(state.apply(CreateCoordinatorGroups(6)), Exception)
        topic = create(state, rng, f"t{t}", rng.randint(0, nodes))
        for partition in topic.partitions:
            assert len(partition.replicas) == topic.replication_factor
            assert set(partition.replicas) <= set(range(1, nodes + 1))
        leaders, _ = spreads(state)
        assert leaders <= 1, (seed, t)


@pytest.mark.parametrize("seed", SEEDS)
def test_replicas_stay_even_with_one_replication_factor(seed: int) -> None:
    rng = random.Random(seed)
    nodes = rng.randint(1, 9)
    rf = rng.randint(1, nodes)
    state = cluster(nodes)
    for t in range(rng.randint(1, 12)):
        create(state, rng, f"t{t}", rf)
        assert spreads(state) <= (1, 1), (seed, t)


@pytest.mark.parametrize("seed", SEEDS)
def test_imbalance_from_deletes_and_new_nodes_never_grows(seed: int) -> None:
    """Where even is not possible at once, a creation never makes it worse (and fills new nodes)."""
    rng = random.Random(seed)
    state = cluster(rng.randint(1, 4))
    for t in range(30):
        roll = rng.random()
        if roll < 0.15 and len(state.nodes()) < 9:
            node_id = len(state.nodes()) + 1
            state.apply(RegisterNode(NodeInfo(node_id, f"h:{node_id}")))
        elif roll < 0.35 and state.topics():
            state.apply(DeleteTopic(rng.choice(state.topics()).name))
        else:
            before, _ = spreads(state)
            create(state, rng, f"t{t}", rng.randint(0, len(state.nodes())))
            after, _ = spreads(state)
            assert after <= max(1, before), (seed, t, before, after)
