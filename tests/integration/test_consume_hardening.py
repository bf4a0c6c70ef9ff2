"""The Consume path under careless and hostile clients (issue 9, byte credit of issue 7).

- A Subscribe listing a million partitions and thousands of explicit offsets
  is refused with PARTITION_OUT_OF_RANGE within its deadline, while health
  checks on the same node keep being answered (validation is linear).
- A record of exactly `record_bytes_max` reaches a consumer that granted
  exactly that many bytes of credit: byte credit is the record's content
  (key, value, header names and values), never more than its encoding
  (raw gRPC and SDK).
- A client that gives back only value bytes for records with keys and
  headers gets a CREDIT_TOO_SMALL notice naming the bytes it needs, not a
  silent stall, and goes on once it grants them.
- A commit on a stream whose topic was deleted never succeeds.
- Many concurrent streams mixing valid credits and commits with malformed and
  invalid requests, half-closes and cancellations all end with a status
  within their deadline, and the node serves normal clients afterwards.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import weir.aio
from tests.support.broker_process import BrokerProcess
from tests.support.raw_client import (
    RawClient,
    error_info,
    open_stream,
    read_partition,
    request,
    settle,
    start_at,
)
from weir.v1 import admin_pb2, broker_pb2, records_pb2

pytestmark = [pytest.mark.integration]

CONSUME_METHOD = "/weir.v1.BrokerService/Consume"
EARLIEST = broker_pb2.START_KIND_EARLIEST
T0_MS = 1_700_000_000_000


@pytest.fixture
def client(broker: BrokerProcess) -> Iterator[RawClient]:
    with RawClient(broker.address) as client:
        yield client


# -- 1. linear-cost Subscribe ------------------------------------------------

LISTED_PARTITIONS = 1_000_000
EXPLICIT_OFFSETS = 3_000
# Deadlines, not measurements: the old N x M validation held the loop for
# tens of seconds on this request, so neither call could meet them.
SUBSCRIBE_DEADLINE_S = 15.0
HEALTH_DEADLINE_S = 5.0


@pytest.mark.timeout(120)
def test_huge_subscribe_is_refused_while_health_checks_are_answered(
    broker: BrokerProcess, client: RawClient
) -> None:
    client.create_topic("wide", partitions=4)
    subscribe = broker_pb2.Subscribe(
        topic="wide",
        partitions=range(LISTED_PARTITIONS),
        offsets={LISTED_PARTITIONS - 1 - i: 0 for i in range(EXPLICIT_OFFSETS)},
        credit=broker_pb2.Credit(messages=1, bytes=1),
    )
    outcome: list[object] = []

    def consume() -> None:
        call = client.broker.Consume(
            iter([broker_pb2.ConsumeRequest(subscribe=subscribe)]), timeout=SUBSCRIBE_DEADLINE_S
        )
        try:
            outcome.append(list(call))
        except grpc.RpcError as exc:
            outcome.append(exc)

    health = health_pb2_grpc.HealthStub(client.channel)
    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    answered = 0
    while thread.is_alive() or answered == 0:
        reply = health.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_DEADLINE_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        answered += 1
        thread.join(0.05)
    (result,) = outcome
    assert isinstance(result, grpc.RpcError), result
    assert error_info(result) == (grpc.StatusCode.INVALID_ARGUMENT, "PARTITION_OUT_OF_RANGE")


# -- 4. byte credit: record_bytes_max always suffices ---------------------------

RECORD_BYTES_MAX = 1000


def record_of_size(size: int, tag: int) -> records_pb2.Record:
    """A record whose encoding (Record.ByteSize()) is exactly `size` bytes."""
    for value_bytes in range(size, 0, -1):
        record = records_pb2.Record(
            value=tag.to_bytes(4, "big") + b"v" * (value_bytes - 4), timestamp_ms=T0_MS
        )
        if record.ByteSize() == size:
            return record
    raise AssertionError(f"no record of {size} bytes")


def produce_full_records(client: RawClient, topic: str, count: int) -> list[records_pb2.Record]:
    records = [record_of_size(RECORD_BYTES_MAX, i) for i in range(count)]
    for i, record in enumerate(records):
        message = broker_pb2.ProduceRequest(
            request_id=i, topic=topic, partition=0, batch=records_pb2.RecordBatch(records=[record])
        )
        response = client.produce_one(message)
        assert not response.HasField("error"), response
    return records


@pytest.mark.timeout(60)
def test_record_bytes_max_of_byte_credit_delivers_the_largest_record(client: RawClient) -> None:
    client.create_topic("full", record_bytes_max=RECORD_BYTES_MAX)
    records = produce_full_records(client, "full", 2)
    stream, subscribed = open_stream(
        client,
        broker_pb2.Subscribe(
            topic="full",
            start=start_at(EARLIEST),
            # The proto promises that record_bytes_max of credit always suffices.
            credit=broker_pb2.Credit(messages=10, bytes=RECORD_BYTES_MAX),
        ),
    )
    try:
        assert subscribed.record_bytes_max == RECORD_BYTES_MAX
        batches = settle(stream, 1)
        assert [r for b in batches for r in b.records] == records[:1], (
            "record_bytes_max of credit lets exactly one such record through"
        )
        stream.credit(0, RECORD_BYTES_MAX)
        batches = settle(stream, 10)
        assert [r for b in batches for r in b.records] == records[1:]
    finally:
        stream.close()


@pytest.mark.timeout(60)
def test_sdk_consumer_with_the_smallest_window_never_stalls(
    broker: BrokerProcess, client: RawClient
) -> None:
    client.create_topic("full-sdk", record_bytes_max=RECORD_BYTES_MAX)
    records = produce_full_records(client, "full-sdk", 20)

    async def consume(bootstrap: str) -> list[bytes]:
        values = []
        async with weir.aio.Consumer(
            bootstrap, "full-sdk", start="earliest", max_outstanding_bytes=1
        ) as consumer:
            for _ in records:
                record = await consumer.poll(timeout_s=10)
                assert record is not None, "the consumer stalled on byte credit"
                values.append(record.value)
        return values

    # max_outstanding_bytes=1: the window is widened to record_bytes_max and
    # every record of that size must still come through.
    assert asyncio.run(consume(broker.address)) == [r.value for r in records]


@pytest.mark.timeout(60)
def test_a_client_counting_only_values_is_told_what_it_needs(client: RawClient) -> None:
    client.create_topic("drift")
    records = [
        records_pb2.Record(key=b"order-%04d" % i, value=b"v" * 50, headers={"trace": b"t" * 16})
        for i in range(200)
    ]
    response = client.produce_one(
        broker_pb2.ProduceRequest(
            request_id=1, topic="drift", partition=0, batch=records_pb2.RecordBatch(records=records)
        )
    )
    assert not response.HasField("error"), response
    cost = 10 + 50 + len("trace") + 16
    window = 20
    stream, _ = open_stream(
        client,
        broker_pb2.Subscribe(
            topic="drift",
            start=start_at(EARLIEST),
            credit=broker_pb2.Credit(messages=window, bytes=window * cost),
        ),
    )
    try:
        # Record by record, one message and only the value's bytes go back:
        # the credit drifts down by the key and header bytes of each.
        received = 0
        while True:
            answer = stream.next()
            if answer.WhichOneof("kind") == "notice":
                notice = answer.notice
                break
            assert answer.WhichOneof("kind") == "batch", answer
            for record in answer.batch.records:
                assert record.key == b"order-%04d" % received
                received += 1
                stream.credit(1, len(record.value))
        assert received < len(records), "the drift stops the stream before the end"
        assert (notice.reason, notice.code) == ("CREDIT_TOO_SMALL", 8)
        assert notice.metadata["record_bytes"] == str(cost)
        assert notice.metadata["offset"] == str(received)
        needed = int(notice.metadata["needed_bytes"])
        assert 0 < needed <= cost
        stream.credit(0, needed)
        answer = stream.next()
        assert answer.WhichOneof("kind") == "batch", answer
        assert answer.batch.base_offset == received
    finally:
        stream.close()


# -- 5. commits on a deleted topic ---------------------------------------------


@pytest.mark.timeout(60)
def test_commit_after_the_topic_was_deleted_never_succeeds(client: RawClient) -> None:
    client.create_topic("gone", partitions=2)
    assert not client.produce_one(request("gone", [b"a", b"b"])).HasField("error")
    # No credit: the stream has nothing to send, so only the commit speaks.
    stream, _ = open_stream(
        client,
        broker_pb2.Subscribe(topic="gone", group="g", credit=broker_pb2.Credit()),
    )
    try:
        client.admin.DeleteTopic(admin_pb2.DeleteTopicRequest(name="gone"), timeout=30)
        commit = broker_pb2.Commit(
            commit_id=7,
            offsets=[
                broker_pb2.PartitionOffset(partition=0, offset=0),
                broker_pb2.PartitionOffset(partition=1, offset=0),
            ],
        )
        stream.send(broker_pb2.ConsumeRequest(commit=commit))
        try:
            response = stream.next()
        except grpc.RpcError as exc:
            # The stream may end first: then the commit got no answer at all.
            assert error_info(exc) == (grpc.StatusCode.NOT_FOUND, "TOPIC_NOT_FOUND")
        else:
            assert response.WhichOneof("kind") == "commit", response
            assert response.commit.commit_id == 7
            assert response.commit.error.reason == "TOPIC_NOT_FOUND", response
            assert not response.commit.offsets
    finally:
        stream.close()


# -- 6. every stream ends with a status ------------------------------------------

STREAMS = 60
SEED = 909
STREAM_DEADLINE_S = 60.0
MIX_RECORDS = 400


def _valid(kind: str, rng: random.Random, commit_id: int) -> bytes:
    if kind == "credit":
        credit = broker_pb2.Credit(messages=rng.randrange(0, 50), bytes=rng.randrange(0, 1 << 16))
        return broker_pb2.ConsumeRequest(credit=credit).SerializeToString()
    offsets = [
        broker_pb2.PartitionOffset(partition=rng.randrange(2), offset=rng.randrange(0, 50))
        for _ in range(rng.randrange(3))
    ]
    commit = broker_pb2.Commit(commit_id=commit_id, offsets=offsets)
    return broker_pb2.ConsumeRequest(commit=commit).SerializeToString()


def _bad(rng: random.Random) -> bytes:
    choice = rng.randrange(5)
    if choice == 0:
        return b"\xff\xff\xff" + rng.randbytes(rng.randrange(8))  # not protobuf
    if choice == 1:
        return broker_pb2.ConsumeRequest().SerializeToString()  # EMPTY_REQUEST
    if choice == 2:
        sub = broker_pb2.Subscribe(topic="mix")
        return broker_pb2.ConsumeRequest(subscribe=sub).SerializeToString()  # ALREADY_SUBSCRIBED
    if choice == 3:
        credit = broker_pb2.Credit(messages=-1)
        return broker_pb2.ConsumeRequest(credit=credit).SerializeToString()  # NEGATIVE_CREDIT
    raw = bytearray(_valid("commit", rng, 1))
    raw[rng.randrange(len(raw))] ^= 0xFF
    return bytes(raw)  # a bit-flipped commit: malformed or odd, either way answered


def script(rng: random.Random) -> tuple[list[bytes], str]:
    """Requests after the subscribe, and how the client ends.

    'close' half-closes after the last request, 'cancel' cancels after three
    responses, 'lazy' half-closes too but reads nothing until every request
    is sent, so the broker's writes are still pending (HTTP/2 flow control)
    when a bad request arrives.
    """
    messages = []
    for i in range(rng.randrange(1, 40)):
        roll = rng.random()
        if roll < 0.1:
            messages.append(_bad(rng))
        else:
            messages.append(_valid("credit" if roll < 0.6 else "commit", rng, i))
    roll = rng.random()
    return messages, "cancel" if roll < 0.15 else "lazy" if roll < 0.5 else "close"


def run_stream(channel: grpc.Channel, seed: int) -> str:
    """Drive one stream by its script; return the status it ended with.

    The blocking client is used on purpose: when the broker ends a call while
    requests are still queued, it stops sending them and reports the
    broker's status, whereas grpc.aio may replace that status with a local
    INTERNAL for the failed send.
    """
    rng = random.Random(seed)
    messages, ending = script(rng)
    subscribe = broker_pb2.ConsumeRequest(
        subscribe=broker_pb2.Subscribe(
            topic="mix",
            group="mix-group",
            start=start_at(EARLIEST),
            credit=broker_pb2.Credit(messages=rng.randrange(0, 800), bytes=1 << 20),
        )
    ).SerializeToString()
    more = threading.Event()
    all_sent = threading.Event()

    def requests() -> Iterator[bytes]:
        yield subscribe
        for i, raw in enumerate(messages):
            if i % 7 == 3 and ending != "lazy":
                # Now and then wait for a response, so that requests and
                # responses interleave on the wire.
                more.wait(1.0)
                more.clear()
            yield raw
        all_sent.set()

    call = channel.stream_stream(CONSUME_METHOD)(requests(), timeout=STREAM_DEADLINE_S)
    if ending == "lazy":
        # Bounded: the call may also end before the last request is taken.
        all_sent.wait(10.0)
    received = 0
    try:
        for _ in call:
            received += 1
            more.set()
            if ending == "cancel" and received >= 3:
                call.cancel()
                break
    except grpc.RpcError:
        pass  # the status is read below
    code = call.code()
    assert code != grpc.StatusCode.DEADLINE_EXCEEDED, "the stream hung without a status"
    assert code in (
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.CANCELLED,
    ), (code, call.details())
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert error_info(call)[1] in BAD_REASONS, error_info(call)
    return code.name


BAD_REASONS = {"MALFORMED_REQUEST", "EMPTY_REQUEST", "ALREADY_SUBSCRIBED", "NEGATIVE_CREDIT"}


@pytest.mark.timeout(180)
def test_streams_mixing_valid_and_bad_requests_all_end_with_a_status(
    broker: BrokerProcess, client: RawClient
) -> None:
    client.create_topic("mix", partitions=2)
    value = b"m" * 2000
    for partition in (0, 1):
        for start in range(0, MIX_RECORDS, 100):
            batch = request("mix", [value] * 100, request_id=start, partition=partition)
            assert not client.produce_one(batch).HasField("error")

    rng = random.Random(SEED)
    seeds = [rng.randrange(1 << 30) for _ in range(STREAMS)]
    endings: list[str] = []
    failures: list[BaseException] = []

    def one(seed: int) -> None:
        try:
            endings.append(run_stream(channel, seed))
        except BaseException as exc:  # reported below with its seed
            failures.append(AssertionError(f"seed {seed}: {exc!r}"))

    with grpc.insecure_channel(broker.address) as channel:
        threads = [threading.Thread(target=one, args=(seed,)) for seed in seeds]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(STREAM_DEADLINE_S + 10)
    assert not failures, failures
    counts: dict[str, int] = {}
    for ending in endings:
        counts[ending] = counts.get(ending, 0) + 1
    print(f"seed {SEED}: endings {counts}")
    assert sum(counts.values()) == STREAMS
    # The node still serves a plain consumer completely.
    assert len(read_partition(client, "mix", 0)) == MIX_RECORDS
