"""The blocking producer: `weir.aio.Producer` driven from a background loop thread.

    with weir.Producer("127.0.0.1:7070") as producer:
        fut = producer.send("orders", b"payload", key=b"customer-42")
        print(fut.result().offset)

A round trip into the loop thread per record would cost a thread switch
each (a few thousand records per second under the GIL), so `send()` instead
drops the record into a small handoff queue, bounded in records and bytes,
and a pump coroutine on the loop moves records from there into the async
producer. When the producer's buffer is full the pump waits, the handoff
fills, and `send()` blocks, up to `buffer_wait_timeout_ms`, then raises
`BufferFullError`: the same backpressure as the async `send()`. Errors the
async `send()` would raise (unknown topic, bad partition) fail the returned
future instead.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from weir._sync import LoopThread
from weir.aio.batch import RecordFuture
from weir.aio.producer import Producer as AsyncProducer
from weir.errors import BufferFullError, ClosedError, WeirError
from weir.types import RecordMetadata

__all__ = ["Producer"]

# Bounds of the handoff between the caller's thread and the loop thread.
HANDOFF_RECORDS_MAX = 1024
HANDOFF_BYTES_MAX = 4 * 1024 * 1024


@dataclass(slots=True)
class _Send:
    topic: str
    value: bytes
    key: bytes | None
    headers: Mapping[str, bytes] | None
    partition: int | None
    timestamp_ms: int
    result: concurrent.futures.Future[RecordMetadata]


@dataclass(slots=True)
class _Flush:
    timeout_s: float | None
    result: concurrent.futures.Future[None]


_Item = _Send | _Flush


class _Handoff:
    """A thread-safe FIFO bounded in items and bytes; `put` waits with a deadline."""

    def __init__(self, records_max: int, bytes_max: int) -> None:
        self._records_max = records_max
        self._bytes_max = bytes_max
        self._items: collections.deque[tuple[_Item, int]] = collections.deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self.closed = False

    def put(self, item: _Item, nbytes: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while (
                not self.closed
                and self._items
                and (
                    len(self._items) >= self._records_max or self._bytes + nbytes > self._bytes_max
                )
            ):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(None if remaining == float("inf") else remaining)
            if self.closed:
                raise ClosedError("the producer is closed")
            self._items.append((item, nbytes))
            self._bytes += nbytes
            return True

    def get_nowait(self) -> _Item | None:
        with self._cond:
            if not self._items:
                return None
            item, nbytes = self._items.popleft()
            self._bytes -= nbytes
            self._cond.notify_all()
            return item

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class Producer:
    """Blocking twin of `weir.aio.Producer`; takes the same arguments.

    `send()` blocks only while the buffer is full (up to
    `buffer_wait_timeout_ms`, then `BufferFullError`) and returns a
    `concurrent.futures.Future` of the record's `RecordMetadata`.
    """

    def __init__(self, bootstrap: str, **options: Any) -> None:
        self._wait_timeout_s = float(options.get("buffer_wait_timeout_ms", 30_000)) / 1000.0
        self._handoff = _Handoff(HANDOFF_RECORDS_MAX, HANDOFF_BYTES_MAX)
        self._pump_idle = False
        self._thread = LoopThread("weir-producer")
        try:
            self._producer, self._wake = self._thread.run(self._make(bootstrap, options))
        except BaseException:
            self._thread.close()
            raise
        self._pump = self._thread.submit(self._run_pump())

    @staticmethod
    async def _make(bootstrap: str, options: dict[str, Any]) -> tuple[AsyncProducer, asyncio.Event]:
        producer = AsyncProducer(bootstrap, **options)
        await producer.start()
        return producer, asyncio.Event()

    def __enter__(self) -> Producer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Mapping[str, bytes] | None = None,
        partition: int | None = None,
        timestamp_ms: int = 0,
    ) -> concurrent.futures.Future[RecordMetadata]:
        """Buffer a record; the future resolves to its `RecordMetadata`."""
        result: concurrent.futures.Future[RecordMetadata] = concurrent.futures.Future()
        item = _Send(topic, value, key, headers, partition, timestamp_ms, result)
        nbytes = len(value) + (len(key) if key else 0)
        if not self._handoff.put(item, nbytes, self._wait_timeout_s):
            raise BufferFullError(
                f"producer buffer full for {self._wait_timeout_s:.3f}s (buffer_wait_timeout_ms)"
            )
        self._kick()
        return result

    def flush(self, timeout_s: float | None = None) -> None:
        """Send everything buffered and wait until all of it is answered."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        if not self._handoff.put(_Flush(timeout_s, done), 0, float("inf")):
            raise AssertionError("an unbounded wait returned early")
        self._kick()
        done.result()

    def partitions_for(self, topic: str) -> int:
        """The topic's partition count."""
        return self._thread.run(self._producer.partitions_for(topic))

    def close(self, timeout_s: float | None = None) -> None:
        """Flush, stop the sender, close the channel and stop the thread."""
        if self._handoff.closed:
            return
        try:
            self.flush(timeout_s)
        except WeirError:
            pass  # the records' futures carry the failures
        finally:
            self._handoff.close()
            self._kick()
            try:
                self._thread.run(self._producer.close(timeout_s))
            finally:
                self._thread.close()

    def _kick(self) -> None:
        """Wake the pump if it sleeps; cheap when it is already draining."""
        if self._pump_idle:
            self._pump_idle = False
            self._thread.loop.call_soon_threadsafe(self._wake.set)

    async def _run_pump(self) -> None:
        """Move records from the handoff into the async producer, in order."""
        while True:
            item = self._handoff.get_nowait()
            if item is None:
                self._pump_idle = True
                # Re-check after announcing idleness: a put that saw the flag
                # still False is visible now, so no record can be stranded.
                item = self._handoff.get_nowait()
                if item is None:
                    if self._handoff.closed:
                        return
                    await self._wake.wait()
                    self._wake.clear()
                    continue
                self._pump_idle = False
            await self._handle(item)

    async def _handle(self, item: _Item) -> None:
        if isinstance(item, _Flush):
            try:
                await self._producer.flush(item.timeout_s)
            except WeirError as exc:
                item.result.set_exception(exc)
            else:
                item.result.set_result(None)
            return
        try:
            inner = await self._producer.send(
                item.topic,
                item.value,
                key=item.key,
                headers=item.headers,
                partition=item.partition,
                timestamp_ms=item.timestamp_ms,
            )
        except WeirError as exc:
            item.result.set_exception(exc)
            return
        except (TypeError, ValueError) as exc:
            item.result.set_exception(exc)
            return
        result = item.result
        inner.add_done_callback(lambda f: _chain(f, result))


def _chain(source: RecordFuture, target: concurrent.futures.Future[RecordMetadata]) -> None:
    if source.cancelled():
        target.cancel()
    elif (exc := source.exception()) is not None:
        target.set_exception(exc)
    else:
        target.set_result(source.result())
