"""Dead-letter topic names on real nodes (`weir serve`), through the generated stubs and the CLI.

A topic of 247 characters has no valid default dead-letter topic
(`<topic>.dlq` would have 251). It is created and read in stream mode as
any topic; a queue-mode Subscribe on it is refused with FAILED_PRECONDITION
DEAD_LETTER_TOPIC_REQUIRED and builds nothing (no queue state, no topic),
until its `dead_letter_topic` is set, after which its dead letters go
there. A topic of 245 characters keeps its default (`<topic>.dlq`, 249).
On three nodes every node refuses it, and so does a partition's leader
when another node's relay subscribes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.integration.test_cluster_replication import (
    create_topic,
    leaders,
    wait_led_by,
    wait_ready,
)
from tests.support.broker_process import BrokerProcess
from tests.support.cluster_process import ClusterProcess
from tests.support.raw_client import (
    ConsumeStream,
    RawClient,
    open_stream,
    read_partition,
    request,
    rich_status,
    start_at,
)
from weir.v1 import admin_pb2, broker_pb2, broker_pb2_grpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

LONG = "l" * 247
EDGE = "e" * 245  # the longest name whose `<topic>.dlq` is a topic name
GROUP = "workers"


@pytest.fixture
def client(broker: BrokerProcess) -> Iterator[RawClient]:
    with RawClient(broker.address) as client:
        yield client


def queue_subscribe(topic: str) -> broker_pb2.Subscribe:
    return broker_pb2.Subscribe(
        topic=topic,
        group=GROUP,
        mode=broker_pb2.CONSUME_MODE_QUEUE,
        start=start_at(broker_pb2.START_KIND_EARLIEST),
        credit=broker_pb2.Credit(messages=10, bytes=1 << 20),
    )


def refusal(client: RawClient, topic: str) -> tuple[grpc.StatusCode, error_details_pb2.ErrorInfo]:
    stream = ConsumeStream(client, queue_subscribe(topic), timeout_s=30)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            stream.next()
    finally:
        stream.close()
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return caught.value.code(), info  # type: ignore[attr-defined]


def topic_names(client: RawClient) -> list[str]:
    topics = client.admin.ListTopics(admin_pb2.ListTopicsRequest(), timeout=30).topics
    return sorted(t.name for t in topics)


def queue_groups(client: RawClient, topic: str) -> list[str]:
    stats = client.admin.QueueStats(admin_pb2.QueueStatsRequest(topic=topic), timeout=30)
    return sorted({p.group for p in stats.partitions})


def nack_once(client: RawClient, topic: str) -> None:
    """Take the first record in queue mode and nack it (max_deliveries 1: its last delivery)."""
    stream, _ = open_stream(client, queue_subscribe(topic))
    try:
        while (response := stream.next()).WhichOneof("kind") != "batch":
            pass
        ack_id = response.batch.deliveries[0].ack_id
        stream.send(broker_pb2.ConsumeRequest(nack=broker_pb2.Nack(request_id=1, ack_ids=[ack_id])))
        while (response := stream.next()).WhichOneof("kind") != "ack":
            pass
        assert not response.ack.failures, response.ack
    finally:
        stream.close()


def wait_records(client: RawClient, topic: str, count: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if sum(client.end_offsets(topic)) >= count:
                return
        except grpc.RpcError:
            pass  # not created yet: polled, since no event announces a dead letter
        time.sleep(0.05)
    raise AssertionError(f"{topic} never got {count} records")


def weir_cli(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "weir.server.cli", "--bootstrap", address, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_a_247_character_topic_in_queue_mode_needs_its_dead_letter_topic(
    client: RawClient, broker: BrokerProcess
) -> None:
    created = weir_cli(broker.address, "topic", "create", LONG, "--partitions", "2")
    assert created.returncode == 0, created.stderr
    assert "DEAD_LETTER_TOPIC_REQUIRED" in created.stderr  # said at once, created anyway
    client.produce_one(request(LONG, [b"job"]))
    before = topic_names(client)

    code, info = refusal(client, LONG)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert info.reason == "DEAD_LETTER_TOPIC_REQUIRED"
    assert info.metadata["topic"] == LONG
    assert info.metadata["field"] == "dead_letter_topic"
    assert info.metadata["topic_chars"] == "247"
    assert info.metadata["retriable"] == "false"
    # Nothing changed: no queue state, no topic, the record unread by any group.
    assert queue_groups(client, LONG) == []
    assert topic_names(client) == before
    assert client.end_offsets(LONG) == [1, 0]

    # Stream mode reads it as before; so does everything the CLI shows.
    assert [r.value for r in read_partition(client, LONG, 0)] == [b"job"]
    described = weir_cli(broker.address, "topic", "describe", LONG)
    assert described.returncode == 0, described.stderr
    assert "dead-letter topic:  none (the name is too long" in described.stdout
    listed = weir_cli(broker.address, "--json", "dlq", "list", LONG)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {"dead_letter_topic": None, "records": []}

    # With a dead-letter topic of its own, queue mode works and dead-letters there.
    client.admin.UpdateTopicConfig(
        admin_pb2.UpdateTopicConfigRequest(
            name=LONG, config=admin_pb2.TopicConfig(max_deliveries=1, dead_letter_topic="long-dead")
        ),
        timeout=30,
    )
    nack_once(client, LONG)
    wait_records(client, "long-dead", 1)
    [record] = read_partition(client, "long-dead", 0)
    assert (record.value, record.headers["weir-dlq-topic"]) == (b"job", LONG.encode())
    assert queue_groups(client, LONG) == [GROUP]


def test_a_245_character_topic_keeps_its_default_and_max_deliveries_0_needs_none(
    client: RawClient,
) -> None:
    client.create_topic(EDGE, max_deliveries=1)
    client.produce_one(request(EDGE, [b"poison"]))
    nack_once(client, EDGE)
    wait_records(client, EDGE + ".dlq", 1)
    assert len(EDGE + ".dlq") == 249

    never = "n" * 249
    client.create_topic(never, max_deliveries=0)
    client.produce_one(request(never, [b"x"]))
    stream, subscribed = open_stream(client, queue_subscribe(never))
    try:
        assert subscribed.topic == never
        while (response := stream.next()).WhichOneof("kind") != "batch":
            pass
        assert [r.value for r in response.batch.records] == [b"x"]
    finally:
        stream.close()


def test_three_nodes_refuse_it_on_every_node_and_in_a_relay(cluster: ClusterProcess) -> None:
    """The check runs where the client subscribes, before any relay, and again at the leader."""
    wait_ready(cluster)
    create_topic(cluster, 1, LONG, 3)
    wait_led_by(cluster, LONG, cluster.node_ids)
    for node in cluster.node_ids:
        with RawClient(cluster.address(node)) as client:
            code, info = refusal(client, LONG)
            assert (code, info.reason) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                "DEAD_LETTER_TOPIC_REQUIRED",
            )
    # A relayed Subscribe (another node's stream to a partition's leader) too.
    leader = leaders(cluster.address(1), LONG)[0]
    relayed = queue_subscribe(LONG)
    relayed.partitions.append(0)
    with grpc.insecure_channel(cluster.address(leader)) as channel:
        call = broker_pb2_grpc.BrokerServiceStub(channel).Consume(
            iter([broker_pb2.ConsumeRequest(subscribe=relayed)]),
            metadata=(("weir-queue-relay", "1"),),
            timeout=30,
        )
        with pytest.raises(grpc.RpcError) as caught:
            next(call)
        code, reason = rich_status(caught.value)
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DEAD_LETTER_TOPIC_REQUIRED")
    with RawClient(cluster.address(1)) as client:
        assert queue_groups(client, LONG) == []
        assert topic_names(client) == [LONG]
