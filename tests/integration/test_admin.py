"""AdminService against a real node, through the generated stubs only.

Topics: create, list, describe (partition offsets, sizes, leader and
replicas), partial config updates and their validation, delete (then
NOT_FOUND; a topic created again under the same name starts empty and does
not inherit old group offsets). Cluster: the fields of DescribeCluster,
and a cluster id that survives a restart. Standard services: gRPC health
checking and server reflection.

The queue settings of a topic (max_deliveries, retry backoff, dead-letter
topic) are also set through the SDK and the CLI, which are their users'
way in, on one node and on a three-node cluster; the wire answers are
still checked through the stubs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

import weir
from tests.support.broker_process import BrokerProcess
from tests.support.cluster_process import ClusterProcess
from tests.support.raw_client import (
    CALL_TIMEOUT_S,
    RawClient,
    error_info,
    open_stream,
    read_batches,
    request,
    start_at,
)
from weir.errors import InvalidArgumentError
from weir.v1 import admin_pb2, broker_pb2, records_pb2

pytestmark = [pytest.mark.integration]

StatusCode = grpc.StatusCode
MiB = 1024 * 1024
# The node's defaults (server/config.py), which DescribeCluster must report.
REQUEST_BYTES_MAX = 8 * MiB
RECORD_BYTES_MAX_DEFAULT = 1 * MiB
RECORD_BYTES_MAX_LIMIT = 2 * MiB


@pytest.fixture
def client(broker: BrokerProcess) -> Iterator[RawClient]:
    with RawClient(broker.address) as client:
        yield client


def list_names(client: RawClient) -> list[str]:
    topics = client.admin.ListTopics(admin_pb2.ListTopicsRequest(), timeout=CALL_TIMEOUT_S).topics
    return [t.name for t in topics]


def cluster(client: RawClient) -> admin_pb2.DescribeClusterResponse:
    return client.admin.DescribeCluster(admin_pb2.DescribeClusterRequest(), timeout=CALL_TIMEOUT_S)


def update(client: RawClient, name: str, **fields: int) -> admin_pb2.Topic:
    return client.admin.UpdateTopicConfig(
        admin_pb2.UpdateTopicConfigRequest(name=name, config=admin_pb2.TopicConfig(**fields)),
        timeout=CALL_TIMEOUT_S,
    ).topic


def config_of(topic: admin_pb2.Topic) -> tuple[int, int, int]:
    config = topic.config
    for field in ("retention_bytes", "retention_ms", "record_bytes_max"):
        assert config.HasField(field), f"responses set every config field: {field} missing"
    return config.retention_bytes, config.retention_ms, config.record_bytes_max


QUEUE_FIELDS = ("max_deliveries", "retry_backoff_ms_min", "retry_backoff_ms_max")


def queue_of(topic: admin_pb2.Topic) -> tuple[int, int, int, str]:
    config = topic.config
    for field in (*QUEUE_FIELDS, "dead_letter_topic"):
        assert config.HasField(field), f"responses set every config field: {field} missing"
    return (
        config.max_deliveries,
        config.retry_backoff_ms_min,
        config.retry_backoff_ms_max,
        config.dead_letter_topic,
    )


def queue_settings(config: weir.TopicConfig) -> tuple[int, int, int, str]:
    return (
        config.max_deliveries,
        config.retry_backoff_ms_min,
        config.retry_backoff_ms_max,
        config.dead_letter_topic,
    )


def timed_batch(values: list[bytes], timestamp_ms: int) -> records_pb2.RecordBatch:
    """Records with explicit timestamps, so their stored size is known in advance."""
    return records_pb2.RecordBatch(
        records=[records_pb2.Record(value=v, timestamp_ms=timestamp_ms) for v in values]
    )


@pytest.mark.timeout(60)
def test_create_returns_the_topic_with_every_config_field_set(client: RawClient) -> None:
    created = client.admin.CreateTopic(
        admin_pb2.CreateTopicRequest(name="defaults", partition_count=3), timeout=CALL_TIMEOUT_S
    ).topic
    assert (created.name, created.partition_count, created.replication_factor) == (
        "defaults",
        3,
        1,
    ), "replication factor 0 means the default: the cluster size, one node here"
    assert config_of(created) == (-1, -1, RECORD_BYTES_MAX_DEFAULT)

    configured = client.admin.CreateTopic(
        admin_pb2.CreateTopicRequest(
            name="configured",
            partition_count=1,
            replication_factor=1,
            config=admin_pb2.TopicConfig(retention_ms=60_000, record_bytes_max=4096),
        ),
        timeout=CALL_TIMEOUT_S,
    ).topic
    assert config_of(configured) == (-1, 60_000, 4096), "unset fields take their defaults"

    # The longest legal name, and every legal character class.
    long_name = "a" * 249
    client.create_topic(long_name)
    client.create_topic("A-z_0.9")
    assert list_names(client) == sorted(["defaults", "configured", long_name, "A-z_0.9"]), (
        "every topic, sorted by name"
    )


@pytest.mark.timeout(60)
def test_create_refuses_more_replicas_than_nodes(client: RawClient) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        client.admin.CreateTopic(
            admin_pb2.CreateTopicRequest(name="r3", partition_count=1, replication_factor=3),
            timeout=CALL_TIMEOUT_S,
        )
    assert error_info(raised.value) == (StatusCode.INVALID_ARGUMENT, "INVALID_REPLICATION_FACTOR")
    assert list_names(client) == []


@pytest.mark.timeout(60)
def test_list_and_describe_match_after_creates(client: RawClient) -> None:
    for name, partitions in (("zeta", 1), ("alpha", 4), ("mid.dle", 2)):
        client.create_topic(name, partitions=partitions, retention_bytes=1 << 20)
    topics = client.admin.ListTopics(admin_pb2.ListTopicsRequest(), timeout=CALL_TIMEOUT_S).topics
    assert [(t.name, t.partition_count) for t in topics] == [
        ("alpha", 4),
        ("mid.dle", 2),
        ("zeta", 1),
    ]
    for topic in topics:
        assert config_of(topic) == (1 << 20, -1, RECORD_BYTES_MAX_DEFAULT)
        assert client.describe(topic.name).topic == topic


@pytest.mark.timeout(60)
def test_describe_reports_offsets_sizes_leader_and_replicas(client: RawClient) -> None:
    client.create_topic("d", partitions=3)
    node_id = cluster(client).node_id
    empty = client.describe("d")
    assert [p.partition for p in empty.partitions] == [0, 1, 2]
    for p in empty.partitions:
        assert (p.start_offset, p.end_offset, p.size_bytes) == (0, 0, 0)
        assert p.leader_id == node_id
        assert list(p.replica_ids) == [node_id], "one copy, on this node, which leads"

    # Partition 0 gets two batches, partition 2 one; partition 1 stays empty.
    batches = {
        0: [timed_batch([b"a" * 10, b"b" * 20], 1_000), timed_batch([b"c"], 2_000)],
        2: [timed_batch([b"x" * 100] * 5, 3_000)],
    }
    request_id = 0
    for partition, partition_batches in batches.items():
        for batch in partition_batches:
            request_id += 1
            response = client.produce_one(
                broker_pb2.ProduceRequest(
                    request_id=request_id, topic="d", partition=partition, batch=batch
                )
            )
            assert not response.HasField("error"), response.error

    described = client.describe("d")
    assert described.topic.partition_count == 3
    got = [(p.partition, p.start_offset, p.end_offset, p.size_bytes) for p in described.partitions]
    # size_bytes counts retained record bytes: each stored batch is the
    # request's RecordBatch in its wire encoding.
    assert got == [
        (0, 0, 3, sum(b.ByteSize() for b in batches[0])),
        (1, 0, 0, 0),
        (2, 0, 5, batches[2][0].ByteSize()),
    ]
    for p in described.partitions:
        assert (p.leader_id, list(p.replica_ids)) == (node_id, [node_id])


@pytest.mark.timeout(60)
def test_update_config_changes_only_the_fields_set(broker: BrokerProcess) -> None:
    with RawClient(broker.address) as client:
        client.create_topic("u", record_bytes_max=1000)
        assert config_of(client.describe("u").topic) == (-1, -1, 1000)

        assert config_of(update(client, "u", retention_ms=86_400_000)) == (-1, 86_400_000, 1000)
        assert config_of(update(client, "u", retention_bytes=1 << 30)) == (
            1 << 30,
            86_400_000,
            1000,
        )
        assert config_of(update(client, "u")) == (1 << 30, 86_400_000, 1000), "empty: no change"
        # -1 is a value, not "unset": it turns the limit off again.
        assert config_of(update(client, "u", retention_ms=-1)) == (1 << 30, -1, 1000)
        assert config_of(update(client, "u", record_bytes_max=RECORD_BYTES_MAX_LIMIT)) == (
            1 << 30,
            -1,
            RECORD_BYTES_MAX_LIMIT,
        ), "the node's limit itself is allowed"
        assert config_of(update(client, "u", record_bytes_max=100)) == (1 << 30, -1, 100)
        assert config_of(client.describe("u").topic) == (1 << 30, -1, 100)
        assert config_of(client.admin.ListTopics(admin_pb2.ListTopicsRequest()).topics[0]) == (
            1 << 30,
            -1,
            100,
        )

        # The new record limit applies to the next request.
        too_big = client.produce_one(request("u", [b"x" * 200]))
        assert (too_big.error.code, too_big.error.reason) == (
            StatusCode.RESOURCE_EXHAUSTED.value[0],
            "RECORD_TOO_LARGE",
        )
        assert not client.produce_one(request("u", [b"x" * 50])).HasField("error")

    broker.restart()
    with RawClient(broker.address) as client:
        assert config_of(client.describe("u").topic) == (1 << 30, -1, 100), "updates are durable"


@pytest.mark.timeout(60)
def test_update_config_validation_changes_nothing(client: RawClient) -> None:
    client.create_topic("v", retention_ms=5_000, record_bytes_max=1000)
    before = client.describe("v").topic
    for fields in (
        {"record_bytes_max": 0},
        {"record_bytes_max": -1},
        {"record_bytes_max": RECORD_BYTES_MAX_LIMIT + 1},
        {"retention_bytes": 0},
        {"retention_bytes": -2},
        {"retention_ms": 0},
        {"retention_ms": -7},
        # One bad field spoils the whole update: the good one is not applied.
        {"retention_ms": 10_000, "record_bytes_max": 0},
    ):
        with pytest.raises(grpc.RpcError) as raised:
            update(client, "v", **fields)
        assert error_info(raised.value) == (StatusCode.INVALID_ARGUMENT, "INVALID_CONFIG"), fields
        assert client.describe("v").topic == before, fields

    for name, reason in (("missing", "TOPIC_NOT_FOUND"), ("bad/name", "INVALID_TOPIC_NAME")):
        with pytest.raises(grpc.RpcError) as raised:
            update(client, name, retention_ms=10_000)
        expected = (
            StatusCode.NOT_FOUND if reason == "TOPIC_NOT_FOUND" else StatusCode.INVALID_ARGUMENT
        )
        assert error_info(raised.value) == (expected, reason)
    assert list_names(client) == ["v"]


@pytest.mark.timeout(60)
def test_queue_settings_through_the_sdk(broker: BrokerProcess) -> None:
    with weir.Admin(broker.address) as admin:
        plain = admin.create_topic("plain")
        assert queue_settings(plain.config) == (5, 1000, 60_000, ""), "the defaults"
        jobs = admin.create_topic(
            "jobs",
            2,
            max_deliveries=0,
            retry_backoff_ms_min=0,
            retry_backoff_ms_max=86_400_000,
            dead_letter_topic="jobs-failed",
        )
        assert queue_settings(jobs.config) == (0, 0, 86_400_000, "jobs-failed")
        assert jobs.config.record_bytes_max == RECORD_BYTES_MAX_DEFAULT, "others keep defaults"

        updated = admin.update_topic_config(
            "plain", retry_backoff_ms_min=70_000, retry_backoff_ms_max=80_000
        )
        assert queue_settings(updated.config) == (5, 70_000, 80_000, "")
        updated = admin.update_topic_config("plain", max_deliveries=1000, dead_letter_topic="dl")
        assert queue_settings(updated.config) == (1000, 70_000, 80_000, "dl")
        reset = admin.update_topic_config("plain", dead_letter_topic="")
        assert queue_settings(reset.config) == (1000, 70_000, 80_000, ""), "'' is the default"

        bad: list[dict[str, int | str]] = [
            {"max_deliveries": -1},
            {"max_deliveries": 1001},
            {"retry_backoff_ms_min": -1},
            {"retry_backoff_ms_max": 86_400_001},
            {"retry_backoff_ms_min": 90_000},  # above the topic's max (80000)
            {"retry_backoff_ms_min": 2, "retry_backoff_ms_max": 1},
            {"dead_letter_topic": "no spaces"},
            # One bad field spoils the whole request: the good one is not applied.
            {"retention_ms": 10_000, "max_deliveries": 5000},
        ]
        for fields in bad:
            with pytest.raises(InvalidArgumentError) as refused:
                admin.update_topic_config("plain", **fields)
            assert refused.value.reason == "INVALID_CONFIG", fields
            assert admin.describe_topic("plain").config == reset.config, fields
            with pytest.raises(InvalidArgumentError) as refused:
                admin.create_topic("other", **fields)
            assert refused.value.reason == "INVALID_CONFIG", fields
        # The dead-letter topic may not be the topic itself.
        with pytest.raises(InvalidArgumentError) as refused:
            admin.update_topic_config("plain", dead_letter_topic="plain")
        assert refused.value.reason == "INVALID_CONFIG"
        assert admin.describe_topic("plain").config == reset.config
        with pytest.raises(InvalidArgumentError) as refused:
            admin.create_topic("other", dead_letter_topic="other")
        assert refused.value.reason == "INVALID_CONFIG"
        assert [t.name for t in admin.list_topics()] == ["jobs", "plain"], "nothing created"

    # Every field is on the wire, in ListTopics and DescribeTopic, and durable.
    broker.restart()
    with RawClient(broker.address) as client:
        listed = client.admin.ListTopics(admin_pb2.ListTopicsRequest(), timeout=CALL_TIMEOUT_S)
        assert [queue_of(t) for t in listed.topics] == [
            (0, 0, 86_400_000, "jobs-failed"),
            (1000, 70_000, 80_000, ""),
        ]
        assert queue_of(client.describe("jobs").topic) == (0, 0, 86_400_000, "jobs-failed")


@pytest.mark.timeout(60)
def test_queue_settings_through_the_cli(broker: BrokerProcess) -> None:
    def weir_cli(*args: str) -> str:
        cmd = [sys.executable, "-m", "weir.server.cli", "--bootstrap", broker.address, *args]
        result = subprocess.run(cmd, capture_output=True, timeout=45)
        assert result.returncode == 0, result.stderr.decode()
        return result.stdout.decode()

    weir_cli("topic", "create", "jobs", "--max-deliveries", "3", "--retry-backoff-ms-min", "10")
    described = weir_cli("topic", "describe", "jobs")
    assert "max deliveries:     3\n" in described
    assert "retry backoff ms:   10..60000\n" in described
    assert "dead-letter topic:  jobs.dlq (default)\n" in described
    weir_cli(
        "topic", "update", "jobs", "--dead-letter-topic", "dead", "--retry-backoff-ms-max", "20"
    )
    shown = json.loads(weir_cli("--json", "topic", "describe", "jobs"))
    assert (shown["max_deliveries"], shown["retry_backoff_ms_min"]) == (3, 10)
    assert (shown["retry_backoff_ms_max"], shown["dead_letter_topic"]) == (20, "dead")

    cmd = [sys.executable, "-m", "weir.server.cli", "--bootstrap", broker.address]
    refused = subprocess.run(
        [*cmd, "topic", "update", "jobs", "--max-deliveries", "-1"], capture_output=True, timeout=45
    )
    assert refused.returncode == 2, "INVALID_ARGUMENT is bad input"
    assert refused.stderr.decode().startswith("error: INVALID_CONFIG: max_deliveries")


@pytest.mark.timeout(60)
def test_delete_then_not_found_everywhere(client: RawClient) -> None:
    client.create_topic("gone", partitions=2)
    client.create_topic("kept")
    assert not client.produce_one(request("gone", [b"a", b"b"])).HasField("error")

    client.admin.DeleteTopic(admin_pb2.DeleteTopicRequest(name="gone"), timeout=CALL_TIMEOUT_S)
    assert list_names(client) == ["kept"]
    with pytest.raises(grpc.RpcError) as raised:
        client.describe("gone")
    assert error_info(raised.value) == (StatusCode.NOT_FOUND, "TOPIC_NOT_FOUND")
    with pytest.raises(grpc.RpcError) as raised:
        client.admin.DeleteTopic(admin_pb2.DeleteTopicRequest(name="gone"), timeout=CALL_TIMEOUT_S)
    assert error_info(raised.value) == (StatusCode.NOT_FOUND, "TOPIC_NOT_FOUND")
    with pytest.raises(grpc.RpcError) as raised:
        update(client, "gone", retention_ms=1_000)
    assert error_info(raised.value) == (StatusCode.NOT_FOUND, "TOPIC_NOT_FOUND")

    failed = client.produce_one(request("gone", [b"c"]))
    assert (failed.error.code, failed.error.reason) == (
        StatusCode.NOT_FOUND.value[0],
        "TOPIC_NOT_FOUND",
    )
    with pytest.raises(grpc.RpcError) as raised:
        list(
            client.broker.Consume(
                iter([broker_pb2.ConsumeRequest(subscribe=broker_pb2.Subscribe(topic="gone"))]),
                timeout=CALL_TIMEOUT_S,
            )
        )
    assert error_info(raised.value) == (StatusCode.NOT_FOUND, "TOPIC_NOT_FOUND")


@pytest.mark.timeout(60)
def test_delete_ends_an_open_consume_stream_with_not_found(client: RawClient) -> None:
    client.create_topic("live")
    stream, _ = open_stream(
        client,
        broker_pb2.Subscribe(
            topic="live",
            start=start_at(broker_pb2.START_KIND_EARLIEST),
            credit=broker_pb2.Credit(messages=100, bytes=1 << 20),
        ),
    )
    try:
        assert not client.produce_one(request("live", [b"one"])).HasField("error")
        assert [r.value for r in stream.next().batch.records] == [b"one"]
        # The stream now waits for data that will never come.
        client.admin.DeleteTopic(admin_pb2.DeleteTopicRequest(name="live"), timeout=CALL_TIMEOUT_S)
        with pytest.raises(grpc.RpcError) as raised:
            stream.next()
        assert error_info(raised.value) == (StatusCode.NOT_FOUND, "TOPIC_NOT_FOUND")
    finally:
        stream.close()


@pytest.mark.timeout(60)
def test_recreated_topic_starts_empty_without_old_group_offsets(client: RawClient) -> None:
    client.create_topic("again", partitions=2)
    for partition in (0, 1):
        produced = client.produce_one(
            request("again", [b"old-%d" % i for i in range(5)], partition=partition)
        )
        assert not produced.HasField("error")
    stream, _ = open_stream(client, broker_pb2.Subscribe(topic="again", group="g"))
    try:
        commit = broker_pb2.Commit(
            commit_id=1,
            offsets=[
                broker_pb2.PartitionOffset(partition=0, offset=3),
                broker_pb2.PartitionOffset(partition=1, offset=4),
            ],
        )
        stream.send(broker_pb2.ConsumeRequest(commit=commit))
        result = stream.next().commit
        assert not result.HasField("error")
        assert [(o.partition, o.offset) for o in result.offsets] == [(0, 3), (1, 4)]
    finally:
        stream.close()

    client.admin.DeleteTopic(admin_pb2.DeleteTopicRequest(name="again"), timeout=CALL_TIMEOUT_S)
    client.create_topic("again", partitions=2)
    fresh = client.describe("again")
    assert [(p.start_offset, p.end_offset, p.size_bytes) for p in fresh.partitions] == [
        (0, 0, 0),
        (0, 0, 0),
    ]
    # Enough new records that an inherited offset (3, 4) would be in range.
    for partition in (0, 1):
        produced = client.produce_one(
            request("again", [b"new-%d" % i for i in range(5)], partition=partition)
        )
        assert not produced.HasField("error")
        assert produced.appends[0].base_offset == 0

    stream, subscribed = open_stream(
        client,
        broker_pb2.Subscribe(
            topic="again",
            group="g",
            start=start_at(broker_pb2.START_KIND_EARLIEST),
            credit=broker_pb2.Credit(messages=10, bytes=1 << 20),
        ),
    )
    try:
        assert [(p.partition, p.offset) for p in subscribed.partitions] == [(0, 0), (1, 0)], (
            "the old group offsets (3, 4) belong to the deleted topic"
        )
        batches = read_batches(stream, 10)
        by_partition: dict[int, list[bytes]] = {0: [], 1: []}
        for batch in batches:
            by_partition[batch.partition].extend(r.value for r in batch.records)
        assert by_partition == {p: [b"new-%d" % i for i in range(5)] for p in (0, 1)}
    finally:
        stream.close()


@pytest.mark.timeout(60)
def test_describe_cluster(broker: BrokerProcess, client: RawClient) -> None:
    described = cluster(client)
    assert len(described.cluster_id) >= 16, described.cluster_id
    assert described.node_id == 1, "the default --node-id"
    assert described.version == "0.1.0", "the version in pyproject.toml"
    assert described.durability == "sync", "the default durability"
    assert described.request_bytes_max == REQUEST_BYTES_MAX
    assert described.record_bytes_max_limit == RECORD_BYTES_MAX_LIMIT
    assert [(n.node_id, n.alive) for n in described.nodes] == [(1, True)]
    assert cluster(client) == described, "asking twice gives the same answer"

    # The limit is the real one: a topic may go up to it and not beyond.
    client.create_topic("at-limit", record_bytes_max=described.record_bytes_max_limit)
    with pytest.raises(grpc.RpcError) as raised:
        client.create_topic("over-limit", record_bytes_max=described.record_bytes_max_limit + 1)
    assert error_info(raised.value) == (StatusCode.INVALID_ARGUMENT, "INVALID_CONFIG")


@pytest.mark.timeout(60)
def test_describe_cluster_node_address_is_where_the_node_listens(
    broker: BrokerProcess, client: RawClient
) -> None:
    (node,) = cluster(client).nodes
    assert node.address == broker.address


@pytest.mark.timeout(60)
def test_cluster_id_survives_restart_and_differs_between_data_dirs(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    with RawClient(broker.address) as client:
        first = cluster(client).cluster_id
        client.create_topic("marker")
    broker.restart()  # kill -9, then start on the same data dir
    with RawClient(broker.address) as client:
        assert cluster(client).cluster_id == first
        assert list_names(client) == ["marker"]
    assert broker.terminate() == 0
    broker.start()
    with RawClient(broker.address) as client:
        assert cluster(client).cluster_id == first, "a graceful restart keeps it too"

    other = BrokerProcess(tmp_path / "other-data").start()
    try:
        with RawClient(other.address) as client:
            assert cluster(client).cluster_id not in ("", first), "a new data dir, a new cluster"
    finally:
        other.stop()


@pytest.mark.timeout(60)
def test_health_check_serving(client: RawClient) -> None:
    health = health_pb2_grpc.HealthStub(client.channel)
    for service in ("", "weir.v1.BrokerService"):
        response = health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT_S
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.RpcError) as raised:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert raised.value.code() == StatusCode.NOT_FOUND


@pytest.mark.timeout(60)
def test_server_reflection_lists_and_describes_the_services(client: RawClient) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    responses = list(
        stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
            timeout=CALL_TIMEOUT_S,
        )
    )
    assert len(responses) == 1
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"weir.v1.BrokerService", "weir.v1.AdminService"} <= names, names
    assert "grpc.health.v1.Health" in names

    # A client that knows nothing but reflection can rebuild the API.
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(client.channel))
    broker = pool.FindServiceByName("weir.v1.BrokerService")
    assert {m.name for m in broker.methods} == {"Produce", "Consume", "InitProducer"}
    streams = {m.name for m in broker.methods if m.client_streaming and m.server_streaming}
    assert streams == {"Produce", "Consume"}
    admin = pool.FindServiceByName("weir.v1.AdminService")
    assert {m.name for m in admin.methods} == {
        "CreateTopic",
        "DeleteTopic",
        "ListTopics",
        "DescribeTopic",
        "UpdateTopicConfig",
        "DescribeCluster",
        "ListGroups",
        "DescribeGroup",
        "ResetGroupOffsets",
        "QueueStats",
    }
    assert pool.FindMessageTypeByName("weir.v1.Record").fields_by_name["key"].has_presence


@pytest.mark.timeout(180)
def test_queue_settings_in_a_cluster(make_cluster: Callable[..., ClusterProcess]) -> None:
    """Through the controller: set on one node, seen on every node, refusals change nothing."""
    cluster = make_cluster(nodes=3)
    cluster.wait_converged()
    with weir.Admin(cluster.address(1)) as admin:
        created = admin.create_topic("jobs", 2, max_deliveries=0, dead_letter_topic="dead")
        assert queue_settings(created.config) == (0, 1000, 60_000, "dead")
    with weir.Admin(cluster.address(2)) as admin:
        with pytest.raises(InvalidArgumentError) as refused:
            admin.update_topic_config("jobs", retry_backoff_ms_min=70_000)
        assert refused.value.reason == "INVALID_CONFIG"
        with pytest.raises(InvalidArgumentError) as refused:
            admin.update_topic_config("jobs", dead_letter_topic="jobs")
        assert refused.value.reason == "INVALID_CONFIG"
        updated = admin.update_topic_config(
            "jobs", retry_backoff_ms_min=70_000, retry_backoff_ms_max=80_000
        )
        assert queue_settings(updated.config) == (0, 70_000, 80_000, "dead")

    def seen_by(node: int) -> tuple[int, int, int, str]:
        with RawClient(cluster.address(node)) as client:
            return queue_of(client.describe("jobs").topic)

    expected = (0, 70_000, 80_000, "dead")
    for node in cluster.node_ids:
        cluster.wait_until(lambda n=node: seen_by(n) == expected, what=f"node {node} applied it")
    cluster.restart(3)  # kill -9: node 3 reads the settings back from its log
    cluster.wait_until(lambda: seen_by(3) == expected, what="node 3 restarted with them")
