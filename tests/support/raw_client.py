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

from weir.v1 import admin_pb2, admin_pb2_grpc, broker_pb2, broker_pb2_grpc, records_pb2

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
