"""The consume path: one subscription per stream, flow-controlled by credit.

The client grants credit in records and bytes; the broker subtracts what
it sends and never sends past it. A record costs one message and its
content size in bytes (key, value, header names and values: what any
client computes from the record it decoded; `wire.take_records` reads it
from the stored bytes). That is never more than the record's encoding,
which produce checks against record_bytes_max, so `record_bytes_max` of
byte credit always lets the next record through. When byte credit stops a
partition while message credit remains, the stream says so once with a
CREDIT_TOO_SMALL notice (again only after the partition moved on) instead
of going quiet; the stream goes on.

Records are read from the log only when credit allows, exactly the records
the message credit allows, in one read per response (consume_cursor.py),
so a consumer that stops reading costs the broker its position, the stored
run it is in the middle of (within the cursor limits of consume_cursor.py)
and the one response being written: no buffer grows (DESIGN §6,
invariant 5). gRPC's own write buffer is bounded by the
credit too, since nothing is written without it.

A response holds bytes of the node's `MemoryBudget` from when it is built
until its write returns. Every stream may always send one of
`RESPONSE_FLOOR_BYTES` without it, so consumers that stopped reading
(whose writes never return) cannot starve the others; only the part above
the floor is taken from the budget, with `try_acquire_most`, and when
little is free the response is smaller rather than late. Only a record
larger than the floor waits for its bytes. Responses draw on a share of
half the budget, so stalled consumers can never hold what producers need.

Each stream has one writer, the handler's own task: it writes every
response, records, commit and seek answers and assignments alike, and the
final status is sent only after it returned, so an abort never meets a
write in flight. A reader task parses requests (credit, commits, seeks,
a member's acks and heartbeats; consume_requests.py, shared with queue
mode) and a committer task stores commits (consume_commit.py); both hand
their results to the writer and wake it through one event. The credit a
client sends after a commit is applied at once, whatever the commit waits
for. Seeks are applied by the writer, which answers each before its
partition sends again (consume_seek.py).
Partition logs wake a stream through listeners registered once per
stream and partition; the writer then looks only at the partitions that
grew, so idle partitions cost nothing per append.

A CONSUME_MODE_STREAM subscription is a member of its group for as long
as it is open (consume_group.py, docs/groups.md): it starts with no
partition, and a member task applies the coordinator's changes, stopping
revoked partitions at once and handing each change to the writer, which
writes the `Assignment` before it starts the partitions it adds.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import grpc

from weir.cluster.storage import StorageError
from weir.server import wire
from weir.server.config import NodeConfig
from weir.server.consume_commit import Committer, storage_failure
from weir.server.consume_cursor import (
    Built,
    ConsumeStats,
    Credit,
    CursorPool,
    Partition,
    StreamCursors,
    build_response,
)
from weir.server.consume_group import (
    Member,
    mode_unavailable,
    not_a_member,
    partition_not_assigned,
)
from weir.server.consume_queue import serve_queue
from weir.server.consume_requests import Settlement, read_requests
from weir.server.consume_seek import SEEKS_INFLIGHT_MAX, SeekWork, apply_seek, refused
from weir.server.consume_start import (
    committed_positions,
    is_stream_mode,
    join_spec,
    start_positions,
)
from weir.server.errors import (
    BrokerError,
    abort,
    invalid,
    shutting_down,
    topic_not_found,
)
from weir.server.limits import (
    RESPONSE_FLOOR_BYTES,
    RESPONSE_HEADER_BYTES_MAX,
    Lease,
    MemoryBudget,
    consume_share_bytes,
)
from weir.server.membership import AssignmentChange, JoinSpec, Membership, Removed
from weir.server.naming import check_group_name
from weir.server.produce_route import Placement
from weir.server.queue_dispatch import QueueDispatcher
from weir.server.registry import Offsets, TopicSource
from weir.server.replicator import Replicator
from weir.server.topics import Topic
from weir.v1 import broker_pb2

# Requests may be MALFORMED (see services.py), hence Any.
Context = grpc.aio.ServicerContext[Any, bytes]

# A pending commit answer waits behind at most this many record responses,
# so a steady flow of records cannot starve it.
ANSWER_DELAY_RESPONSES_MAX = 16
CREDIT_TOO_SMALL = "CREDIT_TOO_SMALL"


def credit_too_small(p: Partition, record_bytes: int, credit_bytes: int) -> BrokerError:
    """The notice for a partition whose next record costs more byte credit than remains."""
    needed = record_bytes - credit_bytes
    return BrokerError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        CREDIT_TOO_SMALL,
        f"the record at offset {p.position} of partition {p.partition} costs {record_bytes}"
        f" bytes of credit and {credit_bytes} remain: grant at least {needed} more bytes"
        " (byte credit counts key, value, header names and header values)",
        {
            "partition": p.partition,
            "offset": p.position,
            "record_bytes": record_bytes,
            "credit_bytes": credit_bytes,
            "needed_bytes": needed,
        },
    )


class ConsumePath:
    def __init__(
        self,
        topics: TopicSource,
        replicator: Replicator,
        offsets: Offsets,
        config: NodeConfig,
        stopping: asyncio.Event,
        budget: MemoryBudget | None = None,
        *,
        membership: Membership | None = None,
        queues: QueueDispatcher | None = None,
    ) -> None:
        self.topics = topics
        # The dispatcher of CONSUME_MODE_QUEUE subscriptions (None: queue
        # mode is refused as unavailable on this node).
        self.queues = queues
        # The group coordinator of CONSUME_MODE_STREAM subscriptions (None:
        # stream mode is refused as unavailable on this node).
        self.membership = membership
        # Read by each _Stream of this path.
        self.replicator = replicator
        self.offsets = offsets
        self.config = config
        self.stopping = stopping
        self.stats = ConsumeStats()
        self.cursors = CursorPool()
        if budget is None:
            budget = MemoryBudget(config.inflight_bytes_max)
        # What responses above the floor may take of the node's budget.
        self.responses = budget.share(consume_share_bytes(config))

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
        stream_mode = is_stream_mode(subscribe)
        topic = self.topics.get(subscribe.topic)
        if subscribe.group:
            check_group_name(subscribe.group)
        credit = Credit()
        self.add_credit(credit, subscribe.credit)
        if subscribe.mode == broker_pb2.CONSUME_MODE_QUEUE:
            # consume_queue.py: competing consumers, dispatched at the partition leader.
            if self.queues is None:
                raise mode_unavailable(subscribe.mode)
            del first
            await serve_queue(
                context,
                topic,
                subscribe,
                credit,
                self.queues,
                self.config,
                self.stopping,
                self.add_credit,
                # In a cluster: the placement, to find the leaders of partitions with no
                # replica here (more nodes than the replication factor).
                self.topics.controller_topic if isinstance(self.topics, Placement) else None,
            )
            return
        if stream_mode:
            spec = join_spec(subscribe)
            # Only the start policy is kept of the request, which may carry
            # megabytes of unknown fields.
            start = broker_pb2.StartPosition()
            start.CopyFrom(subscribe.start)
            del first, subscribe
            await self._serve_member(context, topic, spec, start, credit)
            return
        # In a cluster this asks the group's coordinator (maybe on another node).
        committed = await committed_positions(topic, subscribe, self.offsets)
        try:
            partitions = start_positions(topic, subscribe, self.replicator, committed)
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

    async def _serve_member(
        self,
        context: Context,
        topic: Topic,
        spec: JoinSpec,
        start: broker_pb2.StartPosition,
        credit: Credit,
    ) -> None:
        """A CONSUME_MODE_STREAM subscription: join, then deliver what is assigned.

        The stream starts with no partition; the session's first event is
        its assignment. The session is closed exactly once, however the
        stream ends (half-close, error, cancellation, the node stopping).
        """
        if self.membership is None:
            raise mode_unavailable(broker_pb2.CONSUME_MODE_STREAM)
        session = await self.membership.join(spec, topic)
        try:
            subscribed = broker_pb2.Subscribed(
                topic=topic.name, record_bytes_max=topic.config.record_bytes_max
            )
            await context.write(
                broker_pb2.ConsumeResponse(subscribed=subscribed).SerializeToString()
            )
            stream = _Stream(context, topic, spec.group, [], credit, self, Member(session, start))
            await stream.run()
        finally:
            await session.close()

    def add_credit(self, credit: Credit, grant: broker_pb2.Credit) -> None:
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
    """One open subscription: a writer (the caller's task), a reader and a committer.

    A stream-mode member also has a task that waits for its session's
    events. It stops revoked partitions at once (out of the ready queue,
    listener removed, cursor dropped), so that no response of them is built
    from then on, and hands the change to the writer, which writes the
    `Assignment` and then starts the new partitions. It asks the session
    for the next change only after the writer wrote this one, so at most
    one change waits here; the session merges what comes meanwhile.
    """

    def __init__(
        self,
        context: Context,
        topic: Topic,
        group: str,
        partitions: list[Partition],
        credit: Credit,
        path: ConsumePath,
        member: Member | None = None,
    ) -> None:
        self._context = context
        self._topic = topic
        self._group = group
        # The partitions delivered now, by number (a member's change with its assignments).
        self._active: dict[int, Partition] = {}
        self._initial = partitions
        self._member = member
        # The change the writer is to write next, and its signal that it did.
        self._change: AssignmentChange | None = None
        self._change_written = asyncio.Event()
        self._credit = credit
        self._path = path
        self._stats = path.stats
        self._topic_field = wire.topic_field(topic.name)
        # Partitions that may have records to send, each at most once.
        self._ready: collections.deque[Partition] = collections.deque()
        self._wake = asyncio.Event()
        self._failure: BaseException | None = None
        self._client_done = False
        self._log_closed = False
        self._cursors = StreamCursors(path.cursors)
        # The writer while it waits for budget: a failure cancels the wait.
        self._budget_waiter: asyncio.Task[Any] | None = None
        self._committer = Committer(
            topic,
            group,
            member,
            path.offsets,
            path.replicator,
            path.stats,
            self._check_topic_live,
            self._wake,
        )
        # Seeks read and not yet answered; the semaphore bounds them.
        self._seek_slots = asyncio.Semaphore(SEEKS_INFLIGHT_MAX)
        self._seeks: collections.deque[SeekWork] = collections.deque()

    async def run(self) -> None:
        """Write until the client half-closes (OK) or something fails (raised)."""
        for p in self._initial:
            self._start(p)
        del self._initial
        tasks = [
            asyncio.create_task(read_requests(self._context, self)),
            asyncio.create_task(self._committer.run()),
            asyncio.create_task(self._watch_stopping()),
        ]
        if self._member is not None:
            tasks.append(asyncio.create_task(self._member_loop(self._member)))
        for task in tasks:
            task.add_done_callback(self._on_task_done)
        try:
            await self._write_loop()
        except StorageError as exc:
            raise storage_failure(exc, self._topic.name) from None
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for number in list(self._active):
                self._stop(number)
        if self._failure is not None:
            raise self._failure

    # -- the partitions delivered -------------------------------------------

    def _start(self, p: Partition) -> None:
        """Deliver `p` from its position on (the writer calls this after any Assignment)."""
        assert p.partition not in self._active, p.partition
        self._active[p.partition] = p
        p.stream = self
        p.log.add_listener(p)
        self.on_log_event(p)

    def _stop(self, number: int) -> None:
        """Stop delivering partition `number` at once; nothing of it is built after this."""
        p = self._active.pop(number, None)
        if p is None:
            return
        p.log.remove_listener(p)
        p.stream = None
        self._cursors.drop(p)
        if p.queued:
            p.queued = False
            self._ready.remove(p)

    # -- events from the log, the reader and the committer -------------------

    def on_log_event(self, p: Partition) -> None:
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
        if self._budget_waiter is not None:
            self._budget_waiter.cancel()

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self._fail(error)

    async def _watch_stopping(self) -> None:
        await self._path.stopping.wait()
        self._fail(shutting_down())

    # -- each request (consume_requests.RequestHandler): apply credits, queue
    # commits and seeks; a protocol error fails the stream.

    def on_half_close(self) -> None:
        self._client_done = True
        self._wake.set()

    def on_refused(self, error: BrokerError) -> None:
        self._fail(error)

    def on_request(self) -> None:
        if self._member is not None:
            # Anything the client sends keeps its session alive.
            self._member.session.seen()

    def on_credit(self, grant: broker_pb2.Credit) -> None:
        self._path.add_credit(self._credit, grant)
        self._wake.set()

    async def on_commit(self, commit: broker_pb2.Commit) -> None:
        await self._committer.submit(commit)

    async def on_seek(self, seek: broker_pb2.Seek) -> None:
        await self._seek_slots.acquire()
        self._seeks.append(SeekWork.of(seek))
        self._wake.set()

    def on_assignment_ack(self, ack: broker_pb2.AssignmentAck) -> None:
        if self._member is None:
            raise not_a_member("assignment_ack")
        self._member.check_ack(ack.generation)
        self._member.session.ack(ack.generation)

    def on_heartbeat(self) -> None:
        if self._member is None:
            raise not_a_member("heartbeat")

    async def on_settle(self, kind: str, body: Settlement) -> None:
        raise not_a_member(kind, "CONSUME_MODE_QUEUE")

    async def _member_loop(self, member: Member) -> None:
        """Stop revoked partitions at once and hand each change to the writer."""
        try:
            while True:
                event = await member.session.next_event()
                if isinstance(event, Removed):
                    raise event.error
                for number in event.stopped:
                    self._stop(number)
                self._change = event
                self._wake.set()
                await self._change_written.wait()
                self._change_written.clear()
        except BrokerError as error:
            self._fail(error)

    def _check_topic_live(self) -> None:
        """TOPIC_NOT_FOUND unless the subscribed topic still exists (not deleted, not recreated)."""
        current = self._path.topics.get(self._topic.name)
        if current.group_ids != self._topic.group_ids or self._log_closed:
            raise topic_not_found(self._topic.name)

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
            if self._change is not None:
                await self._write_change(self._change)
            if self._seeks:
                await self._answer_seeks()
            sent = await self._send_round() if self._credit.usable else 0
            answers = self._committer.answers
            if answers and (sent == 0 or since_answer >= ANSWER_DELAY_RESPONSES_MAX):
                # A commit's answer follows every record that could be sent
                # when it was ready, unless records keep it waiting too long.
                while answers:
                    await self._write(answers.popleft())
                    self._committer.answered()
                since_answer = 0
                continue
            since_answer += sent
            if sent or self._change is not None or self._seeks:
                continue
            if self._client_done and self._committer.open == 0:
                return
            await self._wake.wait()

    async def _write_change(self, change: AssignmentChange) -> None:
        """Write a member's `Assignment`, then start the partitions it adds.

        The member loop stopped the revoked partitions when the change came;
        stopping them again here costs nothing and keeps this correct alone.
        A partition started while delivered is started over, at the offset
        the Assignment names.
        """
        member = self._member
        assert member is not None
        for number in (*change.stopped, *change.started):
            self._stop(number)
        if any(not 0 <= n < self._topic.partition_count for n in change.started):
            # The coordinator saw another topic of this name (deleted and
            # created again): TOPIC_NOT_FOUND, as for any stream on it.
            self._check_topic_live()
        started = member.starts(change, self._topic, self._path.replicator)
        # Counted as sent before the write returns: the client may read the
        # Assignment and acknowledge it before this task runs again, and
        # that ack must not be refused as one for a generation never sent.
        member.generation_sent = change.generation
        await self._write(member.assignment(change, started))
        for p in started:
            self._start(p)
        self._change = None
        self._change_written.set()

    async def _answer_seeks(self) -> None:
        """Apply the waiting seeks in order, each answered before its partition sends again."""
        while self._seeks:
            work = self._seeks.popleft()
            p = self._active.get(work.partition)
            if p is None:
                result = refused(work, partition_not_assigned(work.partition))
            else:
                try:
                    result = apply_seek(work, p)
                except StorageError as exc:
                    result = refused(work, storage_failure(exc, self._topic.name), p.position)
                if not result.HasField("error"):
                    self._cursors.drop(p)
                    self.on_log_event(p)
            await self._write(broker_pb2.ConsumeResponse(seek=result).SerializeToString())
            self._seek_slots.release()

    def _raise_closed(self) -> None:
        for p in self._active.values():
            if p.log.closed:
                # The log raises the error it was closed with.
                p.log.read(p.log.end_offset, 1)
        raise topic_not_found(self._topic.name)

    async def _send_round(self) -> int:
        """One response from each partition that has records and credit; how many were sent."""
        sent = 0
        for _ in range(len(self._ready)):
            # A member's change or a seek is written before more records.
            if not self._credit.usable or self._failure is not None or not self._ready:
                break
            if self._change is not None or self._seeks:
                break
            p = self._ready.popleft()
            if p.position >= p.log.end_offset:
                p.queued = False  # the log's listener queues it again when it grows
                continue
            self._ready.append(p)
            if await self._send_from(p):
                sent += 1
        return sent

    async def _send_from(self, p: Partition) -> bool:
        """Write one response of records from `p` within credit and budget; False if none fit."""
        lease = self._response_lease()
        try:
            built = self._build(p, self._framed_bytes_max(lease))
            if built.first_record_bytes:
                # The next record alone is over the floor and what the budget
                # could give at once: wait for its bytes rather than never
                # send it.
                if lease is not None:
                    lease.close()
                lease = await self._wait_for_budget(
                    built.first_record_bytes + RESPONSE_HEADER_BYTES_MAX - RESPONSE_FLOOR_BYTES
                )
                if lease is None or p.stream is not self:
                    # The stream failed, or the partition was revoked, meanwhile.
                    return False
                # At least the record itself, even if it was stored under a
                # larger record limit than the budget's share can cover.
                framed_bytes_max = max(self._framed_bytes_max(lease), built.first_record_bytes)
                built = self._build(p, framed_bytes_max)
            response = built.response
            if response is None:
                if built.blocked_bytes >= 0 and not p.notified:
                    # Byte credit stops this partition while message credit
                    # remains: say so once rather than go quiet. The notice
                    # is small, within the floor every stream has.
                    if lease is not None:
                        lease.close()
                    p.notified = True
                    notice = credit_too_small(p, built.blocked_bytes, self._credit.bytes)
                    self._stats.notices += 1
                    await self._write(
                        broker_pb2.ConsumeResponse(notice=notice.to_proto()).SerializeToString()
                    )
                return False
            p.notified = False
            if lease is not None:
                # Hold only what this response takes above the floor.
                lease.shrink(min(lease.nbytes, max(0, len(response) - RESPONSE_FLOOR_BYTES)))
            await self._write(response)
            return True
        finally:
            if lease is not None:
                lease.close()

    def _response_lease(self) -> Lease | None:
        """As much of what a full response needs above the floor as the budget has now."""
        wanted = (
            self._path.config.consume_response_bytes_max
            + RESPONSE_HEADER_BYTES_MAX
            - RESPONSE_FLOOR_BYTES
        )
        return self._path.responses.try_acquire_most(wanted) if wanted > 0 else None

    def _framed_bytes_max(self, lease: Lease | None) -> int:
        """The record bytes a response may carry with `lease` above the floor."""
        leased = lease.nbytes if lease is not None else 0
        return min(
            self._path.config.consume_response_bytes_max,
            RESPONSE_FLOOR_BYTES - RESPONSE_HEADER_BYTES_MAX + leased,
        )

    async def _wait_for_budget(self, nbytes: int) -> Lease | None:
        """Wait for `nbytes` of the responses' share; None if the stream failed meanwhile."""
        writer = asyncio.current_task()
        assert writer is not None
        self._stats.budget_waits += 1
        self._budget_waiter = writer
        try:
            return await self._path.responses.acquire(min(nbytes, self._path.responses.bytes_max))
        except asyncio.CancelledError:
            if self._failure is None:
                raise
            # `_fail` cancelled the wait; the writer loop ends the stream.
            writer.uncancel()
            return None
        finally:
            self._budget_waiter = None

    def _build(self, p: Partition, framed_bytes_max: int) -> Built:
        return build_response(
            p, self._cursors, self._credit, self._stats, self._topic_field, framed_bytes_max
        )
