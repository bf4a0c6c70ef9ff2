"""The produce path: parse a ProduceRequest, validate it, route it, append it, answer it.

One stream carries many pipelined requests. A reader (the handler's own
task) validates each request and queues its append (this awaits only storage
queue space, so offsets are assigned in arrival order); one writer task per
stream owns every write on the call: it answers requests in arrival order
as their appends commit and, when the reader meets an error that ends the
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

What is stored is Weir's own encoding of a batch, never the client's bytes:
the broker parses the records, drops unknown fields at every level and
serializes them again, so nothing a producer sends can reach a consumer as
a field of the consume response (DESIGN §4). A record's size is the size of
that stored `weir.v1.Record` encoding, with the timestamp the broker fills
in; it is checked here against the topic's `record_bytes_max`, and the
consume path charges byte credit by the same measure.

Work per request is proportional to its record count, so that count has a
limit (`produce_request_records_max`) checked on the raw bytes, before a
parse builds one object per record; requests with many records are
validated and serialized on a worker thread so the event loop keeps serving
everyone else meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from weir.cluster.host import HostError, NotLeaderError
from weir.cluster.storage import LogClosedError, StorageError
from weir.partitioner import murmur2
from weir.server.config import PARSED_RECORD_BYTES
from weir.server.errors import (
    BrokerError,
    abort,
    invalid,
    not_leader,
    replication_error,
    shutting_down,
    storage_error,
    topic_not_found,
)
from weir.server.limits import Lease, MemoryBudget
from weir.server.produce_forward import FORWARDED_KEY, Forwarder
from weir.server.registry import TopicSource
from weir.server.replicator import Replicator
from weir.server.topics import Topic
from weir.v1 import broker_pb2, records_pb2

# Requests are what `request_parser` returns, hence Any.
Context = grpc.aio.ServicerContext[Any, bytes]

# Requests with more records than this are validated and serialized on a
# worker thread: below it the work takes about a millisecond, less than the
# hop to a thread and back.
INLINE_RECORDS_MAX = 2048
# Worker threads busy with large requests at once, node-wide. Each holds one
# parsed request, so this also bounds the memory of that work; two matches
# the cores of the machines Weir is measured on.
WORKERS_MAX = 2


# -- parsing: count before building ------------------------------------------------


class _Malformed:
    """Bytes that are not a ProduceRequest: the stream ends with MALFORMED_REQUEST."""


MALFORMED = _Malformed()


@dataclasses.dataclass(frozen=True, slots=True)
class TooManyRecords:
    """A well-formed request over the record limit, refused without being parsed."""

    request_id: int
    limit: int

    def error(self) -> BrokerError:
        return too_many_records(self.limit)


class _BadWire(Exception):
    """The scan met bytes protobuf would not parse either."""


_UINT64_MASK = (1 << 64) - 1
# The first byte of a `RecordBatch.records` tag (field 1, length-delimited):
# 0x0A, or 0x8A when a client pads the tag varint (protobuf accepts that).
_RECORD_TAG_FIRST_BYTES = (b"\x0a", b"\x8a")
# Fields a request may carry besides its records before the scan calls it
# hostile: the five of ProduceRequest, repeated or unknown, with room to spare.
_OTHER_FIELDS_SLACK = 64


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while pos < end:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            break
    raise _BadWire


def _skip(data: bytes, pos: int, end: int, key: int) -> tuple[int, int]:
    """Skip the value of the field whose tag is `key`; returns (position, fields skipped).

    Groups (wire types 3 and 4) are obsolete but valid protobuf, and the
    parser accepts them as unknown fields, so they are skipped here too,
    counting every field inside them.
    """
    wire_type = key & 7
    if key >> 3 == 0:
        raise _BadWire
    if wire_type == 0:
        return _varint(data, pos, end)[1], 0
    if wire_type == 1:
        pos += 8
    elif wire_type == 2:
        length, pos = _varint(data, pos, end)
        pos += length
    elif wire_type == 5:
        pos += 4
    elif wire_type == 3:
        open_groups = [key >> 3]
        inner = 0
        while open_groups:
            if pos >= end:
                raise _BadWire
            inner_key, pos = _varint(data, pos, end)
            inner += 1
            if inner_key & 7 == 4:
                if inner_key >> 3 != open_groups.pop():
                    raise _BadWire
            elif inner_key & 7 == 3:
                open_groups.append(inner_key >> 3)
            else:
                pos, nested = _skip(data, pos, end, inner_key)
                inner += nested
        return pos, inner
    else:
        raise _BadWire  # 4: a group end without its start; 6, 7: no such wire type
    if pos > end:
        raise _BadWire
    return pos, 0


def count_records(raw: bytes, records_max: int) -> tuple[int, bool]:
    """(request_id, over the limit) of a serialized ProduceRequest, without parsing it.

    Records are the `records` fields of every `batch` field (protobuf merges
    repeated `batch` fields into one). Each record starts with the byte
    0x0A (or 0x8A), so counting those bytes (in C) bounds the record count
    from above;
    only when that bound exceeds the limit does a walk count exactly, and the
    walk stops as soon as the count does. Unknown fields cost the walk as
    much as records, so more than `records_max` of those is over the limit
    too. Raises `_BadWire` where protobuf would refuse the bytes as well.
    """
    end = len(raw)
    request_id = 0
    batches: list[tuple[int, int]] = []
    others = 0
    pos = 0
    while pos < end:
        key, pos = _varint(raw, pos, end)
        others += 1
        if key == 0x08:  # request_id, varint
            value, pos = _varint(raw, pos, end)
            request_id = value & _UINT64_MASK
        elif key == 0x22:  # batch, length-delimited
            length, pos = _varint(raw, pos, end)
            if pos + length > end:
                raise _BadWire
            batches.append((pos, pos + length))
            pos += length
        else:
            pos, nested = _skip(raw, pos, end, key)
            others += nested
        if others > records_max + _OTHER_FIELDS_SLACK:
            return request_id, True
    bound = sum(
        raw.count(first, start, stop)
        for start, stop in batches
        for first in _RECORD_TAG_FIRST_BYTES
    )
    if bound <= records_max:
        return request_id, False
    records = 0
    for start, stop in batches:
        pos = start
        while pos < stop:
            key, pos = _varint(raw, pos, stop)
            if key == 0x0A:
                length, pos = _varint(raw, pos, stop)
                pos += length
                if pos > stop:
                    raise _BadWire
                records += 1
                if records > records_max:
                    return request_id, True
            else:
                pos, nested = _skip(raw, pos, stop, key)
                others += 1 + nested
                if others > records_max + _OTHER_FIELDS_SLACK:
                    return request_id, True
    return request_id, False


def parse_request(raw: bytes, records_max: int) -> object:
    """A ProduceRequest, `TooManyRecords` or `MALFORMED`; never raises.

    The smallest record (an empty one) takes two bytes, so a request of L
    bytes holds at most L / 2 records and smaller requests skip the count.
    """
    if len(raw) // 2 > records_max:
        try:
            request_id, over = count_records(raw, records_max)
        except _BadWire:
            return MALFORMED
        if over:
            return TooManyRecords(request_id, records_max)
    try:
        return broker_pb2.ProduceRequest.FromString(raw)
    except DecodeError:
        # gRPC would answer a deserializer exception with INTERNAL.
        return MALFORMED


@dataclasses.dataclass(frozen=True, slots=True)
class Received:
    """What the Produce method's deserializer returns: a `parse_request` result and its size."""

    raw_bytes: int
    message: object


def too_many_records(limit: int) -> BrokerError:
    return BrokerError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "TOO_MANY_RECORDS",
        f"a produce request may hold at most {limit} records; send several requests",
        {"limit": limit},
    )


def _malformed_produce() -> BrokerError:
    return invalid("MALFORMED_REQUEST", "a ProduceRequest could not be parsed")


# -- preparing a batch: canonical bytes, timestamps, sizes, routes -------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Part:
    """The stored bytes of the records of one request that go to one partition."""

    partition: int
    payload: bytes
    record_count: int
    record_indexes: list[int]


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    """What the event loop decided about a request before its records are touched."""

    topic: str
    record_bytes_max: int
    now_ms: int
    partition: int | None  # named by the request; None: route every record
    partition_count: int
    sticky: int  # where keyless records go when routing


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def record_too_large(topic: str, index: int, size: int, limit: int) -> BrokerError:
    return BrokerError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RECORD_TOO_LARGE",
        f"record {index} is {size} bytes; topic {topic!r} accepts at most {limit}",
        {"topic": topic, "index": index, "size": size, "limit": limit},
    )


def prepare(batch: records_pb2.RecordBatch, plan: _Plan) -> tuple[list[_Part], int]:
    """Make `batch` canonical, stamp and check its records, split it; returns (parts, max timestamp).

    Pure apart from mutating `batch`, which nothing else touches meanwhile,
    so it may run on a worker thread. Raises BrokerError; nothing is
    appended before it returns.
    """
    # Unknown fields at every level go, and repeated fields were already
    # merged by the parse: what is serialized below is Weir's own encoding.
    batch.DiscardUnknownFields()
    records = batch.records
    limit = plan.record_bytes_max
    now_ms = plan.now_ms
    # A record grows only by the timestamp the broker fills in, so a batch
    # that is small enough even with one more timestamp cannot hold a record
    # over the limit, and its records need not be measured one by one.
    measure = batch.ByteSize() + 1 + _varint_size(now_ms) > limit
    max_timestamp_ms = 0
    for index, record in enumerate(records):
        timestamp_ms = record.timestamp_ms
        if timestamp_ms == 0:
            record.timestamp_ms = timestamp_ms = now_ms
        elif timestamp_ms < 0:
            raise invalid(
                "INVALID_TIMESTAMP", f"record {index} has a negative timestamp", index=index
            )
        if timestamp_ms > max_timestamp_ms:
            max_timestamp_ms = timestamp_ms
        if measure:
            size = record.ByteSize()
            if size > limit:
                raise record_too_large(plan.topic, index, size, limit)
    if plan.partition is not None:
        return [_Part(plan.partition, batch.SerializeToString(), len(records), [])], (
            max_timestamp_ms
        )
    return _route(batch, plan), max_timestamp_ms


def _route(batch: records_pb2.RecordBatch, plan: _Plan) -> list[_Part]:
    """Split a batch by partition: murmur2 of the key, or one sticky partition for no key."""
    count = plan.partition_count
    sticky = plan.sticky
    partitions = [
        (murmur2(record.key) & 0x7FFFFFFF) % count if record.HasField("key") else sticky
        for record in batch.records
    ]
    if len(set(partitions)) == 1:
        # The common case (one key, or no keys): the batch stays whole.
        n = len(partitions)
        return [_Part(partitions[0], batch.SerializeToString(), n, list(range(n)))]
    split: dict[int, tuple[records_pb2.RecordBatch, list[int]]] = {}
    for index, (partition, record) in enumerate(zip(partitions, batch.records, strict=True)):
        part_batch, indexes = split.setdefault(partition, (records_pb2.RecordBatch(), []))
        part_batch.records.append(record)
        indexes.append(index)
    return [
        _Part(partition, part_batch.SerializeToString(), len(indexes), indexes)
        for partition, (part_batch, indexes) in split.items()
    ]


# -- the stream ----------------------------------------------------------------------


def _is_forwarded(context: Context) -> bool:
    return any(key == FORWARDED_KEY for key, _ in context.invocation_metadata() or ())


@dataclasses.dataclass(slots=True)
class _Placed:
    """One part of a request, appended here or forwarded to its partition's leader."""

    partition: int
    record_count: int
    record_indexes: list[int]
    # None for a forwarded part until the leader's answer carries it.
    base_offset: int | None
    # What the answer waits for: the acks level's future of a local append
    # (resolving to anything), or the leader's answer (the base offset).
    answered: asyncio.Future[Any]
    # Done once the request's bytes may go back to the budget: the leader's
    # own copy is durable (or failed), or the leader answered.
    held: asyncio.Future[Any]


# Translates a Raft host's outcome for (partition, error) into an answer.
HostErrorMapper = Callable[[int, HostError], BrokerError]


@dataclasses.dataclass(slots=True)
class _Pending:
    """One request waiting for its appends to commit, or already failed."""

    request_id: int
    silent: bool  # acks=NONE: answer only errors
    placed: list[_Placed]
    error: BrokerError | None = None
    host_error: HostErrorMapper | None = None

    def release_when_durable(self, lease: Lease) -> None:
        """Give `lease` back once every append is durable or failed (now if there are none).

        Done by callbacks on the tickets rather than by the writer, which
        may wait without end for a client that does not read its answers.
        """
        remaining = len(self.placed)
        if not remaining:
            lease.close()
            return

        def on_done(_: asyncio.Future[None]) -> None:
            nonlocal remaining
            remaining -= 1
            if not remaining:
                lease.close()

        for placed in self.placed:
            placed.held.add_done_callback(on_done)

    async def response(self) -> broker_pb2.ProduceResponse | None:
        if self.error is None:
            for placed in self.placed:
                try:
                    value = await placed.answered
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
    """The reader is done: the writer ends the call once everything before this is written.

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
    ) -> None:
        """`forwarder`: where parts for partitions another node leads go (None: answer
        NOT_LEADER naming the leader; always so on a single node)."""
        self._topics = topics
        self._forwarder = forwarder
        self._budget = budget
        self._replicator = replicator
        self._inflight_requests_max = inflight_requests_max
        self._clock_ms = clock_ms
        self._stopping = stopping
        # Readers waiting in `context.read()`: the only place `stop()`
        # cancels them, so a request is never half-appended by a stop.
        self._reading: set[asyncio.Task[Any]] = set()
        self._workers = asyncio.Semaphore(WORKERS_MAX)
        # Sticky round-robin for records without a key: one counter per
        # topic, advanced once per request.
        self._round_robin: dict[str, itertools.count[int]] = {}

    @staticmethod
    def request_parser(records_max: int) -> Callable[[bytes], object]:
        """The Produce method's request deserializer (see `parse_request`, `Received`)."""

        def parse(raw: bytes) -> Received:
            return Received(len(raw), parse_request(raw, records_max))

        return parse

    async def serve(self, context: Context) -> None:
        pending: asyncio.Queue[_Pending | _End] = asyncio.Queue(self._inflight_requests_max)
        reader = asyncio.current_task()
        assert reader is not None
        writer = asyncio.create_task(self._write(context, pending))
        writer.add_done_callback(lambda task: _cancel_reader_if_failed(reader, task))
        # A stream another node forwards on is never forwarded again: a
        # leadership change mid-flight answers NOT_LEADER instead of a loop.
        forwarded = _is_forwarded(context)
        try:
            end = await self._read(context, pending, reader, forwarded)
            await pending.put(end)
            final = await writer
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
        pending: asyncio.Queue[_Pending | _End],
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
            # (a full queue, the next read) may keep it alive.
            del request
            if item is None:
                return _End(_malformed_produce())
            await pending.put(item)

    async def _write(
        self, context: Context, pending: asyncio.Queue[_Pending | _End]
    ) -> BrokerError | None:
        """Answer requests in order; return the status the call ends with."""
        while True:
            item = await pending.get()
            if isinstance(item, _End):
                return item.error
            response = await item.response()
            if response is not None:
                await context.write(response.SerializeToString())

    async def _admit(self, received: Received, forwarded: bool) -> _Pending | None:
        """Take the request's bytes from the budget, then accept it; None if malformed."""
        request = received.message
        if isinstance(request, TooManyRecords):
            # Refused before parsing: nothing of it is held.
            return _Pending(request.request_id, False, [], request.error())
        if not isinstance(request, broker_pb2.ProduceRequest):
            return None
        held_bytes = received.raw_bytes + len(request.batch.records) * PARSED_RECORD_BYTES
        # NodeConfig keeps the largest request under half the budget.
        lease = await self._budget.acquire(held_bytes)
        try:
            item = await self._accept(request, forwarded)
        except BaseException:
            lease.close()
            raise
        item.release_when_durable(lease)
        return item

    async def _accept(self, request: broker_pb2.ProduceRequest, forwarded: bool) -> _Pending:
        silent = request.acks == broker_pb2.ACKS_NONE
        try:
            placed = await self._append(request, forwarded)
        except BrokerError as error:
            return _Pending(request.request_id, silent, [], error)
        return _Pending(
            request.request_id,
            silent,
            placed,
            host_error=functools.partial(self._host_error, request.topic),
        )

    def _host_error(self, topic: str, partition: int, exc: HostError) -> BrokerError:
        return replication_error(exc, topic, partition, self._replicator.node_address)

    async def _append(self, request: broker_pb2.ProduceRequest, forwarded: bool) -> list[_Placed]:
        """Validate everything first, so a bad request changes nothing."""
        if self._stopping.is_set():
            raise shutting_down()
        if request.acks not in broker_pb2.Acks.values():
            raise invalid("INVALID_ACKS", f"unknown acks value {request.acks}")
        topic = self._topics.get(request.topic)
        count = len(request.batch.records)
        if not count:
            raise invalid("EMPTY_BATCH", "a produce request needs at least one record")
        parts, max_timestamp_ms = await self._prepare(topic, request)
        placed = []
        for part in parts:
            group_id = topic.group_ids[part.partition]
            try:
                appended = await self._replicator.append(
                    group_id, part.payload, part.record_count, max_timestamp_ms
                )
            except LogClosedError:
                # The topic was deleted while this request waited for room.
                raise topic_not_found(topic.name) from None
            except StorageError as exc:
                raise storage_error(exc, "the append") from exc
            except NotLeaderError as exc:
                placed.append(
                    await self._forward(topic.name, part, request.acks, exc.leader_id, forwarded)
                )
                continue
            except HostError as exc:
                raise self._host_error(topic.name, part.partition, exc) from None
            placed.append(
                _Placed(
                    part.partition,
                    part.record_count,
                    part.record_indexes,
                    appended.base_offset,
                    appended.acknowledged(request.acks),
                    appended.leader_durable,
                )
            )
        return placed

    async def _forward(
        self, topic: str, part: _Part, acks: broker_pb2.Acks, leader_id: int, forwarded: bool
    ) -> _Placed:
        """Sends `part` to its partition's leader, or answers NOT_LEADER naming it.

        Waits only for room on the link to the leader; the answer comes later.
        """
        address = self._replicator.node_address(leader_id) if leader_id else ""
        if self._forwarder is None or forwarded or not address:
            raise not_leader(topic, part.partition, leader_id, address)
        answer = await self._forwarder.submit(
            leader_id, address, topic, part.partition, acks, part.payload
        )
        return _Placed(part.partition, part.record_count, part.record_indexes, None, answer, answer)

    async def _prepare(
        self, topic: Topic, request: broker_pb2.ProduceRequest
    ) -> tuple[list[_Part], int]:
        if request.HasField("partition"):
            topic.group_id(request.partition)  # PARTITION_OUT_OF_RANGE before any work
            partition: int | None = request.partition
            sticky = 0
        else:
            partition = None
            counter = self._round_robin.setdefault(topic.name, itertools.count())
            sticky = next(counter) % topic.partition_count
        plan = _Plan(
            topic=topic.name,
            record_bytes_max=topic.config.record_bytes_max,
            now_ms=self._clock_ms(),
            partition=partition,
            partition_count=topic.partition_count,
            sticky=sticky,
        )
        if len(request.batch.records) <= INLINE_RECORDS_MAX:
            return prepare(request.batch, plan)
        async with self._workers:
            job = asyncio.get_running_loop().run_in_executor(None, prepare, request.batch, plan)
            try:
                return await asyncio.shield(job)
            except asyncio.CancelledError:
                # A thread cannot be stopped: its slot stays taken until it
                # has finished, so at most WORKERS_MAX ever run.
                with contextlib.suppress(Exception):
                    await job
                raise
