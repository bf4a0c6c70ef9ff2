"""Scripted scenarios of one stream group, each named for the behaviour it shows (docs/groups.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import weir.cluster.coordinator
from tests.unit.coordinator.stream_helpers import (
    REBALANCE_MS,
    assignments,
    join,
    no_partition_twice,
    owned,
    parts,
    responsible,
)
from weir.cluster.coordinator import (
    Assignment,
    AssignmentAck,
    Expire,
    JoinRefused,
    Leave,
    MemberRemoved,
    PartitionCount,
    Reason,
    RemovedBecause,
    Sessions,
    StartDelivery,
    StopDelivery,
    StreamGroup,
    StreamLimits,
    Tick,
    TopicPartition,
    target_assignment,
)
from weir.cluster.coordinator.member_acks import MemberAcks

pytestmark = pytest.mark.timeout(30)

ORDERS = {"orders": 12}


def three_members() -> StreamGroup:
    group = StreamGroup()
    for now_ms, member_id in enumerate(["a", "b", "c"]):
        group.apply(join(now_ms, member_id, ORDERS))
    group.check_invariants()
    return group


def test_three_members_on_twelve_partitions_each_get_four_disjoint() -> None:
    group = three_members()
    targets = {m.member_id: m.target for m in group.members()}
    assert sorted(len(s) for s in targets.values()) == [4, 4, 4]
    assert frozenset().union(*targets.values()) == parts("orders", *range(12))
    no_partition_twice(group)
    # Once the first member confirms what it gave up, each owns its target.
    for member in group.members():
        group.apply(AssignmentAck(10, member.member_id, member.generation))
    assert owned(group) == targets
    assert all(not m.revoking for m in group.members())


def settled_three() -> tuple[StreamGroup, dict[str, frozenset[TopicPartition]]]:
    group = three_members()
    for member in group.members():
        group.apply(AssignmentAck(10, member.member_id, member.generation))
    shares = owned(group)
    assert all(len(s) == 4 for s in shares.values()), shares
    assert all(m.owned == m.target and not m.revoking for m in group.members())
    return group, shares


def test_the_first_members_revoke_cooperatively_until_they_ack() -> None:
    group = StreamGroup()
    first = group.apply(join(0, "a", ORDERS))
    assert first == (
        Assignment("a", 1, tuple(sorted(parts("orders", *range(12))))),
        StartDelivery("a", tuple(sorted(parts("orders", *range(12))))),
    )
    second = group.apply(join(1, "b", ORDERS))
    # a gives up six partitions; b is told it has none yet.
    taken = parts("orders", *range(6, 12))
    assert StopDelivery("a", tuple(sorted(taken))) in second
    assert assignments(second)["a"].partitions == tuple(sorted(parts("orders", *range(6))))
    assert assignments(second)["b"] == Assignment("b", 2, ())
    assert not any(isinstance(i, StartDelivery) for i in second)
    # a confirms: b gets them, a is not told anything new.
    after_ack = group.apply(AssignmentAck(2, "a", 2))
    assert after_ack == (
        Assignment("b", 3, tuple(sorted(taken))),
        StartDelivery("b", tuple(sorted(taken))),
    )
    group.check_invariants()


def test_two_joins_before_the_first_assignment_is_taken_wait_for_no_timeout() -> None:
    """Issue 8: b joins before a's stream took its generation-1 assignment.

    The leader's link keeps only a member's latest assignment, so a's stream
    is first told generation 2 (its six) and never hears of the six revoked
    from it: its client sees `revoked` empty and acks nothing. The node
    serving a's stream acks for it (`MemberAcks`), so b gets its six at
    once instead of after the rebalance timeout.
    """
    group = StreamGroup()
    merged_away = assignments(group.apply(join(0, "a", ORDERS)))["a"]
    assert merged_away.generation == 1 and len(merged_away.partitions) == 12
    second = assignments(group.apply(join(1, "b", ORDERS)))
    told_a, told_b = second["a"], second["b"]
    assert told_a.partitions == tuple(sorted(parts("orders", *range(6))))
    assert told_b.partitions == ()
    a = group.member("a")
    assert a is not None and set(a.revoking) == parts("orders", *range(6, 12))
    # Nothing was delivered on a's stream before this change: nothing stops,
    # the client owes nothing, and the serving node acknowledges generation 2.
    a_stream = MemberAcks(trusted=True)
    on_behalf = a_stream.told(told_a.generation, stopped=False)
    assert on_behalf == told_a.generation
    # b's stream acks for b too: harmless, b has nothing being revoked.
    assert MemberAcks(trusted=True).told(told_b.generation, stopped=False) == told_b.generation
    group.apply(AssignmentAck(2, "b", told_b.generation))
    out = group.apply(AssignmentAck(2, "a", on_behalf))
    taken = tuple(sorted(parts("orders", *range(6, 12))))
    assert out == (Assignment("b", 3, taken), StartDelivery("b", taken))
    assert group.next_deadline_ms() is None
    group.check_invariants()


def test_a_stream_that_delivered_a_revoked_partition_waits_for_its_clients_ack() -> None:
    """The serving node never acks for a client that has something to commit."""
    group = StreamGroup()
    a_stream = MemberAcks(trusted=True)
    first = assignments(group.apply(join(0, "a", ORDERS)))["a"]
    # a holds every partition of its topic: no ack needed, none sent.
    assert a_stream.told(first.generation, stopped=False, holds_all=True) is None
    second = assignments(group.apply(join(1, "b", ORDERS)))["a"]
    # This change stops six partitions a's stream delivered: the client owes the ack.
    assert a_stream.told(second.generation, stopped=True) is None
    assert a_stream.owed == second.generation
    # c joins before a's client acked: a's next change stops two more.
    third = assignments(group.apply(join(2, "c", ORDERS)))["a"]
    assert a_stream.told(third.generation, stopped=True) is None
    # The client acks the older generation: that much is sent, nothing more.
    assert a_stream.client_ack(second.generation) == second.generation
    group.apply(AssignmentAck(3, "a", second.generation))
    assert group.member("a").revoking  # type: ignore[union-attr]
    assert a_stream.client_ack(third.generation) == third.generation
    assert a_stream.client_ack(third.generation) is None  # nothing new to send
    group.apply(AssignmentAck(4, "a", third.generation))
    assert not group.member("a").revoking  # type: ignore[union-attr]


def test_a_stream_rejoining_under_a_known_member_id_acks_nothing_for_its_client() -> None:
    """An earlier stream's client may still be committing what it was told to give up."""
    rejoined = MemberAcks(trusted=False)
    assert rejoined.told(5, stopped=False) is None
    assert rejoined.told(6, stopped=False) is None
    # An ack of a generation older than this stream's first says nothing of it.
    assert rejoined.client_ack(4) == 4
    assert rejoined.told(7, stopped=False) is None
    # Its client acked a generation told here: everything before is released,
    # and from now on the node acks for it (here at once, up to 7).
    assert rejoined.client_ack(5) == 7
    assert rejoined.told(8, stopped=False) == 8


def test_a_new_membership_after_the_group_was_made_again_is_trusted_afresh() -> None:
    acks = MemberAcks(trusted=False)
    assert acks.told(9, stopped=True) is None
    # The generation went back: the member expired and its group was dropped.
    assert acks.told(1, stopped=False) == 1
    assert acks.owed == 0


def test_a_fourth_member_takes_only_what_moves_and_all_end_with_three() -> None:
    group, before = settled_three()
    out = group.apply(join(20, "d", ORDERS))
    group.check_invariants()
    no_partition_twice(group)
    # Each of a, b, c gives up exactly one partition and keeps the other three.
    stops = {i.member_id: set(i.partitions) for i in out if isinstance(i, StopDelivery)}
    assert sorted(stops) == ["a", "b", "c"]
    assert all(len(s) == 1 for s in stops.values())
    for member_id in "abc":
        kept = group.member(member_id)
        assert kept is not None
        assert kept.owned == before[member_id] - stops[member_id]
        assert len(kept.owned) == 3
    # Nothing started anywhere: the moved partitions wait for the acks.
    assert not any(isinstance(i, StartDelivery) for i in out)
    generation = group.generation
    for member_id in "abc":
        group.apply(AssignmentAck(21, member_id, generation))
    d = group.member("d")
    assert d is not None
    assert d.owned == frozenset().union(*(frozenset(s) for s in stops.values()))
    assert sorted(len(s) for s in owned(group).values()) == [3, 3, 3, 3]


def test_partitions_that_do_not_move_are_never_revoked() -> None:
    group, before = settled_three()
    stops: list[StopDelivery] = []
    for command in [join(20, "d", ORDERS), Tick(20 + REBALANCE_MS)]:
        stops += [i for i in group.apply(command) if isinstance(i, StopDelivery)]
    stopped = {p for s in stops for p in s.partitions}
    final = owned(group)
    for member_id in "abc":
        # What a member still owns in the end was never stopped on the way.
        assert not final[member_id] & stopped
        assert final[member_id] <= before[member_id]


def test_a_revocation_without_ack_completes_after_the_rebalance_timeout() -> None:
    group, _ = settled_three()
    group.apply(join(1_000, "d", ORDERS))
    assert group.next_deadline_ms() == 1_000 + REBALANCE_MS
    assert group.apply(Tick(1_000 + REBALANCE_MS - 1)) == ()
    d = group.member("d")
    assert d is not None and not d.owned
    out = group.apply(Tick(1_000 + REBALANCE_MS))
    d = group.member("d")
    assert d is not None and len(d.owned) == 3
    assert out == (
        Assignment("d", group.generation, tuple(sorted(d.owned))),
        StartDelivery("d", tuple(sorted(d.owned))),
    )
    assert group.next_deadline_ms() is None


def test_a_member_that_leaves_hands_its_partitions_to_the_others_who_keep_theirs() -> None:
    group, before = settled_three()
    out = group.apply(Leave(30, "b"))
    group.check_invariants()
    assert StopDelivery("b", tuple(sorted(before["b"]))) in out
    assert MemberRemoved("b", RemovedBecause.LEFT) in out
    after = owned(group)
    assert set(after) == {"a", "c"}
    for member_id in "ac":
        assert after[member_id] >= before[member_id]
        assert len(after[member_id]) == 6
    # Nobody had to revoke anything: b's partitions were free at once.
    assert all(not m.revoking for m in group.members())
    assert group.apply(Leave(31, "b")) == ()


def test_an_expired_member_is_evicted_and_its_partitions_move() -> None:
    group, before = settled_three()
    sessions = Sessions()
    sessions.sync(group, now_ms=0)
    for now_ms in range(0, 20_000, 3_000):
        sessions.seen("a", now_ms)
        sessions.seen("c", now_ms)
        assert "a" not in sessions.expired(now_ms)
    expired = sessions.expired(20_000)
    assert expired == ("b",)
    out = group.apply(Expire(20_000, "b"))
    sessions.sync(group, 20_000)
    assert MemberRemoved("b", RemovedBecause.SESSION_EXPIRED) in out
    assert sessions.expired(20_000) == ()
    after = owned(group)
    assert after["a"] >= before["a"] and after["c"] >= before["c"]
    assert after["a"] | after["c"] == parts("orders", *range(12))


def test_a_member_rejoining_within_its_session_keeps_its_partitions() -> None:
    group, before = settled_three()
    generation = group.generation
    out = group.apply(join(40, "b", ORDERS))
    b = group.member("b")
    assert b is not None
    # Same partitions, same generation, told again on the new stream.
    assert b.owned == before["b"]
    assert group.generation == generation
    assert out == (
        Assignment("b", b.generation, tuple(sorted(before["b"]))),
        StartDelivery("b", tuple(sorted(before["b"]))),
    )
    assert owned(group) == before


def test_a_member_rejoining_after_eviction_starts_a_new_membership() -> None:
    group, _ = settled_three()
    old_generation = group.member("b").generation  # type: ignore[union-attr]
    group.apply(Expire(50, "b"))
    group.apply(join(60, "b", ORDERS))
    assert group.validate_commit("b", old_generation, []) == Reason.STALE_GENERATION
    group.apply(Tick(60 + REBALANCE_MS))
    assert sorted(len(s) for s in owned(group).values()) == [4, 4, 4]


def test_a_stale_generation_commit_is_refused() -> None:
    group, shares = settled_three()
    a = group.member("a")
    assert a is not None
    some = sorted(shares["a"])[:1]
    assert group.validate_commit("a", a.generation, some) is None
    group.apply(join(20, "d", ORDERS))
    group.apply(join(21, "e", ORDERS))
    a = group.member("a")
    assert a is not None and a.previous_generation is not None
    stale = a.previous_generation - 1
    assert group.validate_commit("a", stale, list(a.owned)) == Reason.STALE_GENERATION
    assert group.validate_commit("zz", a.generation, []) == Reason.UNKNOWN_MEMBER
    others = sorted(shares["b"])[:1]
    assert group.validate_commit("a", a.generation, others) == Reason.PARTITION_NOT_ASSIGNED


def test_a_member_may_commit_what_is_being_revoked_until_it_acks() -> None:
    group, _ = settled_three()
    before_generation = group.member("a").generation  # type: ignore[union-attr]
    out = group.apply(join(20, "d", ORDERS))
    (revoked,) = [i.partitions for i in out if isinstance(i, StopDelivery) and i.member_id == "a"]
    a = group.member("a")
    assert a is not None
    # With the new generation, and with the old one (a commit in flight).
    assert group.validate_commit("a", a.generation, revoked) is None
    assert group.validate_commit("a", before_generation, revoked) is None
    group.apply(AssignmentAck(21, "a", a.generation))
    assert group.validate_commit("a", a.generation, revoked) == Reason.PARTITION_NOT_ASSIGNED
    assert group.validate_commit("a", a.generation, list(a.owned)) is None


def test_an_ack_for_an_older_generation_does_not_confirm_a_newer_revocation() -> None:
    group, _ = settled_three()
    older = group.member("a").generation  # type: ignore[union-attr]
    group.apply(join(20, "d", ORDERS))
    group.apply(AssignmentAck(21, "a", older))
    assert group.member("a").revoking  # type: ignore[union-attr]
    # An ack for a generation never sent is ignored too.
    group.apply(AssignmentAck(22, "a", group.generation + 5))
    assert group.member("a").revoking  # type: ignore[union-attr]


def test_a_partition_count_increase_spreads_the_new_partitions() -> None:
    group, before = settled_three()
    out = group.apply(PartitionCount(70, "orders", 15))
    assert not any(isinstance(i, StopDelivery) for i in out)
    after = owned(group)
    for member_id in "abc":
        assert after[member_id] == before[member_id] | (after[member_id] - before[member_id])
        assert len(after[member_id]) == 5
    assert frozenset().union(*after.values()) == parts("orders", *range(15))


def test_an_empty_group_keeps_nothing_but_its_generation() -> None:
    group, _ = settled_three()
    for member_id in "abc":
        group.apply(Leave(80, member_id))
    snapshot = group.to_snapshot()
    assert snapshot["members"] == [] and snapshot["partition_counts"] == []
    assert snapshot["generation"] == group.generation > 0
    assert group.next_deadline_ms() is None


def test_joins_beyond_the_limits_are_refused_and_change_nothing() -> None:
    group = StreamGroup(StreamLimits(group_members_max=2))
    group.apply(join(0, "a", ORDERS))
    group.apply(join(1, "b", ORDERS))
    before = group.to_snapshot()
    (refused,) = group.apply(join(2, "c", ORDERS))
    assert isinstance(refused, JoinRefused) and refused.reason == Reason.GROUP_FULL
    (bad,) = group.apply(join(3, "", ORDERS))
    assert isinstance(bad, JoinRefused) and bad.reason == Reason.INVALID_JOIN
    (bad,) = group.apply(join(3, "c", {}))
    assert isinstance(bad, JoinRefused) and bad.reason == Reason.INVALID_JOIN
    # A known member rejoining is not a new member, so the limit does not apply.
    assert not any(isinstance(i, JoinRefused) for i in group.apply(join(4, "a", ORDERS)))
    assert group.to_snapshot() == before


def test_members_subscribed_to_different_topics_each_get_only_their_topics() -> None:
    group = StreamGroup()
    group.apply(join(0, "a", {"orders": 4}))
    group.apply(join(1, "b", {"orders": 4, "payments": 3}))
    group.apply(Tick(10 * REBALANCE_MS))
    a, b = group.member("a"), group.member("b")
    assert a is not None and b is not None
    assert a.owned == a.target and b.owned == b.target
    assert {p.topic for p in a.owned} == {"orders"}
    assert b.owned >= parts("payments", 0, 1, 2)
    assert len(a.owned) == 2 and len(b.owned) == 5
    group.check_invariants()
    no_partition_twice(group)
    assert responsible(group) == owned(group)


def test_the_target_does_not_depend_on_the_order_members_are_given_in() -> None:
    subscriptions = {m: frozenset({"t", "u"}) for m in ["c", "a", "b"]}
    counts = {"u": 5, "t": 7}
    forward = target_assignment(subscriptions, counts, {})
    backward = target_assignment(dict(reversed(list(subscriptions.items()))), counts, {})
    assert forward == backward
    # Across the group the counts differ by at most one here as well.
    assert sorted(len(s) for s in forward.values()) == [4, 4, 4]


def test_the_coordinator_imports_nothing_that_does_io_or_draws_randomness() -> None:
    forbidden = {"asyncio", "grpc", "lmdb", "time", "threading", "socket", "os", "random", "uuid"}
    package = Path(weir.cluster.coordinator.__file__).parent
    paths = sorted(package.glob("*.py"))
    assert len(paths) >= 5
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"
