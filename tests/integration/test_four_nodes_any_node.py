"""Any node accepts any call, also with more nodes than a topic's replication factor (issue 8).

Four nodes, topics with replication factor 3 and one partition: one node
(the "outsider") holds no replica of the partition. Calls made there are
served as a Kafka user expects (DESIGN §6): DescribeTopic answers with the
partition's leader and offsets as its replicas know them, a produce is
forwarded to the leader (or answered NOT_LEADER naming it), a
stream-mode member there commits what it read through the relay, and a
queue-mode consumer there gets and acks the records through a relay to
the leader, also after that leader froze (SIGSTOP: the outsider hears of no
election, so its relay's keepalive ends it, within about a minute). One
cluster serves the whole module; each test has a topic of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import weir.aio
from tests.integration.test_cluster_replication import leaders, wait_ready
from tests.support.cluster_process import ClusterProcess
from tests.support.raw_client import (
    ConsumeStream,
    RawClient,
    open_stream,
    read_batches,
    read_partition,
    request,
)
from weir.v1 import admin_pb2, broker_pb2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

DEADLINE_S = 60.0
RECORDS = 10
COMMITTED = 6
# The records of a partition whose leader froze reach a consumer on a node
# without a replica within this, counted from the new leader's election.
FROZEN_RELAY_DEADLINE_S = 120.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcess]:
    process = ClusterProcess(Path(tmp_path_factory.mktemp("four")), nodes=4).start()
    try:
        # Every node registered, so that replicas spread over all four.
        wait_ready(process)
        yield process
    finally:
        process.stop()


def retry(what: str, call: object) -> object:
    """`call()` until it stops raising UNAVAILABLE (no controller or leader yet)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            return call()  # type: ignore[operator]
        except grpc.RpcError as error:
            code = error.code()  # type: ignore[attr-defined]
            assert code == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline, (
                what,
                error,
            )
            time.sleep(0.2)


def create(cluster: ClusterProcess, name: str) -> tuple[int, tuple[int, ...]]:
    """A one-partition topic with replication factor 3; returns (outsider, replicas)."""
    with RawClient(cluster.address(1)) as client:
        retry(
            "create",
            lambda: client.admin.CreateTopic(
                admin_pb2.CreateTopicRequest(name=name, partition_count=1, replication_factor=3),
                timeout=DEADLINE_S,
            ),
        )
    # Every node knows the placement (the controller's metadata); ask a replica.
    for node in cluster.node_ids:
        with RawClient(cluster.address(node)) as client:
            try:
                described = client.describe(name)
            except grpc.RpcError:
                continue
        replicas = tuple(described.partitions[0].replica_ids)
        if node in replicas:
            (outsider,) = set(cluster.node_ids) - set(replicas)
            return outsider, replicas
    raise AssertionError(f"no replica of {name} describes it")


def produce_at(client: RawClient, topic: str, values: list[bytes]) -> broker_pb2.ProduceResponse:
    """Produce through `client`, retrying while no leader is known anywhere (a fresh topic)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        answer = client.produce_one(request(topic, values, partition=0))
        if not answer.HasField("error") or time.monotonic() > deadline:
            return answer
        if answer.error.reason == "NOT_LEADER" and answer.error.metadata["leader_id"] != "0":
            return answer  # names the leader: what the test checks
        time.sleep(0.2)


def test_describe_topic_on_a_node_without_a_replica_names_the_leader_and_offsets(
    cluster: ClusterProcess,
) -> None:
    """It answered INTERNAL_ERROR (NotHostedError), so the SDK producer failed there."""
    outsider, replicas = create(cluster, "described")
    with RawClient(cluster.address(replicas[0])) as client:
        assert not produce_at(client, "described", [b"x"] * RECORDS).HasField("error")

    with RawClient(cluster.address(outsider)) as client:
        info = client.describe("described").partitions[0]
    assert info.leader_id in replicas, info
    assert info.leader_address == cluster.address(info.leader_id)
    assert tuple(info.replica_ids) == replicas
    assert info.end_offset == RECORDS and info.size_bytes > 0, info

    async def send_through_outsider() -> int:
        async with weir.aio.Producer([cluster.address(outsider)]) as producer:
            sent = await producer.send("described", b"y", partition=0)
            await producer.flush(DEADLINE_S)
            return (await sent).offset

    assert asyncio.run(asyncio.wait_for(send_through_outsider(), DEADLINE_S)) == RECORDS


def test_produce_to_a_node_without_a_replica_is_forwarded_to_the_leader(
    cluster: ClusterProcess,
) -> None:
    """It answered NOT_LEADER naming no leader, for ever."""
    outsider, replicas = create(cluster, "forwarded")
    with RawClient(cluster.address(outsider)) as client:
        first = produce_at(client, "forwarded", [b"a", b"b"])
        if first.HasField("error"):
            # The preferred leader did not lead: the answer names the one
            # that does, and the next request goes there.
            assert first.error.reason == "NOT_LEADER", first
            assert int(first.error.metadata["leader_id"]) in replicas, first
            first = produce_at(client, "forwarded", [b"a", b"b"])
        assert not first.HasField("error"), first
        second = client.produce_one(request("forwarded", [b"c"], partition=0))
        assert not second.HasField("error"), second
        assert second.appends[0].base_offset == 2, second
    with RawClient(cluster.address(replicas[0])) as client:
        assert [r.value for r in read_partition(client, "forwarded", 0)] == [b"a", b"b", b"c"]


def stream_member(client: RawClient, topic: str) -> ConsumeStream:
    subscribe = broker_pb2.Subscribe(
        topic=topic,
        group="g",
        mode=broker_pb2.CONSUME_MODE_STREAM,
        start=broker_pb2.StartPosition(kind=broker_pb2.START_KIND_EARLIEST),
        credit=broker_pb2.Credit(messages=0, bytes=0),
    )
    stream, _ = retry("subscribe", lambda: open_stream(client, subscribe))  # type: ignore[misc]
    return stream  # type: ignore[no-any-return]


def started_at(stream: ConsumeStream, partition: int) -> int:
    """The offset `partition` starts at in the stream's next Assignment that starts it."""
    while True:
        response = stream.next()
        kind = response.WhichOneof("kind")
        assert kind in ("assignment", "notice"), response
        if kind == "assignment":
            for start in response.assignment.started:
                if start.partition == partition:
                    return start.offset


def leave(stream: ConsumeStream) -> None:
    """Half-close (the member leaves at once) and read to the stream's end."""
    stream.send(None)  # type: ignore[arg-type]
    for _ in stream.call:
        pass


def test_a_member_on_a_node_without_a_replica_commits_and_the_next_owner_starts_there(
    cluster: ClusterProcess,
) -> None:
    """Its commits were refused REPLICA_NOT_AVAILABLE; the next owner restarted at 0."""
    outsider, replicas = create(cluster, "committed")
    with RawClient(cluster.address(replicas[0])) as client:
        assert not produce_at(client, "committed", [b"r%d" % i for i in range(RECORDS)]).HasField(
            "error"
        )

    with RawClient(cluster.address(outsider)) as client:
        first = stream_member(client, "committed")
        assert started_at(first, 0) == 0
        first.credit(RECORDS)
        assert len([r for b in read_batches(first, RECORDS) for r in b.records]) == RECORDS
        commit = broker_pb2.Commit(
            commit_id=1, offsets=[broker_pb2.PartitionOffset(partition=0, offset=COMMITTED)]
        )
        first.send(broker_pb2.ConsumeRequest(commit=commit))
        answer = first.next()
        assert answer.WhichOneof("kind") == "commit", answer
        assert not answer.commit.HasField("error"), answer.commit.error
        assert [(o.partition, o.offset) for o in answer.commit.offsets] == [(0, COMMITTED)]
        # A negative offset is refused and stores nothing.
        negative = broker_pb2.Commit(
            commit_id=2, offsets=[broker_pb2.PartitionOffset(partition=0, offset=-1)]
        )
        first.send(broker_pb2.ConsumeRequest(commit=negative))
        refused = first.next().commit
        assert refused.error.reason == "OFFSET_OUT_OF_RANGE", refused
        leave(first)

    with RawClient(cluster.address(replicas[1])) as client:
        second = stream_member(client, "committed")
        try:
            assert started_at(second, 0) == COMMITTED
        finally:
            second.close()


def test_a_queue_consumer_on_a_node_without_a_replica_gets_and_acks_every_record(
    cluster: ClusterProcess,
) -> None:
    """Its Subscribe was refused NOT_LEADER naming no leader, for ever: nothing arrived."""
    outsider, replicas = create(cluster, "queued")
    values = [b"q%d" % i for i in range(RECORDS)]
    with RawClient(cluster.address(replicas[0])) as client:
        assert not produce_at(client, "queued", values).HasField("error")

    async def consume_at_outsider() -> list[bytes]:
        async with weir.aio.Consumer(
            cluster.address(outsider), "queued", group="q", mode="queue", start="earliest"
        ) as consumer:
            got: list[weir.ConsumedRecord] = []
            while len(got) < RECORDS:
                record = await consumer.poll(DEADLINE_S)
                assert record is not None, [r.value for r in got]
                got.append(record)
            await consumer.ack(got)
            return [r.value for r in got]

    assert sorted(asyncio.run(asyncio.wait_for(consume_at_outsider(), DEADLINE_S))) == sorted(
        values
    )

    async def settled_at_the_leader() -> None:
        """The acks reached the leader: nothing is ready or in flight any more."""
        async with weir.aio.Admin(cluster.address(replicas[0])) as admin:
            while True:
                total = (await admin.queue_stats("queued", "q")).total("q")
                if total is not None and (total.ready, total.in_flight) == (0, 0):
                    return
                await asyncio.sleep(0.05)

    asyncio.run(asyncio.wait_for(settled_at_the_leader(), DEADLINE_S))


def test_a_queue_consumer_on_a_node_without_a_replica_moves_off_a_frozen_leader(
    cluster: ClusterProcess,
) -> None:
    """Last in the module: it freezes a node (and thaws it before it returns)."""
    outsider, replicas = create(cluster, "thaw")
    with RawClient(cluster.address(replicas[0])) as client:
        answer = produce_at(client, "thaw", [b"before-%d" % i for i in range(RECORDS)])
        assert not answer.HasField("error"), answer
    leader = leaders(cluster.address(replicas[0]), "thaw")[0]
    assert leader in replicas
    others = [n for n in replicas if n != leader]

    async def consume(consumer: weir.aio.Consumer, prefix: bytes) -> None:
        got: set[bytes] = set()
        while len(got) < RECORDS:
            for record in await consumer.poll_batch(RECORDS, timeout_s=1):
                if record.value.startswith(prefix):
                    got.add(record.value)
                consumer.ack_nowait(record)

    async def body() -> None:
        async with weir.aio.Consumer(
            cluster.address(outsider), "thaw", group="q", mode="queue", start="earliest"
        ) as consumer:
            async with asyncio.timeout(DEADLINE_S):
                await consume(consumer, b"before-")
            cluster.pause(leader)
            try:
                await asyncio.to_thread(
                    cluster.wait_until,
                    lambda: leaders(cluster.address(others[0]), "thaw")[0] in others,
                    DEADLINE_S,
                    f"a new leader of 'thaw' while node {leader} is frozen",
                )
                frozen_at = time.monotonic()
                new_leader = leaders(cluster.address(others[0]), "thaw")[0]
                with RawClient(cluster.address(new_leader)) as client:
                    answer = produce_at(client, "thaw", [b"during-%d" % i for i in range(RECORDS)])
                assert not answer.HasField("error"), answer
                # Once the relay's keepalive ends it (about a minute after it
                # opened, measured: "ping timeout"), and a reopen.
                async with asyncio.timeout(FROZEN_RELAY_DEADLINE_S):
                    await consume(consumer, b"during-")
                print(
                    f"node {leader} frozen; its records reached the outsider's consumer "
                    f"{time.monotonic() - frozen_at:.1f} s after node {new_leader} led"
                )
            finally:
                cluster.resume(leader)

    asyncio.run(body())
