"""The produce path: validate a ProduceRequest, route it, append it, answer it.

One stream carries many pipelined requests. A reader loop validates each
request and queues its append (this awaits only storage queue space, so
offsets are assigned in arrival order); a writer loop answers requests in
arrival order as their appends commit. At most
`produce_inflight_requests_max` requests wait per stream: when that many
are unanswered the reader stops reading, and HTTP/2 flow control makes the
client wait. Record bytes waiting for the disk are bounded by the storage
writer's queue, in bytes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import grpc

from weir.cluster.storage import AppendTicket, LogClosedError, StorageError
from weir.partitioner import murmur2
from weir.server.errors import BrokerError, abort, invalid, shutting_down, topic_not_found
from weir.server.replicator import Replicator
from weir.server.topics import Topic, TopicRegistry
from weir.v1 import broker_pb2, records_pb2

# Requests may be MALFORMED (see node._parser), hence Any.
Context = grpc.aio.ServicerContext[Any, bytes]


@dataclasses.dataclass(slots=True)
class _Placed:
    partition: int
    ticket: AppendTicket
    record_count: int
    record_indexes: list[int]


@dataclasses.dataclass(slots=True)
class _Pending:
    """One request waiting for its appends to commit, or already failed."""

    request_id: int
    silent: bool  # acks=NONE: answer only errors
    placed: list[_Placed]
    error: BrokerError | None = None

    async def response(self) -> broker_pb2.ProduceResponse | None:
        if self.error is None:
            try:
                for placed in self.placed:
                    await placed.ticket.durable
            except StorageError as exc:
                self.error = _storage_error(exc)
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
                    base_offset=p.ticket.base_offset,
                    record_count=p.record_count,
                    record_indexes=p.record_indexes,
                )
                for p in self.placed
            ],
        )


class ProducePath:
    def __init__(
        self,
        topics: TopicRegistry,
        replicator: Replicator,
        inflight_requests_max: int,
        clock_ms: Callable[[], int],
        stopping: asyncio.Event,
    ) -> None:
        self._topics = topics
        self._replicator = replicator
        self._inflight_requests_max = inflight_requests_max
        self._clock_ms = clock_ms
        self._stopping = stopping
        self._readers: set[asyncio.Task[object]] = set()
        # Sticky round-robin for records without a key: one counter per
        # topic, advanced once per request.
        self._round_robin: dict[str, itertools.count[int]] = {}

    async def serve(self, context: Context) -> None:
        pending: asyncio.Queue[_Pending | None] = asyncio.Queue(self._inflight_requests_max)
        answering = asyncio.ensure_future(self._answer(pending, context))
        reader = asyncio.current_task()
        assert reader is not None
        # On stop the reader is cancelled out of `context.read()`: racing
        # every read against a stop event would cost a task per request.
        self._readers.add(reader)
        try:
            try:
                await self._read(context, pending, answering)
            except asyncio.CancelledError:
                if not self._stopping.is_set():
                    raise
                reader.uncancel()
            finally:
                self._readers.discard(reader)
            if not answering.done():
                await pending.put(None)
            await answering
        except BrokerError as error:
            await abort(context, error)
        finally:
            answering.cancel()
        if self._stopping.is_set():
            # In-flight requests were answered; tell the client to go elsewhere.
            await abort(context, shutting_down())

    def stop(self) -> None:
        """Stop reading every produce stream; each answers what it accepted, then ends."""
        for reader in self._readers:
            reader.cancel()

    async def _read(
        self,
        context: Context,
        pending: asyncio.Queue[_Pending | None],
        answering: asyncio.Future[None],
    ) -> None:
        while not answering.done():
            request = await context.read()
            if request is grpc.aio.EOF:
                return
            if not isinstance(request, broker_pb2.ProduceRequest):
                raise _malformed_produce()
            await pending.put(await self._accept(request))

    async def _answer(self, pending: asyncio.Queue[_Pending | None], context: Context) -> None:
        while (item := await pending.get()) is not None:
            response = await item.response()
            if response is not None:
                await context.write(response.SerializeToString())

    async def _accept(self, request: broker_pb2.ProduceRequest) -> _Pending:
        silent = request.acks == broker_pb2.ACKS_NONE
        try:
            placed = await self._append(request)
        except BrokerError as error:
            return _Pending(request.request_id, silent, [], error)
        return _Pending(request.request_id, silent, placed)

    async def _append(self, request: broker_pb2.ProduceRequest) -> list[_Placed]:
        """Validate everything first, so a bad request changes nothing."""
        if self._stopping.is_set():
            raise shutting_down()
        if request.acks not in broker_pb2.Acks.values():
            raise invalid("INVALID_ACKS", f"unknown acks value {request.acks}")
        topic = self._topics.get(request.topic)
        records = request.batch.records
        if not records:
            raise invalid("EMPTY_BATCH", "a produce request needs at least one record")
        max_timestamp_ms = self._check_records(topic, request.batch)
        if request.HasField("partition"):
            group_id = topic.group_id(request.partition)
            routes: list[tuple[int, int, records_pb2.RecordBatch, list[int]]] = [
                (request.partition, group_id, request.batch, [])
            ]
        else:
            routes = self._route(topic, request.batch)
        placed = []
        for partition, group_id, batch, indexes in routes:
            try:
                ticket = await self._replicator.append(
                    group_id, batch.SerializeToString(), len(batch.records), max_timestamp_ms
                )
            except LogClosedError:
                # The topic was deleted while this request waited for room.
                raise topic_not_found(topic.name) from None
            except StorageError as exc:
                raise _storage_error(exc) from exc
            placed.append(_Placed(partition, ticket, len(batch.records), indexes))
        return placed

    def _check_records(self, topic: Topic, batch: records_pb2.RecordBatch) -> int:
        """Check sizes and timestamps, fill in missing timestamps; return the max timestamp."""
        limit = topic.config.record_bytes_max
        # A batch no larger than the record limit cannot hold a record over it.
        if batch.ByteSize() > limit:
            for index, record in enumerate(batch.records):
                size = record.ByteSize()
                if size > limit:
                    raise BrokerError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        "RECORD_TOO_LARGE",
                        f"record {index} is {size} bytes; topic {topic.name!r} accepts at most {limit}",
                        {"topic": topic.name, "index": index, "size": size, "limit": limit},
                    )
        now_ms = self._clock_ms()
        max_timestamp_ms = 0
        for index, record in enumerate(batch.records):
            timestamp_ms = record.timestamp_ms
            if timestamp_ms == 0:
                record.timestamp_ms = timestamp_ms = now_ms
            elif timestamp_ms < 0:
                raise invalid(
                    "INVALID_TIMESTAMP", f"record {index} has a negative timestamp", index=index
                )
            if timestamp_ms > max_timestamp_ms:
                max_timestamp_ms = timestamp_ms
        return max_timestamp_ms

    def _route(
        self, topic: Topic, batch: records_pb2.RecordBatch
    ) -> list[tuple[int, int, records_pb2.RecordBatch, list[int]]]:
        """Split a batch by partition: murmur2 of the key, or one sticky partition for no key."""
        count = topic.partition_count
        counter = self._round_robin.setdefault(topic.name, itertools.count())
        sticky = next(counter) % count
        split: dict[int, tuple[records_pb2.RecordBatch, list[int]]] = {}
        for index, record in enumerate(batch.records):
            partition = (
                (murmur2(record.key) & 0x7FFFFFFF) % count if record.HasField("key") else sticky
            )
            part_batch, indexes = split.setdefault(partition, (records_pb2.RecordBatch(), []))
            part_batch.records.append(record)
            indexes.append(index)
        return [
            (partition, topic.group_ids[partition], part_batch, indexes)
            for partition, (part_batch, indexes) in split.items()
        ]


def _storage_error(exc: StorageError) -> BrokerError:
    return BrokerError(grpc.StatusCode.UNAVAILABLE, "STORAGE_ERROR", f"the append failed: {exc}")


def _malformed_produce() -> BrokerError:
    return invalid("MALFORMED_REQUEST", "a ProduceRequest could not be parsed")
