"""Bad input to consumer groups and queues on three real nodes: clear statuses, nothing changed.

Issue 8, "What it must show": operations on unknown groups, acks for ids
never delivered or from another group, bad delays, a member of an old
generation committing, credit that is negative or over the limit. Each is
answered with its status code and ErrorInfo reason, and a read afterwards
shows nothing changed. The client is built from the generated stubs, as a
foreign client would be.
"""

from __future__ import annotations

import time

import grpc
import pytest

from tests.integration.test_cluster_replication import create_topic, wait_ready
from tests.support.cluster_process import ClusterProcess
from tests.support.raw_client import ConsumeStream, RawClient, error_info, request
from weir.v1 import admin_pb2, broker_pb2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

EARLIEST = broker_pb2.StartPosition(kind=broker_pb2.START_KIND_EARLIEST)


def next_of(stream: ConsumeStream, kind: str) -> broker_pb2.ConsumeResponse:
    """The next response of `kind`, reading past others (batches, assignments)."""
    while True:
        response = stream.next()
        if response.WhichOneof("kind") == kind:
            return response


def queue_stream(client: RawClient, group: str, messages: int = 10) -> ConsumeStream:
    stream = ConsumeStream(
        client,
        broker_pb2.Subscribe(
            topic="jobs",
            group=group,
            mode=broker_pb2.CONSUME_MODE_QUEUE,
            start=EARLIEST,
            credit=broker_pb2.Credit(messages=messages, bytes=1 << 30),
        ),
    )
    assert stream.next().WhichOneof("kind") == "subscribed"
    return stream


def member_stream(client: RawClient, group: str) -> ConsumeStream:
    stream = ConsumeStream(
        client,
        broker_pb2.Subscribe(
            topic="members-t",
            group=group,
            mode=broker_pb2.CONSUME_MODE_STREAM,
            start=EARLIEST,
            credit=broker_pb2.Credit(messages=100, bytes=1 << 30),
        ),
    )
    assert stream.next().WhichOneof("kind") == "subscribed"
    return stream


def ack(stream: ConsumeStream, request_id: int, ids: list[bytes]) -> broker_pb2.AckResult:
    stream.send(broker_pb2.ConsumeRequest(ack=broker_pb2.Ack(request_id=request_id, ack_ids=ids)))
    answer = next_of(stream, "ack").ack
    assert answer.request_id == request_id
    return answer


def failure_reasons(result: broker_pb2.AckResult) -> list[tuple[int, str]]:
    return [(f.index, f.error.reason) for f in result.failures]


def test_bad_group_and_queue_input_is_refused_clearly_and_changes_nothing(
    cluster: ClusterProcess,
) -> None:
    wait_ready(cluster)
    create_topic(cluster, 1, "jobs", 1)
    create_topic(cluster, 1, "members-t", 3)
    with RawClient(cluster.address(1)) as one, RawClient(cluster.address(2)) as two:
        answers = list(one.produce([request("jobs", [b"j%d" % i for i in range(5)])]))
        assert not answers[0].HasField("error")
        for partition in range(3):
            fill = request("members-t", [b"m%d" % i for i in range(5)])
            fill.partition = partition
            (answer,) = list(one.produce([fill]))
            assert not answer.HasField("error")

        # An unknown group: describe is NOT_FOUND (once the coordinators have
        # leaders: before, NOT_COORDINATOR says to retry).
        deadline = time.monotonic() + 30
        while True:
            with pytest.raises(grpc.RpcError) as unknown:
                one.admin.DescribeGroup(admin_pb2.DescribeGroupRequest(name="nobody"), timeout=10)
            code, reason = error_info(unknown.value)
            if reason != "NOT_COORDINATOR" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "GROUP_NOT_FOUND")

        # A negative deliver_at is refused at produce and writes nothing.
        bad = request("jobs", [b"late"])
        bad.batch.records[0].deliver_at_ms = -1
        (refused,) = list(one.produce([bad]))
        assert refused.error.reason == "INVALID_DELIVER_AT"
        end = one.describe("jobs").partitions[0].end_offset
        assert end == 5

        # Queue group A holds a delivery; garbage and B's view of A's ids are refused.
        a = queue_stream(one, "queue-a", messages=1)
        batch = next_of(a, "batch").batch
        (delivery,) = batch.deliveries
        b = queue_stream(two, "queue-b", messages=0)
        result = ack(b, 1, [b"garbage", delivery.ack_id])
        assert failure_reasons(result) == [(0, "UNKNOWN_ACK_ID"), (1, "UNKNOWN_ACK_ID")]
        assert all(
            f.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] for f in result.failures
        )
        # Nack delays past a day and extensions out of range: refused, per id.
        a.send(
            broker_pb2.ConsumeRequest(
                nack=broker_pb2.Nack(request_id=2, ack_ids=[delivery.ack_id], delay_ms=86_400_001)
            )
        )
        assert failure_reasons(next_of(a, "ack").ack) == [(0, "INVALID_NACK")]
        a.send(
            broker_pb2.ConsumeRequest(
                extend_deadline=broker_pb2.ExtendDeadline(
                    request_id=3, ack_ids=[delivery.ack_id], extension_ms=10
                )
            )
        )
        assert failure_reasons(next_of(a, "ack").ack) == [(0, "INVALID_EXTENSION")]
        # Nothing of that changed A's delivery: it is still A's to ack, once.
        assert failure_reasons(ack(a, 4, [delivery.ack_id])) == []
        # Acking it again is harmless.
        assert failure_reasons(ack(a, 5, [delivery.ack_id])) == []
        # Queue groups have no offsets: a commit is refused on the stream.
        a.send(
            broker_pb2.ConsumeRequest(
                commit=broker_pb2.Commit(
                    commit_id=6, offsets=[broker_pb2.PartitionOffset(partition=0, offset=3)]
                )
            )
        )
        assert next_of(a, "commit").commit.error.reason == "NOT_IN_QUEUE_MODE"
        a.close()
        b.close()

        # Stream mode: a member of an old generation cannot commit. The first
        # member gives up a partition to each newcomer (two new generations).
        first = member_stream(one, "members")
        gen1 = next_of(first, "assignment").assignment
        assert list(gen1.partitions) == [0, 1, 2]
        joiners = []
        owned = set(gen1.partitions)
        latest = gen1.generation
        coordinator = one.admin.DescribeGroup(
            admin_pb2.DescribeGroupRequest(name="members"), timeout=10
        ).coordinator_id
        # The third member is served by a node that does not lead the
        # coordinator: its leave travels over the peer port.
        elsewhere = next(n for n in cluster.node_ids if n != coordinator)
        remote = RawClient(cluster.address(elsewhere))
        for client in (two, remote):
            joiners.append(member_stream(client, "members"))
            change = next_of(first, "assignment").assignment
            assert len(change.revoked) == 1 and change.generation > latest
            latest = change.generation
            owned -= set(change.revoked)
            first.send(
                broker_pb2.ConsumeRequest(
                    assignment_ack=broker_pb2.AssignmentAck(generation=latest)
                )
            )
        kept = min(owned)
        first.send(
            broker_pb2.ConsumeRequest(
                commit=broker_pb2.Commit(
                    commit_id=1,
                    offsets=[broker_pb2.PartitionOffset(partition=kept, offset=4)],
                    generation=gen1.generation,
                )
            )
        )
        assert next_of(first, "commit").commit.error.reason == "STALE_GENERATION"
        # Its current generation may commit what it owns.
        first.send(
            broker_pb2.ConsumeRequest(
                commit=broker_pb2.Commit(
                    commit_id=2, offsets=[broker_pb2.PartitionOffset(partition=kept, offset=2)]
                )
            )
        )
        assert not next_of(first, "commit").commit.HasField("error")
        # Another member committing a partition it does not own is refused.
        second = joiners[0]
        second.send(
            broker_pb2.ConsumeRequest(
                commit=broker_pb2.Commit(
                    commit_id=3, offsets=[broker_pb2.PartitionOffset(partition=kept, offset=5)]
                )
            )
        )
        assert next_of(second, "commit").commit.error.reason == "PARTITION_NOT_ASSIGNED"
        # Outside the group: a plain stream's commit to a group with members.
        outsider = ConsumeStream(
            one,
            broker_pb2.Subscribe(
                topic="jobs", group="members", credit=broker_pb2.Credit(messages=1, bytes=1)
            ),
        )
        assert outsider.next().WhichOneof("kind") == "subscribed"
        outsider.send(
            broker_pb2.ConsumeRequest(
                commit=broker_pb2.Commit(
                    commit_id=4, offsets=[broker_pb2.PartitionOffset(partition=0, offset=5)]
                )
            )
        )
        assert next_of(outsider, "commit").commit.error.reason == "GROUP_HAS_MEMBERS"
        outsider.close()
        # Only the first member's commit is stored.
        described = one.admin.DescribeGroup(
            admin_pb2.DescribeGroupRequest(name="members"), timeout=10
        )
        committed = [(p.partition, p.committed_offset) for p in described.partitions]
        assert [(n, o) for n, o in committed if o] == [(kept, 2)]
        assert len(described.members) == 3

        # Credit: negative ends the stream with NEGATIVE_CREDIT; over the limit is clamped.
        third = joiners[1]
        third.send(broker_pb2.ConsumeRequest(credit=broker_pb2.Credit(messages=-1)))
        with pytest.raises(grpc.RpcError) as negative:
            next_of(third, "never")  # reads what was sent before, then the end
        assert error_info(negative.value) == (grpc.StatusCode.INVALID_ARGUMENT, "NEGATIVE_CREDIT")
        # A stream that ended leaves at once, not after its session timeout (10 s).
        deadline = time.monotonic() + 3
        while (
            len(
                one.admin.DescribeGroup(
                    admin_pb2.DescribeGroupRequest(name="members"), timeout=10
                ).members
            )
            != 2
        ):
            assert time.monotonic() < deadline, "the ended stream's member did not leave"
            time.sleep(0.05)
        remote.close()
        first.send(broker_pb2.ConsumeRequest(credit=broker_pb2.Credit(messages=2**62, bytes=2**62)))
        first.send(broker_pb2.ConsumeRequest(heartbeat=broker_pb2.Heartbeat()))
        # The stream goes on: a seek answers (records follow as credit allows).
        first.send(
            broker_pb2.ConsumeRequest(
                seek=broker_pb2.Seek(seek_id=9, partition=kept, position=EARLIEST)
            )
        )
        seek = next_of(first, "seek").seek
        assert (seek.seek_id, seek.offset, seek.HasField("error")) == (9, 0, False)
        for stream in (first, second):
            stream.close()
