"""Three real `weir serve` processes replicate partitions through Raft: identical logs everywhere.

Issue 6, "What it must show": a 6-partition topic with replication factor 3
takes 100,000 records with acks=ALL and every replica ends up with the same
log; a consumer never reads a record that is not committed, even on the
leader it was appended to while that leader was cut off.

A consumer connected to one node reads what *that* node applied (DESIGN §4,
"Committed-only reads"), so reading every partition from every node and
comparing checksums compares the replicas themselves.

The helpers here are shared with test_cluster_faults.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Iterator, Sequence

import grpc
import pytest

import weir.aio
from tests.support.cluster_process import ClusterProcess
from tests.support.raw_client import RawClient, error_info, request
from weir.v1 import admin_pb2, admin_pb2_grpc, broker_pb2, broker_pb2_grpc, records_pb2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CALL_TIMEOUT_S = 20.0
READ_TIMEOUT_S = 120.0
# Every node of a fresh cluster registers its client address with the
# controller within a second or two; a topic with replication factor 3 needs
# all three registered (the controller refuses more copies than nodes).
REGISTER_TIMEOUT_S = 30.0
RECORDS = 100_000
PARTITIONS = 6
VALUE_BYTES = 100

Log = list[tuple[int, bytes]]  # (offset, value) in offset order


# ---------------------------------------------------------------------------
# Helpers (also used by test_cluster_faults.py)


def wait_ready(cluster: ClusterProcess, among: Sequence[int] | None = None) -> None:
    """Every node of `among` sees the others alive and knows every node's client address."""
    nodes = list(cluster.node_ids if among is None else among)
    cluster.wait_converged(nodes)
    expected = {n: cluster.address(n) for n in cluster.node_ids}
    for node in nodes:
        cluster.wait_until(
            lambda node=node: (
                {n.node_id: n.address for n in cluster.describe(node).nodes} == expected
            ),
            REGISTER_TIMEOUT_S,
            f"node {node} knowing every node's client address",
        )


def create_topic(
    cluster: ClusterProcess, node: int, name: str, partitions: int, timeout_s: float = 60.0
) -> admin_pb2.Topic:
    """CreateTopic with replication factor 3 on `node`, retrying UNAVAILABLE (no controller yet)."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(cluster.address(node)) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        while True:
            try:
                response = stub.CreateTopic(
                    admin_pb2.CreateTopicRequest(
                        name=name, partition_count=partitions, replication_factor=3
                    ),
                    timeout=CALL_TIMEOUT_S,
                )
                return response.topic
            except grpc.RpcError as error:
                code = error.code()  # type: ignore[attr-defined]
                retriable = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                if code not in retriable or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)


def describe_topic(address: str, name: str) -> admin_pb2.DescribeTopicResponse:
    with grpc.insecure_channel(address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        return stub.DescribeTopic(admin_pb2.DescribeTopicRequest(name=name), timeout=CALL_TIMEOUT_S)


def end_offsets(address: str, name: str) -> list[int]:
    return [p.end_offset for p in describe_topic(address, name).partitions]


def leaders(address: str, name: str) -> list[int]:
    """Each partition's leader as the node at `address` knows it (0: none known)."""
    return [p.leader_id for p in describe_topic(address, name).partitions]


def wait_led_by(
    cluster: ClusterProcess, name: str, among: Sequence[int], timeout_s: float = 60.0
) -> None:
    """Every node of `among` knows a leader in `among` for every partition, and they agree."""

    def led() -> bool:
        views = [leaders(cluster.address(n), name) for n in among]
        return all(v == views[0] for v in views) and all(lead in among for lead in views[0])

    cluster.wait_until(led, timeout_s, f"every partition of {name!r} led within {list(among)}")


def read_partition(
    address: str,
    topic: str,
    partition: int,
    end_offset: int,
    start_offset: int = 0,
    timeout_s: float = READ_TIMEOUT_S,
) -> Log:
    """The records of one partition in [start_offset, end_offset) as the node at `address` serves them."""
    if end_offset <= start_offset:
        return []
    done = threading.Event()
    subscribe = broker_pb2.ConsumeRequest(
        subscribe=broker_pb2.Subscribe(
            topic=topic,
            partitions=[partition],
            offsets={partition: start_offset},
            credit=broker_pb2.Credit(messages=1 << 30, bytes=1 << 40),
        )
    )

    def requests() -> Iterator[broker_pb2.ConsumeRequest]:
        yield subscribe
        done.wait(timeout_s)

    log: Log = []
    with grpc.insecure_channel(address) as channel:
        call = broker_pb2_grpc.BrokerServiceStub(channel).Consume(requests(), timeout=timeout_s)
        try:
            for response in call:
                if response.WhichOneof("kind") != "batch":
                    continue
                batch = response.batch
                assert batch.partition == partition, batch.partition
                for i, record in enumerate(batch.records):
                    log.append(
                        (batch.base_offset + i, record.SerializeToString(deterministic=True))
                    )
                if log and log[-1][0] >= end_offset - 1:
                    break
        finally:
            done.set()
            call.cancel()
    offsets = [offset for offset, _ in log]
    assert offsets == list(range(start_offset, start_offset + len(log))), (
        f"{address} partition {partition}: offsets not dense from {start_offset}"
    )
    return [entry for entry in log if entry[0] < end_offset]


def digest(log: Log) -> str:
    h = hashlib.sha256()
    for offset, record in log:
        h.update(offset.to_bytes(8, "big"))
        h.update(len(record).to_bytes(4, "big"))
        h.update(record)
    return h.hexdigest()[:16]


def assert_identical_logs(
    cluster: ClusterProcess, topic: str, among: Sequence[int] | None = None
) -> list[Log]:
    """Wait until every node of `among` applied the same end offsets, then compare every replica.

    Returns each partition's log (identical on every node).
    """
    nodes = list(cluster.node_ids if among is None else among)
    views: dict[int, list[int]] = {}

    def same_ends() -> bool:
        views.update({n: end_offsets(cluster.address(n), topic) for n in nodes})
        return all(views[n] == views[nodes[0]] for n in nodes)

    cluster.wait_until(same_ends, 60.0, f"nodes {nodes} applying the same end offsets of {topic!r}")
    ends = views[nodes[0]]
    logs: list[Log] = []
    for partition, end in enumerate(ends):
        per_node = {n: read_partition(cluster.address(n), topic, partition, end) for n in nodes}
        digests = {n: digest(log) for n, log in per_node.items()}
        first = per_node[nodes[0]]
        if len(set(digests.values())) != 1:
            differs = next(
                (i for i in range(end) if len({per_node[n][i] for n in nodes}) > 1), None
            )
            raise AssertionError(
                f"partition {partition} of {topic!r} differs between replicas: {digests} "
                f"(end offset {end}; first differing offset {differs})\n{cluster.outputs()}"
            )
        assert len(first) == end
        logs.append(first)
    return logs


def value_of(record_bytes: bytes) -> bytes:
    """A stored record's value (records are compared in their stored encoding)."""
    return records_pb2.Record.FromString(record_bytes).value


# ---------------------------------------------------------------------------
# Identical replicas


async def _produce_all(bootstrap: str, topic: str) -> list[list[bytes]]:
    """RECORDS records, record i to partition i % PARTITIONS; returns each partition's values by offset."""
    by_partition: list[dict[int, bytes]] = [{} for _ in range(PARTITIONS)]
    pad = b"x" * (VALUE_BYTES - 8)
    async with weir.aio.Producer(bootstrap, acks="all") as producer:
        await producer.partitions_for(topic)
        sent = []
        for i in range(RECORDS):
            value = b"%08d" % i + pad
            sent.append((value, await producer.send(topic, value, partition=i % PARTITIONS)))
        await producer.flush()
        for value, future in sent:
            meta = await future
            assert meta.offset not in by_partition[meta.partition], meta
            by_partition[meta.partition][meta.offset] = value
    return [[d[o] for o in sorted(d)] for d in by_partition]


@pytest.mark.slow
def test_every_replica_holds_the_identical_log_after_100k_records(
    cluster: ClusterProcess,
) -> None:
    wait_ready(cluster)
    create_topic(cluster, 1, "replicated", PARTITIONS)
    wait_led_by(cluster, "replicated", cluster.node_ids)

    acknowledged = asyncio.run(_produce_all(",".join(cluster.addresses), "replicated"))

    # acks=ALL: every acknowledged record is committed; offsets are dense.
    assert sum(len(v) for v in acknowledged) == RECORDS
    for partition, values in enumerate(acknowledged):
        assert len(values) in (RECORDS // PARTITIONS, RECORDS // PARTITIONS + 1), partition
    logs = assert_identical_logs(cluster, "replicated")
    for partition, log in enumerate(logs):
        assert [value_of(r) for _, r in log] == acknowledged[partition], (
            f"partition {partition}: the replicas' log is not what was acknowledged"
        )


# ---------------------------------------------------------------------------
# Committed-only reads


class Tail:
    """A live consumer of one partition on one node, from offset 0, collecting what it reads."""

    def __init__(self, address: str, topic: str, partition: int) -> None:
        self.address = address
        self.values: list[tuple[int, bytes]] = []
        self.error: grpc.RpcError | None = None
        self._done = threading.Event()
        self._channel = grpc.insecure_channel(address)
        subscribe = broker_pb2.ConsumeRequest(
            subscribe=broker_pb2.Subscribe(
                topic=topic,
                partitions=[partition],
                offsets={partition: 0},
                credit=broker_pb2.Credit(messages=1 << 30, bytes=1 << 40),
            )
        )

        def requests() -> Iterator[broker_pb2.ConsumeRequest]:
            yield subscribe
            self._done.wait(READ_TIMEOUT_S)

        self._call = broker_pb2_grpc.BrokerServiceStub(self._channel).Consume(
            requests(), timeout=READ_TIMEOUT_S
        )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for response in self._call:
                if response.WhichOneof("kind") == "batch":
                    batch = response.batch
                    self.values.extend(
                        (batch.base_offset + i, r.value) for i, r in enumerate(batch.records)
                    )
        except grpc.RpcError as error:
            if not self._done.is_set():
                self.error = error

    def close(self) -> None:
        self._done.set()
        self._call.cancel()
        self._thread.join(10)
        self._channel.close()


def test_no_consumer_reads_what_a_cut_off_leader_appended(
    proxied_cluster: ClusterProcess,
) -> None:
    cluster = proxied_cluster
    wait_ready(cluster)
    create_topic(cluster, 1, "cut", 1)
    wait_led_by(cluster, "cut", cluster.node_ids)
    old_leader = leaders(cluster.address(1), "cut")[0]
    followers = [n for n in cluster.node_ids if n != old_leader]
    with RawClient(cluster.address(old_leader)) as client:
        response = client.produce_one(request("cut", [b"committed-%d" % i for i in range(10)]))
        assert not response.HasField("error"), response.error
    cluster.wait_until(
        lambda: all(end_offsets(cluster.address(n), "cut") == [10] for n in cluster.node_ids),
        what="every replica applying the first ten records",
    )
    # A consumer on every node, the cut-off leader's included, tails the partition
    # for the whole test: none may ever read the records appended on the cut side.
    tails = {n: Tail(cluster.address(n), "cut", 0) for n in cluster.node_ids}
    try:
        cluster.isolate(old_leader)
        # The leader still believes it leads until CheckQuorum ends its term,
        # so it appends these to its own log; nothing can commit them.
        uncommitted = [b"uncommitted-%d" % i for i in range(5)]
        answers: list[broker_pb2.ProduceResponse | grpc.RpcError] = []

        def append_on_cut_side() -> None:
            with RawClient(cluster.address(old_leader)) as client:
                try:
                    answers.extend(
                        client.produce(
                            (
                                request("cut", [value], request_id=i + 1)
                                for i, value in enumerate(uncommitted)
                            ),
                            timeout_s=60,
                        )
                    )
                except grpc.RpcError as error:
                    answers.append(error)

        appender = threading.Thread(target=append_on_cut_side, daemon=True)
        appender.start()
        # The majority side elects a new leader and commits new records.
        wait_led_by(cluster, "cut", followers)
        new_leader = leaders(cluster.address(followers[0]), "cut")[0]
        with RawClient(cluster.address(new_leader)) as client:
            response = client.produce_one(request("cut", [b"after-%d" % i for i in range(5)]))
            assert not response.HasField("error"), response.error
        cluster.heal()
        appender.join(60)
        assert not appender.is_alive(), "the appends on the cut side were never answered"
        for answer in answers:
            if isinstance(answer, grpc.RpcError):
                continue  # the call failed: nothing acknowledged
            assert answer.HasField("error"), (
                f"a write on the cut-off side was acknowledged: {answer}\n{cluster.outputs()}"
            )
            assert answer.error.reason in (
                "NOT_LEADER",
                "NOT_WRITTEN",
                "OUTCOME_UNKNOWN",
                "PROPOSAL_DROPPED",
            ), answer.error
        wait_ready(cluster)
        logs = assert_identical_logs(cluster, "cut")
        values = [value_of(r) for _, r in logs[0]]
        assert values == [b"committed-%d" % i for i in range(10)] + [
            b"after-%d" % i for i in range(5)
        ]
        cluster.wait_until(
            lambda: all(len(t.values) >= 15 for t in tails.values()),
            what="every tailing consumer reading the committed records",
        )
    finally:
        for tail in tails.values():
            tail.close()
    for node, tail in tails.items():
        assert tail.error is None, (node, error_info(tail.error))
        seen = [v for _, v in tail.values]
        assert not any(v.startswith(b"uncommitted") for v in seen), (
            f"node {node} served an uncommitted record: {seen}\n{cluster.outputs()}"
        )
        assert tail.values == [(o, values[o]) for o in range(len(tail.values))], node
