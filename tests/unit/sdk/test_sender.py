"""The sender against a scripted fake Produce stream: matching, retries, death."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2

from tests.unit.sdk.fakes import FakeChannel, FakeNodes
from weir._failover import Connection
from weir._retry import Backoff
from weir.aio import sender as sender_module
from weir.aio.accumulator import Accumulator
from weir.aio.metadata import MetadataCache
from weir.aio.sender import ProduceAttempt, Sender
from weir.errors import ClosedError, RecordTooLargeError, UnavailableError
from weir.types import Acks
from weir.v1 import broker_pb2, errors_pb2, records_pb2

pytestmark = pytest.mark.timeout(10)


class FakeCall:
    """A Produce call: records writes, answers from a script."""

    def __init__(self, address: str = "") -> None:
        self.address = address
        self.written: list[broker_pb2.ProduceRequest] = []
        self.responses: asyncio.Queue[Any] = asyncio.Queue(maxsize=100)
        self.cancelled = False

    async def write(self, request: bytes) -> None:
        self.written.append(broker_pb2.ProduceRequest.FromString(request))

    async def read(self) -> Any:
        item = await self.responses.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def done_writing(self) -> None:
        await self.responses.put(grpc.aio.EOF)

    def cancel(self) -> bool:
        self.cancelled = True
        self.responses.put_nowait(grpc.aio.EOF)
        return True

    def done(self) -> bool:
        return self.cancelled


def answer(request: broker_pb2.ProduceRequest, base_offset: int) -> broker_pb2.ProduceResponse:
    return broker_pb2.ProduceResponse(
        request_id=request.request_id,
        appends=[
            broker_pb2.PartitionAppend(
                partition=request.partition,
                base_offset=base_offset,
                record_count=len(request.batch.records),
            )
        ],
    )


def failure(request: broker_pb2.ProduceRequest, **error: Any) -> broker_pb2.ProduceResponse:
    return broker_pb2.ProduceResponse(
        request_id=request.request_id, error=errors_pb2.Error(**error)
    )


class Harness:
    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        acks: Acks = Acks.ALL,
        *,
        up: dict[str, bool] | None = None,
        max_inflight_requests: int = 3,
        retries: int = 2,
        idempotent: bool = False,
        metadata: MetadataCache | None = None,
        request_timeout_s: float = 5.0,
    ) -> None:
        self.calls: list[FakeCall] = []
        up = up if up is not None else {"a:1": True}
        self.nodes = FakeNodes(up).install(monkeypatch)

        def open_call(channel: FakeChannel) -> FakeCall:
            call = FakeCall(channel.address)
            self.calls.append(call)
            return call

        monkeypatch.setattr(sender_module, "produce_call", open_call)
        self.acc = Accumulator(
            batch_bytes_max=1000, buffer_bytes_max=10_000, linger_s=0, idempotent=idempotent
        )
        self.attempts: list[ProduceAttempt] = []

        async def identity() -> tuple[int, int]:
            return 77, 3

        self.conn = Connection(list(up), rng=random.Random(0), backoff_ms=1, backoff_max_ms=4)
        self.sender = Sender(
            connection=self.conn,
            accumulator=self.acc,
            acks=acks,
            retries=retries,
            backoff=Backoff(1, 4, rng=random.Random(0)),
            request_timeout_s=request_timeout_s,
            max_inflight_requests=max_inflight_requests,
            metadata=metadata,
            idempotent=idempotent,
            producer_identity=identity if idempotent else None,
            on_attempt=self.attempts.append,
        )

    async def next_request(self, call_index: int = -1) -> broker_pb2.ProduceRequest:
        for _ in range(1000):
            if -len(self.calls) <= call_index < len(self.calls) and self.calls[call_index].written:
                return self.calls[call_index].written.pop(0)
            await asyncio.sleep(0.001)
        raise AssertionError("no request written")


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


def rec(value: bytes) -> bytes:
    return records_pb2.Record(value=value).SerializeToString()


def test_responses_resolve_futures_with_base_offset_plus_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body() -> None:
        h = Harness(monkeypatch)
        task = asyncio.create_task(h.sender.run())
        futs = [await h.acc.append("t", 2, rec(b"%d" % i), 1.0) for i in range(3)]
        request = await h.next_request()
        assert request.partition == 2 and request.acks == broker_pb2.ACKS_ALL
        assert [r.value for r in request.batch.records] == [b"0", b"1", b"2"]
        await h.calls[0].responses.put(answer(request, 40))
        assert [(await f).offset for f in futs] == [40, 41, 42]
        assert h.acc.budget.used_bytes == 0
        h.acc.close()
        h.sender.stop()
        await task

    run(body)


def test_requests_ask_for_combined_answers_and_each_answer_in_more_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body() -> None:
        h = Harness(monkeypatch, max_inflight_requests=3)
        task = asyncio.create_task(h.sender.run())
        futs = []
        requests = []
        for partition in range(3):
            futs.append(await h.acc.append("t", partition, rec(b"%d" % partition), 1.0))
            requests.append(await h.next_request())
        assert all(r.combine_answers for r in requests)
        # One response answers all three: the second and third in `more`,
        # one of them a failure that is retried on its own.
        combined = answer(requests[0], 10)
        combined.more.extend(
            [
                answer(requests[2], 30),
                failure(
                    requests[1],
                    code=code_pb2.UNAVAILABLE,
                    reason="PROPOSAL_DROPPED",
                    retriable=True,
                ),
            ]
        )
        await h.calls[0].responses.put(combined)
        assert (await futs[0]).offset == 10
        assert (await futs[2]).offset == 30
        again = await h.next_request()
        assert again.partition == 1 and again.combine_answers
        await h.calls[0].responses.put(answer(again, 20))
        assert (await futs[1]).offset == 20
        assert h.acc.budget.used_bytes == 0
        h.acc.close()
        h.sender.stop()
        await task

    run(body)


def test_retriable_error_retries_and_fatal_error_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body() -> None:
        h = Harness(monkeypatch)
        task = asyncio.create_task(h.sender.run())
        fut = await h.acc.append("t", 0, rec(b"a"), 1.0)
        first = await h.next_request()
        await h.calls[0].responses.put(
            failure(first, code=code_pb2.UNAVAILABLE, reason="SHUTTING_DOWN", retriable=True)
        )
        # UNAVAILABLE leaves the node: the retry goes on a new stream (to the
        # same node, the only one known).
        second = await h.next_request(1)
        assert second.request_id != first.request_id
        assert second.batch == first.batch
        assert h.calls[0].cancelled
        await h.calls[1].responses.put(answer(second, 7))
        assert (await fut).offset == 7

        big = await h.acc.append("t", 0, rec(b"b"), 1.0)
        third = await h.next_request(1)
        await h.calls[1].responses.put(
            failure(third, code=code_pb2.RESOURCE_EXHAUSTED, reason="RECORD_TOO_LARGE")
        )
        with pytest.raises(RecordTooLargeError):
            await big
        h.acc.close()
        h.sender.stop()
        await task

    run(body)


def test_broken_stream_retries_unanswered_batches_on_a_new_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body() -> None:
        h = Harness(monkeypatch)
        task = asyncio.create_task(h.sender.run())
        fut = await h.acc.append("t", 0, rec(b"a"), 1.0)
        await h.next_request(0)
        await h.calls[0].responses.put(
            grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "gone"
            )
        )
        retried = await h.next_request(1)
        assert len(h.calls) == 2
        await h.calls[1].responses.put(answer(retried, 0))
        assert (await fut).offset == 0
        h.acc.close()
        h.sender.stop()
        await task

    run(body)


def test_retries_run_out(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body() -> None:
        h = Harness(monkeypatch)
        task = asyncio.create_task(h.sender.run())
        fut = await h.acc.append("t", 0, rec(b"a"), 1.0)
        for _ in range(3):  # the first attempt and two retries
            request = await h.next_request()
            await h.calls[-1].responses.put(
                failure(request, code=code_pb2.UNAVAILABLE, reason="SHUTTING_DOWN", retriable=True)
            )
        with pytest.raises(UnavailableError):
            await fut
        h.acc.close()
        h.sender.stop()
        await task

    run(body)


def test_acks_none_settles_on_write(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body() -> None:
        h = Harness(monkeypatch, acks=Acks.NONE)
        task = asyncio.create_task(h.sender.run())
        fut = await h.acc.append("t", 1, rec(b"a"), 1.0)
        assert (await fut).offset == -1
        (request,) = h.calls[0].written
        assert request.acks == broker_pb2.ACKS_NONE
        h.acc.close()
        h.sender.stop()
        await task

    run(body)


def test_a_dying_sender_fails_every_waiter(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body() -> None:
        h = Harness(monkeypatch)

        def broken(*args: object) -> None:
            raise RuntimeError("bug")

        monkeypatch.setattr(h.sender, "_on_response", broken)
        task = asyncio.create_task(h.sender.run())
        fut = await h.acc.append("t", 0, rec(b"a"), 1.0)
        request = await h.next_request()
        await h.calls[0].responses.put(answer(request, 0))
        with pytest.raises(ClosedError):
            await fut
        with pytest.raises(RuntimeError):
            await task
        with pytest.raises(ClosedError):
            await h.acc.append("t", 0, rec(b"b"), 1.0)

    run(body)
