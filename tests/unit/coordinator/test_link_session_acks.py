"""The member session acks for its client what it merged away (issue 8), over the real runtime.

`LocalMembership` runs the leader's runtime over an in-memory store, as a
single node does. The tests join two members before the first one's
session takes its first assignment, which is what a cluster does when both
joins are applied before the serving node reads the first answer: the link
holds only the latest assignment, so the first member is never told the
partitions revoked from it, and its client (which acks only when `revoked`
is non-empty, as the SDK and the Node client do) acks nothing.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping

import pytest

from tests.support.aio import run
from weir.server.local_membership import LinkSession, LocalConnection, LocalMembership
from weir.server.membership import AssignmentChange, JoinSpec
from weir.server.topics import Topic, TopicConfig

pytestmark = pytest.mark.timeout(30)

PARTITIONS = 12
SESSION_MS = 10_000
REBALANCE_MS = 30_000


class Offsets:
    async def fetch(self, group: str, t: Topic, partitions: Iterable[int]) -> dict[int, int]:
        return {}

    async def commit(
        self, group: str, t: Topic, offsets: Mapping[int, int], *, as_member: bool = False
    ) -> dict[int, int]:
        return dict(offsets)

    async def reset(self, group: str, offsets: Mapping[int, int]) -> dict[int, int]:
        return dict(offsets)


class World:
    def __init__(self) -> None:
        self.ms = 1_000_000
        self.topic = Topic("t", tuple(100 + p for p in range(PARTITIONS)), 1, TopicConfig())
        self.membership = LocalMembership(
            Offsets(), lambda name: PARTITIONS, lambda: self.ms, random.Random(3)
        )
        self.runtime = self.membership.runtime

    async def join_untaken(self, member_id: str = "") -> tuple[JoinSpec, LocalConnection]:
        """Joins; the link's first assignment is not taken yet."""
        spec = JoinSpec("g", "t", member_id, SESSION_MS, REBALANCE_MS)
        link = await self.runtime.join(
            "g", member_id, ("t",), (("t", PARTITIONS),), SESSION_MS, REBALANCE_MS
        )
        return spec, LocalConnection(self.runtime, link)

    async def session(self, spec: JoinSpec, connection: LocalConnection) -> LinkSession:
        """The serving node's session, made when it reads the link's (merged) first change."""
        first = await connection.link.next()
        return LinkSession(
            spec,
            self.topic,
            connection.link.member_id,
            connection,
            first,
            fetch=Offsets().fetch,
            commit_as=lambda c: Offsets().commit("g", self.topic, {}),  # type: ignore[arg-type,return-value]
        )


async def change(session: LinkSession) -> AssignmentChange:
    event = await session.next_event()
    assert isinstance(event, AssignmentChange), event
    return event


def sdk_acks(session: LinkSession, event: AssignmentChange) -> None:
    """The clients' rule: acknowledge only an assignment that revokes something."""
    if event.stopped:
        session.ack(event.generation)


def test_two_members_joining_at_once_share_the_partitions_without_the_rebalance_timeout() -> None:
    async def main() -> None:
        w = World()
        a_spec, a_link = await w.join_untaken()
        b_spec, b_link = await w.join_untaken()
        a, b = await w.session(a_spec, a_link), await w.session(b_spec, b_link)
        told_a = await change(a)
        # a's first change is its share; the six revoked from it were never told.
        assert len(told_a.partitions) == PARTITIONS // 2 and told_a.stopped == ()
        sdk_acks(a, told_a)
        told_b = await change(b)
        assert told_b.partitions == ()
        sdk_acks(b, told_b)
        # No time passes: only the acks of a's and b's sessions can free them.
        await w.runtime.step()
        group = w.membership.store.streams["g"]
        assert not group.member(a.member_id).revoking, "a's revocation waits for its timeout"  # type: ignore[union-attr]
        moved = await change(b)
        assert sorted(moved.started) == sorted(set(range(PARTITIONS)) - set(told_a.partitions))
        assert w.membership.store.streams["g"].next_deadline_ms() is None

    run(main)


def test_a_rejoined_stream_waits_for_its_clients_ack_before_acking_for_it() -> None:
    async def main() -> None:
        w = World()
        a_spec, a_link = await w.join_untaken()
        a = await w.session(a_spec, a_link)
        await change(a)
        member_id = a.member_id
        # a's client subscribes again on a new stream, and c joins before that
        # stream took its first assignment.
        a2_spec, a2_link = await w.join_untaken(member_id)
        c_spec, c_link = await w.join_untaken()
        a2 = await w.session(a2_spec, a2_link)
        c = await w.session(c_spec, c_link)
        told = await change(a2)
        sdk_acks(a2, told)
        sdk_acks(c, await change(c))
        await w.runtime.step()
        # The old stream's client may still commit what was revoked: no ack
        # for a, so c waits (for the timeout, or a's client's ack).
        group = w.membership.store.streams["g"]
        assert group.member(member_id).revoking  # type: ignore[union-attr]
        a2.ack(told.generation)
        await w.runtime.step()
        assert not group.member(member_id).revoking  # type: ignore[union-attr]
        assert len((await change(c)).started) == PARTITIONS // 2

    run(main)
