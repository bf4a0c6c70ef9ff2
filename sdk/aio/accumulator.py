"""The producer's record accumulator: bounded per-partition batches.

`Producer.send()` lands here. `append()` first reserves the record's encoded
size from the producer-wide `ByteBudget` (waiting, up to a deadline, for
space), then adds the record to the open batch of its partition and hands back
a future. The sender task takes batches out with `drain()` once they are full,
have lingered long enough, or a flush asked for them, and gives them back with
`requeue()` when a retriable failure calls for another attempt. Bytes return
to the budget only when a batch is settled (answered, failed, or written with
acks="none"), so `buffer_bytes_max` bounds everything not yet acknowledged.

An idempotent producer's accumulator numbers each partition's records:
a batch gets its `first_sequence` when it is sealed (full, or taken by the
sender), which is also its place in the partition's queue, so sequences
follow the order records were sent in. A retried batch keeps its number and
goes back into its queue in creation order (`ProducerBatch.serial`), ahead
of every later batch of the partition.

Nothing here does I/O; the sender is the only other party, and it is woken
through `wakeup` whenever the set of ready batches may have changed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Iterable, Sequence

from weir._wire import framed_record
from weir.aio.batch import ProducerBatch, RecordFuture
from weir.errors import BufferFullError, ClosedError, RecordTooLargeError, WeirError

__all__ = [
    "BATCH_RECORDS_MAX",
    "SEQUENCE_MAX",
    "Accumulator",
    "ByteBudget",
    "ProducerBatch",
    "framed_size",
]

# Records in one batch, at most: the broker's default
# `produce_request_records_max`, which refuses a request with more. Without
# it a batch of tiny records fills up to `batch_bytes_max` (half a million
# empty records in 1 MiB).
BATCH_RECORDS_MAX = 100_000
# Sequence numbers run from 0 to SEQUENCE_MAX and then wrap to 0
# (ProduceRequest.first_sequence).
SEQUENCE_MAX = (1 << 31) - 1


def framed_size(record_bytes: int) -> int:
    """Bytes a record of `record_bytes` takes inside a RecordBatch (tag + length + body)."""
    length_bytes = 1
    n = record_bytes >> 7
    while n:
        length_bytes += 1
        n >>= 7
    return 1 + length_bytes + record_bytes


class ByteBudget:
    """A byte-counted semaphore with FIFO waiters and a wait deadline.

    FIFO order matters: without it a stream of small records could starve a
    large one forever.
    """

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes <= 0:
            raise ValueError("capacity_bytes must be positive")
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def try_acquire(self, nbytes: int) -> bool:
        """Take `nbytes` if that needs no wait (nobody queued ahead, and room)."""
        if self._waiters or self.used_bytes + nbytes > self.capacity_bytes:
            return False
        self.used_bytes += nbytes
        return True

    @property
    def available_bytes(self) -> int:
        """Bytes that can be taken right now."""
        return self.capacity_bytes - self.used_bytes

    async def acquire(self, nbytes: int, timeout_s: float) -> None:
        """Take `nbytes`, waiting at most `timeout_s`; BufferFullError after that."""
        if nbytes > self.capacity_bytes:
            raise RecordTooLargeError(
                f"record of {nbytes} bytes exceeds the producer buffer of "
                f"{self.capacity_bytes} bytes (buffer_bytes_max)",
                metadata={"limit": str(self.capacity_bytes), "size": str(nbytes)},
            )
        if not self._waiters and self.used_bytes + nbytes <= self.capacity_bytes:
            self.used_bytes += nbytes
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (nbytes, fut)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout_s):
                await fut
        except BaseException as exc:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # Granted just as the deadline or a cancellation hit: give it back.
                self.release(nbytes)
            else:
                fut.cancel()
                self._remove(entry)
                self._grant()
            if isinstance(exc, TimeoutError):
                raise BufferFullError(
                    f"producer buffer full ({self.used_bytes} of {self.capacity_bytes} "
                    f"bytes used) for {timeout_s:.3f}s",
                    metadata={"limit": str(self.capacity_bytes)},
                ) from None
            raise

    def release(self, nbytes: int) -> None:
        """Return `nbytes` and wake the waiters that now fit, in order."""
        self.used_bytes -= nbytes
        assert self.used_bytes >= 0, "released more bytes than acquired"
        self._grant()

    def fail_waiters(self, exc: WeirError) -> None:
        """Fail everyone still waiting (the producer is closing or its sender died)."""
        while self._waiters:
            _, fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)

    def _remove(self, entry: tuple[int, asyncio.Future[None]]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(entry)

    def _grant(self) -> None:
        while self._waiters:
            nbytes, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if self.used_bytes + nbytes > self.capacity_bytes:
                return
            self._waiters.popleft()
            self.used_bytes += nbytes
            fut.set_result(None)


class Accumulator:
    """Per-partition queues of batches, bounded in bytes by a `ByteBudget`."""

    def __init__(
        self,
        *,
        batch_bytes_max: int,
        buffer_bytes_max: int,
        linger_s: float,
        on_batch_closed: Callable[[str, int], None] | None = None,
        batch_records_max: int = BATCH_RECORDS_MAX,
        idempotent: bool = False,
    ) -> None:
        if batch_bytes_max <= 0 or batch_records_max <= 0:
            raise ValueError("batch_bytes_max and batch_records_max must be positive")
        self.batch_bytes_max = batch_bytes_max
        self.batch_records_max = batch_records_max
        self.linger_s = linger_s
        self.budget = ByteBudget(buffer_bytes_max)
        self.wakeup = asyncio.Event()
        self._on_batch_closed = on_batch_closed
        self._queues: dict[tuple[str, int], collections.deque[ProducerBatch]] = {}
        # The batch each partition's records go into (the tail of its queue
        # while that is neither closed nor a retry).
        self._open: dict[tuple[str, int], ProducerBatch] = {}
        # Set when a batch closes; `send()` clears it and yields to the loop
        # once, so the sender can write full batches while the application
        # keeps sending without ever waiting.
        self.closed_since_yield = False
        # Every batch not yet settled, queued or in flight, in creation order.
        self._unsettled: dict[ProducerBatch, None] = {}
        self._settled_event = asyncio.Event()
        self._flushing = 0
        self._drain_start = 0
        self._closed_error: WeirError | None = None
        self._next_serial = 0
        # The next sequence number per partition, for an idempotent producer.
        self._sequences: dict[tuple[str, int], int] | None = {} if idempotent else None

    # -- the application side ---------------------------------------------

    async def append(
        self,
        topic: str,
        partition: int,
        record: bytes,
        wait_timeout_s: float,
        *,
        framed: bytes | None = None,
    ) -> RecordFuture:
        """Add a record (its wire form) to its partition's open batch; waits for buffer space.

        `framed` is the record as a `RecordBatch.records` field, if the caller
        has it already.
        """
        fut = self.try_append(topic, partition, record, framed)
        if fut is not None:
            return fut
        self._check_open()
        size = len(record)
        await self.budget.acquire(size, wait_timeout_s)
        return self._add(topic, partition, record, framed, size)

    def try_append(
        self, topic: str, partition: int, record: bytes, framed: bytes | None = None
    ) -> RecordFuture | None:
        """`append()` without waiting: None when the record must wait for buffer space."""
        if self._closed_error is not None:
            raise self._closed_error
        size = len(record)
        if not self.budget.try_acquire(size):
            return None
        return self._add(topic, partition, record, framed, size)

    def _add(
        self, topic: str, partition: int, record: bytes, framed: bytes | None, size: int
    ) -> RecordFuture:
        """Put a record whose bytes are already taken from the budget into a batch."""
        if self._closed_error is not None:
            self.budget.release(size)
            raise self._closed_error
        if framed is None:
            framed = framed_record(record)
        key = (topic, partition)
        batch = self._open.get(key)
        if batch is not None and len(batch.payload) + len(framed) > self.batch_bytes_max:
            self._close(batch)
            batch = None
        if batch is None:
            loop = asyncio.get_running_loop()
            self._next_serial += 1
            batch = ProducerBatch(topic, partition, loop.time(), loop, self._next_serial)
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = collections.deque()
            queue.append(batch)
            self._open[key] = batch
            self._unsettled[batch] = None
            self.wakeup.set()  # the sender must learn the new linger deadline
        index = batch.count
        batch.count = index + 1
        batch.payload += framed
        batch.size_bytes += size
        if len(batch.payload) >= self.batch_bytes_max or batch.count >= self.batch_records_max:
            self._close(batch)
        return RecordFuture(batch, index)

    async def flush(self) -> None:
        """Wait until every batch that exists now is settled; lingering is skipped."""
        pending = list(self._unsettled)
        if not pending:
            return
        self._flushing += 1
        self.wakeup.set()
        try:
            while any(not b.settled for b in pending):
                self._settled_event.clear()
                await self._settled_event.wait()
        finally:
            self._flushing -= 1

    # -- the sender side ---------------------------------------------------

    @property
    def has_unsettled(self) -> bool:
        """True while any batch is queued or in flight."""
        return bool(self._unsettled)

    def has_queued(self) -> bool:
        """True while any batch waits in a queue (not in flight)."""
        return any(self._queues.values())

    def drain(
        self,
        now_s: float,
        limit: int,
        take: Callable[[ProducerBatch], bool] | None = None,
    ) -> list[ProducerBatch]:
        """Take up to `limit` ready batches, oldest first within each partition.

        `take`, if given, is asked about each ready head of a queue before it
        is taken (the sender checks its node's and partition's in-flight
        limits there); a False leaves that partition's queue as it is.
        """
        out: list[ProducerBatch] = []
        flushing = self._flushing > 0 or self._closed_error is not None
        queues = list(self._queues.values())
        # Start where the last drain stopped, so that when in-flight slots are
        # scarce the first partitions do not starve the others.
        start = self._drain_start % len(queues) if queues else 0
        self._drain_start = start + 1
        for queue in queues[start:] + queues[:start]:
            while queue and len(out) < limit and queue[0].ready(now_s, self.linger_s, flushing):
                head = queue[0]
                if not head.closed:
                    # Sealed before `take` sees it: it needs its sequence number.
                    self._close(head)
                if take is not None and not take(head):
                    break
                out.append(queue.popleft())
            if len(out) >= limit:
                break
        return out

    def queued(self, topic: str, partition: int) -> list[ProducerBatch]:
        """The batches waiting in a partition's queue, in order."""
        return list(self._queues.get((topic, partition), ()))

    def resequence(self, topic: str, partition: int, start: int = 0) -> None:
        """Number a partition's queued batches again from `start` (the broker's next sequence).

        Only for batches never written: the sender calls it when none of the
        partition's batches is in flight.
        """
        assert self._sequences is not None
        key = (topic, partition)
        sequence = start
        for batch in self._queues.get(key, ()):
            if batch.first_sequence < 0:
                break  # the open batch, and only it, has no number yet
            batch.first_sequence = sequence
            sequence = (sequence + batch.count) & SEQUENCE_MAX
        self._sequences[key] = sequence

    def next_ready_s(self) -> float | None:
        """Loop time at which the next queued batch becomes ready, if any is queued."""
        best: float | None = None
        for queue in self._queues.values():
            if not queue:
                continue
            head = queue[0]
            at = (
                head.retry_at_s
                if head.closed
                else max(head.retry_at_s, head.created_s + self.linger_s)
            )
            if best is None or at < best:
                best = at
        return best

    def requeue(self, batches: Iterable[ProducerBatch], retry_at_s: float) -> None:
        """Put batches back into their queues in creation order, ahead of later batches."""
        for batch in batches:
            batch.retry_at_s = retry_at_s
            queue = self._queues.setdefault((batch.topic, batch.partition), collections.deque())
            # Retries come back near the front: scan from there.
            index = 0
            while index < len(queue) and queue[index].serial < batch.serial:
                index += 1
            queue.insert(index, batch)
        self.wakeup.set()

    def complete(self, batch: ProducerBatch, offsets: Sequence[int], partition: int) -> None:
        """Settle `batch`: record i has offset `offsets[i]` (a range in the common case)."""
        if not batch.settled:
            batch.settle(offsets, partition, None)
        self._settle(batch)

    def fail(self, batch: ProducerBatch, exc: WeirError) -> None:
        """Fail every record future of `batch` with `exc`."""
        if not batch.settled:
            batch.settle((), batch.partition, exc)
        self._settle(batch)

    def close(self, exc: WeirError | None = None, *, final: bool = False) -> None:
        """Refuse new records; queued batches still go out unless `exc` fails them.

        With `final`, new records are refused with `exc` itself.
        """
        if self._closed_error is None:
            # A final error (PRODUCER_FENCED) is what send() raises from now on.
            self._closed_error = (
                exc if final and exc is not None else ClosedError("the producer is closed")
            )
        if exc is not None:
            self.budget.fail_waiters(exc)
            for batch in list(self._unsettled):
                self.fail(batch, exc)
            self._queues.clear()
            self._open.clear()
        else:
            self.budget.fail_waiters(self._closed_error)
        self.wakeup.set()

    def fail_unsettled(self, exc: WeirError) -> None:
        """Fail every batch not yet settled (they waited their retries' worth); stay open."""
        for batch in list(self._unsettled):
            self.fail(batch, exc)
        for queue in self._queues.values():
            queue.clear()
        self._open.clear()

    # -- internals ---------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed_error is not None:
            raise self._closed_error

    def _close(self, batch: ProducerBatch) -> None:
        batch.closed = True
        if self._sequences is not None and batch.first_sequence < 0:
            key = (batch.topic, batch.partition)
            sequence = self._sequences.get(key, 0)
            batch.first_sequence = sequence
            self._sequences[key] = (sequence + batch.count) & SEQUENCE_MAX
        key = (batch.topic, batch.partition)
        if self._open.get(key) is batch:
            del self._open[key]
        self.closed_since_yield = True
        self.wakeup.set()
        if self._on_batch_closed is not None:
            self._on_batch_closed(batch.topic, batch.partition)

    def _settle(self, batch: ProducerBatch) -> None:
        if batch not in self._unsettled:
            return
        del self._unsettled[batch]
        self.budget.release(batch.size_bytes)
        self._settled_event.set()
        self.wakeup.set()
