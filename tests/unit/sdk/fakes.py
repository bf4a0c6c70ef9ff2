"""Scripted nodes for SDK unit tests: channels that connect or not, by address.

`FakeNodes.install()` replaces the SDK's channel factory and connect check,
so a `weir._failover.Connection` "connects" to the addresses marked up and
fails to connect to the others, without any network. The calls made on a
channel are the test's business (each test patches `produce_call`,
`consume_call` or `admin_stub` to script them). `FakeGroupCall` is a
stream-mode Consume call that a test drives step by step; `FakeQueueCall`
the same in queue mode (deliveries, `AckResult`s).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import grpc.aio
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from weir import _conn, _failover
from weir.v1 import broker_pb2, errors_pb2, records_pb2


class FakeChannel:
    def __init__(self, address: str) -> None:
        self.address = address
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class FakeNodes:
    def __init__(self, up: dict[str, bool]) -> None:
        self.up = dict(up)
        self.connects: list[str] = []
        self.channels: list[FakeChannel] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeNodes:
        def open_channel(address: str, **options: object) -> FakeChannel:
            channel = FakeChannel(address)
            self.channels.append(channel)
            return channel

        async def wait_ready(channel: FakeChannel, timeout_s: float) -> bool:
            self.connects.append(channel.address)
            return self.up.get(channel.address, False)

        monkeypatch.setattr(_conn, "open_channel", open_channel)
        monkeypatch.setattr(_failover, "wait_ready", wait_ready)
        return self


def rpc_error(
    code: grpc.StatusCode, reason: str = "", message: str = "", **metadata: str
) -> grpc.aio.AioRpcError:
    """A call's final status as the broker sends it: code plus ErrorInfo in the trailer."""
    trailing = grpc.aio.Metadata()
    if reason:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="weir", metadata=metadata))
        status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
        trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, message or code.name)


class FakeGroupCall:
    """A stream-mode Consume call the test drives: it pushes assignments, batches and failures.

    Answers `subscribe` with an empty `Subscribed`, every `Commit` with
    its offsets (or `commit_error`) and every `Seek` with its offset (or
    `seek_error`); records every request and wakes `wait_for` on each.
    """

    def __init__(self, address: str = "") -> None:
        self.address = address
        self.requests: list[broker_pb2.ConsumeRequest] = []
        self.commit_error: errors_pb2.Error | None = None
        self.seek_error: errors_pb2.Error | None = None
        self._responses: asyncio.Queue[bytes | BaseException | object] = asyncio.Queue(maxsize=1000)
        self._written = asyncio.Event()
        self._done = False

    # -- the test's side ------------------------------------------------------

    def assign(
        self,
        member_id: str,
        generation: int,
        partitions: list[int],
        started: dict[int, int] | None = None,
        revoked: list[int] | None = None,
    ) -> None:
        assignment = broker_pb2.Assignment(
            member_id=member_id,
            generation=generation,
            partitions=partitions,
            started=[
                broker_pb2.PartitionStart(partition=p, offset=o)
                for p, o in sorted((started or {}).items())
            ],
            revoked=revoked or [],
        )
        self._push(broker_pb2.ConsumeResponse(assignment=assignment).SerializeToString())

    def batch(self, partition: int, base_offset: int, *values: bytes) -> None:
        batch = broker_pb2.ConsumedBatch(
            records=[records_pb2.Record(value=v) for v in values],
            topic="t",
            partition=partition,
            base_offset=base_offset,
            end_offset=base_offset + len(values),
        )
        self._push(broker_pb2.ConsumeResponse(batch=batch).SerializeToString())

    def fail(self, error: BaseException) -> None:
        """The stream ends with `error` once what was pushed before is read."""
        self._push(error)

    async def delivered(self) -> None:
        """Wait until the consumer's reader has handled everything pushed so far.

        The reader handles a response in the same step in which `read()`
        returns it, before this waiter can run again.
        """
        await self._responses.join()

    async def wait_for(
        self, kind: str, predicate: Callable[[broker_pb2.ConsumeRequest], bool] = lambda r: True
    ) -> broker_pb2.ConsumeRequest:
        """The first request of `kind` matching `predicate`; waits for it to be written."""
        while True:
            for request in self.requests:
                if request.WhichOneof("kind") == kind and predicate(request):
                    return request
            self._written.clear()
            await self._written.wait()

    def sent(self, kind: str) -> list[broker_pb2.ConsumeRequest]:
        return [r for r in self.requests if r.WhichOneof("kind") == kind]

    def kinds(self) -> list[str]:
        """The kinds of requests written so far, credit left out."""
        return [k for r in self.requests if (k := r.WhichOneof("kind")) != "credit"]

    def _push(self, item: bytes | BaseException | object) -> None:
        self._responses.put_nowait(item)

    # -- the consumer's side (grpc.aio.StreamStreamCall) ----------------------

    async def write(self, request: broker_pb2.ConsumeRequest) -> None:
        self.requests.append(request)
        self._written.set()
        kind = request.WhichOneof("kind")
        if kind == "subscribe":
            subscribed = broker_pb2.Subscribed(topic="t", record_bytes_max=100)
            self._push(broker_pb2.ConsumeResponse(subscribed=subscribed).SerializeToString())
        elif kind == "commit":
            commit = request.commit
            result = broker_pb2.CommitResult(commit_id=commit.commit_id)
            if self.commit_error is not None:
                result.error.CopyFrom(self.commit_error)
            else:
                result.offsets.extend(commit.offsets)
            self._push(broker_pb2.ConsumeResponse(commit=result).SerializeToString())
        elif kind == "seek":
            seek = request.seek
            answer = broker_pb2.SeekResult(seek_id=seek.seek_id, partition=seek.partition)
            if self.seek_error is not None:
                answer.error.CopyFrom(self.seek_error)
            else:
                answer.offset = seek.position.offset
            self._push(broker_pb2.ConsumeResponse(seek=answer).SerializeToString())

    async def read(self) -> object:
        item = await self._responses.get()
        self._responses.task_done()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item

    async def done_writing(self) -> None:
        self._done = True
        self._push(grpc.aio.EOF)

    def cancel(self) -> bool:
        self._done = True
        self._push(grpc.aio.EOF)
        return True

    def done(self) -> bool:
        return self._done


def ack_id(partition: int, offset: int, attempt: int = 1) -> bytes:
    """A fake's ack id: opaque to the SDK, readable in tests."""
    return b"ack:%d:%d:%d" % (partition, offset, attempt)


class FakeQueueCall(FakeGroupCall):
    """A queue-mode Consume call: batches with deliveries, and `AckResult`s for settlements.

    Every `Ack`, `Nack` and `ExtendDeadline` is answered at once with an
    `AckResult` that refuses the ids in `refuse` (ack id -> reason), unless
    `hold_answers` is set: then the test answers with `answer()`.
    """

    def __init__(self, address: str = "") -> None:
        super().__init__(address)
        self.refuse: dict[bytes, str] = {}
        self.hold_answers = False

    def deliver(self, partition: int, *deliveries: tuple[int, bytes, int]) -> None:
        """A batch of (offset, value, delivery attempt), with a deadline of 1000 + offset."""
        batch = broker_pb2.ConsumedBatch(
            records=[records_pb2.Record(value=value) for _, value, _ in deliveries],
            topic="t",
            partition=partition,
            base_offset=deliveries[0][0],
            end_offset=max(offset for offset, _, _ in deliveries) + 1,
            deliveries=[
                broker_pb2.Delivery(
                    ack_id=ack_id(partition, offset, attempt),
                    offset=offset,
                    delivery_attempt=attempt,
                    ack_deadline_ms=1000 + offset,
                )
                for offset, _, attempt in deliveries
            ],
        )
        self._push(broker_pb2.ConsumeResponse(batch=batch).SerializeToString())

    def settlements(self) -> list[broker_pb2.ConsumeRequest]:
        kinds = ("ack", "nack", "extend_deadline")
        return [r for r in self.requests if r.WhichOneof("kind") in kinds]

    def answer(self, request: broker_pb2.ConsumeRequest) -> None:
        """Answer one settlement request, refusing the ids in `refuse`."""
        kind = request.WhichOneof("kind")
        settled = getattr(request, kind)
        result = broker_pb2.AckResult(request_id=settled.request_id)
        for index, one in enumerate(settled.ack_ids):
            reason = self.refuse.get(one)
            if reason is not None:
                code = grpc.StatusCode.INVALID_ARGUMENT
                if reason == "NOT_IN_FLIGHT":
                    code = grpc.StatusCode.FAILED_PRECONDITION
                error = errors_pb2.Error(code=code.value[0], reason=reason, message=reason)
                result.failures.append(broker_pb2.AckFailure(index=index, error=error))
        self._push(broker_pb2.ConsumeResponse(ack=result).SerializeToString())

    async def write(self, request: broker_pb2.ConsumeRequest) -> None:
        await super().write(request)
        if request.WhichOneof("kind") in ("ack", "nack", "extend_deadline") and not (
            self.hold_answers
        ):
            self.answer(request)
