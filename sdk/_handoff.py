"""Records on their way from a caller's thread to the blocking producer's loop.

`weir.Producer.send()` appends a record to the open `Chunk` under one lock
and returns at once; the loop thread takes whole chunks and feeds their
records to the async producer. Thread switches and wake-ups are per chunk,
not per record. `Handoff` bounds the bytes of every record not yet handed to
the async producer (the open chunk and the queued ones), so a caller that
outruns the broker blocks, with a deadline, as with the async `send()`.

A `SendFuture` is the per-record result. A `concurrent.futures.Future` per
record (a `threading.Condition` to create, a lock and a notify to resolve)
cost about 5 us, more than everything else the blocking `send()` does, so a
`SendFuture` is two slots (its chunk and its index) and the whole chunk is
resolved at once, when the last batch holding one of its records is
answered: a record is `done()` when its whole chunk is.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from weir.aio.batch import ProducerBatch, RecordFuture
from weir.errors import ClosedError
from weir.types import RecordMetadata

__all__ = ["Chunk", "Flush", "Handoff", "SendFuture"]

# A record as `send()` received it: topic, value, key, headers, partition,
# timestamp_ms, deliver_at_ms.
Record = tuple[str, bytes, bytes | None, Mapping[str, bytes] | None, int | None, int, int | None]


class Chunk:
    """Records sent together from one thread's view, resolved together."""

    __slots__ = ("callbacks", "done_event", "lock", "nbytes", "outcomes", "pending", "records")

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.nbytes = 0
        # outcomes[i]: record i's future inside the async producer, or the
        # exception its `send()` raised; filled by the loop as it sends.
        self.outcomes: list[RecordFuture | BaseException] = []
        # Batches not yet settled, counted by the loop thread only.
        self.pending = 0
        self.done_event = threading.Event()
        self.lock = threading.Lock()
        self.callbacks: list[tuple[SendFuture, Callable[[Any], object]]] | None = None

    def track(self) -> None:
        """On the loop, after every record was sent: resolve when their batches settle."""
        seen: set[int] = set()
        for outcome in self.outcomes:
            if isinstance(outcome, RecordFuture):
                batch: ProducerBatch = outcome.batch
                if batch.settled or id(batch) in seen:
                    continue
                seen.add(id(batch))
                self.pending += 1
                outcome.add_done_callback(self._batch_done)
        if self.pending == 0:
            self.complete()

    def fail_unsent(self, error: BaseException) -> None:
        """On the loop, when the pump stops mid-chunk: the rest fails with `error`."""
        self.outcomes.extend([error] * (len(self.records) - len(self.outcomes)))
        self.track()

    def _batch_done(self, _: RecordFuture) -> None:
        self.pending -= 1
        if self.pending == 0:
            self.complete()

    def complete(self) -> None:
        with self.lock:
            self.done_event.set()
            callbacks, self.callbacks = self.callbacks, None
        for fut, fn in callbacks or ():
            _call(fn, fut)


def _call(fn: Callable[[Any], object], fut: SendFuture) -> None:
    try:
        fn(fut)
    except Exception:
        # As concurrent.futures does: a failing callback must not stop the others.
        concurrent.futures._base.LOGGER.exception("exception calling callback for %r", fut)


class SendFuture(concurrent.futures.Future[RecordMetadata]):
    """The outcome of one record sent by `weir.Producer.send()`.

    Offers `result(timeout)`, `exception(timeout)`, `done()`,
    `add_done_callback()` (called in the loop thread, or at once if done),
    `cancelled()` and `running()`. It is a `concurrent.futures.Future` by
    type, but a lightweight one: it cannot be cancelled (`cancel()` returns
    False), offers no `set_result`, and does not work with
    `concurrent.futures.wait` or `as_completed`.
    """

    __slots__ = ("_chunk", "_index")

    def __init__(self, chunk: Chunk, index: int) -> None:
        # Deliberately not calling Future.__init__: its Condition is the cost avoided.
        self._chunk = chunk
        self._index = index

    def done(self) -> bool:
        return self._chunk.done_event.is_set()

    def running(self) -> bool:
        return not self.done()

    def cancelled(self) -> bool:
        return False

    def cancel(self) -> bool:
        return False

    def _wait(self, timeout: float | None) -> RecordFuture | BaseException:
        chunk = self._chunk
        if not chunk.done_event.wait(timeout):
            raise TimeoutError(f"the record was not answered within {timeout}s")
        return chunk.outcomes[self._index]

    def result(self, timeout: float | None = None) -> RecordMetadata:
        outcome = self._wait(timeout)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome.result()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        outcome = self._wait(timeout)
        if isinstance(outcome, BaseException):
            return outcome
        return outcome.exception()

    def add_done_callback(
        self, fn: Callable[[concurrent.futures.Future[RecordMetadata]], object]
    ) -> None:
        chunk = self._chunk
        with chunk.lock:
            if not chunk.done_event.is_set():
                if chunk.callbacks is None:
                    chunk.callbacks = []
                chunk.callbacks.append((self, fn))
                return
        _call(fn, self)

    def set_result(self, result: RecordMetadata) -> None:
        raise RuntimeError("a SendFuture is resolved by the producer")

    def set_exception(self, exception: BaseException | None) -> None:
        raise RuntimeError("a SendFuture is resolved by the producer")

    def __repr__(self) -> str:
        state = "finished" if self.done() else "pending"
        return f"<SendFuture #{self._index} {state}>"


class Flush:
    """A flush request, queued behind the chunks sent before it."""

    __slots__ = ("result", "timeout_s")

    def __init__(self, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        self.result: concurrent.futures.Future[None] = concurrent.futures.Future()


class Handoff:
    """The open chunk and the queue of handed-over chunks, bounded in bytes.

    `append` waits (with a deadline) while the records not yet taken by the
    loop hold `bytes_max`; `take` gives the loop everything queued plus the
    open chunk, and `release` returns the bytes once those records are in
    the async producer (whose own buffer bounds them from then on).
    """

    def __init__(self, chunk_records_max: int, chunk_bytes_max: int, bytes_max: int) -> None:
        self._chunk_records_max = chunk_records_max
        self._chunk_bytes_max = chunk_bytes_max
        self._bytes_max = bytes_max
        self._bytes = 0
        self._open: Chunk | None = None
        self._queue: collections.deque[Chunk | Flush] = collections.deque()
        self._cond = threading.Condition()
        # True while the loop's pump waits for work; the caller that ends
        # the wait clears it and wakes the pump (one wake-up per idle spell).
        self.idle = False
        self.closed = False

    def append(
        self, record: Record, nbytes: int, timeout_s: float
    ) -> tuple[SendFuture, bool] | None:
        """Add a record; (its future, whether to wake the pump), or None on timeout."""
        with self._cond:
            if self._bytes and self._bytes + nbytes > self._bytes_max and not self.closed:
                deadline = time.monotonic() + timeout_s
                while self._bytes and self._bytes + nbytes > self._bytes_max and not self.closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self._cond.wait(remaining)
            if self.closed:
                raise ClosedError("the producer is closed")
            self._bytes += nbytes
            chunk = self._open
            if chunk is None:
                chunk = self._open = Chunk()
            index = len(chunk.records)
            chunk.records.append(record)
            chunk.nbytes += nbytes
            if index + 1 >= self._chunk_records_max or chunk.nbytes >= self._chunk_bytes_max:
                self._queue.append(chunk)
                self._open = None
            wake = self.idle
            self.idle = False
            return SendFuture(chunk, index), wake

    def put_flush(self, flush: Flush) -> bool:
        """Queue a flush behind every record appended so far; True to wake the pump."""
        with self._cond:
            if self.closed:
                raise ClosedError("the producer is closed")
            if self._open is not None:
                self._queue.append(self._open)
                self._open = None
            self._queue.append(flush)
            wake = self.idle
            self.idle = False
            return wake

    def take(self, *, idle_if_empty: bool) -> list[Chunk | Flush]:
        """Everything queued, and the open chunk; with nothing, optionally mark the pump idle."""
        with self._cond:
            if self._open is not None:
                self._queue.append(self._open)
                self._open = None
            items = list(self._queue)
            self._queue.clear()
            if not items and idle_if_empty:
                self.idle = True
            return items

    def release(self, nbytes: int) -> None:
        with self._cond:
            self._bytes -= nbytes
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
