"""The produce stream: read pipelined requests, hold their bytes, answer them per partition.

A request is parsed by the method's deserializer (`produce_parse`), then
validated, routed and appended or forwarded (`produce_route`); this module
owns the stream around them.

One stream carries many pipelined requests. A reader (the handler's own
task) validates each request and queues its append (this awaits only storage
queue space, so offsets are assigned in arrival order); one writer task per
stream owns every write on the call: it answers each request once its
parts are done, in order within a partition but not across partitions
(`produce_answers`), and, when the reader meets an error that ends the
stream (a malformed message, a stopping node), first writes every answer it
still owes and only then lets the call end with that status. Two tasks
writing to one call at once (an answer and an abort) is what once left
calls without any status.

At most `produce_inflight_requests_max` requests wait per stream: when that
many are unanswered the reader stops reading, and HTTP/2 flow control makes
the client wait. Record bytes waiting for the disk are bounded by the
storage writer's queue, in bytes. Across all streams, a request holds its
size (as parsed) from the node's `MemoryBudget` from when it is read until
its appends are durable or failed; a reader takes it before reading the
next request, so while the node is over budget its producers wait in
HTTP/2 flow control. The budget is given back at durability, not when the
answer is written, so a client that never reads its answers holds none.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import grpc

from weir.cluster.host import HostError
from weir.cluster.storage import StorageError
from weir.cluster.storage.producers import (
    PRODUCER_ID_EXPIRY_MS_DEFAULT,
    PRODUCERS_PER_PARTITION_MAX_DEFAULT,
)
from weir.server.config import PARSED_RECORD_BYTES
from weir.server.errors import BrokerError, abort, shutting_down, storage_error
from weir.server.limits import Lease, MemoryBudget
from weir.server.peer_calls import from_peer
from weir.server.produce_answers import AnswerOrder, Key
from weir.server.produce_forward import FORWARDED_KEY, Forwarder
from weir.server.produce_parse import (
    MALFORMED,
    BadWire,
    Received,
    TooManyRecords,
    count_records,
    malformed_produce,
    parse_request,
    too_many_records,
)
from weir.server.produce_route import (
    INLINE_RECORDS_MAX,
    WORKERS_MAX,
    Placed,
    Plan,
    Router,
    prepare,
    record_too_large,
)
from weir.server.registry import TopicSource
from weir.server.replicator import Replicator
from weir.v1 import broker_pb2

# Names other modules and tests import from here, as they did before the
# parsing and routing moved out.
__all__ = [
    "INLINE_RECORDS_MAX",
    "MALFORMED",
    "WORKERS_MAX",
    "HostErrorMapper",
    "ProducePath",
    "Received",
    "TooManyRecords",
    "_BadWire",
    "_Plan",
    "count_records",
    "parse_request",
    "prepare",
    "record_too_large",
    "too_many_records",
]

_BadWire = BadWire
# Answers in one combined response at most: each is a few dozen bytes (an
# error a few hundred), far below a gRPC message's limit.
COMBINED_ANSWERS_MAX = 1024
_Plan = Plan

# Requests are what `request_parser` returns, hence Any.
Context = grpc.aio.ServicerContext[Any, bytes]


HostErrorMapper = Callable[[int, HostError], BrokerError]


@dataclasses.dataclass(slots=True)
class _Pending:
    """One request waiting for its appends to commit, or already failed."""

    request_id: int
    silent: bool  # acks=NONE: answer only errors
    placed: list[Placed]
    error: BrokerError | None = None
    host_error: HostErrorMapper | None = None
    # The client reads combined answers (ProduceRequest.combine_answers).
    combine: bool = False
    # The partition an early refusal counts under (see produce_answers).
    named: Key | None = None
    # AnswerOrder's bookkeeping.
    waiting: int = 0
    followers: list[Any] | None = None
    queued: bool = False

    def parts(self) -> list[asyncio.Future[Any]]:
        return [placed.answered for placed in self.placed]

    def keys(self, topic: str) -> list[Key]:
        if self.placed:
            return [(topic, placed.partition) for placed in self.placed]
        return [self.named] if self.named is not None else []

    def release_when_durable(self, lease: Lease) -> None:
        """Give `lease` back once every append is durable or failed (now if there are none).

        Done by callbacks on the tickets rather than by the writer, which
        may wait without end for a client that does not read its answers.
        """
        remaining = len(self.placed)
        if not remaining:
            lease.close()
            return
        if remaining == 1:
            # The common case (one partition): no counter to keep.
            self.placed[0].held.add_done_callback(lambda _: lease.close())
            return

        def on_done(_: asyncio.Future[None]) -> None:
            nonlocal remaining
            remaining -= 1
            if not remaining:
                lease.close()

        for placed in self.placed:
            placed.held.add_done_callback(on_done)

    def response(self) -> broker_pb2.ProduceResponse | None:
        """The answer, once every part is done."""
        if self.error is None:
            for placed in self.placed:
                try:
                    value = placed.answered.result()
                except StorageError as exc:
                    self.error = storage_error(exc, "the append")
                except HostError as exc:
                    assert self.host_error is not None, "a Raft outcome needs its mapper"
                    self.error = self.host_error(placed.partition, exc)
                except BrokerError as exc:
                    self.error = exc  # a forwarded part: the leader's answer
                else:
                    if placed.base_offset is None:
                        placed.base_offset = value
                    continue
                break
        if self.error is not None:
            return broker_pb2.ProduceResponse(
                request_id=self.request_id, error=self.error.to_proto()
            )
        if self.silent:
            return None
        return broker_pb2.ProduceResponse(
            request_id=self.request_id,
            appends=[
                broker_pb2.PartitionAppend(
                    partition=p.partition,
                    base_offset=p.base_offset,
                    record_count=p.record_count,
                    record_indexes=p.record_indexes,
                )
                for p in self.placed
            ],
        )


@dataclasses.dataclass(frozen=True, slots=True)
class _End:
    """The reader is done: the call ends once every answer it owes is written.

    `error` is the status the call ends with; None ends it with OK.
    """

    error: BrokerError | None


def _cancel_reader_if_failed(reader: asyncio.Task[Any], writer: asyncio.Task[Any]) -> None:
    # A writer that failed (the call broke under it) must not leave the
    # reader waiting for queue room or for a message that never comes.
    if not writer.cancelled() and writer.exception() is not None and not reader.done():
        reader.cancel()


class ProducePath:
    def __init__(
        self,
        topics: TopicSource,
        replicator: Replicator,
        inflight_requests_max: int,
        clock_ms: Callable[[], int],
        stopping: asyncio.Event,
        budget: MemoryBudget,
        forwarder: Forwarder | None = None,
        *,
        producer_id_expiry_ms: int = PRODUCER_ID_EXPIRY_MS_DEFAULT,
        producers_per_partition_max: int = PRODUCERS_PER_PARTITION_MAX_DEFAULT,
    ) -> None:
        """`forwarder`: where parts for partitions another node leads go (None: answer
        NOT_LEADER naming the leader; always so on a single node)."""
        self._router = Router(
            topics,
            replicator,
            clock_ms,
            stopping,
            forwarder,
            producer_id_expiry_ms=producer_id_expiry_ms,
            producers_per_partition_max=producers_per_partition_max,
        )
        self._budget = budget
        self._inflight_requests_max = inflight_requests_max
        self._stopping = stopping
        # Readers waiting in `context.read()`: the only place `stop()`
        # cancels them, so a request is never half-appended by a stop.
        self._reading: set[asyncio.Task[Any]] = set()

    @staticmethod
    def request_parser(records_max: int) -> Callable[[bytes], object]:
        """The Produce method's request deserializer (see `parse_request`, `Received`)."""

        def parse(raw: bytes) -> Received:
            return Received(len(raw), parse_request(raw, records_max))

        return parse

    async def serve(self, context: Context) -> None:
        order = AnswerOrder(self._inflight_requests_max)
        reader = asyncio.current_task()
        assert reader is not None
        writer = asyncio.create_task(self._write(context, order))
        writer.add_done_callback(lambda task: _cancel_reader_if_failed(reader, task))
        # A stream another node forwards on is never forwarded again: a
        # leadership change mid-flight answers NOT_LEADER instead of a loop.
        forwarded = from_peer(context, FORWARDED_KEY)
        try:
            end = await self._read(context, order, reader, forwarded)
            order.end()
            await writer
            final = end.error
        except asyncio.CancelledError:
            # Cancelled by a failed writer: its error is the one to report.
            failure = writer.exception() if writer.done() and not writer.cancelled() else None
            if failure is not None:
                raise failure from None
            raise
        finally:
            writer.cancel()
        if final is not None:
            # The writer has finished: this is the call's only write now.
            await abort(context, final)

    def stop(self) -> None:
        """Stop reading every produce stream; each answers what it accepted, then ends."""
        for reader in self._reading:
            reader.cancel()

    async def _read(
        self,
        context: Context,
        order: AnswerOrder,
        reader: asyncio.Task[Any],
        forwarded: bool,
    ) -> _End:
        while True:
            if self._stopping.is_set():
                return _End(shutting_down())
            self._reading.add(reader)
            try:
                request = await context.read()
            except asyncio.CancelledError:
                if not self._stopping.is_set():
                    raise
                # `stop()` cancelled this read; the client is still there and
                # gets its answers, then SHUTTING_DOWN.
                reader.uncancel()
                return _End(shutting_down())
            finally:
                self._reading.discard(reader)
            if request is grpc.aio.EOF:
                return _End(None)
            assert isinstance(request, Received), request
            item = await self._admit(request, forwarded)
            # The parsed request must not outlive its lease: nothing below
            # (a full window, the next read) may keep it alive.
            del request
            if item is None:
                return _End(malformed_produce())
            pending, topic = item
            order.add(pending, pending.keys(topic))
            del item, pending
            await order.room()

    async def _write(self, context: Context, order: AnswerOrder) -> None:
        """Answer requests as `order` allows, until the reader ended and all are answered.

        Takes every answer that is ready at once. Those of requests that
        asked for combined answers go out as one response (the first, with
        the others in `more`, in order); each other answer is a response of
        its own, written where it falls in the order.
        """
        while True:
            first = await order.next()
            if first is None:
                return
            items = [first]
            order.take_ready(items, COMBINED_ANSWERS_MAX - 1)
            combined: broker_pb2.ProduceResponse | None = None
            for item in items:
                assert isinstance(item, _Pending)
                response = item.response()
                if response is None:
                    continue
                if not item.combine:
                    if combined is not None:
                        await context.write(combined.SerializeToString())
                        combined = None
                    await context.write(response.SerializeToString())
                elif combined is None:
                    combined = response
                else:
                    combined.more.append(response)
            if combined is not None:
                await context.write(combined.SerializeToString())
            for item in items:
                order.written(item)

    async def _admit(self, received: Received, forwarded: bool) -> tuple[_Pending, str] | None:
        """Take the request's bytes from the budget, then accept it; None if malformed.

        Returns the request's answer-to-be and its topic.
        """
        request = received.message
        if isinstance(request, TooManyRecords):
            # Refused before parsing: nothing of it is held.
            return _Pending(request.request_id, False, [], request.error()), ""
        if not isinstance(request, broker_pb2.ProduceRequest):
            return None
        held_bytes = received.raw_bytes + len(request.batch.records) * PARSED_RECORD_BYTES
        # NodeConfig keeps the largest request under half the budget.
        lease = await self._budget.acquire(held_bytes)
        # Accepting is inline rather than a coroutine of its own: this runs
        # once per request, and a client sending one record per request pays
        # every layer once per record.
        silent = request.acks == broker_pb2.ACKS_NONE
        combine = request.combine_answers
        try:
            placed = await self._router.append(request, forwarded)
        except BrokerError as error:
            named = (request.topic, request.partition) if request.HasField("partition") else None
            item = _Pending(request.request_id, silent, [], error, named=named, combine=combine)
        except BaseException:
            lease.close()
            raise
        else:
            item = _Pending(
                request.request_id,
                silent,
                placed,
                host_error=functools.partial(self._router.host_error, request.topic),
                combine=combine,
            )
        item.release_when_durable(lease)
        return item, request.topic
