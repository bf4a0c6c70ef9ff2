"""A coordinator group's store with stream groups: commands, member commits, snapshots, bounds.

Every command goes through its log encoding (`encode_command` then
`CoordinatorStore.apply`), as a replica applies it.
"""

from __future__ import annotations

import pytest

from weir.cluster.coordinator import messages as m
from weir.cluster.coordinator.offsets import Commit, Forget, Stored, TooManyConsumerGroups
from weir.cluster.coordinator.store import (
    CoordinatorStore,
    GroupHasMembers,
    MemberCommit,
    PartitionNotAssigned,
    StaleGeneration,
    StreamApplied,
    StreamCommand,
    UnknownMember,
    decode_command,
    encode_command,
)

pytestmark = pytest.mark.timeout(30)

SESSION_MS = 10_000
REBALANCE_MS = 5_000
# Partition number -> partition group id of topic "t".
GROUP_IDS = {p: 100 + p for p in range(4)}


class Replica:
    def __init__(self, consumer_groups_max: int = 100_000) -> None:
        self.store = CoordinatorStore(7, consumer_groups_max)
        self.index = 0

    def apply(self, command: object) -> object:
        data = encode_command(command)  # type: ignore[arg-type]
        assert decode_command(data) == command
        self.index += 1
        return self.store.apply(self.index, 1, data)

    def stream(self, command: m.Command, group: str = "g") -> StreamApplied:
        result = self.apply(StreamCommand(group, command))
        assert isinstance(result, StreamApplied), result
        return result


def join(now_ms: int, member_id: str, partitions: int = 4) -> m.Join:
    return m.Join(now_ms, member_id, ("t",), (("t", partitions),), SESSION_MS, REBALANCE_MS)


def member_commit(member_id: str, generation: int, offsets: dict[int, int]) -> MemberCommit:
    return MemberCommit(
        Commit("g", tuple(sorted((GROUP_IDS[p], o) for p, o in offsets.items()))),
        member_id,
        generation,
        "t",
        tuple(sorted((GROUP_IDS[p], p) for p in offsets)),
    )


def test_each_stream_command_is_applied_through_the_log() -> None:
    r = Replica()
    first = r.stream(join(1_000, "a"))
    assert [type(i) for i in first.instructions] == [m.Assignment, m.StartDelivery]
    second = r.stream(join(2_000, "b"))
    # a gives two partitions up: stopped at once, revoked until it acks.
    assert any(isinstance(i, m.StopDelivery) and i.member_id == "a" for i in second.instructions)
    group = r.store.streams["g"]
    a = group.member("a")
    assert a is not None and len(a.owned) == 2 and len(a.revoking) == 2
    assert group.next_deadline_ms() == 2_000 + REBALANCE_MS
    started = r.stream(m.AssignmentAck(2_500, "a", a.generation))
    assert any(isinstance(i, m.StartDelivery) and i.member_id == "b" for i in started.instructions)
    r.stream(m.PartitionCount(3_000, "t", 6))
    assert sum(len(x.owned) + len(x.revoking) for x in group.members()) == 6
    r.stream(m.Tick(3_000 + REBALANCE_MS))
    assert not any(x.revoking for x in group.members())
    removed = r.stream(m.Expire(9_000, "b"))
    assert m.MemberRemoved("b", m.RemovedBecause.SESSION_EXPIRED) in removed.instructions
    left = r.stream(m.Leave(9_500, "a"))
    assert m.MemberRemoved("a", m.RemovedBecause.LEFT) in left.instructions
    # No members and no offsets: the group is dropped.
    assert "g" not in r.store.streams


def test_a_command_about_an_unknown_group_does_nothing() -> None:
    r = Replica()
    assert r.stream(m.Leave(1, "x")).instructions == ()
    assert r.stream(m.Tick(1)).instructions == ()
    assert r.store.streams == {}


def test_member_commits_are_checked_and_a_refusal_stores_nothing() -> None:
    r = Replica()
    r.stream(join(1_000, "a"))
    r.stream(join(1_100, "b"))
    revoked = r.store.streams["g"].member("a")
    assert revoked is not None
    r.stream(m.AssignmentAck(1_200, "a", revoked.generation))
    a = r.store.streams["g"].member("a")
    b = r.store.streams["g"].member("b")
    assert a is not None and b is not None
    mine = sorted(p.partition for p in a.owned)
    theirs = sorted(p.partition for p in b.target)
    snapshot = r.store.snapshot()
    refusals = [
        (member_commit("zz", a.generation, {mine[0]: 5}), UnknownMember),
        (member_commit("a", a.generation + 7, {mine[0]: 5}), StaleGeneration),
        (member_commit("a", a.generation, {theirs[0]: 5}), PartitionNotAssigned),
        (Commit("g", ((GROUP_IDS[mine[0]], 5),)), GroupHasMembers),
    ]
    for command, refusal in refusals:
        result = r.apply(command)
        assert isinstance(result, refusal), (command, result)
        assert result.code == "FAILED_PRECONDITION"
        assert r.store.snapshot() == snapshot
    stored = r.apply(member_commit("a", a.generation, {mine[0]: 5}))
    assert stored == Stored(((GROUP_IDS[mine[0]], 5),))


def test_a_commit_without_members_works_as_before_and_keeps_the_group() -> None:
    r = Replica()
    r.stream(join(1_000, "a"))
    a = r.store.streams["g"].member("a")
    assert a is not None
    r.apply(member_commit("a", a.generation, {0: 3}))
    r.stream(m.Leave(2_000, "a"))
    # Offsets keep the member-less group (and its generation).
    assert r.store.streams["g"].generation == a.generation
    assert isinstance(r.apply(Commit("g", ((GROUP_IDS[1], 4),))), Stored)
    r.apply(Forget(tuple(GROUP_IDS.values())))
    assert "g" not in r.store.streams and r.store.offsets.consumer_groups() == []


def test_snapshot_round_trip_with_members_gives_the_same_state_and_instructions() -> None:
    r = Replica()
    r.stream(join(1_000, "a"))
    r.stream(join(1_100, "b"))
    r.stream(join(1_200, "c"), group="h")
    r.apply(Commit("other", ((GROUP_IDS[0], 9),)))
    copy = CoordinatorStore(7)
    copy.restore(r.store.snapshot())
    assert copy.snapshot() == r.store.snapshot()
    assert copy.streams == r.store.streams and copy.offsets == r.store.offsets
    command = encode_command(StreamCommand("g", m.Tick(1_100 + REBALANCE_MS)))
    assert copy.apply(50, 2, command) == r.store.apply(50, 2, command)
    assert copy.snapshot() == r.store.snapshot()


def test_consumer_groups_with_members_or_offsets_count_against_one_bound() -> None:
    r = Replica(consumer_groups_max=2)
    r.stream(join(1, "a"), group="g1")
    r.apply(Commit("g2", ((GROUP_IDS[0], 1),)))
    refused = r.stream(join(2, "b"), group="g3")
    assert refused.instructions == (
        m.JoinRefused(
            "b", m.Reason.TOO_MANY_CONSUMER_GROUPS, "a coordinator holds at most 2 consumer groups"
        ),
    )
    assert isinstance(r.apply(Commit("g3", ((GROUP_IDS[0], 1),))), TooManyConsumerGroups)
    assert sorted(r.store.streams) == ["g1"]
    # Known groups go on.
    assert r.stream(join(3, "c"), group="g1").instructions
    assert isinstance(r.apply(Commit("g2", ((GROUP_IDS[1], 1),))), Stored)
