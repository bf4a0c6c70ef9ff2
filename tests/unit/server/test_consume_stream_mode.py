"""CONSUME_MODE_STREAM on the consume path, with a scripted coordinator (fake_membership).

The path runs in-process on real storage (the harness of test_consume_costs);
the test plays the coordinator through a `FakeMembership`.

- A Subscribe in stream mode is checked before anything joins; each refusal
  has its reason.
- Assignment changes start and stop delivery exactly: no record of a
  revoked partition is written after the Assignment that revokes it, none
  of a started one before the Assignment that starts it.
- Start offsets: the committed offset clamped into the log, else the
  subscription's start policy.
- The session is closed exactly once however the stream ends.
- Requests reach the session (seen, ack) and commits carry their
  generation; commits of different generations are never stored together.
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import grpc
import pytest

from tests.unit.server.fake_membership import FakeMembership, FakeSession, StatusContext
from tests.unit.server.test_consume_costs import T0_MS, Aborted, Node, node, run
from tests.unit.server.test_consume_credit import settle
from weir.cluster.storage import PartitionLog
from weir.server.consume_commit import COMMITS_INFLIGHT_MAX
from weir.server.errors import BrokerError
from weir.server.membership import JoinSpec
from weir.server.topics import ConfigPatch
from weir.v1 import broker_pb2, records_pb2

pytestmark = pytest.mark.timeout(120)

STREAM = broker_pb2.CONSUME_MODE_STREAM
EARLIEST = broker_pb2.StartPosition(kind=broker_pb2.START_KIND_EARLIEST)
BIG = broker_pb2.Credit(messages=100_000, bytes=1 << 30)


def member_subscribe(**fields: object) -> broker_pb2.Subscribe:
    defaults: dict[str, object] = {
        "topic": "t",
        "group": "g",
        "mode": STREAM,
        "start": EARLIEST,
        "credit": BIG,
    }
    defaults.update(fields)
    return broker_pb2.Subscribe(**defaults)  # type: ignore[arg-type]


class Stream:
    """One Consume call of the test: its context, its task and its member session."""

    def __init__(self, n: Node, membership: FakeMembership, subscribe: broker_pb2.Subscribe):
        self.context = StatusContext()
        self.context.requests.put_nowait(broker_pb2.ConsumeRequest(subscribe=subscribe))
        self.task = asyncio.create_task(n.path.serve(self.context))  # type: ignore[arg-type]
        n.streams.append((self.context, self.task))
        self._membership = membership
        self._joins = len(membership.sessions)

    async def session(self) -> FakeSession:
        await self.context.until(lambda: len(self._membership.sessions) > self._joins)
        return self._membership.sessions[self._joins]

    def send(self, **request: object) -> None:
        self.context.requests.put_nowait(broker_pb2.ConsumeRequest(**request))  # type: ignore[arg-type]

    def kinds(self) -> list[str]:
        return [str(r.WhichOneof("kind")) for r in self.context.responses]

    def assignments(self) -> list[broker_pb2.Assignment]:
        return [
            r.assignment for r in self.context.responses if r.WhichOneof("kind") == "assignment"
        ]

    def commits(self) -> list[broker_pb2.CommitResult]:
        return [r.commit for r in self.context.responses if r.WhichOneof("kind") == "commit"]

    def records_of(self, partition: int) -> list[bytes]:
        return [
            record.value
            for r in self.context.responses
            if r.WhichOneof("kind") == "batch" and r.batch.partition == partition
            for record in r.batch.records
        ]

    async def ping(self, commit_id: int) -> None:
        """A commit without offsets: its answer follows every record that could be sent."""
        self.send(commit=broker_pb2.Commit(commit_id=commit_id))
        await self.context.until(lambda: any(c.commit_id == commit_id for c in self.commits()))

    async def ended(self) -> tuple[grpc.StatusCode | None, str | None]:
        """Wait for the call to end; (None, None) when it ended OK."""
        async with asyncio.timeout(30):
            with suppress(Aborted):
                await self.task
        if self.context.status is None:
            return None, None
        return self.context.status[0], self.context.reason


@asynccontextmanager
async def member_node(tmp_path: pathlib.Path, partitions: int = 3) -> AsyncIterator[Node]:
    async with node(tmp_path) as n:
        await n.topics.create("t", partitions, 0, ConfigPatch())
        yield n


def value(partition: int, offset: int) -> bytes:
    return b"p%d-%d" % (partition, offset)


async def fill(n: Node, partition: int, count: int, timestamp_ms: int = T0_MS) -> None:
    """Append `count` records named by their offsets, as one stored batch stamped `timestamp_ms`."""
    group_id = n.topics.get("t").group_id(partition)
    base = n.replicator.log(group_id).end_offset
    records = [
        records_pb2.Record(value=value(partition, base + i), timestamp_ms=timestamp_ms)
        for i in range(count)
    ]
    payload = records_pb2.RecordBatch(records=records).SerializeToString()
    ticket = await n.replicator.append(group_id, payload, count, timestamp_ms)
    await ticket.committed


async def drop_first_entry(log: PartitionLog) -> None:
    """Retention by size, keeping all but the first of three (or two) entries of equal size."""
    entries = 3 if log.end_offset == 6 else 2
    kept_bytes = log.size_bytes * (entries - 1) // entries
    assert await log.truncate_prefix(kept_bytes, None) == 1


def with_membership(n: Node) -> FakeMembership:
    membership = FakeMembership()
    n.path.membership = membership
    return membership


# -- subscribe --------------------------------------------------------------------

REFUSALS = [
    ("no group", {"group": ""}, "GROUP_REQUIRED"),
    ("partitions", {"partitions": [0]}, "INVALID_SUBSCRIBE"),
    ("offsets", {"offsets": {0: 0}}, "INVALID_SUBSCRIBE"),
    (
        "start offset",
        {"start": broker_pb2.StartPosition(kind=broker_pb2.START_KIND_OFFSET)},
        "INVALID_SUBSCRIBE",
    ),
    ("unknown mode", {"mode": 7}, "INVALID_SUBSCRIBE"),
    ("member id without stream mode", {"mode": 0, "member_id": "m"}, "INVALID_SUBSCRIBE"),
    (
        "session timeout without stream mode",
        {"mode": 0, "session_timeout_ms": 5000},
        "INVALID_SUBSCRIBE",
    ),
    (
        "rebalance timeout without stream mode",
        {"mode": 0, "rebalance_timeout_ms": 5000},
        "INVALID_SUBSCRIBE",
    ),
    ("unknown start kind", {"start": broker_pb2.StartPosition(kind=9)}, "INVALID_START"),  # type: ignore[arg-type]
    (
        "negative timestamp",
        {"start": broker_pb2.StartPosition(kind=broker_pb2.START_KIND_TIMESTAMP, timestamp_ms=-1)},
        "INVALID_START",
    ),
    ("bad group name", {"group": "g\n"}, "INVALID_GROUP_NAME"),
    ("negative credit", {"credit": broker_pb2.Credit(messages=-1)}, "NEGATIVE_CREDIT"),
    ("unknown topic", {"topic": "nope"}, "TOPIC_NOT_FOUND"),
    ("ack deadline without queue mode", {"ack_deadline_ms": 5000}, "INVALID_SUBSCRIBE"),
    ("ordered keys without queue mode", {"mode": 0, "ordered_keys": True}, "INVALID_SUBSCRIBE"),
    ("queue mode, not served yet", {"mode": 2}, "CONSUME_MODE_UNAVAILABLE"),
]


@pytest.mark.parametrize(
    ("fields", "reason"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_a_bad_stream_mode_subscribe_is_refused_before_joining(
    tmp_path: pathlib.Path, fields: dict[str, object], reason: str
) -> None:
    async def body() -> None:
        async with member_node(tmp_path) as n:
            membership = with_membership(n)
            stream = Stream(n, membership, member_subscribe(**fields))
            code, got = await stream.ended()
            assert got == reason
            expected = {
                "TOPIC_NOT_FOUND": grpc.StatusCode.NOT_FOUND,
                "CONSUME_MODE_UNAVAILABLE": grpc.StatusCode.UNIMPLEMENTED,
            }.get(reason, grpc.StatusCode.INVALID_ARGUMENT)
            assert code == expected
            assert membership.joins == [], "nothing joined"
            assert stream.context.responses == []

    run(body)


def test_stream_mode_without_a_coordinator_is_unavailable_here(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with member_node(tmp_path) as n:
            n.path.membership = None  # a consume path built without a coordinator
            stream = Stream(n, FakeMembership(), member_subscribe())
            assert await stream.ended() == (
                grpc.StatusCode.UNIMPLEMENTED,
                "CONSUME_MODE_UNAVAILABLE",
            )

    run(body)


def test_a_refused_join_ends_the_stream_with_the_coordinators_error(
    tmp_path: pathlib.Path,
) -> None:
    async def body() -> None:
        async with member_node(tmp_path) as n:
            membership = with_membership(n)
            membership.refusal = BrokerError(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "GROUP_FULL", "the group is full"
            )
            stream = Stream(n, membership, member_subscribe())
            assert await stream.ended() == (grpc.StatusCode.RESOURCE_EXHAUSTED, "GROUP_FULL")
            assert stream.context.responses == [] and membership.sessions == []

    run(body)


def test_a_member_joins_with_default_timeouts_and_is_subscribed_to_nothing_yet(
    tmp_path: pathlib.Path,
) -> None:
    async def body() -> None:
        async with member_node(tmp_path) as n:
            membership = with_membership(n)
            await fill(n, 0, 3)
            stream = Stream(n, membership, member_subscribe())
            await stream.session()
            await stream.ping(1)
            (first, _) = stream.context.responses
            assert first.subscribed.topic == "t" and not first.subscribed.partitions
            assert stream.kinds() == ["subscribed", "commit"], "no record before an assignment"
            assert membership.joins == [(JoinSpec("g", "t", "", 10_000, 30_000), "t")]

            again = Stream(
                n,
                membership,
                member_subscribe(
                    member_id="m-7", session_timeout_ms=2000, rebalance_timeout_ms=3000
                ),
            )
            await again.session()
            assert membership.joins[1] == (JoinSpec("g", "t", "m-7", 2000, 3000), "t")

    run(body)


# -- assignments start and stop delivery ------------------------------------------


def test_assignments_start_and_stop_partitions_exactly(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with member_node(tmp_path) as n:
            membership = with_membership(n)
            for partition in range(3):
                await fill(n, partition, 10)
            stream = Stream(n, membership, member_subscribe())
            session = await stream.session()
            session.change(1, (0, 1), {0: None, 1: 4})
            await stream.context.until(
                lambda: len(stream.records_of(0)) == 10 and len(stream.records_of(1)) == 6
            )
            (a1,) = stream.assignments()
            assert (a1.member_id, a1.generation, list(a1.partitions)) == ("member-1", 1, [0, 1])
            assert [(s.partition, s.offset, s.end_offset) for s in a1.started] == [
                (0, 0, 10),
                (1, 4, 10),
            ]
            assert not a1.revoked
            assert stream.kinds()[:2] == ["subscribed", "assignment"]
            assert stream.records_of(1)[0] == value(1, 4)
            assert stream.records_of(2) == []

            # Partition 1 moves away, 2 comes: no record of 1 after the
            # Assignment that revokes it, even as it grows.
            session.change(2, (0, 2), {2: 7}, stopped=(1,))
            await stream.context.until(lambda: len(stream.assignments()) == 2)
            await fill(n, 1, 5)
            await fill(n, 0, 2)
            await stream.context.until(
                lambda: len(stream.records_of(2)) == 3 and len(stream.records_of(0)) == 12
            )
            await stream.ping(1)
            a2 = stream.assignments()[1]
            assert (a2.generation, list(a2.partitions), list(a2.revoked)) == (2, [0, 2], [1])
            assert [(s.partition, s.offset) for s in a2.started] == [(2, 7)]
            at = stream.kinds().index("assignment", 2)
            after = stream.context.responses[at + 1 :]
            assert all(r.batch.partition != 1 for r in after if r.WhichOneof("kind") == "batch")
            before = stream.context.responses[:at]
            assert all(r.batch.partition != 2 for r in before if r.WhichOneof("kind") == "batch")
            assert len(stream.records_of(1)) == 6

            # Given back later, it starts where the coordinator says.
            session.change(3, (0, 1, 2), {1: 12})
            await stream.context.until(lambda: len(stream.records_of(1)) == 9)
            assert stream.records_of(1)[6:] == [value(1, 12), value(1, 13), value(1, 14)]

    run(body)


def test_a_revoked_partition_queued_for_credit_sends_nothing_after_its_revocation(
    tmp_path: pathlib.Path,
) -> None:
    """Records of the partition wait for credit when the revocation comes; the credit that
    follows goes to the partitions the member keeps."""

    async def body() -> None:
        async with member_node(tmp_path) as n:
            membership = with_membership(n)
            await fill(n, 0, 5)
            await fill(n, 1, 5)
            stream = Stream(n, membership, member_subscribe(credit=broker_pb2.Credit()))
            session = await stream.session()
            session.change(1, (0, 1), {0: None, 1: None})
            await stream.context.until(lambda: len(stream.assignments()) == 1)
            session.change(2, (0,), stopped=(1,))
            await stream.context.until(lambda: len(stream.assignments()) == 2)
            stream.send(credit=broker_pb2.Credit(messages=100, bytes=1 << 20))
            await stream.context.until(lambda: len(stream.records_of(0)) == 5)
            await stream.ping(1)
            assert stream.records_of(1) == []

    run(body)


def test_a_revocation_while_a_write_is_blocked_stops_the_partition_at_once(
    tmp_path: pathlib.Path,
) -> None:
    """The client stopped reading in the middle of partition 1's records; the revocation
    comes then. What was being written goes out, then the Assignment, then none of 1."""

    async def body() -> None:
        async with member_node(tmp_path) as n:
            membership = with_membership(n)
            await fill(n, 1, 10)
            stream = Stream(
                n, membership, member_subscribe(credit=broker_pb2.Credit(messages=1, bytes=1 << 20))
            )
            session = await stream.session()
            session.change(1, (0, 1), {0: None, 1: None})
            await stream.context.until(lambda: len(stream.records_of(1)) == 1)
            stream.context.write_gate.clear()
            stream.send(credit=broker_pb2.Credit(messages=1))
            await stream.context.until(lambda: stream.context.writes_waiting == 1)
            session.change(2, (0,), stopped=(1,))
            # The member loop stops the partition while the writer still waits.
            await session.until(lambda: session.taken == 2)
            stream.send(credit=broker_pb2.Credit(messages=100))
            await fill(n, 1, 3)
            stream.context.write_gate.set()
            await stream.context.until(lambda: len(stream.assignments()) == 2)
            await fill(n, 0, 2)
            await stream.context.until(lambda: len(stream.records_of(0)) == 2)
            await stream.ping(1)
            assert stream.records_of(1) == [value(1, 0), value(1, 1)]
            at = stream.kinds().index("assignment", 2)
            assert all(
                r.batch.partition != 1
                for r in stream.context.responses[at:]
                if r.WhichOneof("kind") == "batch"
            )

    run(body)


def test_assignment_responses_are_not_charged_to_credit(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with member_node(tmp_path) as n:
            membership = with_membership(n)
            await fill(n, 0, 5)
            stream = Stream(
                n, membership, member_subscribe(credit=broker_pb2.Credit(messages=2, bytes=1 << 20))
            )
            session = await stream.session()
            session.change(1, (0,), {0: None})
            await stream.context.until(lambda: len(stream.records_of(0)) == 2)
            # No credit left: the assignments still go out.
            session.change(2, (), stopped=(0,))
            session.change(3, (0,), {0: 2})
            await stream.context.until(lambda: len(stream.assignments()) == 3)
            assert len(stream.records_of(0)) == 2
            stream.send(credit=broker_pb2.Credit(messages=2))
            await stream.context.until(lambda: len(stream.records_of(0)) == 4)
            await stream.ping(1)
            assert stream.records_of(0) == [value(0, i) for i in (0, 1, 2, 3)]

    run(body)


# -- where assigned partitions start ------------------------------------------------


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        (broker_pb2.StartPosition(kind=broker_pb2.START_KIND_EARLIEST), [2, 0]),
        (broker_pb2.StartPosition(kind=broker_pb2.START_KIND_LATEST), [6, 0]),
        (broker_pb2.StartPosition(), [6, 0]),
        (
            broker_pb2.StartPosition(
                kind=broker_pb2.START_KIND_TIMESTAMP, timestamp_ms=T0_MS + 1000
            ),
            [4, 0],
        ),
    ],
    ids=["earliest", "latest", "unspecified is latest", "timestamp"],
)
def test_a_partition_without_a_committed_offset_starts_by_the_start_policy(
    tmp_path: pathlib.Path, start: broker_pb2.StartPosition, expected: list[int]
) -> None:
    async def body() -> None:
        async with member_node(tmp_path, partitions=2) as n:
            membership = with_membership(n)
            await fill(n, 0, 2, timestamp_ms=T0_MS)
            await fill(n, 0, 2, timestamp_ms=T0_MS + 500)
            await fill(n, 0, 2, timestamp_ms=T0_MS + 1000)
            log = n.replicator.log(n.topics.get("t").group_id(0))
            # Retention takes the first entry: the log starts at 2.
            await drop_first_entry(log)
            assert log.start_offset == 2, log.start_offset
            stream = Stream(n, membership, member_subscribe(start=start))
            session = await stream.session()
            session.change(1, (0, 1), {0: None, 1: None})
            await stream.context.until(lambda: len(stream.assignments()) == 1)
            (a,) = stream.assignments()
            assert [s.offset for s in a.started] == expected
            assert [(s.log_start_offset, s.end_offset) for s in a.started] == [(2, 6), (0, 0)]

    run(body)


def test_a_committed_offset_is_clamped_into_the_log(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with member_node(tmp_path) as n:
            membership = with_membership(n)
            for partition in range(3):
                await fill(n, partition, 2)
                await fill(n, partition, 2)
            log = n.replicator.log(n.topics.get("t").group_id(0))
            await drop_first_entry(log)
            assert log.start_offset == 2
            # LATEST would start at 4 everywhere: the committed offsets win.
            stream = Stream(
                n,
                membership,
                member_subscribe(start=broker_pb2.StartPosition(kind=broker_pb2.START_KIND_LATEST)),
            )
            session = await stream.session()
            # Below the log start (retention deleted past it), beyond the end
            # (this replica has not applied that far), inside.
            session.change(1, (0, 1, 2), {0: 1, 1: 99, 2: 3})
            await stream.context.until(lambda: len(stream.records_of(2)) == 1)
            (a,) = stream.assignments()
            assert [(s.partition, s.offset) for s in a.started] == [(0, 2), (1, 4), (2, 3)]
            await stream.context.until(lambda: len(stream.records_of(0)) == 2)
            assert stream.records_of(0) == [value(0, 2), value(0, 3)]

    run(body)


# -- the session is closed once, however the stream ends ---------------------------


async def joined(n: Node, membership: FakeMembership) -> tuple[Stream, FakeSession]:
    stream = Stream(n, membership, member_subscribe())
    session = await stream.session()
    session.change(1, (0,), {0: None})
    await stream.context.until(lambda: len(stream.assignments()) == 1)
    return stream, session


def test_a_client_half_close_ends_ok_and_closes_the_session_once(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with member_node(tmp_path) as n:
            stream, session = await joined(n, with_membership(n))
            stream.context.requests.put_nowait(grpc.aio.EOF)
            assert await stream.ended() == (None, None)
            assert session.close_calls == 1

    run(body)


def test_removal_ends_the_stream_with_its_error_and_closes_once(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with member_node(tmp_path) as n:
            stream, session = await joined(n, with_membership(n))
            session.remove(
                BrokerError(grpc.StatusCode.ABORTED, "SESSION_EXPIRED", "the session expired")
            )
            assert await stream.ended() == (grpc.StatusCode.ABORTED, "SESSION_EXPIRED")
            assert session.close_calls == 1

    run(body)


def test_a_session_error_ends_the_stream_and_closes_once(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with member_node(tmp_path) as n:
            stream, session = await joined(n, with_membership(n))
            session.fail(
                BrokerError(grpc.StatusCode.UNAVAILABLE, "NOT_COORDINATOR", "no coordinator")
            )
            assert await stream.ended() == (grpc.StatusCode.UNAVAILABLE, "NOT_COORDINATOR")
            assert session.close_calls == 1

    run(body)


def test_a_cancelled_call_closes_the_session_once(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with member_node(tmp_path) as n:
            stream, session = await joined(n, with_membership(n))
            stream.task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await stream.task
            assert session.close_calls == 1

    run(body)


def test_a_stopping_node_ends_the_stream_and_closes_once(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with member_node(tmp_path) as n:
            stream, session = await joined(n, with_membership(n))
            n.path.stopping.set()
            assert await stream.ended() == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
            assert session.close_calls == 1

    run(body)


def test_a_protocol_error_ends_the_stream_and_closes_once(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with member_node(tmp_path) as n:
            stream, session = await joined(n, with_membership(n))
            stream.send()
            assert await stream.ended() == (grpc.StatusCode.INVALID_ARGUMENT, "EMPTY_REQUEST")
            assert session.close_calls == 1

    run(body)


def test_a_client_gone_before_subscribed_is_written_closes_once(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with member_node(tmp_path) as n:
            membership = with_membership(n)
            stream = Stream(n, membership, member_subscribe())
            stream.context.write_gate.clear()
            session = await stream.session()
            await stream.context.until(lambda: stream.context.writes_waiting == 1)
            stream.task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await stream.task
            assert session.close_calls == 1

    run(body)


# -- requests of a member -------------------------------------------------------------


def test_every_request_is_seen_and_acks_reach_the_session(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with member_node(tmp_path) as n:
            stream, session = await joined(n, with_membership(n))
            session.change(2, (), stopped=(0,))
            await stream.context.until(lambda: len(stream.assignments()) == 2)
            stream.send(credit=broker_pb2.Credit(messages=1))
            stream.send(heartbeat=broker_pb2.Heartbeat())
            stream.send(assignment_ack=broker_pb2.AssignmentAck(generation=2))
            stream.send(assignment_ack=broker_pb2.AssignmentAck(generation=1))
            stream.send(
                seek=broker_pb2.Seek(
                    seek_id=1,
                    partition=0,
                    position=broker_pb2.StartPosition(kind=broker_pb2.START_KIND_EARLIEST),
                )
            )
            await stream.ping(9)
            assert session.seen_calls == 6
            assert session.acks == [2, 1]
            assert session.commits == [], "a commit without offsets stores nothing"

    run(body)


@pytest.mark.parametrize("generation", [0, 3])
def test_an_ack_of_a_generation_never_sent_ends_the_stream(
    tmp_path: pathlib.Path, generation: int
) -> None:
    async def body() -> None:
        async with member_node(tmp_path) as n:
            stream, session = await joined(n, with_membership(n))
            stream.send(assignment_ack=broker_pb2.AssignmentAck(generation=generation))
            assert await stream.ended() == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "INVALID_ASSIGNMENT_ACK",
            )
            assert session.acks == [] and session.close_calls == 1

    run(body)


@pytest.mark.parametrize("kind", ["heartbeat", "assignment_ack"])
def test_member_requests_without_stream_mode_end_the_stream(
    tmp_path: pathlib.Path, kind: str
) -> None:
    async def body() -> None:
        async with member_node(tmp_path) as n:
            membership = with_membership(n)
            stream = Stream(n, membership, member_subscribe(mode=0))
            await stream.context.until(lambda: bool(stream.context.responses))
            request = (
                {"heartbeat": broker_pb2.Heartbeat()}
                if kind == "heartbeat"
                else {"assignment_ack": broker_pb2.AssignmentAck(generation=1)}
            )
            stream.send(**request)
            code, reason = await stream.ended()
            assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_A_MEMBER")
            assert stream.context.metadata["request"] == kind
            assert membership.joins == []

    run(body)


@pytest.mark.parametrize(
    "request_",
    [
        broker_pb2.ConsumeRequest(ack=broker_pb2.Ack(request_id=1, ack_ids=[b"x"])),
        broker_pb2.ConsumeRequest(nack=broker_pb2.Nack(request_id=1)),
        broker_pb2.ConsumeRequest(extend_deadline=broker_pb2.ExtendDeadline(request_id=1)),
    ],
    ids=["ack", "nack", "extend_deadline"],
)
def test_queue_requests_on_a_stream_member_end_the_stream(
    tmp_path: pathlib.Path, request_: broker_pb2.ConsumeRequest
) -> None:
    async def body() -> None:
        async with member_node(tmp_path) as n:
            stream, session = await joined(n, with_membership(n))
            stream.context.requests.put_nowait(request_)
            assert await stream.ended() == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_A_MEMBER")
            assert stream.context.metadata["mode"] == "CONSUME_MODE_QUEUE"
            assert session.close_calls == 1

    run(body)


def test_a_commit_with_a_generation_without_stream_mode_is_refused(
    tmp_path: pathlib.Path,
) -> None:
    async def body() -> None:
        async with member_node(tmp_path) as n:
            membership = with_membership(n)
            await fill(n, 0, 3)
            stream = Stream(n, membership, member_subscribe(mode=0))
            await stream.context.until(lambda: len(stream.records_of(0)) == 3)
            stream.send(
                commit=broker_pb2.Commit(
                    commit_id=1,
                    generation=1,
                    offsets=[broker_pb2.PartitionOffset(partition=0, offset=2)],
                )
            )
            await stream.context.until(lambda: len(stream.commits()) == 1)
            (result,) = stream.commits()
            assert result.error.reason == "NOT_A_MEMBER"
            assert n.path.offsets.get("g", n.topics.get("t"), 0) is None  # type: ignore[attr-defined]
            await stream.ping(2)  # the stream goes on

    run(body)


def commit(commit_id: int, generation: int, **offsets: int) -> broker_pb2.Commit:
    return broker_pb2.Commit(
        commit_id=commit_id,
        generation=generation,
        offsets=[
            broker_pb2.PartitionOffset(partition=int(p[1:]), offset=o) for p, o in offsets.items()
        ],
    )


def test_commits_go_to_the_session_with_their_generation_never_merged_across(
    tmp_path: pathlib.Path,
) -> None:
    async def body() -> None:
        async with member_node(tmp_path) as n:
            for partition in range(3):
                await fill(n, partition, 10)
            stream, session = await joined(n, with_membership(n))
            session.change(2, (0, 1), {1: None})
            await stream.context.until(lambda: len(stream.assignments()) == 2)
            # Generation 0 means the latest this stream was sent: 2.
            stream.send(commit=commit(1, 0, p0=3))
            await stream.context.until(lambda: len(stream.commits()) == 1)
            assert session.commits == [(2, {0: 3})]
            assert list(stream.commits()[0].offsets) == [
                broker_pb2.PartitionOffset(partition=0, offset=3)
            ]

            # While one store waits, commits of generations 1, 1, 2, 2, 1
            # queue: neighbours of one generation share a write, no others.
            session.commit_gate.clear()
            stream.send(commit=commit(2, 2, p0=4))
            await session.until(lambda: len(session.commits) == 2)
            stream.send(commit=commit(3, 1, p0=5))
            stream.send(commit=commit(4, 1, p1=5))
            stream.send(commit=commit(5, 2, p0=6))
            stream.send(commit=commit(6, 2, p0=999))  # refused: it joins any write
            stream.send(commit=commit(7, 0, p1=6, p0=7))
            stream.send(commit=commit(8, 1, p1=8))
            reads = stream.context.reads + 6
            await stream.context.until(lambda: stream.context.reads == reads)
            session.commit_gate.set()
            await stream.context.until(lambda: len(stream.commits()) == 8)
            assert session.commits == [
                (2, {0: 3}),
                (2, {0: 4}),
                (1, {0: 5, 1: 5}),
                (2, {0: 7, 1: 6}),
                (1, {1: 8}),
            ]
            assert [c.commit_id for c in stream.commits()] == [1, 2, 3, 4, 5, 6, 7, 8]
            assert [c.error.reason for c in stream.commits()] == [""] * 5 + [
                "OFFSET_OUT_OF_RANGE"
            ] + [""] * 2

    run(body)


def test_a_commit_the_coordinator_refuses_is_answered_and_the_stream_goes_on(
    tmp_path: pathlib.Path,
) -> None:
    async def body() -> None:
        async with member_node(tmp_path) as n:
            await fill(n, 0, 5)
            stream, session = await joined(n, with_membership(n))
            session.commit_refusal = BrokerError(
                grpc.StatusCode.FAILED_PRECONDITION, "STALE_GENERATION", "stale"
            )
            stream.send(commit=commit(1, 1, p0=3))
            await stream.context.until(lambda: len(stream.commits()) == 1)
            (result,) = stream.commits()
            assert (result.error.reason, list(result.offsets)) == ("STALE_GENERATION", [])
            assert session.stored == {}
            session.commit_refusal = None
            stream.send(commit=commit(2, 1, p0=4))
            await stream.context.until(lambda: len(stream.commits()) == 2)
            assert session.stored == {0: 4}

    run(body)


def test_a_commit_beyond_the_log_end_is_refused_before_the_session(
    tmp_path: pathlib.Path,
) -> None:
    async def body() -> None:
        async with member_node(tmp_path) as n:
            await fill(n, 0, 5)
            stream, session = await joined(n, with_membership(n))
            stream.send(commit=commit(1, 1, p0=6))
            stream.send(commit=commit(2, 1, p7=1))
            await stream.context.until(lambda: len(stream.commits()) == 2)
            assert [c.error.reason for c in stream.commits()] == [
                "OFFSET_OUT_OF_RANGE",
                "PARTITION_OUT_OF_RANGE",
            ]
            assert session.commits == []

    run(body)


def test_commits_in_flight_are_bounded(tmp_path: pathlib.Path) -> None:
    """The reader stops reading once COMMITS_INFLIGHT_MAX commits wait for an answer."""

    async def body() -> None:
        async with member_node(tmp_path) as n:
            await fill(n, 0, 5)
            stream, session = await joined(n, with_membership(n))
            session.commit_gate.clear()
            for i in range(COMMITS_INFLIGHT_MAX + 5):
                stream.send(commit=commit(i + 1, 1, p0=1))
            await session.until(lambda: len(session.commits) == 1)
            # The reader took COMMITS_INFLIGHT_MAX (after the Subscribe) and
            # waits with the next one in hand; the rest stay unread.
            await stream.context.until(lambda: stream.context.reads == COMMITS_INFLIGHT_MAX + 2)
            await settle()
            assert stream.context.reads == COMMITS_INFLIGHT_MAX + 2
            assert stream.context.requests.qsize() == 4
            assert len(session.commits) == 1
            session.commit_gate.set()
            await stream.context.until(lambda: len(stream.commits()) == COMMITS_INFLIGHT_MAX + 5)

    run(body)


def test_an_ack_read_while_its_assignment_is_still_being_written_is_accepted(
    tmp_path: pathlib.Path,
) -> None:
    """A fast client acks before the writer task resumes from the Assignment's write."""

    async def body() -> None:
        async with member_node(tmp_path) as n:
            stream, session = await joined(n, with_membership(n))
            stream.context.write_gate.clear()
            session.change(2, (0, 1), {1: None})
            await stream.context.until(lambda: stream.context.writes_waiting == 1)
            stream.send(assignment_ack=broker_pb2.AssignmentAck(generation=2))
            await session.until(lambda: session.acks == [2])
            stream.context.write_gate.set()
            await stream.context.until(lambda: len(stream.assignments()) == 2)
            await stream.ping(1)
            assert not stream.task.done()

    run(body)
