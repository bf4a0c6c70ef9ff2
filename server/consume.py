"""The consume path: one subscription per stream, flow-controlled by credit.

The client grants credit in records and bytes; the broker subtracts what
it sends and never sends past it. Records are read from the log only when
credit allows, straight into the response being written, so a consumer
that stops reading costs the broker nothing but its position: no buffer
grows (DESIGN §6, invariant 5). gRPC's own write buffer is bounded by the
credit too, since nothing is written without it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import grpc

from weir.cluster.storage import LogClosedError, OffsetOutOfRangeError, PartitionLog, StorageError
from weir.server import wire
from weir.server.config import NodeConfig
from weir.server.errors import BrokerError, abort, invalid, shutting_down, topic_not_found
from weir.server.naming import check_group_name
from weir.server.offsets import GroupOffsets
from weir.server.replicator import Replicator
from weir.server.topics import Topic, TopicRegistry
from weir.v1 import broker_pb2

# Requests may be MALFORMED (see node._parser), hence Any.
Context = grpc.aio.ServicerContext[Any, bytes]


@dataclasses.dataclass(slots=True)
class _Partition:
    partition: int
    log: PartitionLog
    position: int  # the next offset to send


@dataclasses.dataclass(slots=True)
class _Credit:
    messages: int = 0
    bytes: int = 0
    granted: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


def _out_of_range(partition: int, offset: int, start: int, end: int) -> BrokerError:
    return BrokerError(
        grpc.StatusCode.OUT_OF_RANGE,
        "OFFSET_OUT_OF_RANGE",
        f"offset {offset} of partition {partition} is outside the retained range [{start}, {end}]",
        {"partition": partition, "offset": offset, "start_offset": start, "end_offset": end},
    )


class ConsumePath:
    def __init__(
        self,
        topics: TopicRegistry,
        replicator: Replicator,
        offsets: GroupOffsets,
        config: NodeConfig,
        stopping: asyncio.Event,
    ) -> None:
        self._topics = topics
        # Read by each _Stream of this path.
        self.replicator = replicator
        self.offsets = offsets
        self.config = config
        self.stopping = stopping

    async def serve(self, context: Context) -> None:
        try:
            await self._serve(context)
        except BrokerError as error:
            await abort(context, error)

    async def _serve(self, context: Context) -> None:
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        if not isinstance(first, broker_pb2.ConsumeRequest):
            raise invalid("MALFORMED_REQUEST", "a ConsumeRequest could not be parsed")
        if first.WhichOneof("kind") != "subscribe":
            raise invalid("NOT_SUBSCRIBED", "the first ConsumeRequest must be a subscribe")
        if self.stopping.is_set():
            raise shutting_down()
        subscribe = first.subscribe
        topic = self._topics.get(subscribe.topic)
        if subscribe.group:
            check_group_name(subscribe.group)
        partitions = self._start_positions(topic, subscribe)
        credit = _Credit()
        self.add_credit(credit, subscribe.credit)
        subscribed = broker_pb2.Subscribed(
            topic=topic.name,
            record_bytes_max=topic.config.record_bytes_max,
            partitions=[
                broker_pb2.PartitionStart(
                    partition=p.partition,
                    offset=p.position,
                    log_start_offset=p.log.start_offset,
                    end_offset=p.log.end_offset,
                )
                for p in partitions
            ],
        )
        await context.write(broker_pb2.ConsumeResponse(subscribed=subscribed).SerializeToString())
        stream = _Stream(context, topic, subscribe.group, partitions, credit, self)
        await stream.run()

    def _start_positions(self, topic: Topic, subscribe: broker_pb2.Subscribe) -> list[_Partition]:
        numbers = list(subscribe.partitions) or list(range(topic.partition_count))
        if len(set(numbers)) != len(numbers):
            raise invalid("DUPLICATE_PARTITION", "a partition is listed twice")
        for partition in subscribe.offsets:
            if partition not in numbers:
                raise invalid(
                    "PARTITION_NOT_SUBSCRIBED",
                    f"an offset is given for partition {partition}, which is not subscribed",
                    partition=partition,
                )
        start = subscribe.start
        if start.kind not in broker_pb2.StartKind.values():
            raise invalid("INVALID_START", f"unknown start kind {start.kind}")
        if start.kind == broker_pb2.START_KIND_TIMESTAMP and start.timestamp_ms < 0:
            raise invalid("INVALID_START", "the start timestamp is negative")
        result = []
        for number in numbers:
            log = self.replicator.log(topic.group_id(number))
            result.append(_Partition(number, log, self._start_of(topic, subscribe, number, log)))
        return result

    def _start_of(
        self, topic: Topic, subscribe: broker_pb2.Subscribe, partition: int, log: PartitionLog
    ) -> int:
        start_offset, end_offset = log.start_offset, log.end_offset
        explicit = subscribe.offsets.get(partition)
        if explicit is None and subscribe.start.kind == broker_pb2.START_KIND_OFFSET:
            explicit = subscribe.start.offset
        if explicit is not None:
            if not start_offset <= explicit <= end_offset:
                raise _out_of_range(partition, explicit, start_offset, end_offset)
            return explicit
        if subscribe.start.kind == broker_pb2.START_KIND_TIMESTAMP:
            return log.offset_for_timestamp(subscribe.start.timestamp_ms)
        if subscribe.group:
            committed = self.offsets.get(subscribe.group, topic, partition)
            if committed is not None:
                # Retention may have deleted past the committed offset.
                return max(committed, start_offset)
        if subscribe.start.kind == broker_pb2.START_KIND_EARLIEST:
            return start_offset
        return end_offset

    def add_credit(self, credit: _Credit, grant: broker_pb2.Credit) -> None:
        if grant.messages < 0 or grant.bytes < 0:
            raise invalid(
                "NEGATIVE_CREDIT",
                "credit must not be negative",
                messages=grant.messages,
                bytes=grant.bytes,
            )
        credit.messages = min(credit.messages + grant.messages, self.config.credit_messages_max)
        credit.bytes = min(credit.bytes + grant.bytes, self.config.credit_bytes_max)
        if credit.messages > 0 and credit.bytes > 0:
            credit.granted.set()


class _Stream:
    """One open subscription: a reader of client requests and a sender of records."""

    def __init__(
        self,
        context: Context,
        topic: Topic,
        group: str,
        partitions: list[_Partition],
        credit: _Credit,
        path: ConsumePath,
    ) -> None:
        self._context = context
        self._topic = topic
        self._group = group
        self._partitions = partitions
        self._credit = credit
        self._path = path
        self._topic_field = wire.topic_field(topic.name)
        self._write_lock = asyncio.Lock()
        self._next = 0  # round-robin cursor over partitions

    async def run(self) -> None:
        """Run until the client half-closes; an error from either side ends the stream."""
        stop = asyncio.ensure_future(self._path.stopping.wait())
        tasks: tuple[asyncio.Future[Any], ...] = (
            asyncio.ensure_future(self._read_loop()),
            asyncio.ensure_future(self._send_loop()),
            stop,
        )
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if stop in done:
            raise shutting_down()
        for task in done:
            task.result()

    async def _write(self, response: bytes) -> None:
        async with self._write_lock:
            await self._context.write(response)

    async def _read_loop(self) -> None:
        """Handle credits and commits until the client half-closes or the sender fails."""
        while True:
            request = await self._context.read()
            if request is grpc.aio.EOF:
                return
            if not isinstance(request, broker_pb2.ConsumeRequest):
                raise invalid("MALFORMED_REQUEST", "a ConsumeRequest could not be parsed")
            kind = request.WhichOneof("kind")
            if kind == "credit":
                self._path.add_credit(self._credit, request.credit)
            elif kind == "commit":
                await self._commit(request.commit)
            elif kind == "subscribe":
                raise invalid("ALREADY_SUBSCRIBED", "subscribe is only valid as the first request")
            else:
                raise invalid("EMPTY_REQUEST", "a ConsumeRequest must set one of its fields")

    async def _commit(self, commit: broker_pb2.Commit) -> None:
        result = broker_pb2.CommitResult(commit_id=commit.commit_id)
        try:
            stored = await self._store_commit(commit)
        except BrokerError as error:
            result.error.CopyFrom(error.to_proto())
        else:
            result.offsets.extend(
                broker_pb2.PartitionOffset(partition=p, offset=o) for p, o in sorted(stored.items())
            )
        await self._write(broker_pb2.ConsumeResponse(commit=result).SerializeToString())

    async def _store_commit(self, commit: broker_pb2.Commit) -> dict[int, int]:
        if not self._group:
            raise BrokerError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "NO_GROUP",
                "commit needs a subscription with a consumer group",
            )
        offsets: dict[int, int] = {}
        for item in commit.offsets:
            group_id = self._topic.group_id(item.partition)
            log = self._path.replicator.log(group_id)
            if not 0 <= item.offset <= log.end_offset:
                raise _out_of_range(item.partition, item.offset, 0, log.end_offset)
            offsets[item.partition] = max(item.offset, offsets.get(item.partition, 0))
        return await self._path.offsets.commit(self._group, self._topic, offsets)

    async def _send_loop(self) -> None:
        try:
            while True:
                if not self._credit.granted.is_set():
                    await self._credit.granted.wait()
                    continue
                if not await self._send_some():
                    await self._wait_for_data()
        except LogClosedError:
            raise topic_not_found(self._topic.name) from None
        except (OffsetOutOfRangeError, StorageError) as exc:
            raise BrokerError(
                grpc.StatusCode.DATA_LOSS, "DATA_CORRUPTED", f"cannot read the log: {exc}"
            ) from exc

    async def _send_some(self) -> bool:
        """Send one response from the next partition with unread records; False if none has any."""
        count = len(self._partitions)
        for step in range(count):
            state = self._partitions[(self._next + step) % count]
            if state.position < state.log.end_offset:
                self._next = (self._next + step + 1) % count
                await self._send_from(state)
                return True
        return False

    async def _wait_for_data(self) -> None:
        waiters = [asyncio.ensure_future(p.log.wait_for_data(p.position)) for p in self._partitions]
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raise LogClosedError
        finally:
            for task in waiters:
                task.cancel()

    async def _send_from(self, state: _Partition) -> None:
        credit = self._credit
        budget_bytes = min(credit.bytes, self._path.config.consume_response_bytes_max)
        if state.position < state.log.start_offset:
            # Retention deleted records this consumer had not read yet; it
            # sees the gap in the next batch's base_offset.
            state.position = state.log.start_offset
        batches = state.log.read(state.position, budget_bytes)
        parts: list[bytes | memoryview] = []
        messages = 0
        size = 0
        offset = state.position
        for batch in batches:
            skip = offset - batch.base_offset
            room = credit.messages - messages
            if (
                skip == 0
                and batch.record_count <= room
                and size + len(batch.payload) <= budget_bytes
            ):
                parts.append(batch.payload)
                messages += batch.record_count
                size += len(batch.payload)
                offset += batch.record_count
                continue
            payload = memoryview(batch.payload)
            ends = wire.record_ends(payload, skip + room)
            begin = ends[skip - 1] if skip else 0
            taken = 0
            size_end = begin
            for end in ends[skip:]:
                # The first record may use the whole credit, beyond one response's size.
                limit = budget_bytes if messages + taken else credit.bytes
                if size + (end - begin) > limit:
                    break
                taken += 1
                size_end = end
            if taken:
                parts.append(payload[begin:size_end])
                size += size_end - begin
                messages += taken
                offset += taken
            break
        if messages == 0:
            # The next record is larger than the byte credit: wait for more.
            credit.granted.clear()
            return
        credit.messages -= messages
        credit.bytes -= size
        if credit.messages <= 0 or credit.bytes <= 0:
            credit.granted.clear()
        response = wire.consume_batch_response(
            self._topic_field, state.partition, state.position, state.log.end_offset, parts
        )
        state.position = offset
        await self._write(response)
