"""Stream-group membership at the coordinator groups of three real nodes.

The test plays the nodes that serve members' Consume streams: it drives the
internal `CoordinatorService.Membership` call (one bidirectional stream per
member) on the coordinator group's leader, acknowledging every assignment
as the SDK would. It checks that members share a topic's partitions
disjointly, that a new member takes only the partitions that move (revoked
from their owners first), that a closed stream's partitions move at once,
and that losing the coordinator's leader (kill -9) moves nothing: members
rejoining under their ids at the new leader keep their partitions and
generation, and their commits survive.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
import grpc.aio
import pytest

from tests.integration.test_cluster_coordinators import (
    _retry_unavailable,
    committed,
    wait_balanced,
)
from tests.support.aio import run
from tests.support.cluster_process import ClusterProcess
from tests.support.raw_client import ConsumeStream, RawClient, open_stream
from weir.cluster.v1 import coordinator_pb2 as pb
from weir.server.cluster_coordinator import COORDINATOR_SERVICE, coordinator_index
from weir.v1 import broker_pb2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

COORDINATORS = 6
PARTITIONS = 12
GROUP = "members"
TOPIC = "orders"
# Long enough that nobody expires during the test; revocations are acked.
SESSION_MS = 60_000
REBALANCE_MS = 60_000
DEADLINE_S = 30.0
# A fresh cluster numbers its groups in creation order: the controller is 0,
# the coordinator groups come next, then the topic's partitions. Commits
# below are read back through the public API, which checks this guess.
COORDINATOR_GROUP_ID = 1 + coordinator_index(GROUP, COORDINATORS)


def partition_group_id(partition: int) -> int:
    return 1 + COORDINATORS + partition


class Member:
    """One member as the node serving its stream sees it: a Membership call, acking."""

    def __init__(self, cluster: ClusterProcess, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.member_id = ""
        self.node = 0
        self.generation = 0
        self.partitions: set[int] = set()
        self.history: list[tuple[int, frozenset[int]]] = []
        self.changed = asyncio.Event()
        self.ended = asyncio.Event()
        self._channel: grpc.aio.Channel | None = None
        self._call: grpc.aio.StreamStreamCall | None = None  # type: ignore[type-arg]
        self._reader: asyncio.Task[None] | None = None

    async def join(self, node: int = 1, live: list[int] | None = None) -> None:
        """Joins (or rejoins under `member_id`) at the coordinator's leader, following hints."""
        live = live or list(self.cluster.node_ids)
        async with asyncio.timeout(DEADLINE_S):
            while True:
                await self._close_channel()
                self._channel = grpc.aio.insecure_channel(self.cluster.peer_address(node))
                call = self._channel.stream_stream(
                    f"/{COORDINATOR_SERVICE}/Membership",
                    request_serializer=pb.MembershipRequest.SerializeToString,
                    response_deserializer=pb.MembershipResponse.FromString,
                )()
                try:
                    await call.write(
                        pb.MembershipRequest(
                            join=pb.MembershipJoin(
                                cluster_id=self.cluster.cluster_id,
                                coordinator_group_id=COORDINATOR_GROUP_ID,
                                consumer_group=GROUP,
                                member_id=self.member_id,
                                topic=TOPIC,
                                partition_count=PARTITIONS,
                                session_timeout_ms=SESSION_MS,
                                rebalance_timeout_ms=REBALANCE_MS,
                            )
                        )
                    )
                    event = await call.read()
                except grpc.aio.AioRpcError:
                    event = None
                if isinstance(event, pb.MembershipResponse) and event.HasField("assignment"):
                    break
                call.cancel()
                hint = 0
                if isinstance(event, pb.MembershipResponse) and event.HasField("not_leader"):
                    hint = event.not_leader.leader_id
                node = hint if hint in live else live[(live.index(node) + 1) % len(live)]
                await asyncio.sleep(0.2)
        self.node = node
        self._call = call
        self.ended.clear()
        self._take(event.assignment)
        self._reader = asyncio.create_task(self._read(call))

    def _take(self, assignment: pb.MembershipAssignment) -> None:
        self.member_id = assignment.member_id
        self.generation = assignment.generation
        self.partitions = set(assignment.partitions)
        self.history.append((self.generation, frozenset(self.partitions)))
        self.changed.set()

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:  # type: ignore[type-arg]
        with contextlib.suppress(
            grpc.aio.AioRpcError, asyncio.CancelledError, asyncio.InvalidStateError
        ):
            while True:
                event = await call.read()
                if not isinstance(event, pb.MembershipResponse) or not event.HasField("assignment"):
                    break
                self._take(event.assignment)
                # Revocations are confirmed at once, as the SDK does after on_revoke.
                await call.write(
                    pb.MembershipRequest(
                        ack=pb.StreamAssignmentAck(generation=event.assignment.generation)
                    )
                )
        self.ended.set()

    async def leave(self) -> None:
        """The member's stream closed: a half-close, then the leader ends the call."""
        assert self._call is not None
        await self._call.done_writing()
        async with asyncio.timeout(DEADLINE_S):
            await self.ended.wait()
        await self._close_channel()

    async def _close_channel(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def commit(
        self, offsets: dict[int, int], generation: int = 0
    ) -> pb.CommitGroupOffsetsResponse:
        assert self._channel is not None
        call = self._channel.unary_unary(
            f"/{COORDINATOR_SERVICE}/CommitGroupOffsets",
            request_serializer=pb.CommitGroupOffsetsRequest.SerializeToString,
            response_deserializer=pb.CommitGroupOffsetsResponse.FromString,
        )
        response: pb.CommitGroupOffsetsResponse = await call(
            pb.CommitGroupOffsetsRequest(
                cluster_id=self.cluster.cluster_id,
                coordinator_group_id=COORDINATOR_GROUP_ID,
                commit=pb.CommitOffsetsCommand(
                    consumer_group=GROUP,
                    member_id=self.member_id,
                    generation=generation or self.generation,
                    topic=TOPIC,
                    offsets=[
                        pb.GroupPartitionOffset(
                            group_id=partition_group_id(p), offset=o, partition=p
                        )
                        for p, o in sorted(offsets.items())
                    ],
                ),
            ),
            timeout=5,
        )
        return response


async def settle(members: list[Member], predicate: object) -> None:
    """Waits until `predicate()` holds over the members' latest assignments."""
    async with asyncio.timeout(DEADLINE_S):
        while not predicate():  # type: ignore[operator]
            waits = [asyncio.create_task(m.changed.wait()) for m in members]
            for m in members:
                m.changed.clear()
            if predicate():  # type: ignore[operator]
                for w in waits:
                    w.cancel()
                break
            _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in pending:
                w.cancel()


def shared(members: list[Member], total: int = PARTITIONS) -> bool:
    """Disjoint shares that cover the topic, balanced within one."""
    counts = [len(m.partitions) for m in members]
    union = set().union(*(m.partitions for m in members))
    return sum(counts) == total == len(union) and max(counts) - min(counts) <= 1


def start_cluster(cluster: ClusterProcess) -> None:
    cluster.wait_converged()
    wait_balanced(cluster, cluster.node_ids, COORDINATORS)
    with RawClient(cluster.address(1)) as client:
        _retry_unavailable(lambda: client.create_topic(TOPIC, PARTITIONS))


def test_members_share_partitions_and_only_moved_ones_pause(cluster: ClusterProcess) -> None:
    start_cluster(cluster)

    async def main() -> None:
        a, b, c, d = (Member(cluster, n) for n in "abcd")
        for m in (a, b, c):
            await m.join()
        await settle([a, b, c], lambda: shared([a, b, c]))
        assert sorted(len(m.partitions) for m in (a, b, c)) == [4, 4, 4]
        before = {m.name: set(m.partitions) for m in (a, b, c)}
        marks = {m.name: len(m.history) for m in (a, b, c)}
        # A fourth member: three partitions move, each first revoked.
        await d.join()
        await settle([a, b, c, d], lambda: shared([a, b, c, d]))
        moved: set[int] = set()
        for m in (a, b, c):
            for _, partitions in m.history[marks[m.name] :]:
                assert partitions <= before[m.name], "an old member was given a partition"
            moved |= before[m.name] - m.partitions
        assert d.partitions == moved and len(moved) == 3
        # d's stream closes: its partitions move at once (no session timeout).
        await d.leave()
        await settle([a, b, c], lambda: shared([a, b, c]))
        for m in (a, b, c):
            await m.leave()

    run(main, timeout_s=120)


def test_members_keep_their_partitions_when_the_coordinator_leader_dies(
    cluster: ClusterProcess,
) -> None:
    start_cluster(cluster)

    async def main() -> None:
        members = [Member(cluster, n) for n in "abc"]
        for m in members:
            await m.join()
        await settle(members, lambda: shared(members))
        for i, m in enumerate(members):
            response = await m.commit({p: 10 + i for p in m.partitions})
            assert not response.error_reason and not response.not_leader, response
        # A commit from a stale generation is refused and stores nothing.
        first = members[0]
        stale = await first.commit({min(first.partitions): 99}, first.generation + 5)
        assert stale.error_reason == "STALE_GENERATION", stale
        wrong = await members[0].commit({min(members[1].partitions): 99})
        assert wrong.error_reason == "PARTITION_NOT_ASSIGNED", wrong
        before = {m.name: (m.generation, set(m.partitions)) for m in members}
        leader = members[0].node
        assert all(m.node == leader for m in members)
        cluster.kill(leader)
        survivors = [n for n in cluster.node_ids if n != leader]
        for m in members:
            async with asyncio.timeout(DEADLINE_S):
                await m.ended.wait()
        # Each member rejoins under its id at the new leader: nothing moves.
        for m in members:
            await m.join(survivors[0], survivors)
            assert m.node != leader
        for m in members:
            assert (m.generation, m.partitions) == before[m.name], m.name
        expected = {p: 10 + i for i, m in enumerate(members) for p in m.partitions}
        assert committed(cluster, survivors[0], TOPIC, GROUP) == expected
        for m in members:
            await m.leave()

    run(main, timeout_s=150)


def stream_subscribe() -> broker_pb2.Subscribe:
    return broker_pb2.Subscribe(
        topic=TOPIC,
        group=GROUP,
        mode=broker_pb2.CONSUME_MODE_STREAM,
        session_timeout_ms=SESSION_MS,
        rebalance_timeout_ms=REBALANCE_MS,
        start=broker_pb2.StartPosition(kind=broker_pb2.START_KIND_EARLIEST),
        credit=broker_pb2.Credit(messages=0, bytes=0),
    )


def next_assignment(stream: ConsumeStream) -> broker_pb2.Assignment:
    while True:
        response = stream.next()
        kind = response.WhichOneof("kind")
        if kind == "assignment":
            return response.assignment
        assert kind == "notice", response


def join_stream(client: RawClient) -> tuple[ConsumeStream, broker_pb2.Assignment]:
    """A stream-mode member through `client`, retried while the coordinator has no leader."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        opened = _retry_unavailable(lambda: open_stream(client, stream_subscribe()))
        stream: ConsumeStream = opened[0]  # type: ignore[index]
        try:
            return stream, next_assignment(stream)
        except grpc.RpcError as error:
            stream.close()
            code = error.code()  # type: ignore[attr-defined]
            assert code == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline, error
            time.sleep(0.2)


def test_a_consume_stream_on_another_node_rejoins_and_keeps_its_partitions(
    cluster: ClusterProcess,
) -> None:
    """The serving node's session (not the test) follows the coordinator to its new leader."""
    start_cluster(cluster)

    async def find_leader() -> int:
        probe = Member(cluster, "probe")
        await probe.join()
        await probe.leave()
        return probe.node

    leader = asyncio.run(find_leader())
    serving, other = (n for n in cluster.node_ids if n != leader)
    with RawClient(cluster.address(serving)) as client:
        stream, _ = open_stream(client, stream_subscribe())
        try:
            first = next_assignment(stream)
            assert list(first.partitions) == list(range(PARTITIONS))
            cluster.kill(leader)

            # A second member, on the other survivor, once a new leader leads.
            second_client = RawClient(cluster.address(other))
            second, joined = join_stream(second_client)
            try:
                # The first stream's next event is the revocation of the
                # second member's share: its rejoin at the new leader told it
                # nothing, and it is still the same member.
                revoked = next_assignment(stream)
                assert revoked.member_id == first.member_id
                assert len(revoked.revoked) == PARTITIONS // 2
                assert set(revoked.partitions) | set(revoked.revoked) == set(range(PARTITIONS))
                assert joined.member_id != first.member_id
            finally:
                second.close()
                second_client.close()
        finally:
            stream.close()
