"""Slow group consumers on three real nodes: bounded memory, a producer that never waits, nothing lost.

Issue 8, "What it must show": a stream-mode member and a queue-mode
consumer, each granting 10 messages of credit and then reading nothing,
while a producer writes 500 MiB to their topic. Each node's resident
memory stays under RSS_BOUND_BYTES (sampled from /proc while the producer
runs); the producer finishes with every request acknowledged while the two
consumers still hold exactly their 10 records (so it never waited for
them); its rate is printed next to a run of the same size with no consumer
attached (speed is `make bench`'s business, not asserted); then both
consumers grant more credit and receive every record: the member in offset
order, the queue consumer each record once, all acked. The producer sends
again what was refused with a retriable error (a leadership move), so
records are told apart by the id each carries, not by their offset.

Clients are built from the generated stubs (tests/support/raw_client.py),
as a foreign client would; the members are served by different nodes.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.integration.test_cluster_replication import create_topic, wait_ready
from tests.support.cluster_process import ClusterProcess
from tests.support.raw_client import ConsumeStream, RawClient, request
from weir.v1 import broker_pb2

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

VALUE_BYTES = 64 * 1024
RECORDS = 8_000  # 8,000 x 64 KiB = 500 MiB
BATCH_RECORDS = 32  # 2 MiB per request
CREDIT_MESSAGES = 10
# Each node's bound while it replicates 500 MiB for stalled consumers: the
# storage writer queue (64 MiB) and one write transaction (16 MiB), the
# peer transport's bounded send queues and gRPC windows, and the
# interpreter with the Raft groups and coordinator state (~100 MiB).
RSS_BOUND_BYTES = 384 * 1024 * 1024
_PATTERN = bytes(range(256)) * (VALUE_BYTES // 256)


def value(i: int) -> bytes:
    return i.to_bytes(8, "big") + _PATTERN[8:]


def anon_rss_bytes(pid: int) -> int:
    """The process's own memory (RssAnon): heap, stacks, buffers.

    Not VmRSS: that also counts the pages of LMDB's memory map the process
    touched (RssFile), which the kernel reclaims at will and which grow with
    the data a node writes and replicates, buffered or not.
    """
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon")


class RssSampler(threading.Thread):
    """Samples every node's resident memory every 50 ms until `done`."""

    def __init__(self, cluster: ClusterProcess) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.peak = dict.fromkeys(cluster.node_ids, 0)
        self.samples = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            for n in self.cluster.node_ids:
                self.peak[n] = max(self.peak[n], anon_rss_bytes(self.cluster.node(n).pid))
            self.samples += 1


def produce_all(client: RawClient, topic: str) -> float:
    """Writes RECORDS records; seconds taken. Every record must be acknowledged in the end.

    A request refused with a retriable error (PROPOSAL_DROPPED while the
    leader balancer moves the partition's leadership, which happens when
    the new topic tipped the cluster's leader counts) is sent again, as
    any client would; records may then be stored out of order, so readers
    check record ids (`record_id`), not values at offsets.
    """
    started = time.monotonic()
    pending = list(range(0, RECORDS, BATCH_RECORDS))
    request_id = 0
    for _ in range(10):
        first_id = request_id
        requests = []
        for j in pending:
            requests.append(
                request(
                    topic, [value(i) for i in range(j, j + BATCH_RECORDS)], request_id=request_id
                )
            )
            request_id += 1
        answers = list(client.produce(iter(requests), timeout_s=600))
        assert len(answers) == len(pending)
        failed = [a for a in answers if a.HasField("error")]
        assert all(a.error.retriable for a in failed), failed[:3]
        pending = [pending[a.request_id - first_id] for a in failed]
        if not pending:
            return time.monotonic() - started
    raise AssertionError(f"{len(pending)} requests still refused after 10 rounds")


def record_id(record_value: bytes) -> int:
    """The index `value(i)` wrote into a record, checked against the rest of its bytes."""
    i = int.from_bytes(record_value[:8], "big")
    assert record_value == value(i), f"record {i} changed"
    return i


def records_until_quiet(stream: ConsumeStream, want: int) -> list[broker_pb2.ConsumedBatch]:
    """Batches read until `want` records came; skips assignments and other non-record answers."""
    batches: list[broker_pb2.ConsumedBatch] = []
    got = 0
    while got < want:
        response = stream.next()
        if response.WhichOneof("kind") == "batch":
            batches.append(response.batch)
            got += len(response.batch.records)
    return batches


def test_slow_stream_member_and_queue_consumer_cost_bounded_memory_and_lose_nothing(
    cluster: ClusterProcess,
) -> None:
    wait_ready(cluster)
    create_topic(cluster, 1, "baseline", 1)
    create_topic(cluster, 1, "slow", 1)
    with (
        RawClient(cluster.address(1)) as producer,
        RawClient(cluster.address(2)) as member_client,
        RawClient(cluster.address(3)) as queue_client,
    ):
        baseline_s = produce_all(producer, "baseline")

        earliest = broker_pb2.StartPosition(kind=broker_pb2.START_KIND_EARLIEST)
        credit = broker_pb2.Credit(messages=CREDIT_MESSAGES, bytes=1 << 40)
        member = ConsumeStream(
            member_client,
            broker_pb2.Subscribe(
                topic="slow",
                group="slow-stream",
                mode=broker_pb2.CONSUME_MODE_STREAM,
                start=earliest,
                credit=credit,
                # This client sends nothing while the producer writes (11-12 s
                # on a slow machine): with the default 10 s session it was
                # removed from its group before the test looked at it.
                session_timeout_ms=300_000,
            ),
            timeout_s=800,
        )
        worker = ConsumeStream(
            queue_client,
            broker_pb2.Subscribe(
                topic="slow",
                group="slow-queue",
                mode=broker_pb2.CONSUME_MODE_QUEUE,
                start=earliest,
                credit=credit,
                ack_deadline_ms=600_000,
            ),
            timeout_s=800,
        )
        assert member.next().WhichOneof("kind") == "subscribed"
        assignment = member.next()
        assert list(assignment.assignment.partitions) == [0], assignment
        assert worker.next().WhichOneof("kind") == "subscribed"

        sampler = RssSampler(cluster)
        sampler.start()
        slow_s = produce_all(producer, "slow")
        sampler.done.set()
        sampler.join()
        print(
            f"500 MiB produced in {slow_s:.1f} s with two stalled consumers,"
            f" {baseline_s:.1f} s with none; peak RSS per node (MiB):"
            f" { {n: round(p / 2**20) for n, p in sampler.peak.items()} }"
        )
        assert sampler.samples > 0
        assert max(sampler.peak.values()) < RSS_BOUND_BYTES, sampler.peak

        # While the producer wrote everything, each consumer got its credit's
        # worth and nothing more (a Heartbeat/Ack round trip shows nothing is
        # in flight beyond it).
        member_batches = records_until_quiet(member, CREDIT_MESSAGES)
        queue_batches = records_until_quiet(worker, CREDIT_MESSAGES)
        assert sum(len(b.records) for b in member_batches) == CREDIT_MESSAGES
        assert sum(len(b.records) for b in queue_batches) == CREDIT_MESSAGES
        worker.send(
            broker_pb2.ConsumeRequest(
                ack=broker_pb2.Ack(
                    request_id=1, ack_ids=[d.ack_id for b in queue_batches for d in b.deliveries]
                )
            )
        )
        while (response := worker.next()).WhichOneof("kind") != "ack":
            raise AssertionError(f"sent beyond the credit: {response}")
        assert list(response.ack.failures) == []

        # More credit: everything arrives.
        member.credit(RECORDS)
        member_batches += records_until_quiet(member, RECORDS - CREDIT_MESSAGES)
        offsets = [b.base_offset + i for b in member_batches for i in range(len(b.records))]
        assert offsets == list(range(RECORDS))
        ids = [record_id(r.value) for b in member_batches for r in b.records]
        assert sorted(ids) == list(range(RECORDS))

        worker.credit(RECORDS)
        seen = {d.offset for b in queue_batches for d in b.deliveries}
        queue_ids = {record_id(r.value) for b in queue_batches for r in b.records}
        request_id = 2
        while len(seen) < RECORDS:
            (batch,) = records_until_quiet(worker, 1)
            for d, record in zip(batch.deliveries, batch.records, strict=True):
                assert d.offset not in seen, f"offset {d.offset} delivered twice"
                queue_ids.add(record_id(record.value))
                seen.add(d.offset)
            worker.send(
                broker_pb2.ConsumeRequest(
                    ack=broker_pb2.Ack(
                        request_id=request_id, ack_ids=[d.ack_id for d in batch.deliveries]
                    )
                )
            )
            request_id += 1
        assert seen == set(range(RECORDS))
        assert queue_ids == set(range(RECORDS))
        member.close()
        worker.close()
