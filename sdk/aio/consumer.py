"""The asyncio consumer: one Consume stream, credit-based flow control.

    async with weir.aio.Consumer("127.0.0.1:7070", "orders", group="billing",
                                 start="earliest") as consumer:
        async for record in consumer:
            handle(record)
            await consumer.commit()

The credit model. The consumer grants the broker a window of
`max_outstanding_messages` records and `max_outstanding_bytes` bytes in
`Subscribe`, widened to the topic's `record_bytes_max` if that is larger.
A record costs one message and its content size in bytes: the lengths of
its key, value, header names (UTF-8) and header values
(`weir._wire.credit_bytes`, what the broker charges). That is never more
than the record's encoding, which produce checks against
`record_bytes_max`, so a window of `record_bytes_max` always lets the
largest record through. A record is outstanding from the moment it arrives
until the application takes it from the iterator; the credit of taken
records goes back to the broker in chunks, once half of either window has
been taken or when the application waits on an empty buffer. So the broker
never holds more credit than the window, and the consumer's buffer never
holds more than the window: a slow application slows the broker down
instead of growing memory anywhere.

A reader task owns the receiving side of the stream (records go into the
bounded buffer, commit answers to their waiters), so `commit()` from another
task never waits behind an iterator that has nothing to read.

`seek()` and reconnection after a retriable error both close the stream and
subscribe again with explicit offsets (the positions of records already
yielded), discarding what was buffered; a retriable error only leads to a
reconnect once the records already buffered have been yielded.

Failover: a reconnect goes to the next node of the bootstrap list (or to the
leader a NOT_LEADER error names), at once within a round of the addresses
and after a backoff once every node failed; a group's coordinator without a
leader (NOT_COORDINATOR), or a partition leader the node's relay cannot reach
while its successor is elected (RELAY_FAILED, RELAY_ENDED), is waited for up
to `coordinator_wait_timeout_ms`.
It resumes each partition at the offset after the last record the
application took, so the SDK neither skips nor repeats a record across the
move.

Stopping. Cancelling the task that iterates (or a deadline around `async
for`), `break`, and `stop()` from another task all leave the stream open:
`commit()` then stores the positions of the records the application took,
and iterating again continues after them: the writes on the stream
(credit, commits) are made safe to cancel in `_consumer_writer`, and
`poll_batch()` takes records without an await in between. A task cancelled
while it replaced the stream (a reconnect or `seek()`) leaves none, and the
next call subscribes again from the positions; such a `seek()` did not
happen.

Stream mode (`mode="stream"`, Kafka's `subscribe()`; the default "assign"
is Kafka's `assign()`): the stream is a member of the group and the broker
sends `Assignment`s, which the reader applies at once and the iterating
task tells the application about before its next record
(`_consumer_driver`). Queue mode (`mode="queue"`): the group's streams
compete for records, each delivered with an ack id and settled with
`ack()`, `nack()` or `extend()` (`_consumer_queue`); no positions, no
commits; a failed stream's buffered records are dropped (the broker gives
them out again).

One stream and its reader live in `_consumer_stream`, its writes in
`_consumer_writer`, the choice of the next node in `_consumer_failover`,
the membership state in `_consumer_group`, what acts on it (callbacks,
revoke commits, assignment acks, heartbeats, auto-commits, commits) in
`_consumer_driver`, queue mode's settling in `_consumer_queue`; this
module keeps positions and credit and drives the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType

from weir._conn import KEEPALIVE_TIME_MS_DEFAULT, consume_call
from weir._failover import Connection
from weir._nodes import Bootstrap
from weir._wire import RecordFields
from weir.aio import _consumer_stream as stream
from weir.aio._consumer_driver import GroupDriver
from weir.aio._consumer_failover import Failover
from weir.aio._consumer_group import PartitionsCallback, check_group_options
from weir.aio._consumer_queue import (
    ACK,
    Kind,
    SettleFuture,
    Settler,
    ack_ids,
    check_extension,
    check_nack,
    check_queue_options,
)
from weir.aio._consumer_stream import Batch, Deliveries, Subscription
from weir.aio._consumer_writer import Writer
from weir.errors import ClosedError, WeirError, WeirTimeoutError
from weir.types import (
    ConsumedRecord,
    StartSpec,
    make_consumed_record,
    make_delivered_record,
    start_position,
)
from weir.v1 import broker_pb2

__all__ = ["Consumer", "PartitionsCallback"]

MIB = 1024 * 1024
# How long ending a stream waits for a write that a cancelled caller left
# running (a write waits only for HTTP/2 flow control: a broker that stopped
# reading would hold it for ever). After that the call is cancelled.
WRITE_DRAIN_S_MAX = 1.0


class Consumer:
    """Reads one topic as an async iterator of `ConsumedRecord`.

    Iterate (and `seek()`) from one task at a time; `commit()` may run in
    another task while the iterator waits. To stop reading, `break`,
    cancel the iterating task, or call `stop()` from another task (or a
    signal handler): the stream stays open for `commit()`, and `close()`
    (leaving `async with`) ends it.

    Args:
        bootstrap: "host:port" of any broker node, or several: a sequence
            of them or one comma-separated string.
        topic: The topic to read.
        group: Consumer group; enables `commit()` and starting from the
            group's committed offsets.
        partitions: Partitions to read; None means all.
        start: Where partitions without a committed offset start: "latest"
            (default), "earliest", an offset, an aware `datetime`, or a
            `StartAt`.
        max_outstanding_messages: Credit window in records.
        max_outstanding_bytes: Credit window in record bytes (raised to the
            topic's record_bytes_max if that is larger).
        request_timeout_ms: Deadline for the subscribe handshake and commits.
        reconnect_attempts: Subscribe attempts in a row per known address
            (at start, and after retriable stream errors: a failed connect,
            UNAVAILABLE, NOT_LEADER) before the error is raised; a received
            batch starts the count again.
        retry_backoff_ms: The wait after a full round of failed nodes; it
            doubles up to 5 s, with +-20% jitter.
        coordinator_wait_timeout_ms: How long subscribing keeps trying
            while an election is under way elsewhere: the group's
            coordinator has no leader (NOT_COORDINATOR: right after a
            cluster starts, or while the coordinator moves), or the serving
            node cannot reach a partition's leader through its relay
            (RELAY_FAILED, RELAY_ENDED: that leader's node died and no
            successor is elected yet) before that error is raised; such
            answers use no `reconnect_attempts`. Counted from the first of
            them since the last subscribe, batch or assignment that
            succeeded.
        rng: Randomness for the first node and the backoff jitter.
        keepalive_time_ms: Interval of HTTP/2 keepalive pings while the
            stream is open (None: no pings). Weir's nodes accept every 5 s
            or less often by default; sooner ends the stream with
            `TooManyPingsError` (docs/errors.md).
        mode: "assign" (default: no membership, the stream reads the
            `partitions` it names, Kafka's `assign()`) or "stream" (a member
            of `group`: the broker divides the topic's partitions among the
            group's consumers, Kafka's `subscribe()`; needs a `group` and no
            `partitions`).
        on_assign: Stream mode: called with the partitions given to this
            consumer, before the first of their records is returned.
        on_revoke: Stream mode: called with the partitions taken away (or
            lost), before their progress is committed. Both callbacks run in
            the task that iterates, between two records (as Kafka runs them
            inside `poll()`); sync or async; an exception is logged.
        session_timeout_ms: Stream mode: the broker evicts a member it hears
            nothing from for this long (None: the broker's 10 s). The
            consumer sends a heartbeat after a third of it without other
            traffic. 1000 to 300000.
        rebalance_timeout_ms: Stream mode: how long a revoke may take
            (callback and commit) before the partitions move anyway (None:
            the broker's 30 s). 1000 to 300000.
        auto_commit: Commit the positions of taken records every
            `auto_commit_interval_ms` (in the iterating task, before the
            next record), on revoke and on `close()`. None: on in stream
            mode, off otherwise (as before stream mode existed).
        auto_commit_interval_ms: See `auto_commit`.
        ack_deadline_ms: Queue mode: how long a record handed to this
            consumer may stay unsettled before the broker delivers it again
            (None: the broker's 30 s). 1000 to 600000.
        ordered_keys: Queue mode: records with the same key are handed out
            one at a time, in offset order.

    Queue mode (`mode="queue"`, needs a `group`): the group's consumers
    compete for the records (a work queue); each record carries an
    `ack_id` and is settled with `ack()`, `nack()` or `extend()` instead of
    `commit()`. `start` may only be "earliest" or "latest".
    """

    def __init__(
        self,
        bootstrap: Bootstrap,
        topic: str,
        *,
        group: str | None = None,
        partitions: Iterable[int] | None = None,
        start: StartSpec = "latest",
        max_outstanding_messages: int = 5000,
        max_outstanding_bytes: int = 16 * MIB,
        request_timeout_ms: float = 30_000,
        reconnect_attempts: int = 5,
        retry_backoff_ms: int = 100,
        coordinator_wait_timeout_ms: float = 60_000,
        rng: random.Random | None = None,
        keepalive_time_ms: int | None = KEEPALIVE_TIME_MS_DEFAULT,
        mode: str = "assign",
        on_assign: PartitionsCallback | None = None,
        on_revoke: PartitionsCallback | None = None,
        session_timeout_ms: int | None = None,
        rebalance_timeout_ms: int | None = None,
        auto_commit: bool | None = None,
        auto_commit_interval_ms: int = 5000,
        ack_deadline_ms: int | None = None,
        ordered_keys: bool = False,
    ) -> None:
        if max_outstanding_messages < 1 or max_outstanding_bytes < 1:
            raise ValueError("the outstanding windows must be positive")
        if coordinator_wait_timeout_ms < 0:
            raise ValueError("coordinator_wait_timeout_ms must not be negative")
        if keepalive_time_ms is not None and keepalive_time_ms < 1:
            raise ValueError("keepalive_time_ms must be positive (None: no keepalive)")
        mode = check_group_options(
            mode,
            group,
            partitions,
            on_assign=on_assign,
            on_revoke=on_revoke,
            session_timeout_ms=session_timeout_ms,
            rebalance_timeout_ms=rebalance_timeout_ms,
        )
        check_queue_options(mode, start, ack_deadline_ms, ordered_keys, auto_commit)
        stream_mode = mode == "stream"
        if auto_commit is None:
            auto_commit = stream_mode
        if auto_commit and not group:
            raise ValueError("auto_commit needs a group")
        if auto_commit_interval_ms < 1:
            raise ValueError("auto_commit_interval_ms must be positive")
        self._conn = Connection(
            bootstrap,
            rng=rng,
            backoff_ms=retry_backoff_ms,
            connect_timeout_s=request_timeout_ms / 1000.0,
            keepalive_time_ms=keepalive_time_ms,
        )
        self.topic = topic
        self._group = group or ""
        self._partitions = sorted(set(partitions)) if partitions is not None else []
        self._start = start_position(start)
        self._window_messages = max_outstanding_messages
        self._window_bytes = max_outstanding_bytes
        self._request_timeout_s = request_timeout_ms / 1000.0
        self._positions: dict[int, int] = {}
        self._yielded: set[int] = set()
        self._end_offsets: dict[int, int] = {}
        self._taken_messages = 0
        self._taken_bytes = 0
        self._failover = Failover(
            self._conn,
            reconnect_attempts,
            coordinator_wait_timeout_s=coordinator_wait_timeout_ms / 1000.0,
        )
        self._sub: Subscription | None = None
        self._writer = Writer()
        self._subscribe_lock = asyncio.Lock()
        self._started = False
        self._stopped = False
        self._closing = False
        self._closed = False
        # Queue mode: the Subscribe fields, and ack/nack/extend (_consumer_queue).
        self._queue_mode = mode == "queue"
        self._ack_deadline_ms = ack_deadline_ms or 0
        self._ordered_keys = ordered_keys
        self._settler = Settler(self)
        self._recover_lock = asyncio.Lock()
        # Stream mode's membership and auto-commits (_consumer_driver).
        self._driver = GroupDriver(
            self,
            stream_mode=stream_mode,
            on_assign=on_assign,
            on_revoke=on_revoke,
            session_timeout_ms=session_timeout_ms,
            rebalance_timeout_ms=rebalance_timeout_ms,
            auto_commit=auto_commit,
            auto_commit_interval_ms=auto_commit_interval_ms,
        )

    async def __aenter__(self) -> Consumer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> ConsumedRecord:
        # The common case first, without a further await: records are
        # buffered and no credit is due (see `_next` for everything else).
        sub = self._sub
        if (
            sub is not None
            and sub.buffer
            and not self._stopped
            and not self._driver.due
            and self._taken_messages * 2 < self._window_messages
            and self._taken_bytes * 2 < self._window_bytes
        ):
            return self._take(sub)
        record = await self._next(None)
        if record is None:
            raise StopAsyncIteration
        return record

    async def start(self) -> None:
        """Open the channel and subscribe (`async with` does this)."""
        if self._started:
            return
        self._started = True
        try:
            await self._failover.subscribe(lambda address: self._subscribe(address, {}))
        except BaseException:
            await self.close()
            raise

    def stop(self) -> None:
        """End iteration for good; the stream stays open for `commit()` until `close()`.

        Safe from another task or a signal handler (`loop.add_signal_handler(
        signal.SIGTERM, consumer.stop)`): a waiting `async for` ends once its
        current record is handled, and from then on the iterator ends at once,
        `poll()` returns None and `poll_batch()` an empty list.
        """
        self._stopped = True
        if self._sub is not None:
            self._sub.arrived.set()

    async def poll(self, timeout_s: float | None = None) -> ConsumedRecord | None:
        """The next record, or None if none arrives within `timeout_s`."""
        try:
            return await self._next(timeout_s)
        except WeirTimeoutError:
            return None

    async def poll_batch(
        self, max_records: int = 500, timeout_s: float | None = None
    ) -> list[ConsumedRecord]:
        """Up to `max_records` records: waits (up to `timeout_s`) for the first,
        then takes what is already buffered. Empty on timeout or end of stream.

        Every record returned counts as yielded (for `commit()` and
        `position()`) and its credit goes back to the broker.
        """
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        first = await self.poll(timeout_s)
        if first is None:
            return []
        out = [first]
        sub = self._sub
        # No await from here on: a cancellation would lose the records in `out`.
        while sub is not None and sub.buffer and len(out) < max_records:
            if self._replenish_due():
                self._replenish_soon(sub)
            out.append(self._take(sub))
        return out

    def assignment(self) -> list[int]:
        """The partitions being read.

        Stream mode: the partitions this member owns, as the application was
        told them (`on_assign` called, `on_revoke` not yet); empty until the
        first assignment was applied (the first `poll()` or iteration).
        Queue mode: the partitions the stream reads from.
        """
        group = self._driver.group
        if group is not None:
            return sorted(group.owned)
        if self._queue_mode:
            return sorted(self._end_offsets)
        return sorted(self._positions)

    @property
    def member_id(self) -> str:
        """Stream mode: the id the broker gave this member ("" before it joined)."""
        return self._driver.member_id

    @property
    def generation(self) -> int:
        """Stream mode: the generation of the last assignment received (commits carry it)."""
        return self._driver.generation

    def position(self, partition: int) -> int:
        """The offset of the next record the iterator will yield from `partition`."""
        self._not_in_queue_mode("position()")
        try:
            return self._positions[partition]
        except KeyError:
            raise ValueError(f"partition {partition} is not subscribed") from None

    def end_offset(self, partition: int) -> int | None:
        """The partition's end offset as last reported by the broker."""
        return self._end_offsets.get(partition)

    async def seek(self, partition: int, offset: int) -> None:
        """Continue `partition` from `offset`; records already buffered are dropped.

        Stream mode: an in-stream `Seek` (the other partitions go on), for a
        partition this member owns; raises the broker's error (e.g.
        `OffsetOutOfRangeError`) and then nothing changed. Assign mode:
        subscribes again with explicit offsets.
        """
        self._check_usable()
        self._not_in_queue_mode("seek()")
        group = self._driver.group
        if group is not None:
            if partition not in group.received:
                owned = sorted(group.received)
                raise ValueError(
                    f"partition {partition} is not assigned to this member (it has {owned})"
                )
            await self._driver.seek_in_stream(partition, offset)
            return
        if partition not in self._positions:
            raise ValueError(f"partition {partition} is not subscribed")
        offsets = dict(self._positions)
        offsets[partition] = offset
        await self._resubscribe(offsets)

    async def commit(self, offsets: Mapping[int, int] | None = None) -> dict[int, int]:
        """Store the group's progress; returns the group's committed offsets.

        Without `offsets`, commits the position after the last record yielded
        from each partition. Needs a `group`. A lower offset than the stored
        one leaves the stored one in place (commits never move backwards).
        Stream mode: carries the member's current generation; a partition
        the member does not own is refused (`PARTITION_NOT_ASSIGNED`).
        Queue mode has no offsets to commit: `ack()` the records instead.
        """
        self._check_usable()
        self._not_in_queue_mode("commit()")
        if offsets is None:
            offsets = {p: self._positions[p] for p in sorted(self._yielded)}
        if not offsets:
            return {}
        sub = await self._current_sub()
        return await self._driver.commit_on(sub, offsets)

    def ack(self, records: ConsumedRecord | Sequence[ConsumedRecord]) -> SettleFuture:
        """Queue mode: `records` (one or several) are done; they are never delivered again.

        Await the result to wait until the broker has stored the acks
        (`AckResult`): `await consumer.ack(record)`. The acks are handed
        over when called (a future: many awaited together with
        `asyncio.gather` need no task each; `asyncio.create_task()` takes it
        too). Acking twice is harmless.
        Acks from several tasks in the same turn of the event loop go out in
        one request (so does a list). The future raises `UnknownAckIdError`
        when the broker does not know an ack id (see
        `metadata["ack_index"]`); the others were acked. After a reconnect
        the records taken from the old stream are acked on the new one.
        Call it on the consumer's event loop.
        """
        ids = self._queue_ids(records)
        return self._settler.settle_soon(ACK, ids)

    def ack_nowait(self, records: ConsumedRecord | Sequence[ConsumedRecord]) -> None:
        """Queue mode: `records` are done; their acks go out without waiting for an answer.

        The ids join the request of this turn of the event loop, as `ack()`
        calls do, but nothing waits for the broker: an id refused or a
        request that failed is logged (logger "weir.consumer"), and its record
        is delivered again like any unacked one (at least once). Much cheaper
        per record than awaiting `ack()` in a task of its own. Raises
        `BufferFullError`, sending none of the ids, when they would take the
        consumer's outstanding ack ids over 50,000 (the broker is slow to
        answer: `await ack()` waits for room). `close()` waits for these acks
        to be answered. Call it on the consumer's event loop.
        """
        ids = self._queue_ids(records)
        self._settler.settle_nowait(ACK, ids)

    async def nack(
        self,
        records: ConsumedRecord | Sequence[ConsumedRecord],
        delay_ms: int | None = None,
        error: str = "",
    ) -> None:
        """Queue mode: processing `records` failed; deliver them again later.

        After `delay_ms` (0 to 86400000), or without it after the topic's
        exponential backoff; the record's last allowed delivery goes to the
        dead-letter topic instead, with `error` (at most 1024 bytes) in its
        `weir-dlq-error` header. Raises `NotInFlightError` for a record no
        longer held (acked, or its deadline passed).
        """
        check_nack(delay_ms, error)
        ids = self._queue_ids(records)
        await self._settler.settle(Kind("nack", delay_ms=delay_ms, error=error), ids)

    async def extend(
        self, records: ConsumedRecord | Sequence[ConsumedRecord], extension_ms: int
    ) -> None:
        """Queue mode: hold `records` longer: each deadline becomes now plus `extension_ms`.

        1000 to 600000. Raises `NotInFlightError` for a record no longer held.
        """
        check_extension(extension_ms)
        ids = self._queue_ids(records)
        await self._settler.settle(Kind("extend", extension_ms=extension_ms), ids)

    def _queue_ids(self, records: ConsumedRecord | Sequence[ConsumedRecord]) -> list[bytes]:
        self._check_usable()
        if not self._queue_mode:
            raise ValueError("ack(), nack() and extend() need mode='queue'")
        return ack_ids(records)

    def _not_in_queue_mode(self, what: str) -> None:
        if self._queue_mode:
            raise ValueError(
                f"{what} does not apply with mode='queue': the broker keeps the queue's "
                "progress; settle each record with ack(), nack() or extend()"
            )

    async def close(self) -> None:
        """End the stream and close the channel.

        With `auto_commit`, first commits the positions of taken records;
        stream mode first calls `on_revoke` with every partition owned (the
        member leaves the group when the stream ends). Otherwise uncommitted
        progress is not committed.
        """
        if self._closed or self._closing:
            return
        self._closing = True
        try:
            # ack_nowait()'s acks are answered first: they need the stream.
            await self._settler.flush_unwaited()
            await self._driver.leave()
        finally:
            self._closing = False
        self._closed = True
        await self._driver.stop_auto_commit()
        await self._settler.close()
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await self._end(sub, ClosedError("the consumer is closed"))
        if self._started:
            await self._conn.close()

    # -- internals ---------------------------------------------------------

    def _check_usable(self) -> None:
        if not self._started:
            raise ClosedError("the consumer is not started; use 'async with' or start()")
        if self._closed:
            raise ClosedError("the consumer is closed")

    async def _live_sub(self) -> Subscription:
        """Queue mode: the stream in use, recovering a failed one as iterating would."""
        while True:
            self._check_usable()
            sub = self._sub
            if sub is None:
                await self._resubscribe({}, replace=False)
            elif sub.error is not None:
                await self._recover(sub)
            elif sub.ended:
                raise ClosedError("the consume stream has ended")
            else:
                return sub

    async def _current_sub(self) -> Subscription:
        """The stream in use; a new one if a cancelled task left none (see the module doc)."""
        if self._sub is None:
            await self._resubscribe(dict(self._positions), replace=False)
        sub = self._sub
        assert sub is not None
        if sub.error is not None or sub.ended:
            raise sub.error or ClosedError("the consume stream has ended")
        return sub

    async def _next(self, timeout_s: float | None) -> ConsumedRecord | None:
        """The next record; None when the stream ended cleanly.

        The deadline only covers waiting for records to arrive: once a record
        is taken out of the buffer nothing may cancel its way to the caller,
        or it would be lost while its position had already moved.
        """
        self._check_usable()
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while True:
            if self._stopped:
                return None
            sub = self._sub
            if sub is None:
                self._check_usable()  # close() from another task leaves none either
                await self._resubscribe(dict(self._positions), replace=False)
                continue
            if self._driver.due:
                await self._driver.work()
                continue
            if sub.buffer:
                if self._replenish_due():
                    await self._replenish(sub)
                    continue  # the buffer may have changed meanwhile (seek)
                return self._take(sub)
            if self._taken_messages:
                # About to wait: the broker must hold the whole window again.
                await self._replenish(sub)
            if sub.error is not None:
                await self._recover(sub)
                continue
            if sub.ended:
                return None
            # Clear, then look again without an await in between: a batch that
            # arrived during the awaits above must not be waited for.
            sub.arrived.clear()
            if sub.buffer or sub.error is not None or sub.ended or self._stopped:
                continue
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise WeirTimeoutError(f"no record within {timeout_s}s")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await sub.arrived.wait()

    def _replenish_due(self) -> bool:
        """Half of either window taken: time to give that credit back."""
        return (
            self._taken_messages * 2 >= self._window_messages
            or self._taken_bytes * 2 >= self._window_bytes
        )

    def _take(self, sub: Subscription) -> ConsumedRecord:
        batch = sub.buffer[0]
        index = batch.next_index
        batch.next_index = index + 1
        if index + 1 == len(batch.records):
            sub.buffer.popleft()
        sub.buffered -= 1
        partition = batch.partition
        self._taken_messages += 1
        self._taken_bytes += batch.sizes[index]
        key, value, headers, timestamp_ms = batch.records[index]
        deliveries = batch.deliveries
        if deliveries is not None:
            # Queue mode: no positions; the broker keeps the queue's progress.
            return make_delivered_record(
                batch.topic, partition, key, value, headers, timestamp_ms, deliveries[index]
            )
        if index == 0:
            self._yielded.add(partition)
        offset = batch.base_offset + index
        self._positions[partition] = offset + 1
        return make_consumed_record(
            batch.topic, partition, offset, key, value, headers, timestamp_ms
        )

    async def _replenish(self, sub: Subscription) -> None:
        """Give the credit of taken records back to the broker."""
        write = self._replenish_soon(sub)
        if write is not None:
            with contextlib.suppress(WeirError):
                # A failed write shows up as the reader's error; nothing to add here.
                await asyncio.shield(write)

    def _replenish_soon(self, sub: Subscription) -> asyncio.Task[None] | None:
        """Start giving the credit of taken records back, without waiting for it."""
        if sub.error is not None or sub.ended:
            return None
        messages, nbytes = self._taken_messages, self._taken_bytes
        self._taken_messages = self._taken_bytes = 0
        credit = broker_pb2.Credit(messages=messages, bytes=nbytes)
        return self._writer.start(sub, broker_pb2.ConsumeRequest(credit=credit))

    async def _recover(self, sub: Subscription) -> None:
        """After a stream error: re-subscribe on another node if retriable and attempts remain.

        Stream mode: the new stream rejoins under the same member id, and its
        first assignment says where each partition goes on; a member the
        broker removed (SESSION_EXPIRED, MEMBER_REMOVED) first loses
        everything (`on_revoke`) and joins anew.
        """
        async with self._recover_lock:
            if self._sub is not sub:
                return  # another task (queue mode's acks) replaced it already
            error = sub.error
            assert error is not None
            if await self._driver.recover_evicted(error):
                return
            await self._failover.move_on(sub.address, error)
            await self._resubscribe(dict(self._positions))

    async def _resubscribe(self, offsets: dict[int, int], *, replace: bool = True) -> None:
        """Replace the stream with one from `offsets` (`replace=False`: only if there is none).

        Serialized: `commit()` may find the stream missing while the
        iterating task subscribes again.
        """
        async with self._subscribe_lock:
            self._check_usable()
            old = self._sub
            if old is not None and not replace:
                return
            self._sub = None
            if old is not None:
                await self._end(old, ClosedError("the subscription was replaced"))
            await self._failover.subscribe(lambda address: self._subscribe(address, offsets))

    async def _subscribe(self, address: str, offsets: dict[int, int]) -> None:
        call = consume_call(self._conn.channel(address))
        sub = Subscription(call=call, address=address)
        self._taken_messages = self._taken_bytes = 0
        stream_mode = self._driver.group is not None
        subscribe = broker_pb2.Subscribe(
            topic=self.topic,
            partitions=self._partitions,
            group=self._group,
            start=self._start,
            offsets={} if stream_mode or self._queue_mode else offsets,
            credit=broker_pb2.Credit(messages=self._window_messages, bytes=self._window_bytes),
        )
        self._driver.configure(sub, subscribe)
        if self._queue_mode:
            # Records of a failed stream go back to the queue: none is yielded.
            sub.drop_on_error = True
            subscribe.mode = broker_pb2.CONSUME_MODE_QUEUE
            subscribe.ack_deadline_ms = self._ack_deadline_ms
            subscribe.ordered_keys = self._ordered_keys
        sub.last_sent_s = asyncio.get_running_loop().time()
        subscribed = await stream.handshake(call, address, subscribe, self._request_timeout_s)
        try:
            extra = subscribed.record_bytes_max - self._window_bytes
            if extra > 0:
                # A record of record_bytes_max must always fit into the credit.
                credit = broker_pb2.Credit(bytes=extra)
                await self._write(sub, broker_pb2.ConsumeRequest(credit=credit))
                self._window_bytes = subscribed.record_bytes_max
        except BaseException:
            # Cancelled or failed before the stream was in use: nothing may outlive it.
            call.cancel()
            raise
        for start in subscribed.partitions:
            if not self._queue_mode:
                self._positions[start.partition] = start.offset
            self._end_offsets[start.partition] = start.end_offset
        sub.reader = asyncio.create_task(
            stream.read(sub, self._on_batch, self._on_control), name="weir-consumer-reader"
        )
        self._driver.start_timer(sub)
        self._sub = sub

    def _on_batch(
        self,
        sub: Subscription,
        topic: str,
        partition: int,
        base_offset: int,
        end_offset: int,
        records: list[RecordFields],
        sizes: list[int],
        deliveries: Deliveries | None,
    ) -> None:
        self._failover.succeeded(sub.address)
        assert len(sizes) == len(records), "record scan disagrees with the parser"
        if self._queue_mode and records and (deliveries is None or len(deliveries) != len(records)):
            # The peer misbehaved: the reader ends the stream with this.
            raise ValueError("a queue-mode batch without one delivery per record")
        if records:
            batch = Batch(topic or self.topic, partition, base_offset, records, sizes, deliveries)
            sub.buffer.append(batch)
            sub.buffered += len(records)
        self._end_offsets[partition] = end_offset
        # The broker may only send what credit allowed; more is its bug, but
        # it would also mean this buffer is no longer bounded.
        assert sub.buffered <= self._window_messages, "broker exceeded message credit"
        sub.arrived.set()

    def _on_control(self, sub: Subscription, response: broker_pb2.ConsumeResponse) -> None:
        """The reader hands over an `assignment` or a `seek` result, in stream order."""
        kind = response.WhichOneof("kind")
        if kind == "assignment":
            self._failover.succeeded(sub.address)
            self._driver.on_assignment(sub, response.assignment)
        elif kind == "seek" and not response.seek.HasField("error"):
            result = response.seek
            self._dropped(sub, {result.partition})
            self._positions[result.partition] = result.offset

    def _dropped(self, sub: Subscription, partitions: frozenset[int] | set[int]) -> None:
        """Drop buffered records of `partitions`; their credit goes back as if taken."""
        messages, nbytes = stream.drop(sub, partitions)
        self._taken_messages += messages
        self._taken_bytes += nbytes

    async def _write(self, sub: Subscription, request: broker_pb2.ConsumeRequest) -> None:
        await self._writer.write(sub, request)

    async def _end(self, sub: Subscription, error: WeirError) -> None:
        """End `sub` (see `stream.end`) once a write left running by a cancelled caller is done."""
        try:
            if not await self._writer.drain(WRITE_DRAIN_S_MAX):
                sub.call.cancel()
            await stream.end(sub, error)
        except asyncio.CancelledError:
            # Cancelled half way: stop the stream at once, so that neither its
            # call nor its reader outlives it.
            sub.call.cancel()
            if sub.reader is not None:
                sub.reader.cancel()
            raise
