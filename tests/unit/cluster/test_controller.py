"""The controller's state machine: validation, group ids, deletes, coordinator groups, snapshots."""

from __future__ import annotations

import random

import pytest

from tests.unit.cluster.controller_gen import SEEDS, cluster, random_command
from weir.cluster.controller import (
    CONTROLLER_GROUP,
    AddPartitions,
    Command,
    ConfigPatch,
    ConfirmDrops,
    ControllerError,
    ControllerState,
    CreateCoordinatorGroups,
    CreateTopic,
    DeleteTopic,
    Done,
    InvalidConfig,
    InvalidCoordinatorGroups,
    InvalidNode,
    InvalidPartitionCount,
    InvalidReplicationFactor,
    InvalidTopicName,
    Limits,
    NodeInfo,
    NoNodes,
    RegisterNode,
    Result,
    SetLimits,
    TooManyNodes,
    TooManyPartitions,
    TooManyTopics,
    Topic,
    TopicConfig,
    TopicExists,
    TopicNotFound,
    UpdateTopicConfig,
    decode_command,
    decode_state,
    encode_command,
    encode_state,
)

pytestmark = pytest.mark.timeout(60)


def create(state: ControllerState, name: str, partitions: int = 3, rf: int = 0) -> Topic:
    result = state.apply(CreateTopic(name, partitions, rf, TopicConfig()))
    assert isinstance(result, Topic), result
    return result


def test_create_topic_allocates_group_ids_from_1_and_places_replicas() -> None:
    state = cluster(3)
    topic = create(state, "orders", 4)
    assert topic.group_ids == (1, 2, 3, 4)
    assert topic.replication_factor == 3
    assert all(sorted(p.replicas) == [1, 2, 3] for p in topic.partitions)
    assert sorted(p.preferred_leader for p in topic.partitions[:3]) == [1, 2, 3]
    assert state.topic("orders") == topic
    assert state.next_group_id == 5
    assert state.version == 4  # three registrations and the topic


def test_replication_factor_defaults_to_the_cluster_size_when_smaller() -> None:
    state = cluster(2)
    assert create(state, "a").replication_factor == 2
    state = cluster(5)
    assert create(state, "a").replication_factor == 3


@pytest.mark.parametrize(
    ("command", "error"),
    [
        (CreateTopic("bad name", 1, 0, TopicConfig()), InvalidTopicName),
        (CreateTopic("..", 1, 0, TopicConfig()), InvalidTopicName),
        (CreateTopic("x" * 250, 1, 0, TopicConfig()), InvalidTopicName),
        (CreateTopic("a", 0, 0, TopicConfig()), InvalidPartitionCount),
        (CreateTopic("a", 1025, 0, TopicConfig()), InvalidPartitionCount),
        (CreateTopic("a", 1, 4, TopicConfig()), InvalidReplicationFactor),
        (CreateTopic("a", 1, 0, TopicConfig(retention_ms=0)), InvalidConfig),
        (CreateTopic("a", 1, 0, TopicConfig(retention_bytes=-2)), InvalidConfig),
        (CreateTopic("a", 1, 0, TopicConfig(record_bytes_max=3 << 20)), InvalidConfig),
        (CreateTopic("taken", 1, 0, TopicConfig()), TopicExists),
        (DeleteTopic("missing"), TopicNotFound),
        (AddPartitions("missing", 5), TopicNotFound),
        (AddPartitions("taken", 2), InvalidPartitionCount),
        (AddPartitions("taken", 1025), InvalidPartitionCount),
        (UpdateTopicConfig("missing", ConfigPatch()), TopicNotFound),
        (UpdateTopicConfig("taken", ConfigPatch(retention_ms=-3)), InvalidConfig),
        (RegisterNode(NodeInfo(0, "h:1")), InvalidNode),
        (RegisterNode(NodeInfo(9, "")), InvalidNode),
        (RegisterNode(NodeInfo(9, "h\n:1")), InvalidNode),
        (CreateCoordinatorGroups(0), InvalidCoordinatorGroups),
        (CreateCoordinatorGroups(1025), InvalidCoordinatorGroups),
        (SetLimits(Limits(topics_max=0)), ControllerError),
        (SetLimits(Limits(partitions_max=10, partitions_total_max=5)), ControllerError),
    ],
)
def test_a_command_that_fails_validation_changes_nothing(
    command: object, error: type[ControllerError]
) -> None:
    state = cluster(3)
    create(state, "taken", 2)
    before = encode_state(state)
    result = state.apply(command)  # type: ignore[arg-type]
    assert isinstance(result, error), result
    assert encode_state(state) == before
    assert result.retriable is False


def test_errors_carry_their_grpc_code_and_reason() -> None:
    state = cluster(1)
    create(state, "a")
    exists = state.apply(CreateTopic("a", 1, 0, TopicConfig()))
    assert isinstance(exists, TopicExists)
    assert (exists.code, exists.reason, exists.metadata) == (
        "ALREADY_EXISTS",
        "TOPIC_EXISTS",
        (("topic", "a"),),
    )
    missing = state.apply(DeleteTopic("b"))
    assert isinstance(missing, TopicNotFound)
    assert (missing.code, missing.reason) == ("NOT_FOUND", "TOPIC_NOT_FOUND")
    too_many = state.apply(CreateTopic("c", 1, 2, TopicConfig()))
    assert isinstance(too_many, InvalidReplicationFactor)
    assert too_many.code == "INVALID_ARGUMENT" and ("cluster_size", "1") in too_many.metadata


def test_nothing_is_placed_before_a_node_registers() -> None:
    state = ControllerState()
    result = state.apply(CreateTopic("a", 1, 0, TopicConfig()))
    assert isinstance(result, NoNodes) and result.retriable
    assert state.version == 0 and state.next_group_id == 1


def test_limits_on_topics_partitions_and_nodes() -> None:
    state = cluster(2, Limits(nodes_max=2, topics_max=2, partitions_total_max=10))
    assert isinstance(state.apply(RegisterNode(NodeInfo(3, "h:3"))), TooManyNodes)
    # A known node may change its address at the limit.
    assert state.apply(RegisterNode(NodeInfo(2, "h:22"))) == NodeInfo(2, "h:22")
    create(state, "a", 4)
    assert isinstance(state.apply(CreateTopic("b", 7, 0, TopicConfig())), TooManyPartitions)
    assert isinstance(state.apply(AddPartitions("a", 11)), TooManyPartitions)
    create(state, "b", 6)
    assert isinstance(state.apply(CreateTopic("c", 1, 0, TopicConfig())), TooManyTopics)
    # A deleted topic still counts until its data is dropped everywhere.
    assert isinstance(state.apply(DeleteTopic("b")), Topic)
    too_many = state.apply(CreateTopic("c", 1, 0, TopicConfig()))
    assert isinstance(too_many, TooManyTopics) and ("pending_deletes", "1") in too_many.metadata
    assert state.apply(ConfirmDrops(1, tuple(range(5, 11)))) == Done()
    assert isinstance(state.apply(CreateTopic("c", 1, 0, TopicConfig())), TooManyTopics)
    assert state.apply(ConfirmDrops(2, tuple(range(5, 11)))) == Done()
    assert state.deleting() == ()
    create(state, "c", 1)


def test_group_ids_are_never_reused_and_zero_is_the_controllers() -> None:
    state = cluster(3)
    first = create(state, "a", 2)
    state.apply(DeleteTopic("a"))
    again = create(state, "a", 2)
    assert first.group_ids == (1, 2) and again.group_ids == (3, 4)
    grown = state.apply(AddPartitions("a", 5))
    assert isinstance(grown, Topic) and grown.group_ids == (3, 4, 5, 6, 7)
    assert grown.partitions[:2] == again.partitions
    assert CONTROLLER_GROUP not in {p.group_id for p in state.partitions()}


def test_delete_frees_the_name_and_forgets_the_topic_once_every_replica_dropped() -> None:
    state = cluster(3)
    topic = create(state, "a", 2)
    assert state.apply(DeleteTopic("a")) == topic
    assert state.topic("a") is None and state.partitions() == ()
    [deleting] = state.deleting()
    assert deleting.topic == topic
    assert deleting.pending == ((1, frozenset({1, 2, 3})), (2, frozenset({1, 2, 3})))
    version = state.version
    # Confirmations are idempotent and may come in any grouping.
    state.apply(ConfirmDrops(1, (1, 2)))
    state.apply(ConfirmDrops(1, (1, 2)))
    state.apply(ConfirmDrops(2, (1,)))
    state.apply(ConfirmDrops(9, (1, 2)))
    assert state.version == version + 2
    [deleting] = state.deleting()
    assert deleting.pending == ((1, frozenset({3})), (2, frozenset({2, 3})))
    state.apply(ConfirmDrops(3, (1, 2)))
    state.apply(ConfirmDrops(2, (2,)))
    assert state.deleting() == ()
    state.check_invariants()


def test_update_config_merges_the_patch_into_the_committed_config() -> None:
    state = cluster(1)
    create(state, "a")
    state.apply(UpdateTopicConfig("a", ConfigPatch(retention_ms=1000)))
    updated = state.apply(UpdateTopicConfig("a", ConfigPatch(retention_bytes=10)))
    assert isinstance(updated, Topic)
    assert updated.config == TopicConfig(retention_bytes=10, retention_ms=1000)
    version = state.version
    assert state.apply(UpdateTopicConfig("a", ConfigPatch(retention_bytes=10))) == updated
    assert state.version == version


def test_commands_round_trip_through_their_encoding() -> None:
    for seed in SEEDS:
        rng = random.Random(seed)
        state = cluster(3)
        for _ in range(20):
            command = random_command(rng, state)
            assert decode_command(encode_command(command)) == command, seed
            state.apply(command)


@pytest.mark.parametrize("seed", SEEDS)
def test_apply_then_snapshot_then_restore_equals_apply(seed: int) -> None:
    """A replica restored from a snapshot mid-log ends where one that applied every entry ends."""
    rng = random.Random(seed)
    nodes = rng.randint(1, 5)
    state = cluster(nodes)
    commands: list[Command] = []
    results: list[Result] = []
    for _ in range(60):
        command = random_command(rng, state)
        before = encode_state(state)
        result = state.apply(command)
        state.check_invariants()
        if isinstance(result, ControllerError):
            assert encode_state(state) == before, (seed, command)
        commands.append(command)
        results.append(result)
    cut = rng.randrange(len(commands) + 1)
    replica = cluster(nodes)
    for command in commands[:cut]:
        replica.apply(command)
    replica = decode_state(encode_state(replica))
    assert [replica.apply(c) for c in commands[cut:]] == results[cut:], seed
    assert replica == state, seed
    assert encode_state(replica) == encode_state(state)
    assert decode_state(encode_state(state)) == state
