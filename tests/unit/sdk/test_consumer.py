"""The consumer's credit bookkeeping against a scripted fake Consume stream."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from tests.unit.sdk.fakes import FakeNodes
from weir.aio import consumer as consumer_module
from weir.aio.consumer import Consumer
from weir.v1 import broker_pb2, records_pb2

pytestmark = pytest.mark.timeout(10)


def batch(base_offset: int, *values: bytes) -> bytes:
    return broker_pb2.ConsumeResponse(
        batch=broker_pb2.ConsumedBatch(
            records=[records_pb2.Record(value=v) for v in values],
            topic="t",
            partition=0,
            base_offset=base_offset,
            end_offset=base_offset + len(values),
        )
    ).SerializeToString()


class FakeConsumeCall:
    """Answers subscribe; on each credit, delivers the next scripted batch at once."""

    def __init__(self, first: list[bytes], on_credit: list[bytes], record_bytes_max: int) -> None:
        self.requests: list[broker_pb2.ConsumeRequest] = []
        self._first = first
        self._on_credit = on_credit
        self._record_bytes_max = record_bytes_max
        self._responses: asyncio.Queue[Any] = asyncio.Queue(maxsize=100)
        self._done = False

    async def write(self, request: broker_pb2.ConsumeRequest) -> None:
        self.requests.append(request)
        kind = request.WhichOneof("kind")
        if kind == "subscribe":
            subscribed = broker_pb2.Subscribed(
                topic="t",
                partitions=[broker_pb2.PartitionStart(partition=0, offset=0)],
                record_bytes_max=self._record_bytes_max,
            )
            await self._responses.put(
                broker_pb2.ConsumeResponse(subscribed=subscribed).SerializeToString()
            )
            for raw in self._first:
                await self._responses.put(raw)
        elif kind == "credit" and self._on_credit:
            await self._responses.put(self._on_credit.pop(0))
            # Let the reader take the batch in before this write returns: the
            # race in which a waiting consumer could miss its wakeup.
            for _ in range(5):
                await asyncio.sleep(0)

    async def read(self) -> Any:
        return await self._responses.get()

    async def done_writing(self) -> None:
        self._done = True
        await self._responses.put(grpc.aio.EOF)

    def cancel(self) -> bool:
        self._done = True
        self._responses.put_nowait(grpc.aio.EOF)
        return True

    def done(self) -> bool:
        return self._done


def install(monkeypatch: pytest.MonkeyPatch, call: FakeConsumeCall) -> None:
    FakeNodes({"fake:1": True}).install(monkeypatch)
    monkeypatch.setattr(consumer_module, "consume_call", lambda channel: call)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


def credits(call: FakeConsumeCall) -> list[tuple[int, int]]:
    return [(r.credit.messages, r.credit.bytes) for r in call.requests if r.HasField("credit")]


def test_records_arriving_during_a_credit_write_wake_the_waiter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    call = FakeConsumeCall([batch(0, b"a")], [batch(1, b"b")], record_bytes_max=100)
    install(monkeypatch, call)

    async def body() -> None:
        async with Consumer("fake:1", "t", max_outstanding_messages=4) as consumer:
            first = await consumer.poll(5.0)
            assert first is not None and first.offset == 0
            loop = asyncio.get_running_loop()
            started = loop.time()
            second = await consumer.poll(5.0)
            assert second is not None and second.offset == 1
            assert loop.time() - started < 1.0

    run(body)


def test_credit_returns_exactly_what_was_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    values = [b"x" * n for n in (1, 10, 200, 20_000)]
    call = FakeConsumeCall([batch(0, *values)], [], record_bytes_max=64)
    install(monkeypatch, call)

    async def body() -> None:
        async with Consumer(
            "fake:1", "t", max_outstanding_messages=10, max_outstanding_bytes=100_000
        ) as consumer:
            subscribe = call.requests[0].subscribe
            assert (subscribe.credit.messages, subscribe.credit.bytes) == (10, 100_000)
            for _ in values:
                assert await consumer.poll(5.0) is not None
            assert await consumer.poll(0.05) is None  # waiting: everything taken goes back
            # A record's credit is its content: here only a value.
            sizes = [len(v) for v in values]
            assert sum(m for m, _ in credits(call)) == len(values)
            assert sum(b for _, b in credits(call)) == sum(sizes)
            assert consumer.position(0) == len(values)

    run(body)


def test_byte_window_widens_to_record_bytes_max(monkeypatch: pytest.MonkeyPatch) -> None:
    call = FakeConsumeCall([], [], record_bytes_max=5_000)
    install(monkeypatch, call)

    async def body() -> None:
        async with Consumer("fake:1", "t", max_outstanding_bytes=1_000):
            assert credits(call) == [(0, 4_000)]

    run(body)
