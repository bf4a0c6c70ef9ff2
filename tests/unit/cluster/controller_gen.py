"""Seeded random controller commands for the property tests."""

from __future__ import annotations

import random

from weir.cluster.controller import (
    AddPartitions,
    Command,
    ConfigPatch,
    ConfirmDrops,
    ControllerState,
    CreateCoordinatorGroups,
    CreateTopic,
    DeleteTopic,
    Limits,
    NodeInfo,
    RegisterNode,
    SetLimits,
    TopicConfig,
    UpdateTopicConfig,
)

SEEDS = range(200)


def cluster(nodes: int, limits: Limits | None = None) -> ControllerState:
    state = ControllerState(limits)
    for node_id in range(1, nodes + 1):
        assert state.apply(RegisterNode(NodeInfo(node_id, f"10.0.0.{node_id}:7070"))) == NodeInfo(
            node_id, f"10.0.0.{node_id}:7070"
        )
    return state


def random_command(rng: random.Random, state: ControllerState) -> Command:
    """Mostly valid commands, with invalid ones mixed in."""
    names = [t.name for t in state.topics()] or ["t0"]
    name = rng.choice(
        [*names, *names, f"t{rng.randrange(20)}", f"t{rng.randrange(20)}", "bad name"]
    )
    kind = rng.randrange(100)
    if kind < 5:
        node_id = rng.choice([0, *range(1, 8)])
        return RegisterNode(NodeInfo(node_id, rng.choice(["", f"h{node_id}:1", "h:2"])))
    if kind < 40:
        return CreateTopic(
            name,
            rng.choice([0, 1, 2, 3, 5, 8, 2000]),
            rng.choice([0, 0, 1, 2, 3, 4, 9]),
            TopicConfig(retention_ms=rng.choice([-1, 1000, 0])),
        )
    if kind < 55:
        return DeleteTopic(name)
    if kind < 65:
        return AddPartitions(name, rng.randrange(0, 12))
    if kind < 72:
        return UpdateTopicConfig(name, ConfigPatch(retention_bytes=rng.choice([None, 10, -1, -5])))
    if kind < 90:
        pending = [g for d in state.deleting() for g, _ in d.pending]
        groups = rng.sample(pending, min(len(pending), rng.randrange(4))) if pending else []
        return ConfirmDrops(rng.randrange(1, 6), tuple(sorted(groups)))
    if kind < 97:
        return CreateCoordinatorGroups(rng.choice([0, 1, 3, 6, 2000]))
    return SetLimits(
        Limits(
            topics_max=rng.choice([0, 5, 50]),
            partitions_max=rng.choice([8, 1024]),
            partitions_total_max=rng.choice([40, 2000]),
        )
    )
