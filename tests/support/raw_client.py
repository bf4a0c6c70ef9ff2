"""A thin client over the generated stubs, for tests of the wire API itself.

Tests of the broker's contract talk to it through the generated code only,
so that they check what any generated client sees, independent of the SDK.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

import grpc
from grpc_status import rpc_status

from weir.v1 import admin_pb2, admin_pb2_grpc, broker_pb2, broker_pb2_grpc, errors_pb2, records_pb2

CALL_TIMEOUT_S = 60.0


class RawClient:
    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.broker = broker_pb2_grpc.BrokerServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def create_topic(self, name: str, partitions: int = 1, **config: int) -> admin_pb2.Topic:
        response = self.admin.CreateTopic(
            admin_pb2.CreateTopicRequest(
                name=name, partition_count=partitions, config=admin_pb2.TopicConfig(**config)
            ),
            timeout=CALL_TIMEOUT_S,
        )
        return response.topic

    def describe(self, name: str) -> admin_pb2.DescribeTopicResponse:
        return self.admin.DescribeTopic(
            admin_pb2.DescribeTopicRequest(name=name), timeout=CALL_TIMEOUT_S
        )

    def end_offsets(self, name: str) -> list[int]:
        return [p.end_offset for p in self.describe(name).partitions]

    def produce(
        self, requests: Iterable[broker_pb2.ProduceRequest], timeout_s: float = CALL_TIMEOUT_S
    ) -> Iterator[broker_pb2.ProduceResponse]:
        """Pipeline the requests on one stream; yield responses as they come."""
        return self.broker.Produce(iter(requests), timeout=timeout_s)  # type: ignore[no-any-return]

    def produce_one(self, request: broker_pb2.ProduceRequest) -> broker_pb2.ProduceResponse:
        responses = list(self.produce([request]))
        assert len(responses) == 1, responses
        return responses[0]


def batch(values: Iterable[bytes], key: bytes | None = None) -> records_pb2.RecordBatch:
    return records_pb2.RecordBatch(
        records=[
            records_pb2.Record(value=v, key=key) if key is not None else records_pb2.Record(value=v)
            for v in values
        ]
    )


def request(
    topic: str,
    values: Iterable[bytes],
    request_id: int = 1,
    partition: int | None = 0,
    acks: int = broker_pb2.ACKS_ALL,
) -> broker_pb2.ProduceRequest:
    msg = broker_pb2.ProduceRequest(
        request_id=request_id, topic=topic, batch=batch(values), acks=acks
    )
    if partition is not None:
        msg.partition = partition
    return msg


class ConsumeStream:
    """A Consume call driven from a queue of requests, read on demand."""

    def __init__(
        self, client: RawClient, subscribe: broker_pb2.Subscribe, timeout_s: float = 120
    ) -> None:
        self._requests: queue.Queue[broker_pb2.ConsumeRequest | None] = queue.Queue(maxsize=100)
        self._requests.put(broker_pb2.ConsumeRequest(subscribe=subscribe))
        self.call = client.broker.Consume(self._iterate(), timeout=timeout_s)
        self._lock = threading.Lock()
        # `ConsumeResponse.notice`s that `ping` and `read_batches` read past.
        self.notices: list[errors_pb2.Error] = []

    def _iterate(self) -> Iterator[broker_pb2.ConsumeRequest]:
        while (item := self._requests.get()) is not None:
            yield item

    def send(self, request: broker_pb2.ConsumeRequest) -> None:
        self._requests.put(request)

    def credit(self, messages: int, nbytes: int = 1 << 30) -> None:
        self.send(
            broker_pb2.ConsumeRequest(credit=broker_pb2.Credit(messages=messages, bytes=nbytes))
        )

    def next(self) -> broker_pb2.ConsumeResponse:
        return next(self.call)  # type: ignore[no-any-return]

    def close(self) -> None:
        self._requests.put(None)
        self.call.cancel()


def error_info(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    """The status code and ErrorInfo reason of a failed call."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"no rich status in {error}"
    from google.rpc import error_details_pb2

    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return error.code(), info.reason  # type: ignore[attr-defined]
    raise AssertionError(f"no ErrorInfo in {status}")


# Helpers for tests of positions, credit and shutdown (added below the
# originals so that nothing above changes meaning).


def start_at(kind: int, offset: int = 0, timestamp_ms: int = 0) -> broker_pb2.StartPosition:
    return broker_pb2.StartPosition(kind=kind, offset=offset, timestamp_ms=timestamp_ms)  # type: ignore[arg-type]


def open_stream(
    client: RawClient, subscribe: broker_pb2.Subscribe
) -> tuple[ConsumeStream, broker_pb2.Subscribed]:
    """Open a Consume stream and read its `Subscribed` answer."""
    stream = ConsumeStream(client, subscribe)
    first = stream.next()
    assert first.WhichOneof("kind") == "subscribed", first
    return stream, first.subscribed


def ping(stream: ConsumeStream, commit_id: int) -> list[broker_pb2.ConsumedBatch]:
    """One round trip through the broker; returns the batches that arrived before its answer.

    A Commit without offsets stores nothing (or, on a stream without a group,
    fails with NO_GROUP), but its answer travels on the same stream as the
    records: every batch the broker wrote before answering arrives first.
    """
    stream.send(broker_pb2.ConsumeRequest(commit=broker_pb2.Commit(commit_id=commit_id)))
    batches = []
    while (response := stream.next()).WhichOneof("kind") != "commit":
        if response.WhichOneof("kind") == "notice":
            stream.notices.append(response.notice)
            continue
        assert response.WhichOneof("kind") == "batch", response
        batches.append(response.batch)
    assert response.commit.commit_id == commit_id, response
    assert not response.commit.offsets, "a commit without offsets stores nothing"
    return batches


def settle(stream: ConsumeStream, commit_id: int) -> list[broker_pb2.ConsumedBatch]:
    """Ping until a round trip brings no batch; return every batch that came before.

    Two consecutive quiet round trips mean the broker had nothing more it was
    allowed to send when it answered the second one.
    """
    batches: list[broker_pb2.ConsumedBatch] = []
    quiet = 0
    while quiet < 2:
        got = ping(stream, commit_id)
        commit_id += 1
        batches.extend(got)
        quiet = 0 if got else quiet + 1
    return batches


def read_batches(stream: ConsumeStream, records: int) -> list[broker_pb2.ConsumedBatch]:
    """Read batches until `records` records have arrived (no more, or the test fails)."""
    batches: list[broker_pb2.ConsumedBatch] = []
    seen = 0
    while seen < records:
        response = stream.next()
        if response.WhichOneof("kind") == "notice":
            stream.notices.append(response.notice)
            continue
        assert response.WhichOneof("kind") == "batch", response
        batches.append(response.batch)
        seen += len(response.batch.records)
    assert seen == records, f"expected {records} records, got {seen}"
    return batches


def offsets_of(batches: Iterable[broker_pb2.ConsumedBatch]) -> list[tuple[int, int]]:
    """(partition, offset) of every delivered record, in arrival order."""
    return [(b.partition, b.base_offset + i) for b in batches for i in range(len(b.records))]


def values_of(batches: Iterable[broker_pb2.ConsumedBatch]) -> list[bytes]:
    return [r.value for b in batches for r in b.records]


def read_partition(client: RawClient, topic: str, partition: int) -> list[records_pb2.Record]:
    """Every record of one partition, from its start to its current end offset."""
    info = client.describe(topic).partitions[partition]
    count = info.end_offset - info.start_offset
    stream, subscribed = open_stream(
        client,
        broker_pb2.Subscribe(
            topic=topic,
            partitions=[partition],
            start=start_at(broker_pb2.START_KIND_EARLIEST),
            credit=broker_pb2.Credit(messages=max(count, 1), bytes=1 << 40),
        ),
    )
    try:
        assert subscribed.partitions[0].offset == info.start_offset
        batches = read_batches(stream, count) if count else []
        assert [o for _, o in offsets_of(batches)] == list(
            range(info.start_offset, info.end_offset)
        ), "dense and in order"
        return [r for b in batches for r in b.records]
    finally:
        stream.close()


def rich_status(error: grpc.RpcError) -> tuple[grpc.StatusCode, str | None]:
    """The status code and, when the call carried one, its ErrorInfo reason."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is not None:
        from google.rpc import error_details_pb2

        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return error.code(), info.reason  # type: ignore[attr-defined]
    return error.code(), None  # type: ignore[attr-defined]
