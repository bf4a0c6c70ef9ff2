"""CommitOffsets: consumer groups' offsets replicated through the controller (group 0)."""

from __future__ import annotations

import pytest

from weir.cluster.controller import (
    CommitOffsets,
    ControllerState,
    CreateTopic,
    DeleteTopic,
    InvalidOffset,
    NodeInfo,
    OffsetsCommitted,
    RegisterNode,
    Topic,
    TopicConfig,
    TopicNotFound,
    decode_command,
    decode_state,
    encode_command,
    encode_state,
)

pytestmark = pytest.mark.timeout(10)


def _state_with_topic() -> tuple[ControllerState, Topic]:
    state = ControllerState()
    for node in (1, 2, 3):
        state.apply(RegisterNode(NodeInfo(node, f"127.0.0.1:{7000 + node}")))
    topic = state.apply(CreateTopic("orders", 2, 0, TopicConfig()))
    assert isinstance(topic, Topic)
    return state, topic


def test_offsets_move_forward_only() -> None:
    state, topic = _state_with_topic()
    first, second = topic.group_ids
    result = state.apply(CommitOffsets("g", ((first, 10), (second, 3))))
    assert result == OffsetsCommitted(((first, 10), (second, 3)))
    version = state.version
    # Invariant 4: a lower commit leaves the stored offset in place.
    assert state.apply(CommitOffsets("g", ((first, 4),))) == OffsetsCommitted(((first, 10),))
    assert state.version == version
    assert state.apply(CommitOffsets("g", ((first, 11),))) == OffsetsCommitted(((first, 11),))
    assert state.committed_offset("g", first) == 11
    assert state.committed_offset("other", first) is None
    state.check_invariants()


def test_offsets_of_unknown_partitions_or_negative_are_refused_and_change_nothing() -> None:
    state, topic = _state_with_topic()
    version = state.version
    assert isinstance(state.apply(CommitOffsets("g", ((999, 1),))), TopicNotFound)
    assert isinstance(state.apply(CommitOffsets("g", ((topic.group_ids[0], -1),))), InvalidOffset)
    assert state.version == version
    assert state.committed_offsets() == ()


def test_deleting_a_topic_forgets_its_offsets_and_snapshots_keep_them() -> None:
    state, topic = _state_with_topic()
    state.apply(CommitOffsets("g", ((topic.group_ids[0], 5),)))
    command = CommitOffsets("h", ((topic.group_ids[1], 7),))
    assert decode_command(encode_command(command)) == command
    state.apply(command)
    restored = decode_state(encode_state(state))
    assert restored == state
    assert restored.committed_offset("h", topic.group_ids[1]) == 7
    state.apply(DeleteTopic("orders"))
    assert state.committed_offsets() == ()
    state.check_invariants()
