"""Replica placement for new partitions: even preferred leaders, even replicas.

Each partition's first replica is its preferred leader: the node that
leads it whenever that node is up and caught up (leader balancing moves
leadership back there). Placement is greedy over the partitions of the
whole cluster, not one topic, in the spirit of Kafka's rack-unaware
assignment (KIP-36) but counting what is already placed:

- the preferred leader is a node with the fewest preferred leaderships,
  then the fewest replicas;
- every other replica goes to a node with the fewest replicas, then the
  fewest partitions it follows this leader in, so that when a node fails
  the partitions it led are led by different survivors.

Ties are broken by a rotation that depends on the group id, never by
plain node order, so equal loads still spread. A greedy step always picks
a least-loaded node, so if preferred leaders differ by at most one per node
before a creation they still do after it; an imbalance left by a deletion
or a new node shrinks with every partition placed.

Pure and deterministic: it runs inside the controller's state machine.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence

from weir.cluster.controller.model import FIRST_PARTITION_GROUP, GroupId, NodeId, Partition


class Load:
    """Preferred leaderships, replicas and (leader, follower) pairs per node."""

    def __init__(self, nodes: Sequence[NodeId], placed: Iterable[Partition]) -> None:
        assert list(nodes) == sorted(set(nodes)), "nodes must be sorted and distinct"
        self.nodes = tuple(nodes)
        self.leaders: collections.Counter[NodeId] = collections.Counter()
        self.replicas: collections.Counter[NodeId] = collections.Counter()
        self.pairs: collections.Counter[tuple[NodeId, NodeId]] = collections.Counter()
        for partition in placed:
            self.add(partition.replicas)

    def add(self, replicas: Sequence[NodeId]) -> None:
        leader = replicas[0]
        self.leaders[leader] += 1
        for node in replicas:
            self.replicas[node] += 1
        for follower in replicas[1:]:
            self.pairs[leader, follower] += 1

    def spread(self, counter: collections.Counter[NodeId]) -> int:
        """max - min of a count over the placement's nodes (0 for no nodes)."""
        counts = [counter[n] for n in self.nodes]
        return max(counts) - min(counts) if counts else 0


def place_partitions(
    nodes: Sequence[NodeId],
    placed: Iterable[Partition],
    first_group_id: GroupId,
    count: int,
    replication_factor: int,
) -> tuple[tuple[NodeId, ...], ...]:
    """Replica lists for `count` new partitions with group ids from `first_group_id`.

    `nodes` are the candidate nodes (sorted); `placed` the partitions whose
    load counts (live topics and offsets partitions, not deleted ones).
    """
    assert 1 <= replication_factor <= len(nodes), (replication_factor, nodes)
    assert count >= 0
    load = Load(nodes, placed)
    placements = []
    for group_id in range(first_group_id, first_group_id + count):
        replicas = _place_one(load, group_id, replication_factor)
        load.add(replicas)
        placements.append(replicas)
    return tuple(placements)


def _place_one(load: Load, group_id: GroupId, replication_factor: int) -> tuple[NodeId, ...]:
    size = len(load.nodes)

    def rotation(index: int) -> int:
        return (index - group_id + FIRST_PARTITION_GROUP) % size

    order = range(size)
    leader_at = min(
        order,
        key=lambda i: (load.leaders[load.nodes[i]], load.replicas[load.nodes[i]], rotation(i)),
    )
    leader = load.nodes[leader_at]
    replicas = [leader]
    while len(replicas) < replication_factor:
        follower_at = min(
            (i for i in order if load.nodes[i] not in replicas),
            key=lambda i: (
                load.replicas[load.nodes[i]],
                -load.leaders[load.nodes[i]],
                load.pairs[leader, load.nodes[i]],
                rotation(i),
            ),
        )
        replicas.append(load.nodes[follower_at])
    return tuple(replicas)
