"""Reconcile: each node runs exactly the groups the committed metadata gives it."""

from __future__ import annotations

import random

import pytest

from tests.unit.cluster.controller_gen import SEEDS, cluster, random_command
from weir.cluster.controller import (
    Action,
    ConfirmDropped,
    ConfirmDrops,
    ControllerState,
    CreateTopic,
    DeleteGroupData,
    DeleteTopic,
    StartGroup,
    StopGroup,
    Topic,
    TopicConfig,
    reconcile,
)

pytestmark = pytest.mark.timeout(60)


def test_a_new_node_starts_the_groups_it_hosts_with_their_voters() -> None:
    state = cluster(4)
    topic = state.apply(CreateTopic("a", 4, 2, TopicConfig()))
    assert isinstance(topic, Topic)
    actions = reconcile(state, 1, frozenset())
    hosted = [p for p in topic.partitions if 1 in p.replicas]
    assert actions == tuple(StartGroup(p.group_id, frozenset(p.replicas)) for p in hosted)
    assert reconcile(state, 1, frozenset(p.group_id for p in hosted)) == ()


def test_a_deleted_topic_is_stopped_wiped_and_confirmed() -> None:
    state = cluster(3)
    state.apply(CreateTopic("a", 2, 3, TopicConfig()))
    state.apply(DeleteTopic("a"))
    running = frozenset({0, 1, 2})
    assert reconcile(state, 1, running, running) == (
        StopGroup(1),
        StopGroup(2),
        DeleteGroupData(1),
        DeleteGroupData(2),
    )
    # Stopped, group 2's data dropped, group 1's drop still running.
    assert reconcile(state, 1, frozenset({0}), frozenset({1})) == (
        DeleteGroupData(1),
        ConfirmDropped((2,)),
    )
    state.apply(ConfirmDrops(1, (2,)))
    assert reconcile(state, 1, frozenset({0}), frozenset()) == (ConfirmDropped((1,)),)
    state.apply(ConfirmDrops(1, (1,)))
    assert reconcile(state, 1, frozenset({0}), frozenset()) == ()


def test_unknown_groups_below_next_group_id_are_wiped_others_left_alone() -> None:
    state = cluster(1)
    state.apply(CreateTopic("a", 1, 1, TopicConfig()))
    state.apply(DeleteTopic("a"))
    state.apply(ConfirmDrops(1, (1,)))
    assert state.deleting() == ()
    # Group 1 is forgotten; group 7 is newer than this copy of the state;
    # group 0 is the controller's own.
    assert reconcile(state, 1, frozenset({0, 7}), frozenset({0, 1, 7})) == (DeleteGroupData(1),)


@pytest.mark.parametrize("seed", SEEDS)
def test_carrying_out_the_actions_reaches_a_fixpoint(seed: int) -> None:
    rng = random.Random(seed)
    state = cluster(rng.randint(1, 5))
    local: dict[int, tuple[set[int], set[int]]] = {n.node_id: (set(), set()) for n in state.nodes()}
    for _ in range(40):
        state.apply(random_command(rng, state))
        for node in state.nodes():
            running, stored = local.setdefault(node.node_id, (set(), set()))
            # A node reconciles again after its actions: confirmations come
            # only once the data is gone, so a deletion takes two passes.
            for _ in range(3):
                actions = reconcile(state, node.node_id, frozenset(running), frozenset(stored))
                if not actions:
                    break
                carry_out(state, node.node_id, actions, running, stored)
            else:
                raise AssertionError(f"seed {seed}: reconcile did not settle")
            hosted = {p.group_id for p in state.partitions() if node.node_id in p.replicas}
            assert running == hosted, seed
            assert reconcile(state, node.node_id, frozenset(running), frozenset(stored)) == ()
    check_dropped_everywhere(state)


def carry_out(
    state: ControllerState,
    node_id: int,
    actions: tuple[Action, ...],
    running: set[int],
    stored: set[int],
) -> None:
    for action in actions:
        match action:
            case StopGroup(group_id):
                running.discard(group_id)
            case DeleteGroupData(group_id):
                assert group_id not in running, "stop before wiping"
                stored.discard(group_id)
            case StartGroup(group_id, voters):
                assert node_id in voters
                running.add(group_id)
                stored.add(group_id)
            case ConfirmDropped(group_ids):
                assert not set(group_ids) & stored
                state.apply(ConfirmDrops(node_id, group_ids))


def check_dropped_everywhere(state: ControllerState) -> None:
    """Every node confirmed every drop, so no deleted topic is left."""
    assert state.deleting() == ()
