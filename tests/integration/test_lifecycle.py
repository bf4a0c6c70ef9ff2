"""A node's life: graceful SIGTERM under load, restarts, and async durability.

SIGTERM while a producer pipelines acks=ALL requests: the node answers what
it accepted, refuses the rest with UNAVAILABLE / SHUTTING_DOWN (in a
response or as the stream's status), exits 0, and after a restart every
acknowledged record is at its acknowledged offset. Open consume streams end
with UNAVAILABLE / SHUTTING_DOWN at once rather than holding the shutdown.
A restart on the same data dir keeps topics, configs, offsets and group
offsets. Both durability modes run each of these end to end.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.broker_process import BrokerProcess
from tests.support.raw_client import (
    CALL_TIMEOUT_S,
    ConsumeStream,
    RawClient,
    offsets_of,
    open_stream,
    read_batches,
    read_partition,
    request,
    rich_status,
    settle,
    start_at,
    values_of,
)
from weir.v1 import admin_pb2, broker_pb2

pytestmark = [pytest.mark.integration]

DURABILITIES = ["sync", "async"]
BATCH_RECORDS = 10
REQUESTS_MAX = 200_000  # far more than can be sent before the SIGTERM lands
ACKED_BEFORE_SIGTERM = 300
# The node's default shutdown_grace_ms: a stream still open when it runs out
# would be cancelled, so ending well before it shows streams end by themselves.
SHUTDOWN_GRACE_S = 10.0
PROMPT_S = 5.0


@pytest.fixture(params=DURABILITIES)
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerProcess]:
    """A node in each durability mode."""
    process = BrokerProcess(tmp_path / "data", "--durability", request.param).start()
    try:
        yield process
    finally:
        process.stop()


def durability_of(client: RawClient) -> str:
    return client.admin.DescribeCluster(
        admin_pb2.DescribeClusterRequest(), timeout=CALL_TIMEOUT_S
    ).durability


def values(request_id: int) -> list[bytes]:
    return [b"req%06d-%02d" % (request_id, i) for i in range(BATCH_RECORDS)]


def commit(stream: ConsumeStream, commit_id: int, offsets: dict[int, int]) -> dict[int, int]:
    stream.send(
        broker_pb2.ConsumeRequest(
            commit=broker_pb2.Commit(
                commit_id=commit_id,
                offsets=[
                    broker_pb2.PartitionOffset(partition=p, offset=o) for p, o in offsets.items()
                ],
            )
        )
    )
    result = stream.next().commit
    assert result.commit_id == commit_id and not result.HasField("error"), result
    return {o.partition: o.offset for o in result.offsets}


def terminate_in_background(broker: BrokerProcess) -> tuple[ThreadPoolExecutor, Future[int]]:
    """Send one SIGTERM and wait for the exit in a thread; returns (pool, future of exit code)."""
    pool = ThreadPoolExecutor(max_workers=1)
    return pool, pool.submit(broker.terminate)


@pytest.mark.timeout(120)
def test_sigterm_while_pipelining_keeps_every_acknowledged_record(node: BrokerProcess) -> None:
    acked: dict[int, int] = {}  # request id -> base offset
    refused: list[tuple[int, str]] = []
    ended: list[tuple[grpc.StatusCode, str | None] | None] = []
    enough = threading.Event()

    with RawClient(node.address) as client:
        client.create_topic("life")
        requests = (request("life", values(i), request_id=i) for i in range(REQUESTS_MAX))

        def produce() -> None:
            try:
                for response in client.produce(requests, timeout_s=100):
                    if response.HasField("error"):
                        refused.append((response.error.code, response.error.reason))
                    else:
                        (append,) = response.appends
                        assert append.record_count == BATCH_RECORDS
                        acked[response.request_id] = append.base_offset
                    if len(acked) >= ACKED_BEFORE_SIGTERM:
                        enough.set()
                ended.append(None)
            except grpc.RpcError as error:
                ended.append(rich_status(error))
            finally:
                enough.set()

        producer = threading.Thread(target=produce)
        producer.start()
        assert enough.wait(60)
        assert len(acked) >= ACKED_BEFORE_SIGTERM, ended
        started = time.monotonic()
        assert node.terminate() == 0, node.output()
        assert time.monotonic() - started < SHUTDOWN_GRACE_S
        producer.join(60)
        assert not producer.is_alive()

    print(f"acked {len(acked)} requests, {len(refused)} refused, stream ended with {ended}")
    assert len(acked) < REQUESTS_MAX, "the SIGTERM landed while the producer was sending"
    (status,) = ended
    assert status is not None, "the stream does not end as if all went well"
    code, reason = status
    assert code == grpc.StatusCode.UNAVAILABLE, status
    assert reason in ("SHUTTING_DOWN", None), status
    assert set(refused) <= {(grpc.StatusCode.UNAVAILABLE.value[0], "SHUTTING_DOWN")}, refused

    node.start()
    with RawClient(node.address) as client:
        stored = [r.value for r in read_partition(client, "life", 0)]
    # Every acknowledged request sits at its acknowledged offset, byte for byte.
    for request_id, base_offset in acked.items():
        assert stored[base_offset : base_offset + BATCH_RECORDS] == values(request_id)
    # And the log is exactly the first requests in the order they were sent:
    # nothing lost in between, nothing duplicated, nothing half-written.
    written, rest = divmod(len(stored), BATCH_RECORDS)
    assert rest == 0
    assert written >= max(acked) + 1
    assert stored == [v for i in range(written) for v in values(i)]


@pytest.mark.timeout(120)
def test_sigterm_ends_open_consume_streams_promptly(node: BrokerProcess) -> None:
    with RawClient(node.address) as client:
        client.create_topic("open", partitions=2)
        for partition in (0, 1):
            response = client.produce_one(request("open", [b"a", b"b"], partition=partition))
            assert not response.HasField("error"), response.error
        # One stream waits for data (caught up, with credit left), one waits
        # for credit (none granted), one is a group member mid-way.
        waiting_data, _ = open_stream(
            client,
            broker_pb2.Subscribe(
                topic="open",
                start=start_at(broker_pb2.START_KIND_EARLIEST),
                credit=broker_pb2.Credit(messages=100, bytes=1 << 20),
            ),
        )
        assert len(values_of(read_batches(waiting_data, 4))) == 4
        waiting_credit, _ = open_stream(
            client,
            broker_pb2.Subscribe(topic="open", start=start_at(broker_pb2.START_KIND_EARLIEST)),
        )
        member, _ = open_stream(
            client,
            broker_pb2.Subscribe(
                topic="open",
                group="g",
                partitions=[1],
                start=start_at(broker_pb2.START_KIND_EARLIEST),
                credit=broker_pb2.Credit(messages=1, bytes=1 << 20),
            ),
        )
        assert offsets_of(read_batches(member, 1)) == [(1, 0)]
        assert commit(member, 1, {1: 1}) == {1: 1}
        for stream in (waiting_data, waiting_credit, member):
            assert settle(stream, 100) == []

        pool, exit_code = terminate_in_background(node)
        started = time.monotonic()
        try:
            for stream in (waiting_data, waiting_credit, member):
                with pytest.raises(grpc.RpcError) as raised:
                    stream.next()
                assert rich_status(raised.value) == (
                    grpc.StatusCode.UNAVAILABLE,
                    "SHUTTING_DOWN",
                )
            assert time.monotonic() - started < PROMPT_S
            assert exit_code.result(timeout=60) == 0
            assert time.monotonic() - started < SHUTDOWN_GRACE_S
        finally:
            for stream in (waiting_data, waiting_credit, member):
                stream.close()
            pool.shutdown()

    node.start()
    with RawClient(node.address) as client:
        stream, subscribed = open_stream(
            client, broker_pb2.Subscribe(topic="open", group="g", partitions=[1])
        )
        stream.close()
        assert [(p.partition, p.offset) for p in subscribed.partitions] == [(1, 1)]


@pytest.mark.timeout(60)
def test_produce_requests_after_sigterm_are_refused_and_not_written(
    broker: BrokerProcess,
) -> None:
    with RawClient(broker.address) as client:
        client.create_topic("late")
        assert not client.produce_one(request("late", [b"before"])).HasField("error")
        # A produce stream opened before the signal, idle when it lands.
        pending: queue.Queue[broker_pb2.ProduceRequest | None] = queue.Queue(maxsize=10)
        idle = client.produce(iter(pending.get, None), timeout_s=30)
        pending.put(request("late", [b"early"], request_id=1))
        assert next(idle).appends[0].base_offset == 1
        # A consume stream tells when the node has begun to stop.
        sentinel, _ = open_stream(client, broker_pb2.Subscribe(topic="late"))

        pool, exit_code = terminate_in_background(broker)
        try:
            with pytest.raises(grpc.RpcError) as raised:
                sentinel.next()
            assert rich_status(raised.value) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")

            # The node is stopping: a request on the open stream is not taken.
            pending.put(request("late", [b"too late"], request_id=2))
            pending.put(None)
            with pytest.raises(grpc.RpcError) as raised:
                answers = list(idle)
                pytest.fail(f"the stream ended without an error after {answers}")
            code, reason = rich_status(raised.value)
            assert code == grpc.StatusCode.UNAVAILABLE and reason in ("SHUTTING_DOWN", None)

            # Nor is one on a new stream, whether the node still answers it
            # (with SHUTTING_DOWN) or no longer accepts calls (UNAVAILABLE).
            try:
                answers = list(client.produce([request("late", [b"new stream"])], timeout_s=30))
            except grpc.RpcError as error:
                code, reason = rich_status(error)
                assert code == grpc.StatusCode.UNAVAILABLE and reason in ("SHUTTING_DOWN", None)
            else:
                assert [(a.error.code, a.error.reason) for a in answers] == [
                    (grpc.StatusCode.UNAVAILABLE.value[0], "SHUTTING_DOWN")
                ]
            assert exit_code.result(timeout=30) == 0
        finally:
            sentinel.close()
            pool.shutdown()

    broker.start()
    with RawClient(broker.address) as client:
        assert [r.value for r in read_partition(client, "late", 0)] == [b"before", b"early"]


@pytest.mark.timeout(60)
def test_sigterm_reports_not_serving_to_health_watchers(broker: BrokerProcess) -> None:
    with RawClient(broker.address) as client:
        health = health_pb2_grpc.HealthStub(client.channel)
        watch = health.Watch(
            health_pb2.HealthCheckRequest(service="weir.v1.BrokerService"), timeout=50
        )
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        pool, exit_code = terminate_in_background(broker)
        try:
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()  # a watch is open-ended; the node waits for it to go
            assert exit_code.result(timeout=30) == 0
        finally:
            watch.cancel()
            pool.shutdown()


@pytest.mark.timeout(120)
def test_restart_keeps_topics_configs_offsets_and_group_offsets(node: BrokerProcess) -> None:
    with RawClient(node.address) as client:
        mode = durability_of(client)
        client.create_topic("kept", partitions=3, retention_ms=3_600_000, record_bytes_max=5000)
        client.create_topic("other")
        requests = [
            request("kept", [b"k%d-%d" % (i, j) for j in range(1 + i % 4)], i, partition=i % 3)
            for i in range(60)
        ]
        assert not any(r.HasField("error") for r in client.produce(requests))
        assert not client.produce_one(request("other", [b"solo"])).HasField("error")
        stream, _ = open_stream(client, broker_pb2.Subscribe(topic="kept", group="g"))
        try:
            assert commit(stream, 1, {0: 5, 2: 9}) == {0: 5, 2: 9}
        finally:
            stream.close()
        before_topics = client.admin.ListTopics(admin_pb2.ListTopicsRequest()).topics
        before_kept = client.describe("kept")
        before_records = {p: read_partition(client, "kept", p) for p in range(3)}

    # A graceful restart, then a crash: neither loses anything that was answered.
    for stop in (node.terminate, node.kill):
        stop()
        node.start()
        with RawClient(node.address) as client:
            assert durability_of(client) == mode
            assert client.admin.ListTopics(admin_pb2.ListTopicsRequest()).topics == before_topics
            assert client.describe("kept") == before_kept, "offsets, sizes and config"
            for partition in range(3):
                assert read_partition(client, "kept", partition) == before_records[partition]
            assert [r.value for r in read_partition(client, "other", 0)] == [b"solo"]
            stream, subscribed = open_stream(
                client,
                broker_pb2.Subscribe(
                    topic="kept", group="g", start=start_at(broker_pb2.START_KIND_EARLIEST)
                ),
            )
            try:
                assert {p.partition: p.offset for p in subscribed.partitions} == {
                    0: 5,
                    1: 0,
                    2: 9,
                }
                assert commit(stream, 2, {0: 1, 2: 9}) == {0: 5, 2: 9}, "never backwards"
            finally:
                stream.close()

    with RawClient(node.address) as client:
        # New records continue the offsets; none is reused.
        ends = [p.end_offset for p in before_kept.partitions]
        response = client.produce_one(request("kept", [b"after"], partition=1))
        assert response.appends[0].base_offset == ends[1]
        assert client.end_offsets("kept") == [ends[0], ends[1] + 1, ends[2]]


@pytest.mark.timeout(120)
def test_async_durability_end_to_end(tmp_path: Path) -> None:
    node = BrokerProcess(tmp_path / "data", "--durability", "async").start()
    try:
        with RawClient(node.address) as client:
            assert durability_of(client) == "async"
            client.create_topic("fast", partitions=2)
            stream, _ = open_stream(
                client,
                broker_pb2.Subscribe(
                    topic="fast",
                    group="readers",
                    start=start_at(broker_pb2.START_KIND_EARLIEST),
                    credit=broker_pb2.Credit(messages=10_000, bytes=1 << 30),
                ),
            )
            try:
                requests = [request("fast", values(i), i, partition=i % 2) for i in range(500)]
                responses = list(client.produce(requests))
                assert not any(r.HasField("error") for r in responses)
                batches = read_batches(stream, 500 * BATCH_RECORDS)
                for partition in (0, 1):
                    got = [b for b in batches if b.partition == partition]
                    assert values_of(got) == [
                        v for i in range(partition, 500, 2) for v in values(i)
                    ]
                assert commit(stream, 1, {0: 2500, 1: 2000}) == {0: 2500, 1: 2000}
            finally:
                stream.close()

        assert node.terminate() == 0
        node.start()
        with RawClient(node.address) as client:
            assert durability_of(client) == "async"
            assert client.end_offsets("fast") == [2500, 2500]
            for partition in (0, 1):
                stored = [r.value for r in read_partition(client, "fast", partition)]
                assert stored == [v for i in range(partition, 500, 2) for v in values(i)]
            stream, subscribed = open_stream(
                client, broker_pb2.Subscribe(topic="fast", group="readers")
            )
            stream.close()
            assert {p.partition: p.offset for p in subscribed.partitions} == {0: 2500, 1: 2000}
    finally:
        node.stop()
