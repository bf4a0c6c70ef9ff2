"""Invariant 6: bad input gets a clear gRPC status with an ErrorInfo reason and changes nothing.

Each case asserts the exact status code and reason, and that the topic's
end offsets (or the topic list) did not change. Per-request produce errors
come back in the response and the stream keeps working.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from tests.support.broker_process import BrokerProcess
from tests.support.raw_client import ConsumeStream, RawClient, error_info, request
from weir.v1 import admin_pb2, broker_pb2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

StatusCode = grpc.StatusCode


@pytest.fixture
def client(broker: BrokerProcess) -> Iterator[RawClient]:
    with RawClient(broker.address) as client:
        client.create_topic("t", partitions=2, record_bytes_max=1000)
        # One good record, so "nothing changed" compares against a non-empty log.
        assert not client.produce_one(request("t", [b"seed"])).HasField("error")
        yield client


def produce_error(client: RawClient, req: broker_pb2.ProduceRequest) -> tuple[int, str]:
    """Send a bad request then a good one on the same stream: the bad one fails alone."""
    good = request("t", [b"after"], request_id=99)
    bad_response, good_response = list(client.produce([req, good]))
    assert bad_response.request_id == req.request_id
    assert not bad_response.appends
    assert not good_response.HasField("error"), "the stream stays usable"
    return bad_response.error.code, bad_response.error.reason


def test_unknown_topic(client: RawClient) -> None:
    before = client.end_offsets("t")
    assert produce_error(client, request("nope", [b"x"], request_id=5)) == (
        StatusCode.NOT_FOUND.value[0],
        "TOPIC_NOT_FOUND",
    )
    assert client.end_offsets("t") == [before[0] + 1, before[1]]  # only the good record
    with pytest.raises(grpc.RpcError) as raised:
        client.describe("nope")
    assert error_info(raised.value) == (StatusCode.NOT_FOUND, "TOPIC_NOT_FOUND")


def test_invalid_topic_name(client: RawClient) -> None:
    for name in ["", "has space", "a/b", ".", "..", "x" * 250, "ünïcode"]:
        with pytest.raises(grpc.RpcError) as raised:
            client.create_topic(name)
        assert error_info(raised.value) == (StatusCode.INVALID_ARGUMENT, "INVALID_TOPIC_NAME")
    assert produce_error(client, request("a/b", [b"x"])) == (
        StatusCode.INVALID_ARGUMENT.value[0],
        "INVALID_TOPIC_NAME",
    )
    topics = client.admin.ListTopics(admin_pb2.ListTopicsRequest()).topics
    assert [t.name for t in topics] == ["t"]


def test_partition_out_of_range(client: RawClient) -> None:
    before = client.end_offsets("t")
    assert produce_error(client, request("t", [b"x"], partition=2)) == (
        StatusCode.INVALID_ARGUMENT.value[0],
        "PARTITION_OUT_OF_RANGE",
    )
    assert client.end_offsets("t") == [before[0] + 1, before[1]]


def test_record_over_record_bytes_max(client: RawClient) -> None:
    before = client.end_offsets("t")
    req = request("t", [b"ok", b"x" * 1001, b"ok"])
    assert produce_error(client, req) == (
        StatusCode.RESOURCE_EXHAUSTED.value[0],
        "RECORD_TOO_LARGE",
    )
    assert client.end_offsets("t") == [before[0] + 1, before[1]]


def test_empty_batch_and_negative_timestamp(client: RawClient) -> None:
    before = client.end_offsets("t")
    empty = broker_pb2.ProduceRequest(request_id=1, topic="t", partition=0)
    assert produce_error(client, empty) == (StatusCode.INVALID_ARGUMENT.value[0], "EMPTY_BATCH")
    stale = request("t", [b"x"])
    stale.batch.records[0].timestamp_ms = -5
    assert produce_error(client, stale) == (
        StatusCode.INVALID_ARGUMENT.value[0],
        "INVALID_TIMESTAMP",
    )
    assert client.end_offsets("t") == [before[0] + 2, before[1]]


def test_request_over_grpc_max_message_size(client: RawClient) -> None:
    before = client.end_offsets("t")
    huge = request("t", [b"x" * 900] * 10_000)  # ~9.3 MB, over the 8 MiB request limit
    with pytest.raises(grpc.RpcError) as raised:
        list(client.produce([huge]))
    assert raised.value.code() == StatusCode.RESOURCE_EXHAUSTED
    assert client.end_offsets("t") == before


def test_malformed_protobuf_bytes(broker: BrokerProcess, client: RawClient) -> None:
    before = client.end_offsets("t")
    with grpc.insecure_channel(broker.address) as channel:
        produce = channel.stream_stream("/weir.v1.BrokerService/Produce")
        with pytest.raises(grpc.RpcError) as raised:
            list(produce(iter([b"\xff\xff\xff\xff"]), timeout=30))
        assert error_info(raised.value) == (StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")
        consume = channel.stream_stream("/weir.v1.BrokerService/Consume")
        with pytest.raises(grpc.RpcError) as raised:
            list(consume(iter([b"\x0a\x05\x0a"]), timeout=30))
        assert error_info(raised.value) == (StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")
        create = channel.unary_unary("/weir.v1.AdminService/CreateTopic")
        with pytest.raises(grpc.RpcError) as raised:
            create(b"\x0a\xff\x01", timeout=30)
        assert error_info(raised.value) == (StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")
    assert client.end_offsets("t") == before
    assert [t.name for t in client.admin.ListTopics(admin_pb2.ListTopicsRequest()).topics] == ["t"]


def subscribe(**fields: object) -> broker_pb2.Subscribe:
    return broker_pb2.Subscribe(topic="t", partitions=[0], **fields)  # type: ignore[arg-type]


def consume_error(
    client: RawClient, *requests: broker_pb2.ConsumeRequest
) -> tuple[grpc.StatusCode, str]:
    calls = iter(requests)
    with pytest.raises(grpc.RpcError) as raised:
        for _ in client.broker.Consume(calls, timeout=30):
            pass
    return error_info(raised.value)


def test_negative_credit(client: RawClient) -> None:
    first = broker_pb2.ConsumeRequest(subscribe=subscribe())
    negative = broker_pb2.ConsumeRequest(credit=broker_pb2.Credit(messages=-1, bytes=10))
    assert consume_error(client, first, negative) == (
        StatusCode.INVALID_ARGUMENT,
        "NEGATIVE_CREDIT",
    )
    in_subscribe = broker_pb2.ConsumeRequest(
        subscribe=subscribe(credit=broker_pb2.Credit(messages=5, bytes=-1))
    )
    assert consume_error(client, in_subscribe) == (StatusCode.INVALID_ARGUMENT, "NEGATIVE_CREDIT")


def test_offset_out_of_range(client: RawClient) -> None:
    (end, _) = client.end_offsets("t")
    for offset in (end + 1, -1):
        start = broker_pb2.StartPosition(kind=broker_pb2.START_KIND_OFFSET, offset=offset)
        req = broker_pb2.ConsumeRequest(subscribe=subscribe(start=start))
        assert consume_error(client, req) == (StatusCode.OUT_OF_RANGE, "OFFSET_OUT_OF_RANGE")
    req = broker_pb2.ConsumeRequest(subscribe=subscribe(offsets={0: end + 10}))
    assert consume_error(client, req) == (StatusCode.OUT_OF_RANGE, "OFFSET_OUT_OF_RANGE")


def test_consume_protocol_violations(client: RawClient) -> None:
    credit = broker_pb2.ConsumeRequest(credit=broker_pb2.Credit(messages=1, bytes=1))
    assert consume_error(client, credit) == (StatusCode.INVALID_ARGUMENT, "NOT_SUBSCRIBED")
    first = broker_pb2.ConsumeRequest(subscribe=subscribe())
    assert consume_error(client, first, first) == (
        StatusCode.INVALID_ARGUMENT,
        "ALREADY_SUBSCRIBED",
    )
    unknown = broker_pb2.ConsumeRequest(subscribe=broker_pb2.Subscribe(topic="nope"))
    assert consume_error(client, unknown) == (StatusCode.NOT_FOUND, "TOPIC_NOT_FOUND")
    twice = broker_pb2.ConsumeRequest(subscribe=broker_pb2.Subscribe(topic="t", partitions=[1, 1]))
    assert consume_error(client, twice) == (StatusCode.INVALID_ARGUMENT, "DUPLICATE_PARTITION")
    out = broker_pb2.ConsumeRequest(subscribe=broker_pb2.Subscribe(topic="t", partitions=[7]))
    assert consume_error(client, out) == (StatusCode.INVALID_ARGUMENT, "PARTITION_OUT_OF_RANGE")


def test_commit_errors_keep_the_stream(client: RawClient) -> None:
    stream = ConsumeStream(client, subscribe())
    try:
        assert stream.next().WhichOneof("kind") == "subscribed"
        commit = broker_pb2.Commit(
            commit_id=3, offsets=[broker_pb2.PartitionOffset(partition=0, offset=0)]
        )
        stream.send(broker_pb2.ConsumeRequest(commit=commit))
        result = stream.next().commit
        assert (result.commit_id, result.error.reason) == (3, "NO_GROUP")
        assert result.error.code == StatusCode.FAILED_PRECONDITION.value[0]
        # Still usable: credit flows and the seed record arrives.
        stream.credit(10)
    finally:
        stream.close()

    grouped = ConsumeStream(client, subscribe(group="g"))
    try:
        assert grouped.next().WhichOneof("kind") == "subscribed"
        (end, _) = client.end_offsets("t")
        too_far = broker_pb2.Commit(
            commit_id=4, offsets=[broker_pb2.PartitionOffset(partition=0, offset=end + 1)]
        )
        grouped.send(broker_pb2.ConsumeRequest(commit=too_far))
        result = grouped.next().commit
        assert (result.commit_id, result.error.reason) == (4, "OFFSET_OUT_OF_RANGE")
        good = broker_pb2.Commit(
            commit_id=5, offsets=[broker_pb2.PartitionOffset(partition=0, offset=end)]
        )
        grouped.send(broker_pb2.ConsumeRequest(commit=good))
        result = grouped.next().commit
        assert not result.HasField("error")
        assert [(o.partition, o.offset) for o in result.offsets] == [(0, end)]
        backwards = broker_pb2.Commit(
            commit_id=6, offsets=[broker_pb2.PartitionOffset(partition=0, offset=0)]
        )
        grouped.send(broker_pb2.ConsumeRequest(commit=backwards))
        result = grouped.next().commit
        assert [(o.partition, o.offset) for o in result.offsets] == [(0, end)], "never backwards"
    finally:
        grouped.close()


def test_invalid_topic_configs(client: RawClient) -> None:
    for config in (
        admin_pb2.TopicConfig(record_bytes_max=0),
        admin_pb2.TopicConfig(record_bytes_max=1 << 30),
        admin_pb2.TopicConfig(retention_bytes=-2),
        admin_pb2.TopicConfig(retention_ms=0),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            client.admin.CreateTopic(
                admin_pb2.CreateTopicRequest(name="c", partition_count=1, config=config)
            )
        assert error_info(raised.value) == (StatusCode.INVALID_ARGUMENT, "INVALID_CONFIG")
    for count in (0, 100_000):
        with pytest.raises(grpc.RpcError) as raised:
            client.admin.CreateTopic(admin_pb2.CreateTopicRequest(name="c", partition_count=count))
        assert error_info(raised.value) == (StatusCode.INVALID_ARGUMENT, "INVALID_PARTITION_COUNT")
    with pytest.raises(grpc.RpcError) as raised:
        client.create_topic("t")
    assert error_info(raised.value) == (StatusCode.ALREADY_EXISTS, "TOPIC_EXISTS")
    assert [t.name for t in client.admin.ListTopics(admin_pb2.ListTopicsRequest()).topics] == ["t"]
    assert client.describe("t").topic.config.record_bytes_max == 1000
