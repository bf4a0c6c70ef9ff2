"""Coordinator groups in the controller: creation, placement, reconcile, upgrade.

Committed offsets moved from group 0 to the coordinator groups
(docs/groups.md); entries and snapshots an older release wrote into group
0 for them must still replay, harmlessly.
"""

from __future__ import annotations

import collections

import pytest

from tests.unit.cluster.controller_gen import cluster
from weir.cluster.controller import (
    ControllerState,
    CoordinatorGroups,
    CreateCoordinatorGroups,
    CreateTopic,
    DeleteTopic,
    Done,
    NodeInfo,
    NoNodes,
    RegisterNode,
    Retired,
    StartGroup,
    Topic,
    TopicConfig,
    decode_command,
    decode_state,
    encode_command,
    encode_state,
    reconcile,
)
from weir.cluster.v1 import controller_pb2 as pb

pytestmark = pytest.mark.timeout(30)


def _create(state: ControllerState, count: int = 6) -> CoordinatorGroups:
    result = state.apply(CreateCoordinatorGroups(count))
    assert isinstance(result, CoordinatorGroups), result
    return result


def test_coordinator_groups_take_group_ids_and_three_replicas() -> None:
    state = cluster(3)
    groups = _create(state).groups
    assert [p.group_id for p in groups] == [1, 2, 3, 4, 5, 6]
    assert all(len(p.replicas) == 3 for p in groups)
    assert state.next_group_id == 7
    assert state.coordinator_groups() == groups
    assert all(state.is_coordinator_group(p.group_id) for p in groups)
    # They run like partitions, but hold no topic's data.
    assert state.partitions() == groups
    assert state.live_partition_ids() == frozenset()
    state.check_invariants()


@pytest.mark.parametrize(("nodes", "count"), [(1, 6), (2, 6), (3, 6), (3, 7), (5, 6), (9, 3)])
def test_preferred_leaders_of_coordinator_groups_are_even(nodes: int, count: int) -> None:
    state = cluster(nodes)
    groups = _create(state, count).groups
    assert all(len(p.replicas) == min(3, nodes) for p in groups)
    leaders = collections.Counter(p.preferred_leader for p in groups)
    counts = [leaders[n] for n in range(1, nodes + 1)]
    assert max(counts) - min(counts) <= 1, counts


def test_creation_is_idempotent_and_the_first_count_stays() -> None:
    state = cluster(3)
    first = _create(state, 4)
    version = state.version
    assert state.apply(CreateCoordinatorGroups(6)) == first
    assert state.apply(CreateCoordinatorGroups(0)) == first
    assert state.version == version


def test_creation_waits_for_a_registered_node() -> None:
    state = ControllerState()
    assert isinstance(state.apply(CreateCoordinatorGroups(6)), NoNodes)
    assert state.coordinator_groups() == () and state.version == 0


def test_an_existing_cluster_gets_them_after_its_topics_with_even_leaders() -> None:
    """Upgrade: a data dir with topics and no coordinator groups gets them, placed around."""
    state = cluster(3)
    topic = state.apply(CreateTopic("orders", 4, 0, TopicConfig()))
    assert isinstance(topic, Topic)
    groups = _create(state).groups
    assert [p.group_id for p in groups] == list(range(5, 11))
    leaders = collections.Counter(p.preferred_leader for p in state.partitions())
    assert max(leaders.values()) - min(leaders.values()) <= 1, leaders
    # Deleting a topic leaves the coordinator groups alone.
    state.apply(DeleteTopic("orders"))
    assert state.coordinator_groups() == groups


def test_reconcile_starts_coordinator_groups_as_opaque_groups() -> None:
    state = cluster(3)
    state.apply(CreateTopic("orders", 1, 0, TopicConfig()))
    groups = _create(state, 3).groups
    actions = reconcile(state, 1, set())
    starts = {a.group_id: a for a in actions if isinstance(a, StartGroup)}
    assert starts[1].partition
    for p in groups:
        assert not starts[p.group_id].partition
        assert starts[p.group_id].voters == frozenset(p.replicas)


def test_snapshots_and_commands_keep_the_coordinator_groups() -> None:
    state = cluster(3)
    _create(state)
    command = CreateCoordinatorGroups(6)
    assert decode_command(encode_command(command)) == command
    restored = decode_state(encode_state(state))
    assert restored == state
    assert restored.coordinator_groups() == state.coordinator_groups()


def test_old_offset_entries_replay_as_no_ops() -> None:
    """AssignGroupHome / CommitOffsets entries of an older release are applied as no-ops."""
    state = cluster(3)
    state.apply(CreateTopic("orders", 1, 0, TopicConfig()))
    old = [
        pb.ControllerCommand(
            commit_offsets=pb.CommitOffsets(
                consumer_group="g", offsets=[pb.PartitionOffset(group_id=1, offset=5)]
            )
        ),
        pb.ControllerCommand(assign_group_home=pb.AssignGroupHome(consumer_group="g")),
    ]
    before = encode_state(state)
    for msg in old:
        command = decode_command(msg.SerializeToString())
        assert isinstance(command, Retired)
        assert state.apply(command) == Done()
    assert encode_state(state) == before


def test_an_old_snapshot_with_offsets_fields_still_decodes() -> None:
    """Fields 6, 7 and 9 of ControllerState (offsets partitions, homes, offsets) are skipped."""
    state = ControllerState()
    state.apply(RegisterNode(NodeInfo(1, "h:1")))
    committed = b"\x0a\x01g\x10\x01\x18\x05"  # CommittedOffset{"g", 1, 5}
    home = b"\x0a\x01g\x10\x01"  # GroupHome{"g", 1}
    data = encode_state(state) + b"\x4a" + bytes([len(committed)]) + committed
    data += b"\x3a" + bytes([len(home)]) + home
    assert decode_state(data) == state
