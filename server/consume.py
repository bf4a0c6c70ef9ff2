"""The consume path: one subscription per stream, flow-controlled by credit.

The client grants credit in records and bytes; the broker subtracts what
it sends and never sends past it. A record costs one message and the size
of its `weir.v1.Record` encoding in bytes (what any client can compute from
the record it decoded, and what produce checks against record_bytes_max),
so `record_bytes_max` of byte credit always lets the next record through.

Records are read from the log only when credit allows, straight into the
response being written, so a consumer that stops reading costs the broker
its position and, within a node-wide byte budget, the stored batch it is in
the middle of: no buffer grows (DESIGN §6, invariant 5). gRPC's own write
buffer is bounded by the credit too, since nothing is written without it.

Each stream has one writer, the handler's own task: it writes every
response, records and commit answers alike, and the final status is sent
only after it returned, so an abort never meets a write in flight. A
reader task parses requests (credit, commits) and a committer task stores
commits; both hand their results to the writer and wake it through one
event. Partition logs wake a stream through listeners registered once per
stream and partition; the writer then looks only at the partitions that
grew, so idle partitions cost nothing per append.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from typing import Any

import grpc

from weir.cluster.storage import LogClosedError, PartitionLog, StorageError
from weir.server import wire
from weir.server.config import NodeConfig
from weir.server.errors import (
    BrokerError,
    abort,
    invalid,
    shutting_down,
    storage_error,
    topic_not_found,
)
from weir.server.naming import check_group_name
from weir.server.offsets import GroupOffsets
from weir.server.replicator import Replicator
from weir.server.topics import Topic, TopicRegistry
from weir.v1 import broker_pb2

# Requests may be MALFORMED (see node._parser), hence Any.
Context = grpc.aio.ServicerContext[Any, bytes]

MiB = 1024 * 1024
# Commits a stream may have read but not yet answered. The reader stops
# reading (and HTTP/2 pushes back on the client) while this many are open.
# Each holds at most one offset per partition of the topic.
COMMITS_INFLIGHT_MAX = 16
# A pending commit answer waits behind at most this many record responses,
# so a steady flow of records cannot starve it.
ANSWER_DELAY_RESPONSES_MAX = 16
# Stored batches kept between responses, so that a batch read in many small
# steps is read and checksummed once: at most this much per stream and on
# the whole node. Past either, a stream keeps only its byte position and
# reads the batch again (its cost per record stays linear in the records
# scanned, it only checksums again).
CURSOR_STREAM_BYTES_MAX = 16 * MiB
CURSOR_NODE_BYTES_MAX = 64 * MiB
_NO_LIMIT = 1 << 62


@dataclasses.dataclass(slots=True)
class ConsumeStats:
    """Work counters of the whole path, so tests can count work instead of timing it."""

    records_scanned: int = 0  # record headers read by wire.take_records
    stored_bytes_read: int = 0  # payload bytes returned by PartitionLog.read
    listener_calls: int = 0  # wakeups delivered by partition logs
    writer_turns: int = 0  # iterations of every stream's writer loop
    responses: int = 0  # ConsumeResponses written


@dataclasses.dataclass(slots=True, eq=False)
class _Partition:
    """A subscribed partition: its position, its cursor, and its log listener.

    The instance itself is the callback registered with the log (eq=False:
    the log finds it again by identity when it is removed).
    """

    partition: int
    log: PartitionLog
    position: int  # the next offset to send
    stream: _Stream | None = None
    queued: bool = False  # in the stream's ready queue
    # Cursor: the stored batch holding `position` (base offset, or -1 when
    # unknown), the byte position of record `position` in its payload, and
    # the payload while it is kept (`kept_bytes` charged to the budgets).
    batch_base: int = -1
    batch_records: int = 0
    batch_pos: int = 0
    payload: bytes | None = None
    kept_bytes: int = 0

    def __call__(self) -> None:
        if self.stream is not None:
            self.stream.on_log_event(self)


@dataclasses.dataclass(slots=True)
class _Credit:
    messages: int = 0
    bytes: int = 0

    @property
    def usable(self) -> bool:
        return self.messages > 0 and self.bytes > 0


@dataclasses.dataclass(frozen=True, slots=True)
class _CommitWork:
    commit_id: int
    offsets: dict[int, int]
    error: BrokerError | None


def _out_of_range(partition: int, offset: int, start: int, end: int) -> BrokerError:
    return BrokerError(
        grpc.StatusCode.OUT_OF_RANGE,
        "OFFSET_OUT_OF_RANGE",
        f"offset {offset} of partition {partition} is outside the retained range [{start}, {end}]",
        {"partition": partition, "offset": offset, "start_offset": start, "end_offset": end},
    )


def _partition_out_of_range(topic: Topic, partition: int) -> BrokerError:
    return invalid(
        "PARTITION_OUT_OF_RANGE",
        f"topic {topic.name!r} has partitions 0..{topic.partition_count - 1}, not {partition}",
        topic=topic.name,
        partition=partition,
        partition_count=topic.partition_count,
    )


def storage_failure(exc: StorageError, topic: str) -> BrokerError:
    """A storage failure of a stream: a closed log means its topic was deleted."""
    if isinstance(exc, LogClosedError):
        return topic_not_found(topic)
    return storage_error(exc, "consuming")


class ConsumePath:
    def __init__(
        self,
        topics: TopicRegistry,
        replicator: Replicator,
        offsets: GroupOffsets,
        config: NodeConfig,
        stopping: asyncio.Event,
    ) -> None:
        self.topics = topics
        # Read by each _Stream of this path.
        self.replicator = replicator
        self.offsets = offsets
        self.config = config
        self.stopping = stopping
        self.stats = ConsumeStats()
        # Node-wide budget of stored batches kept by cursors (see CURSOR_*).
        self.cursor_bytes_free = CURSOR_NODE_BYTES_MAX

    async def serve(self, context: Context) -> None:
        try:
            await self._serve(context)
        except BrokerError as error:
            # Only this task ever wrote on the call, and it is done writing.
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
        topic = self.topics.get(subscribe.topic)
        if subscribe.group:
            check_group_name(subscribe.group)
        credit = _Credit()
        self.add_credit(credit, subscribe.credit)
        try:
            partitions = self._start_positions(topic, subscribe)
        except StorageError as exc:
            raise storage_failure(exc, topic.name) from None
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
        group = subscribe.group
        # The request may be megabytes; nothing of it is needed from here on.
        del subscribed, first, subscribe
        stream = _Stream(context, topic, group, partitions, credit, self)
        await stream.run()

    def _partition_numbers(self, topic: Topic, subscribe: broker_pb2.Subscribe) -> list[int]:
        """Checks partitions and explicit offsets in time linear in the request.

        Ranges first (one pass each, in C), then duplicates with a set that
        holds at most partition_count numbers: a request that lists a
        million partitions is refused before anything grows with it.
        """
        count = topic.partition_count
        listed = subscribe.partitions
        if listed:
            highest = max(listed)
            if highest >= count:
                raise _partition_out_of_range(topic, highest)
            # Every number is in range, so more numbers than partitions
            # means a repeat, without building anything.
            numbers = list(listed) if len(listed) <= count else []
            if not numbers or len(set(numbers)) != len(numbers):
                raise invalid("DUPLICATE_PARTITION", "a partition is listed twice")
        else:
            numbers = list(range(count))
        explicit = subscribe.offsets
        if explicit:
            highest = max(explicit)
            if highest >= count:
                raise _partition_out_of_range(topic, highest)
            if listed:
                missing = explicit.keys() - set(numbers)
                if missing:
                    partition = min(missing)
                    raise invalid(
                        "PARTITION_NOT_SUBSCRIBED",
                        f"an offset is given for partition {partition}, which is not subscribed",
                        partition=partition,
                    )
        return numbers

    def _start_positions(self, topic: Topic, subscribe: broker_pb2.Subscribe) -> list[_Partition]:
        numbers = self._partition_numbers(topic, subscribe)
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


class _Stream:
    """One open subscription: a writer (the caller's task), a reader and a committer."""

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
        self._stats = path.stats
        self._topic_field = wire.topic_field(topic.name)
        # Partitions that may have records to send, each at most once.
        self._ready: collections.deque[_Partition] = collections.deque()
        self._wake = asyncio.Event()
        self._failure: BaseException | None = None
        self._client_done = False
        self._log_closed = False
        self._kept_bytes = 0
        # Commits read and not yet answered; the semaphore bounds them.
        self._commit_slots = asyncio.Semaphore(COMMITS_INFLIGHT_MAX)
        self._commits_open = 0
        self._commits: asyncio.Queue[_CommitWork] = asyncio.Queue(maxsize=COMMITS_INFLIGHT_MAX)
        self._answers: collections.deque[bytes] = collections.deque()

    async def run(self) -> None:
        """Write until the client half-closes (OK) or something fails (raised)."""
        for p in self._partitions:
            p.stream = self
            p.log.add_listener(p)
            self.on_log_event(p)
        tasks = (
            asyncio.create_task(self._read_loop()),
            asyncio.create_task(self._commit_loop()),
            asyncio.create_task(self._watch_stopping()),
        )
        for task in tasks:
            task.add_done_callback(self._on_task_done)
        try:
            await self._write_loop()
        except StorageError as exc:
            raise storage_failure(exc, self._topic.name) from None
        finally:
            for p in self._partitions:
                p.log.remove_listener(p)
                p.stream = None
                self._drop_cursor(p)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._failure is not None:
            raise self._failure

    # -- events from the log, the reader and the committer -------------------

    def on_log_event(self, p: _Partition) -> None:
        """A log grew or closed: queue the partition, wake the writer if it can act."""
        self._stats.listener_calls += 1
        if p.log.closed:
            self._log_closed = True
            self._wake.set()
            return
        if not p.queued and p.position < p.log.end_offset:
            p.queued = True
            self._ready.append(p)
            if self._credit.usable:
                self._wake.set()

    def _fail(self, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error
        self._wake.set()

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self._fail(error)

    async def _watch_stopping(self) -> None:
        await self._path.stopping.wait()
        self._fail(shutting_down())

    async def _read_loop(self) -> None:
        """Apply credits, queue commits; a protocol error fails the stream."""
        try:
            while True:
                request = await self._context.read()
                if request is grpc.aio.EOF:
                    self._client_done = True
                    self._wake.set()
                    return
                if not isinstance(request, broker_pb2.ConsumeRequest):
                    raise invalid("MALFORMED_REQUEST", "a ConsumeRequest could not be parsed")
                kind = request.WhichOneof("kind")
                if kind == "credit":
                    self._path.add_credit(self._credit, request.credit)
                    self._wake.set()
                elif kind == "commit":
                    await self._commit_slots.acquire()
                    self._commits_open += 1
                    self._commits.put_nowait(self._check_commit(request.commit))
                elif kind == "subscribe":
                    raise invalid(
                        "ALREADY_SUBSCRIBED", "subscribe is only valid as the first request"
                    )
                else:
                    raise invalid("EMPTY_REQUEST", "a ConsumeRequest must set one of its fields")
        except BrokerError as error:
            self._fail(error)

    def _check_commit(self, commit: broker_pb2.Commit) -> _CommitWork:
        """Validates a commit in one pass and folds it to one offset per partition."""
        offsets: dict[int, int] = {}
        try:
            if not self._group:
                raise BrokerError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "NO_GROUP",
                    "commit needs a subscription with a consumer group",
                )
            if commit.offsets:
                self._check_topic_live()
            for item in commit.offsets:
                log = self._path.replicator.log(self._topic.group_id(item.partition))
                end_offset = log.end_offset
                if not 0 <= item.offset <= end_offset:
                    raise _out_of_range(item.partition, item.offset, 0, end_offset)
                offsets[item.partition] = max(item.offset, offsets.get(item.partition, 0))
        except BrokerError as error:
            return _CommitWork(commit.commit_id, {}, error)
        except StorageError as exc:
            return _CommitWork(commit.commit_id, {}, storage_failure(exc, self._topic.name))
        return _CommitWork(commit.commit_id, offsets, None)

    def _check_topic_live(self) -> None:
        """TOPIC_NOT_FOUND unless the subscribed topic still exists (not deleted, not recreated)."""
        current = self._path.topics.get(self._topic.name)
        if current.group_ids != self._topic.group_ids or self._log_closed:
            raise topic_not_found(self._topic.name)

    async def _commit_loop(self) -> None:
        """Store commits in order; their answers go to the writer."""
        while True:
            work = await self._commits.get()
            result = broker_pb2.CommitResult(commit_id=work.commit_id)
            try:
                if work.error is not None:
                    raise work.error
                # Checked again after the wait in the queue; offsets.commit
                # checks once more under its lock, which deletes also take.
                if work.offsets:
                    self._check_topic_live()
                stored = await self._path.offsets.commit(self._group, self._topic, work.offsets)
            except BrokerError as error:
                result.error.CopyFrom(error.to_proto())
            except StorageError as exc:
                result.error.CopyFrom(storage_failure(exc, self._topic.name).to_proto())
            else:
                result.offsets.extend(
                    broker_pb2.PartitionOffset(partition=p, offset=o)
                    for p, o in sorted(stored.items())
                )
            self._answers.append(broker_pb2.ConsumeResponse(commit=result).SerializeToString())
            self._wake.set()

    # -- the writer --------------------------------------------------------

    async def _write(self, response: bytes) -> None:
        self._stats.responses += 1
        await self._context.write(response)

    async def _write_loop(self) -> None:
        since_answer = 0
        while True:
            self._wake.clear()
            self._stats.writer_turns += 1
            if self._failure is not None:
                return
            if self._log_closed:
                self._raise_closed()
            sent = await self._send_round() if self._credit.usable else 0
            if self._answers and (sent == 0 or since_answer >= ANSWER_DELAY_RESPONSES_MAX):
                # A commit's answer follows every record that could be sent
                # when it was ready, unless records keep it waiting too long.
                while self._answers:
                    await self._write(self._answers.popleft())
                    self._commits_open -= 1
                    self._commit_slots.release()
                since_answer = 0
                continue
            since_answer += sent
            if sent:
                continue
            if self._client_done and self._commits_open == 0:
                return
            await self._wake.wait()

    def _raise_closed(self) -> None:
        for p in self._partitions:
            if p.log.closed:
                # The log raises the error it was closed with.
                p.log.read(p.log.end_offset, 1)
        raise topic_not_found(self._topic.name)

    async def _send_round(self) -> int:
        """One response from each partition that has records and credit; how many were sent."""
        sent = 0
        for _ in range(len(self._ready)):
            if not self._credit.usable or self._failure is not None:
                break
            p = self._ready.popleft()
            if p.position >= p.log.end_offset:
                p.queued = False  # the log's listener queues it again when it grows
                continue
            self._ready.append(p)
            if await self._send_from(p):
                sent += 1
        return sent

    async def _send_from(self, p: _Partition) -> bool:
        """Write one response of records from `p` within credit; False if none fit."""
        credit = self._credit
        response_bytes_max = self._path.config.consume_response_bytes_max
        if p.position < p.log.start_offset:
            # Retention deleted records this consumer had not read yet; it
            # sees the gap in the next batch's base_offset.
            p.position = p.log.start_offset
            self._drop_cursor(p)
            p.batch_base = -1
        base_offset = p.position
        end_offset = p.log.end_offset
        parts: list[bytes | memoryview] = []
        messages = charged = framed = 0
        fetched: collections.deque[tuple[int, int, bytes]] = collections.deque()
        while p.position < end_offset and messages < credit.messages:
            if p.payload is None:
                if not fetched:
                    room = min(credit.bytes - charged, response_bytes_max - framed)
                    for batch in p.log.read(p.position, max(room, 1)):
                        self._stats.stored_bytes_read += len(batch.payload)
                        fetched.append((batch.base_offset, batch.record_count, batch.payload))
                self._load_cursor(p, *fetched.popleft())
            payload = p.payload
            assert payload is not None
            start = p.batch_pos
            taken = wire.take_records(
                payload,
                start,
                credit.messages - messages,
                credit.bytes - charged,
                response_bytes_max - framed if framed else _NO_LIMIT,
            )
            self._stats.records_scanned += taken.count + (taken.blocked_bytes >= 0)
            if taken.count:
                parts.append(memoryview(payload)[start : taken.end])
                messages += taken.count
                charged += taken.charged_bytes
                framed += taken.end - start
                p.position += taken.count
                p.batch_pos = taken.end
            if taken.end < len(payload):
                break  # a limit stopped it inside this batch; the cursor stays
            if p.position != p.batch_base + p.batch_records:
                raise wire.MalformedBatchError(
                    f"partition {p.partition}: batch {p.batch_base} holds "
                    f"{p.position - p.batch_base} records, its header says {p.batch_records}"
                )
            self._drop_cursor(p)
            p.batch_base = -1
        if p.payload is not None and not p.kept_bytes:
            self._keep_cursor(p)
        if messages == 0:
            return False
        credit.messages -= messages
        credit.bytes -= charged
        await self._write(
            wire.consume_batch_response(
                self._topic_field, p.partition, base_offset, end_offset, parts
            )
        )
        return True

    # -- cursors ------------------------------------------------------------

    def _load_cursor(self, p: _Partition, base: int, record_count: int, payload: bytes) -> None:
        if not base <= p.position < base + record_count:
            raise wire.MalformedBatchError(
                f"partition {p.partition}: read batch {base}+{record_count} for offset {p.position}"
            )
        if base != p.batch_base:
            # First visit of this batch: find the position's byte offset once.
            skip = p.position - base
            p.batch_pos = (
                wire.take_records(payload, 0, skip, _NO_LIMIT, _NO_LIMIT).end if skip else 0
            )
            self._stats.records_scanned += skip
            p.batch_base = base
        p.payload = payload
        p.batch_records = record_count

    def _keep_cursor(self, p: _Partition) -> None:
        """Keep `p`'s partly sent batch for the next response if both budgets allow."""
        assert p.payload is not None
        size = len(p.payload)
        path = self._path
        if self._kept_bytes + size <= CURSOR_STREAM_BYTES_MAX and path.cursor_bytes_free >= size:
            path.cursor_bytes_free -= size
            self._kept_bytes += size
            p.kept_bytes = size
        else:
            # Over budget: keep only the batch's base offset and byte position.
            p.payload = None

    def _drop_cursor(self, p: _Partition) -> None:
        """Forget `p`'s batch payload (its base offset and byte position stay)."""
        p.payload = None
        if p.kept_bytes:
            self._path.cursor_bytes_free += p.kept_bytes
            self._kept_bytes -= p.kept_bytes
            p.kept_bytes = 0
