"""Resetting a consumer group's offsets: exact (backwards too), refused while members are online.

Store-level cases go through the log encoding (`encode_command`, then
`CoordinatorStore.apply`), as a replica applies them.
"""

from __future__ import annotations

import pytest

from weir.cluster.coordinator import messages as m
from weir.cluster.coordinator.offsets import (
    Commit,
    InvalidGroupName,
    InvalidOffset,
    InvalidPartition,
    OffsetsState,
    Reset,
    Stored,
    TooManyConsumerGroups,
)
from weir.cluster.coordinator.store import (
    CoordinatorStore,
    GroupHasMembers,
    StreamCommand,
    decode_command,
    decode_state,
    encode_command,
)

pytestmark = pytest.mark.timeout(30)


class Replica:
    def __init__(self, consumer_groups_max: int = 100_000) -> None:
        self.store = CoordinatorStore(7, consumer_groups_max)
        self.index = 0

    def apply(self, command: object) -> object:
        data = encode_command(command)  # type: ignore[arg-type]
        assert decode_command(data) == command
        self.index += 1
        return self.store.apply(self.index, 1, data)


def join(now_ms: int, member_id: str) -> StreamCommand:
    return StreamCommand("g", m.Join(now_ms, member_id, ("t",), (("t", 2),), 10_000, 5_000))


def test_a_reset_sets_each_offset_exactly_backwards_and_forwards() -> None:
    state = OffsetsState()
    state.apply(Commit("g", ((1, 10), (2, 20))))
    assert state.apply(Reset("g", ((1, 3), (2, 25)))) == Stored(((1, 3), (2, 25)))
    assert state.get("g", 1) == 3 and state.get("g", 2) == 25
    # After a reset, commits move forward from the new offset again.
    assert state.apply(Commit("g", ((1, 2),))) == Stored(((1, 3),))
    assert state.apply(Commit("g", ((1, 4),))) == Stored(((1, 4),))
    state.check_invariants()


def test_a_reset_of_a_group_without_offsets_creates_them() -> None:
    state = OffsetsState()
    assert state.apply(Reset("new", ((5, 0),))) == Stored(((5, 0),))
    assert state.group("new") == {5: 0}
    state.check_invariants()


@pytest.mark.parametrize(
    ("command", "error"),
    [
        (Reset("", ((1, 1),)), InvalidGroupName),
        (Reset("g", ((1, -1),)), InvalidOffset),
        (Reset("g", ((0, 1),)), InvalidPartition),
        (Reset("g", ((1, 1), (1, 2))), InvalidPartition),
        # Valid first, refused later: nothing of it is stored.
        (Reset("g", ((1, 1), (2, -5))), InvalidOffset),
    ],
)
def test_a_bad_reset_is_refused_and_changes_nothing(command: Reset, error: type) -> None:
    state = OffsetsState()
    state.apply(Commit("g", ((1, 10), (2, 20))))
    assert isinstance(state.apply(command), error)
    assert state.group("g") == {1: 10, 2: 20}


def test_a_reset_of_a_new_group_counts_against_the_bound() -> None:
    r = Replica(consumer_groups_max=1)
    assert r.apply(Commit("a", ((1, 1),))) == Stored(((1, 1),))
    assert isinstance(r.apply(Reset("b", ((1, 0),))), TooManyConsumerGroups)
    assert r.store.consumer_group_names() == ["a"]
    # A known group is not new.
    assert r.apply(Reset("a", ((1, 0),))) == Stored(((1, 0),))


def test_a_reset_is_refused_while_the_group_has_members_and_stores_nothing() -> None:
    r = Replica()
    r.apply(Commit("g", ((1, 10),)))
    r.apply(join(1_000, "a"))
    refused = r.apply(Reset("g", ((1, 0),)))
    assert isinstance(refused, GroupHasMembers)
    assert refused.code == "FAILED_PRECONDITION" and refused.reason == "GROUP_HAS_MEMBERS"
    assert r.store.offsets.group("g") == {1: 10}
    # Once the last member left, the same reset works.
    r.apply(StreamCommand("g", m.Leave(2_000, "a")))
    assert r.apply(Reset("g", ((1, 0),))) == Stored(((1, 0),))
    assert r.store.offsets.group("g") == {1: 0}


def test_replicas_agree_on_a_reset_that_races_a_join() -> None:
    """The refusal is decided at apply time, so the log order alone decides it."""
    first, second = Replica(), Replica()
    log = [Commit("g", ((1, 10),)), join(1_000, "a"), Reset("g", ((1, 0),))]
    answers = [[r.apply(c) for c in log] for r in (first, second)]
    assert answers[0][2] == answers[1][2] and isinstance(answers[0][2], GroupHasMembers)
    assert first.store.snapshot() == second.store.snapshot()
    # The other order: the reset is applied before the join.
    third = Replica()
    third.apply(log[0])
    assert third.apply(log[2]) == Stored(((1, 0),))
    third.apply(log[1])
    assert third.store.offsets.group("g") == {1: 0}


def test_a_reset_survives_a_snapshot() -> None:
    r = Replica()
    r.apply(Commit("g", ((1, 10), (2, 5))))
    r.apply(Reset("g", ((1, 2),)))
    offsets, streams = decode_state(r.store.snapshot())
    assert offsets.group("g") == {1: 2, 2: 5} and streams == {}


def test_consumer_group_names_cover_offsets_and_members() -> None:
    r = Replica()
    r.apply(Commit("b", ((1, 1),)))
    r.apply(join(1_000, "a"))
    assert r.store.consumer_group_names() == ["b", "g"]
    assert r.store.has_members("g") and not r.store.has_members("b")
