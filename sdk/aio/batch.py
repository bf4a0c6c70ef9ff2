"""A producer batch and the per-record futures that read their result from it.

A batch is the unit the producer sends: one partition's records, already in
wire form (the body of a `RecordBatch`, appended record by record), with the
bookkeeping for retries. It is settled once, with offsets or an error, and
every record's outcome follows from that.

`send()` still hands back one future per record, but an `asyncio.Future`
each, resolved one by one with its own `RecordMetadata`, cost about as much
as everything else the producer does per record. A `RecordFuture` is two
slots (its batch and its index): it is done when its batch is settled and
builds its `RecordMetadata` only when asked. It behaves as an asyncio future
for `await`, `asyncio.gather`, `wait`, `wait_for`, `shield` and done
callbacks (`asyncio.isfuture()` is true), and can be cancelled on its own
(which, as with an `asyncio.Future`, does not take the record back).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Generator, Sequence
from typing import Any

from weir.errors import WeirError
from weir.types import RecordMetadata

__all__ = ["ProducerBatch", "RecordFuture"]

_Callback = tuple[Callable[["RecordFuture"], object], contextvars.Context | None]


class ProducerBatch:
    """Records for one partition that travel as one ProduceRequest."""

    __slots__ = (
        "attempts",
        "callbacks",
        "cancelled",
        "closed",
        "count",
        "created_s",
        "error",
        "first_sequence",
        "loop",
        "offsets",
        "partition",
        "payload",
        "result_partition",
        "retry_at_s",
        "serial",
        "settled",
        "size_bytes",
        "topic",
    )

    def __init__(
        self,
        topic: str,
        partition: int,
        created_s: float,
        loop: asyncio.AbstractEventLoop,
        serial: int = 0,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.created_s = created_s
        self.loop = loop
        # Creation order among the producer's batches: a partition's queue is
        # kept in this order, retries included, so batches go out in order.
        self.serial = serial
        # The idempotent producer's sequence number of the first record,
        # given when the batch is sealed and kept across retries (-1: none).
        self.first_sequence = -1
        # The body of a RecordBatch: each record as a `records` field. Its
        # length is what batch_bytes_max bounds.
        self.payload = bytearray()
        self.count = 0
        # Sum of the records' encoded sizes: what the batch holds of the budget.
        self.size_bytes = 0
        self.closed = False
        self.attempts = 0
        self.retry_at_s = 0.0
        self.settled = False
        # The outcome, once settled: offsets[i] is record i's (or an error).
        self.offsets: Sequence[int] = ()
        self.result_partition = partition
        self.error: WeirError | None = None
        # Done callbacks of record futures, by record index, and the indexes
        # of cancelled record futures; both rare, so created on demand.
        self.callbacks: dict[int, list[_Callback]] | None = None
        self.cancelled: set[int] | None = None

    @property
    def framed_bytes(self) -> int:
        """Size of the records inside a RecordBatch, bounded by batch_bytes_max."""
        return len(self.payload)

    def future(self, index: int) -> RecordFuture:
        """The future of record `index`."""
        return RecordFuture(self, index)

    def ready(self, now_s: float, linger_s: float, flushing: bool) -> bool:
        """True when the sender may take this batch now."""
        if now_s < self.retry_at_s:
            return False
        return self.closed or flushing or now_s - self.created_s >= linger_s

    def settle(self, offsets: Sequence[int], partition: int, error: WeirError | None) -> None:
        """Record the outcome and schedule the record futures' done callbacks."""
        assert not self.settled, "a batch is settled once"
        assert error is not None or len(offsets) == self.count, "one offset per record"
        self.settled = True
        self.offsets = offsets
        self.result_partition = partition
        self.error = error
        callbacks, self.callbacks = self.callbacks, None
        if callbacks:
            call_soon = self.loop.call_soon
            for index, entries in callbacks.items():
                fut = RecordFuture(self, index)
                for fn, context in entries:
                    call_soon(fn, fut, context=context)


class RecordFuture:
    """The outcome of one sent record: awaitable, resolves to `RecordMetadata`.

    Duck-types `asyncio.Future` (see the module docstring); `set_result` and
    `set_exception` are the producer's business and not offered.
    """

    __slots__ = ("_batch", "_index")

    def __init__(self, batch: ProducerBatch, index: int) -> None:
        self._batch = batch
        self._index = index

    # asyncio's marker of a future-like object: a task that receives this
    # object from `__await__` waits for its done callback. Any non-None value
    # makes `asyncio.isfuture()` true; assignments by the task are ignored.
    @property
    def _asyncio_future_blocking(self) -> bool:
        return not self.done()

    @_asyncio_future_blocking.setter
    def _asyncio_future_blocking(self, value: bool) -> None:
        pass

    @property
    def batch(self) -> ProducerBatch:
        """The batch this record travels in (the blocking producer tracks chunks by it)."""
        return self._batch

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._batch.loop

    def cancelled(self) -> bool:
        cancelled = self._batch.cancelled
        return cancelled is not None and self._index in cancelled

    def done(self) -> bool:
        return self._batch.settled or self.cancelled()

    def result(self) -> RecordMetadata:
        batch = self._batch
        if self.cancelled():
            raise asyncio.CancelledError()
        if not batch.settled:
            raise asyncio.InvalidStateError("the record is not answered yet")
        if batch.error is not None:
            raise batch.error
        return RecordMetadata(batch.topic, batch.result_partition, batch.offsets[self._index])

    def exception(self) -> BaseException | None:
        batch = self._batch
        if self.cancelled():
            raise asyncio.CancelledError()
        if not batch.settled:
            raise asyncio.InvalidStateError("the record is not answered yet")
        return batch.error

    def add_done_callback(
        self,
        fn: Callable[[RecordFuture], object],
        *,
        context: contextvars.Context | None = None,
    ) -> None:
        batch = self._batch
        if self.done():
            batch.loop.call_soon(fn, self, context=context)
            return
        if batch.callbacks is None:
            batch.callbacks = {}
        batch.callbacks.setdefault(self._index, []).append((fn, context))

    def remove_done_callback(self, fn: Callable[[RecordFuture], object]) -> int:
        callbacks = self._batch.callbacks
        entries = callbacks.get(self._index) if callbacks is not None else None
        if not entries:
            return 0
        kept = [entry for entry in entries if entry[0] != fn]
        removed = len(entries) - len(kept)
        assert callbacks is not None
        if kept:
            callbacks[self._index] = kept
        else:
            del callbacks[self._index]
        return removed

    def cancel(self, msg: Any | None = None) -> bool:
        """Stop waiting for this record; it is still sent (as with an asyncio.Future)."""
        if self.done():
            return False
        batch = self._batch
        if batch.cancelled is None:
            batch.cancelled = set()
        batch.cancelled.add(self._index)
        entries = batch.callbacks.pop(self._index, None) if batch.callbacks else None
        for fn, context in entries or ():
            batch.loop.call_soon(fn, self, context=context)
        return True

    def _make_cancelled_error(self) -> asyncio.CancelledError:
        # asyncio.gather calls this on a cancelled child.
        return asyncio.CancelledError()

    def __await__(self) -> Generator[Any, None, RecordMetadata]:
        if not self.done():
            yield self  # the task waits for our done callback
            if not self.done():
                raise RuntimeError("await wasn't used with future")
        return self.result()

    __iter__ = __await__

    def __repr__(self) -> str:
        batch = self._batch
        if not self.done():
            state = "pending"
        elif self.cancelled():
            state = "cancelled"
        elif batch.error is not None:
            state = f"exception={batch.error!r}"
        else:
            state = f"result={self.result()!r}"
        return f"<RecordFuture {batch.topic}/{batch.partition}#{self._index} {state}>"
