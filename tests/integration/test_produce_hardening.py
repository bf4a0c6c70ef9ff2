"""A Produce stream against careless and hostile clients, through real `weir serve` processes.

- Every stream ends with a status, whatever the client sends: an error
  answer followed by a malformed message on the same stream ends with
  INVALID_ARGUMENT/MALFORMED_REQUEST after the answer, and clients that
  cancel mid-stream leave no handler behind.
- What the broker stores is Weir's own encoding: unknown fields in a batch
  or its records never reach a consumer, and duplicated fields are merged as
  protobuf merges them, so consumers are told the right offsets.
- A record's size is its `weir.v1.Record` encoding as stored (with the
  timestamp the broker fills in); a record of exactly `record_bytes_max` is
  accepted and one byte more is refused, by the broker and by the SDK alike.
- A request may hold at most `produce_request_records_max` records: the 4
  million empty records that fit in one 8 MB request are refused before they
  are parsed, the node's health check answers meanwhile, and the broker's
  peak memory stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import grpc
import grpc.aio
import pytest
from google.protobuf import unknown_fields
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

import weir.aio
from tests.support.broker_process import BrokerProcess
from tests.support.raw_client import (
    RawClient,
    offsets_of,
    open_stream,
    read_batches,
    read_partition,
    request,
    start_at,
)
from weir.errors import RecordTooLargeError
from weir.v1 import broker_pb2, records_pb2

pytestmark = [pytest.mark.integration]

PRODUCE = "/weir.v1.BrokerService/Produce"
MIB = 1024 * 1024
CALLS = 100
CALL_DEADLINE_S = 60.0
DEFAULT_RECORDS_MAX = 100_000


@pytest.fixture
def client(broker: BrokerProcess) -> Iterator[RawClient]:
    with RawClient(broker.address) as client:
        yield client


def rich_reason(code: grpc.StatusCode, trailing: grpc.aio.Metadata | None) -> tuple[str, str]:
    """(code name, ErrorInfo reason) of an ended aio call."""
    for key, value in trailing or ():
        if key == "grpc-status-details-bin":
            assert isinstance(value, bytes)
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return code.name, info.reason
    return code.name, ""


def peak_rss_bytes(broker: BrokerProcess) -> int:
    """The broker's peak resident set size (VmHWM): what it needed at its worst."""
    with open(f"/proc/{broker.pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


# -- 1. every stream ends with a status ------------------------------------------


@pytest.mark.timeout(180)
def test_error_answer_then_malformed_message_ends_every_stream(broker: BrokerProcess) -> None:
    """The malformed message's status waits for the answer the stream owes, then ends the call."""
    bad_request = request("no-such-topic", [b"x"], request_id=7).SerializeToString()

    async def one(channel: grpc.aio.Channel) -> tuple[list[bytes], tuple[str, str]]:
        call = channel.stream_stream(PRODUCE)(timeout=CALL_DEADLINE_S)
        # Both messages go out at once: the malformed one arrives while the
        # broker is still writing the first one's error answer.
        await call.write(bad_request)
        await call.write(b"\xff\xff\xff\xff")
        await call.done_writing()
        answers = []
        with contextlib.suppress(grpc.aio.AioRpcError):  # the status is read below
            while (raw := await call.read()) is not grpc.aio.EOF:
                answers.append(raw)
        code = await call.code()
        return answers, rich_reason(code, await call.trailing_metadata())

    async def body() -> None:
        async with grpc.aio.insecure_channel(broker.address) as channel:
            results = await asyncio.gather(*(one(channel) for _ in range(CALLS)))
        ends = [end for _, end in results]
        assert ends == [("INVALID_ARGUMENT", "MALFORMED_REQUEST")] * CALLS, ends
        for answers, _ in results:
            assert len(answers) == 1, "the error answer comes before the status"
            answer = broker_pb2.ProduceResponse.FromString(answers[0])
            assert answer.request_id == 7
            assert answer.error.reason == "TOPIC_NOT_FOUND"

    asyncio.run(body())
    assert "TOO_MANY_OPERATIONS" not in broker.output()


@pytest.mark.timeout(180)
def test_clients_cancelling_mid_stream_leave_nothing_hung(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Cancelled calls end on the broker: a stop with a long grace period still finishes.

    A handler left behind would hold `server.stop()` for the whole grace
    period (10 minutes here), past the test's deadline.
    """
    broker = BrokerProcess(
        tmp_path_factory.mktemp("cancel") / "data", "--shutdown-grace-ms", "600000"
    ).start()
    try:
        with RawClient(broker.address) as client:
            client.create_topic("c", partitions=2)

        async def one(channel: grpc.aio.Channel, index: int) -> None:
            call = channel.stream_stream(PRODUCE)(timeout=CALL_DEADLINE_S)
            for request_id in range(20):
                await call.write(
                    request("c", [b"v" * 100], request_id=request_id).SerializeToString()
                )
            if index % 3 == 0:
                await call.write(request("nope", [b"x"], request_id=99).SerializeToString())
            if index % 2 == 0:
                await call.read()  # some calls cancel after one answer, others before any
            call.cancel()

        async def body() -> None:
            async with grpc.aio.insecure_channel(broker.address) as channel:
                await asyncio.gather(*(one(channel, i) for i in range(CALLS)))
                # The node still serves: a fresh stream is answered.
                call = channel.stream_stream(PRODUCE)(timeout=CALL_DEADLINE_S)
                await call.write(request("c", [b"after"], request_id=1).SerializeToString())
                await call.done_writing()
                answers = [broker_pb2.ProduceResponse.FromString(raw) async for raw in call]  # type: ignore[attr-defined]
                assert [a.request_id for a in answers] == [1]
                assert not answers[0].HasField("error")

        asyncio.run(body())
    finally:
        code = broker.terminate()
    assert code == 0, broker.output()
    assert "Traceback" not in broker.output(), broker.output()


# -- 2. canonical stored bytes -----------------------------------------------------


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (numbers below 16, lengths below 128 keep this short)."""
    assert number < 16 and len(payload) < 128
    return bytes(((number << 3) | 2, len(payload))) + payload


def _varint_field(number: int, value: int) -> bytes:
    assert number < 16 and value < 128
    return bytes((number << 3, value))


def _odd_record(index: int) -> bytes:
    """A record with unknown fields and its value twice (the last one wins)."""
    header = _field(1, b"h") + _field(2, b"%d" % index)
    return b"".join(
        (
            _field(2, b"first"),
            _varint_field(9, 7),  # unknown varint
            _field(3, header),
            _field(15, b"unknown bytes"),  # unknown length-delimited
            _field(2, b"v%d" % index),  # the value again
        )
    )


def _odd_batch(first: int, count: int) -> bytes:
    """A RecordBatch body with an unknown field 4 (ConsumedBatch.base_offset's number) in it."""
    records = [_field(1, _odd_record(i)) for i in range(first, first + count)]
    return records[0] + _varint_field(4, 77) + b"".join(records[1:]) + _varint_field(6, 1)


def _odd_request(request_id: int, partition: int | None) -> bytes:
    """Six records in two `batch` fields (protobuf merges them), with unknown fields everywhere."""
    head = _varint_field(1, request_id) + _field(2, b"canon")
    if partition is not None:
        head += _varint_field(3, partition)
    return b"".join(
        (
            head,
            _field(4, _odd_batch(0, 3)),
            _varint_field(12, 5),  # unknown field in the request itself
            _field(4, _odd_batch(3, 3)),
        )
    )


def _send_raw(address: str, raws: list[bytes]) -> list[broker_pb2.ProduceResponse]:
    with grpc.insecure_channel(address) as channel:
        produce = channel.stream_stream(PRODUCE)
        return [
            broker_pb2.ProduceResponse.FromString(raw)
            for raw in produce(iter(raws), timeout=CALL_DEADLINE_S)
        ]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("partition", [0, None], ids=["partitioned", "routed"])
def test_unknown_and_duplicated_fields_never_change_offsets(
    broker: BrokerProcess, client: RawClient, partition: int | None
) -> None:
    client.create_topic("canon", partitions=1)
    assert not client.produce_one(request("canon", [b"s0", b"s1"], partition=0)).HasField("error")
    answers = _send_raw(broker.address, [_odd_request(5, partition), _odd_request(6, partition)])
    assert [a.request_id for a in answers] == [5, 6]
    for answer in answers:
        assert not answer.HasField("error"), answer.error
        assert [(a.partition, a.record_count) for a in answer.appends] == [(0, 6)]
    assert [a.appends[0].base_offset for a in answers] == [2, 8]

    records = read_partition(client, "canon", 0)  # checks dense offsets from 0
    assert [r.value for r in records] == [b"s0", b"s1"] + [b"v%d" % (i % 6) for i in range(12)]
    for record in records[2:]:
        assert len(unknown_fields.UnknownFieldSet(record)) == 0, "unknown fields are not stored"
        assert dict(record.headers) == {"h": record.value[1:]}

    # A read starting inside a batch is told the offset it asked for.
    for start in (3, 10, 13):
        stream, _ = open_stream(
            client,
            broker_pb2.Subscribe(
                topic="canon",
                partitions=[0],
                start=start_at(broker_pb2.START_KIND_OFFSET, offset=start),
                credit=broker_pb2.Credit(messages=100, bytes=1 << 30),
            ),
        )
        try:
            batches = read_batches(stream, 14 - start)
        finally:
            stream.close()
        assert [o for _, o in offsets_of(batches)] == list(range(start, 14))
        assert [r.value for b in batches for r in b.records] == [
            b"v%d" % ((o - 2) % 6) for o in range(start, 14)
        ]


# -- 3. one record size ------------------------------------------------------------

RECORD_LIMIT = 1000


def _value_for_stored_size(size: int, **fields: object) -> bytes:
    """A value whose record, as the broker stores it (timestamp filled in), is `size` bytes."""
    stamped = dict(fields)
    stamped.setdefault("timestamp_ms", time.time_ns() // 1_000_000)
    for length in range(size, -1, -1):
        if records_pb2.Record(value=b"x" * length, **stamped).ByteSize() == size:  # type: ignore[arg-type]
            return b"x" * length
    raise AssertionError(f"no value gives a record of {size} bytes")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("stamped", [False, True], ids=["broker-timestamp", "own-timestamp"])
def test_record_of_exactly_record_bytes_max_is_accepted_and_one_byte_more_refused(
    client: RawClient, stamped: bool
) -> None:
    client.create_topic("size", partitions=1, record_bytes_max=RECORD_LIMIT)
    fields: dict[str, object] = {"key": b"k", "headers": {"a": b"b"}}
    if stamped:
        fields["timestamp_ms"] = 1_700_000_000_000
    value = _value_for_stored_size(RECORD_LIMIT, **fields)

    def produce(value: bytes, request_id: int) -> broker_pb2.ProduceResponse:
        record = records_pb2.Record(value=value, **fields)  # type: ignore[arg-type]
        return client.produce_one(
            broker_pb2.ProduceRequest(
                request_id=request_id,
                topic="size",
                partition=0,
                batch=records_pb2.RecordBatch(records=[record]),
            )
        )

    over = produce(value + b"x", 1)
    assert over.error.reason == "RECORD_TOO_LARGE", over
    assert over.error.metadata["size"] == str(RECORD_LIMIT + 1)
    assert client.end_offsets("size") == [0], "a refused request changes nothing"
    exact = produce(value, 2)
    assert not exact.HasField("error"), exact.error
    (stored,) = read_partition(client, "size", 0)
    assert stored.ByteSize() == RECORD_LIMIT


@pytest.mark.timeout(90)
def test_sdk_refuses_exactly_what_the_broker_refuses(
    broker: BrokerProcess, client: RawClient
) -> None:
    client.create_topic("sdk-size", partitions=1, record_bytes_max=RECORD_LIMIT)
    plain = _value_for_stored_size(RECORD_LIMIT)
    keyed = _value_for_stored_size(RECORD_LIMIT, key=b"k", headers={"a": b"b"})
    own_time = _value_for_stored_size(RECORD_LIMIT, timestamp_ms=1_700_000_000_000)

    async def body() -> None:
        async with weir.aio.Producer(broker.address, linger_ms=0) as producer:
            with pytest.raises(RecordTooLargeError):
                await producer.send("sdk-size", plain + b"x")
            with pytest.raises(RecordTooLargeError):
                await producer.send("sdk-size", keyed + b"x", key=b"k", headers={"a": b"b"})
            with pytest.raises(RecordTooLargeError):
                await producer.send("sdk-size", own_time + b"x", timestamp_ms=1_700_000_000_000)
            futures = [
                await producer.send("sdk-size", plain),
                await producer.send("sdk-size", keyed, key=b"k", headers={"a": b"b"}),
                await producer.send("sdk-size", own_time, timestamp_ms=1_700_000_000_000),
            ]
            metas = await asyncio.gather(*futures)
        assert [m.offset for m in metas] == [0, 1, 2]

    asyncio.run(body())
    assert [r.ByteSize() for r in read_partition(client, "sdk-size", 0)] == [RECORD_LIMIT] * 3


# -- 4. records per request --------------------------------------------------------


def _empty_records_request(count: int, request_id: int) -> bytes:
    """A ProduceRequest of `count` empty records, built without protobuf (it would take seconds)."""
    payload = b"\x0a\x00" * count
    from weir._wire import produce_request, topic_field

    return produce_request(request_id, topic_field("many"), 0, payload, broker_pb2.ACKS_ALL)


@pytest.mark.timeout(180)
def test_four_million_empty_records_are_refused_without_freezing_or_bloating_the_node(
    broker: BrokerProcess, client: RawClient
) -> None:
    client.create_topic("many", partitions=1)
    huge = _empty_records_request(4_000_000, request_id=1)
    assert len(huge) < 8 * MIB, "it fits the request size limit; only the record count is wrong"
    streams = 4
    peak_before = peak_rss_bytes(broker)

    async def body() -> None:
        async with grpc.aio.insecure_channel(broker.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def produce() -> broker_pb2.ProduceResponse:
                call = channel.stream_stream(PRODUCE)(timeout=CALL_DEADLINE_S)
                await call.write(huge)
                await call.write(request("many", [b"ok"], request_id=2).SerializeToString())
                await call.done_writing()
                answers = [broker_pb2.ProduceResponse.FromString(raw) async for raw in call]  # type: ignore[attr-defined]
                assert [a.request_id for a in answers] == [1, 2], "the stream goes on"
                assert not answers[1].HasField("error")
                return answers[0]

            producing = asyncio.gather(*(produce() for _ in range(streams)))
            checks = 0
            # The node answers health checks while the requests are in flight
            # (each check must answer within its own generous deadline).
            while not producing.done() or checks == 0:
                answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=5.0)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
                checks += 1
            for refused in await producing:
                assert refused.error.reason == "TOO_MANY_RECORDS", refused
                assert refused.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
                assert refused.error.metadata["limit"] == str(DEFAULT_RECORDS_MAX)

    asyncio.run(body())
    assert client.end_offsets("many") == [streams]
    # Four 8 MB requests arrive whole before the broker sees them; parsing
    # them would cost hundreds of MiB each. 200 MiB of growth leaves room
    # for the raw bytes and gRPC's buffers, not for a parse.
    growth = peak_rss_bytes(broker) - peak_before
    assert growth < 200 * MIB, f"peak RSS grew by {growth / MIB:.0f} MiB"


@pytest.mark.timeout(120)
def test_record_limit_is_exact_and_counts_merged_batches(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    broker = BrokerProcess(
        tmp_path_factory.mktemp("limit") / "data", "--produce-request-records-max", "1000"
    ).start()
    try:
        with RawClient(broker.address) as client:
            client.create_topic("many", partitions=2)
            newline = records_pb2.Record(value=b"\n\n\n").SerializeToString()
            framed = b"\x0a" + bytes((len(newline),)) + newline

            def batch_field(payload: bytes) -> bytes:
                from weir._wire import varint

                return b"\x22" + varint(len(payload)) + payload

            head = b"\x08\x01\x12\x04many"  # request_id 1, topic
            cases = {
                # (request bytes, records): plain empty records, records whose
                # bytes are full of the record tag, and two batch fields.
                "empty-at-limit": (head + batch_field(b"\x0a\x00" * 1000), 1000),
                "empty-over": (head + batch_field(b"\x0a\x00" * 1001), 1001),
                "newlines-at-limit": (head + batch_field(framed * 1000), 1000),
                "newlines-over": (head + batch_field(framed * 1001), 1001),
                "merged-over": (
                    head + batch_field(b"\x0a\x00" * 600) + batch_field(framed * 401),
                    1001,
                ),
            }
            for name, (raw, count) in cases.items():
                before = sum(client.end_offsets("many"))
                (answer,) = _send_raw(broker.address, [raw])
                if count <= 1000:
                    assert not answer.HasField("error"), (name, answer.error)
                    assert sum(a.record_count for a in answer.appends) == count, name
                else:
                    assert answer.error.reason == "TOO_MANY_RECORDS", (name, answer)
                    assert sum(client.end_offsets("many")) == before, name
    finally:
        broker.stop()


@pytest.mark.timeout(120)
def test_sdk_never_builds_a_batch_over_the_records_limit(broker: BrokerProcess) -> None:
    with RawClient(broker.address) as client:
        client.create_topic("tiny", partitions=1)
    count = DEFAULT_RECORDS_MAX + DEFAULT_RECORDS_MAX // 2

    async def body() -> None:
        # A long linger lets the batch fill up to its byte bound (1 MiB holds
        # half a million empty records) unless the record bound closes it.
        async with weir.aio.Producer(broker.address, linger_ms=60_000) as producer:
            futures = [await producer.send("tiny", b"", partition=0) for _ in range(count)]
            await producer.flush(timeout_s=60)
            metas = await asyncio.gather(*futures)
        assert [m.offset for m in metas] == list(range(count))

    asyncio.run(body())
