"""The blocking producer: `weir.aio.Producer` driven from the shared loop thread.

    with weir.Producer("127.0.0.1:7070") as producer:
        fut = producer.send("orders", b"payload", key=b"customer-42")
        print(fut.result().offset)

A round trip into the loop thread per record would cost a thread switch
each, so `send()` appends the record to a chunk (`weir/_handoff.py`) and
returns a `SendFuture`; a pump coroutine on the loop takes whole chunks
(full ones, and the open one whenever it has finished the previous) and
feeds their records to the async producer. The bytes of records not yet in
the async producer are bounded: when they fill `HANDOFF_BYTES_MAX`, because
the async producer's own buffer is full and the pump waits, `send()` blocks
up to `buffer_wait_timeout_ms`, then raises `BufferFullError`: the same
backpressure as the async `send()`. Errors the async `send()` would raise
(unknown topic, bad partition) fail the returned future instead.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from weir._handoff import Chunk, Flush, Handoff, SendFuture
from weir._nodes import Bootstrap
from weir._sync import LoopThread
from weir.aio.producer import Producer as AsyncProducer
from weir.errors import BufferFullError, ClosedError, WeirError

__all__ = ["Producer"]

# Bounds of the handoff between the callers' threads and the loop thread.
# A chunk is what one wake-up of the pump moves at most; the byte bound
# covers every record not yet given to the async producer.
CHUNK_RECORDS_MAX = 1024
CHUNK_BYTES_MAX = 1024 * 1024
HANDOFF_BYTES_MAX = 4 * 1024 * 1024


class Producer:
    """Blocking twin of `weir.aio.Producer`; takes the same arguments.

    `send()` blocks only while the buffer is full (up to
    `buffer_wait_timeout_ms`, then `BufferFullError`) and returns a
    `SendFuture` (a lightweight `concurrent.futures.Future`) of the record's
    `RecordMetadata`.
    """

    def __init__(self, bootstrap: Bootstrap, **options: Any) -> None:
        self._wait_timeout_s = float(options.get("buffer_wait_timeout_ms", 30_000)) / 1000.0
        self._handoff = Handoff(CHUNK_RECORDS_MAX, CHUNK_BYTES_MAX, HANDOFF_BYTES_MAX)
        self._thread = LoopThread("weir-producer")
        try:
            self._producer, self._wake = self._thread.run(self._make(bootstrap, options))
        except BaseException:
            self._thread.close()
            raise
        self._pump = self._thread.submit(self._run_pump())

    @staticmethod
    async def _make(
        bootstrap: Bootstrap, options: dict[str, Any]
    ) -> tuple[AsyncProducer, asyncio.Event]:
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
        deliver_at_ms: int | None = None,
    ) -> SendFuture:
        """Buffer a record; the future resolves to its `RecordMetadata`.

        `deliver_at_ms`: delayed delivery, as `weir.aio.Producer.send`.
        """
        nbytes = len(value) + (len(key) if key else 0)
        added = self._handoff.append(
            (topic, value, key, headers, partition, timestamp_ms, deliver_at_ms),
            nbytes,
            self._wait_timeout_s,
        )
        if added is None:
            raise BufferFullError(
                f"producer buffer full for {self._wait_timeout_s:.3f}s (buffer_wait_timeout_ms)"
            )
        fut, wake = added
        if wake:
            self._thread.loop.call_soon_threadsafe(self._wake.set)
        return fut

    def flush(self, timeout_s: float | None = None) -> None:
        """Send everything buffered and wait until all of it is answered."""
        flush = Flush(timeout_s)
        if self._handoff.put_flush(flush):
            self._thread.loop.call_soon_threadsafe(self._wake.set)
        flush.result.result()

    def partitions_for(self, topic: str) -> int:
        """The topic's partition count."""
        return self._thread.run(self._producer.partitions_for(topic))

    def close(self, timeout_s: float | None = None) -> None:
        """Flush, stop the sender, close the channel and release the loop."""
        if self._handoff.closed:
            return
        try:
            self.flush(timeout_s)
        except WeirError:
            pass  # the records' futures carry the failures
        finally:
            self._handoff.close()
            self._thread.loop.call_soon_threadsafe(self._wake.set)
            try:
                self._thread.run(self._producer.close(timeout_s))
            finally:
                self._thread.close()

    async def _run_pump(self) -> None:
        """Feed the handed-over chunks to the async producer, in order."""
        handoff = self._handoff
        items: collections.deque[Chunk | Flush] = collections.deque()
        current: Chunk | None = None
        try:
            while True:
                items.extend(handoff.take(idle_if_empty=True))
                if not items:
                    if handoff.closed:
                        return
                    await self._wake.wait()
                    self._wake.clear()
                    continue
                while items:
                    item = items.popleft()
                    if isinstance(item, Flush):
                        await self._flush(item)
                    else:
                        current = item
                        await self._send_chunk(item)
                        current = None
        finally:
            # Whatever was never sent fails rather than leaving its waiters hanging.
            error = ClosedError("the producer stopped before the record was sent")
            if current is not None:
                current.fail_unsent(error)
            items.extend(handoff.take(idle_if_empty=False))
            for item in items:
                if isinstance(item, Flush):
                    if not item.result.done():
                        item.result.set_exception(error)
                else:
                    handoff.release(item.nbytes)
                    item.fail_unsent(error)

    async def _flush(self, item: Flush) -> None:
        try:
            await self._producer.flush(item.timeout_s)
        except WeirError as exc:
            item.result.set_exception(exc)
        else:
            item.result.set_result(None)

    async def _send_chunk(self, chunk: Chunk) -> None:
        send = self._producer.send
        outcomes = chunk.outcomes
        try:
            for topic, value, key, headers, partition, timestamp_ms, deliver_at_ms in chunk.records:
                try:
                    fut = await send(
                        topic,
                        value,
                        key=key,
                        headers=headers,
                        partition=partition,
                        timestamp_ms=timestamp_ms,
                        deliver_at_ms=deliver_at_ms,
                    )
                except (WeirError, TypeError, ValueError) as exc:
                    outcomes.append(exc)
                else:
                    outcomes.append(fut)
        finally:
            # The records are in the async producer now; its buffer bounds them.
            self._handoff.release(chunk.nbytes)
        chunk.track()
