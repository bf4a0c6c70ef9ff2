"""The leader's stream-group runtime and the member session, with a fake clock.

`LocalMembership` is the runtime over an in-memory store with "propose" =
"apply now", so these tests drive the runtime through the same code a
single node runs: joins, leaves, expiry through the sessions, ticks,
partition-count changes, bounded links and rejoins that change nothing.
Timers are driven by calling `runtime.step()` after moving the clock, not
by sleeping.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping

import grpc
import pytest

from tests.support.aio import run
from weir.cluster.coordinator import messages as m
from weir.server.errors import BrokerError
from weir.server.local_membership import (
    ConnectionLost,
    LinkSession,
    LocalConnection,
    LocalMembership,
)
from weir.server.membership import AssignmentChange, JoinSpec, MemberSession, Removed
from weir.server.stream_runtime import EndReason, LinkEnded, LinkState
from weir.server.topics import Topic, TopicConfig

pytestmark = pytest.mark.timeout(30)

SESSION_MS = 10_000
REBALANCE_MS = 5_000
PARTITIONS = 12


def topic(partitions: int = PARTITIONS) -> Topic:
    return Topic("t", tuple(100 + p for p in range(partitions)), 1, TopicConfig())


class Clock:
    def __init__(self) -> None:
        self.ms = 1_000_000

    def __call__(self) -> int:
        return self.ms


class FakeOffsets:
    def __init__(self) -> None:
        self.stored: dict[tuple[str, int], int] = {}

    async def fetch(self, group: str, t: Topic, partitions: Iterable[int]) -> dict[int, int]:
        return {p: self.stored[group, p] for p in partitions if (group, p) in self.stored}

    async def commit(
        self, group: str, t: Topic, offsets: Mapping[int, int], *, as_member: bool = False
    ) -> dict[int, int]:
        assert as_member
        for p, o in offsets.items():
            self.stored[group, p] = max(o, self.stored.get((group, p), 0))
        return {p: self.stored[group, p] for p in offsets}


class World:
    def __init__(self, partitions: int = PARTITIONS) -> None:
        self.clock = Clock()
        self.offsets = FakeOffsets()
        self.counts = {"t": partitions}
        self.topic = topic(partitions)
        self.membership = LocalMembership(
            self.offsets, lambda name: self.counts.get(name, 0), self.clock, random.Random(7)
        )
        self.runtime = self.membership.runtime

    async def join(self, member_id: str = "", *, session_ms: int = SESSION_MS) -> MemberSession:
        spec = JoinSpec("g", "t", member_id, session_ms, REBALANCE_MS)
        return await self.membership.join(spec, self.topic)

    async def step(self, advance_ms: int = 0) -> None:
        self.clock.ms += advance_ms
        await self.runtime.step()


async def change(session: MemberSession) -> AssignmentChange:
    event = await session.next_event()
    assert isinstance(event, AssignmentChange), event
    return event


def has_event(session: MemberSession) -> bool:
    """Whether a change waits for the session (it is a LinkSession over a local link)."""
    assert isinstance(session, LinkSession)
    connection = session._connection
    return connection.link.pending() > 0  # type: ignore[attr-defined]


def test_three_members_share_the_partitions_then_a_fourth_takes_only_moved_ones() -> None:
    async def main() -> None:
        w = World()
        w.offsets.stored["g", 5] = 42
        a = await w.join()
        first = await change(a)
        assert first.partitions == tuple(range(PARTITIONS)) and first.stopped == ()
        assert first.started[5] == 42 and first.started[0] is None
        b, c = await w.join(), await w.join()
        shares = {}
        for s in (a, b, c):
            # a first gives up, then the others start once it acks.
            event = await change(s)
            shares[s.member_id] = set(event.partitions)
        revoked = set(first.partitions) - shares[a.member_id]
        assert len(revoked) == 8
        a.ack(w.membership.store.streams["g"].member(a.member_id).generation)  # type: ignore[union-attr]
        await w.step()
        for s in (b, c):
            event = await change(s)
            assert event.stopped == ()
            shares[s.member_id] = set(event.partitions)
        assert sorted(len(p) for p in shares.values()) == [4, 4, 4]
        assert set().union(*shares.values()) == set(range(PARTITIONS))
        # A fourth member: only the moved partitions stop, nothing else pauses.
        d = await w.join()
        assert (await change(d)).partitions == ()  # its assignment: nothing free yet
        stopped: dict[str, set[int]] = {}
        for s in (a, b, c):
            event = await change(s)
            assert not event.started
            stopped[s.member_id] = set(event.stopped)
            s.ack(event.generation)
        assert sum(len(x) for x in stopped.values()) == 3
        await w.step()
        started = await change(d)
        assert set(started.started) == set().union(*stopped.values())

    run(main)


def test_a_closed_stream_leaves_at_once_and_its_partitions_move() -> None:
    async def main() -> None:
        w = World()
        a = await w.join()
        await change(a)
        b = await w.join()
        await change(b)
        event = await change(a)
        a.ack(event.generation)
        await w.step()
        await change(b)
        await b.close()
        await b.close()  # idempotent
        moved = await change(a)
        assert moved.partitions == tuple(range(PARTITIONS))
        assert len(moved.started) == PARTITIONS // 2

    run(main)


def test_a_silent_member_expires_and_its_stream_ends_retriable() -> None:
    async def main() -> None:
        w = World()
        a, b = await w.join(), await w.join()
        for s in (a, b):
            await change(s)
        await w.step(SESSION_MS - 1)
        a.seen()
        await w.step(1)
        assert w.membership.store.streams["g"].member(a.member_id) is not None
        # b was silent for its session timeout; a was seen.
        removed = await b.next_event()
        assert isinstance(removed, Removed)
        error = removed.error
        assert (error.code, error.reason, error.retriable) == (
            grpc.StatusCode.ABORTED,
            "SESSION_EXPIRED",
            True,
        )
        assert error.to_proto().retriable
        assert w.membership.store.streams["g"].member(b.member_id) is None
        while len((await change(a)).partitions) != PARTITIONS:
            pass  # a gets b's partitions back

    run(main)


def test_an_unacknowledged_revocation_completes_at_the_tick() -> None:
    async def main() -> None:
        w = World()
        a = await w.join()
        await change(a)
        b = await w.join()
        await change(a)
        first = await change(b)
        assert first.partitions == ()
        await w.step(REBALANCE_MS - 1)
        assert not has_event(b)
        assert w.runtime.next_deadline_ms() == w.clock.ms + 1
        await w.step(1)
        late = await change(b)
        assert len(late.started) == PARTITIONS // 2

    run(main)


def test_a_partition_count_change_is_proposed_and_a_deleted_topic_revokes_all() -> None:
    async def main() -> None:
        w = World(partitions=4)
        a = await w.join()
        await change(a)
        w.counts["t"] = 6
        w.membership.store.streams["g"].check_invariants()
        await w.runtime.check_partition_counts(lambda name: w.counts.get(name, 0))
        grown = await change(a)
        assert sorted(grown.started) == [4, 5]
        del w.counts["t"]
        await w.runtime.check_partition_counts(lambda name: w.counts.get(name, 0))
        gone = await change(a)
        assert gone.partitions == () and gone.stopped == tuple(range(6))

    run(main)


def test_a_link_nobody_reads_holds_one_state_however_many_changes() -> None:
    async def main() -> None:
        w = World()
        slow = await w.join()
        assert isinstance(slow, LinkSession)
        link = slow._connection.link  # type: ignore[attr-defined]
        for _ in range(100):
            slow.seen()  # alive, but it does not read its events
            other = await w.join()
            await w.step(REBALANCE_MS)
            await other.close()
            assert link.pending() <= 1
        joined = await change(slow)
        assert len(joined.started) == PARTITIONS
        # 200 changes merged into the one latest state: everything back, so
        # nothing to stop or start, only the newer generation.
        event = await change(slow)
        assert event.partitions == tuple(range(PARTITIONS))
        assert (event.stopped, event.started) == ((), {})
        assert event.generation > joined.generation
        assert not has_event(slow)
        assert w.runtime.link_count() == 1 and w.runtime.pending_acks() == 0

    run(main)


def test_refused_joins_are_invalid_argument_and_change_nothing() -> None:
    async def main() -> None:
        w = World()
        with pytest.raises(BrokerError) as refused:
            await w.join(session_ms=10)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.reason == "INVALID_JOIN"
        assert w.membership.store.streams == {} and w.runtime.link_count() == 0

    run(main)


def test_member_commits_are_checked_against_generation_and_partitions() -> None:
    async def main() -> None:
        w = World()
        a = await w.join()
        event = await change(a)
        assert await a.commit(0, {3: 10}) == {3: 10}
        b = await w.join()
        await change(b)
        revoked = await change(a)
        a.ack(revoked.generation)
        await w.step()
        taken = (await change(b)).partitions
        before = dict(w.offsets.stored)
        for generation, offsets, reason in [
            (event.generation - 1 if event.generation > 1 else 99, {3: 11}, "STALE_GENERATION"),
            (0, {taken[0]: 11}, "PARTITION_NOT_ASSIGNED"),
        ]:
            with pytest.raises(BrokerError) as refused:
                await a.commit(generation, offsets)
            assert (refused.value.code, refused.value.reason) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                reason,
            )
            assert w.offsets.stored == before
        with pytest.raises(BrokerError) as out_of_range:
            await a.commit(0, {PARTITIONS: 1})
        assert out_of_range.value.reason == "PARTITION_OUT_OF_RANGE"
        assert w.membership.has_members("g") and not w.membership.has_members("other")

    run(main)


class FlakyConnection:
    """A connection that breaks once, then serves a fixed sequence of changes."""

    def __init__(self, changes: list[LinkState | LinkEnded], breaks: bool) -> None:
        self.changes = changes
        self.breaks = breaks
        self.left = False
        self.detached = 0

    async def next(self) -> LinkState | LinkEnded:
        if self.breaks:
            self.breaks = False
            raise ConnectionLost("leader died")
        return self.changes.pop(0)

    def seen(self) -> None:
        pass

    def ack(self, generation: int) -> None:
        pass

    async def leave(self) -> None:
        self.left = True

    def detach(self) -> None:
        self.detached += 1


def tps(*partitions: int) -> tuple[m.TopicPartition, ...]:
    return tuple(m.TopicPartition("t", p) for p in partitions)


def test_a_rejoin_at_a_new_leader_that_changes_nothing_produces_no_event() -> None:
    async def main() -> None:
        first = FlakyConnection([], breaks=True)
        second = FlakyConnection(
            [LinkState("m", 3, tps(0, 1, 2)), LinkState("m", 4, tps(1, 2))], breaks=False
        )
        rejoins: list[str] = []

        async def reconnect(member_id: str) -> tuple[FlakyConnection, LinkState | LinkEnded]:
            rejoins.append(member_id)
            # The new leader tells the same assignment again.
            return second, LinkState("m", 3, tps(0, 1, 2))

        async def fetch(group: str, t: Topic, partitions: list[int]) -> dict[int, int]:
            return {}

        async def commit_as(_command: object) -> dict[int, int]:
            raise AssertionError("no commits here")

        session = LinkSession(
            JoinSpec("g", "t", "", SESSION_MS, REBALANCE_MS),
            topic(),
            "m",
            first,
            LinkState("m", 3, tps(0, 1, 2)),
            fetch=fetch,
            commit_as=commit_as,
            reconnect=reconnect,  # type: ignore[arg-type]
        )
        assert (await change(session)).started == {0: None, 1: None, 2: None}
        # The break, the rejoin and the unchanged assignment make no event:
        # the next one is the real change, after both.
        nxt = await change(session)
        assert rejoins == ["m"] and first.detached == 1
        assert (nxt.generation, nxt.partitions, nxt.started, nxt.stopped) == (4, (1, 2), {}, (0,))
        await session.close()
        assert second.left and second.detached == 1

    run(main)


def test_a_session_whose_leader_went_away_without_reconnect_raises() -> None:
    async def main() -> None:
        w = World()
        a = await w.join()
        await change(a)
        w.runtime.close()
        with pytest.raises(ConnectionLost):
            await a.next_event()
        await a.close()  # never raises
        assert w.runtime.closed and w.runtime.link_count() == 0
        assert EndReason.NOT_LEADER == "NOT_LEADER"

    run(main)


def test_a_session_closing_after_its_leader_went_away_leaves_at_the_new_one() -> None:
    async def main() -> None:
        w = World()
        old = World()  # the old leader's runtime
        a = await old.join()
        await change(a)
        assert isinstance(a, LinkSession)
        old.runtime.close()
        new_member: list[str] = []

        async def reconnect(member_id: str) -> tuple[object, LinkState | LinkEnded]:
            new_member.append(member_id)
            link = await w.runtime.join("g", member_id, ("t",), (("t", PARTITIONS),), 10_000, 5_000)
            return LocalConnection(w.runtime, link), await link.next()

        a._reconnect = reconnect  # type: ignore[assignment]
        await a.close()
        assert new_member == [a.member_id]
        assert "g" not in w.membership.store.streams  # joined there, then left at once

    run(main)


def test_an_ack_whose_proposal_failed_is_proposed_again_at_the_next_step() -> None:
    """A fresh leader may drop a proposal: the ack must not wait for the rebalance timeout."""

    async def main() -> None:
        w = World()
        a = await w.join()
        await change(a)
        b = await w.join()
        revoking = await change(a)
        await change(b)
        real = w.runtime._propose_fn
        failures = []

        async def dropping(command: object) -> object:
            if not failures and "AssignmentAck" in repr(command):
                failures.append(command)
                raise RuntimeError("proposal dropped")
            return await real(command)  # type: ignore[arg-type]

        w.runtime._propose_fn = dropping  # type: ignore[assignment]
        a.ack(revoking.generation)
        with pytest.raises(RuntimeError):
            await w.runtime.step()
        assert failures
        await w.runtime.step()  # no time passed: only the kept ack can free the partitions
        moved = await change(b)
        assert len(moved.started) == PARTITIONS // 2

    run(main)
