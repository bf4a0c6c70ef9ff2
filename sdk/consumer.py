"""The blocking consumer: `weir.aio.Consumer` driven from a background loop thread.

    with weir.Consumer("127.0.0.1:7070", "orders", group="billing") as consumer:
        for record in consumer:
            handle(record)
            consumer.commit()

A round trip into the loop thread per record would cost a thread switch each,
so records cross over in chunks (`poll_batch`) of at most `CHUNK_RECORDS` into
a local queue. The chunk has left the async consumer's window (its credit
went back to the broker), so this layer keeps its own positions: `commit()`
and `position()` speak of records this iterator has actually yielded.

Stopping: `break` out of the loop, or `stop()` from another thread (or a
signal handler) ends it; either way `commit()` and `close()` still work. A
wait interrupted by an exception (Ctrl-C's KeyboardInterrupt) leaves its
fetch running in the loop thread: its records land here all the same and
the next `poll()` yields them, so none is skipped.
"""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

from weir._nodes import Bootstrap
from weir._sync import LoopThread
from weir.aio.consumer import Consumer as AsyncConsumer
from weir.types import ConsumedRecord

__all__ = ["Consumer"]

# Records moved per round trip into the loop thread: the only memory this
# layer adds on top of the async consumer's credit window.
CHUNK_RECORDS = 256


class Consumer:
    """Blocking twin of `weir.aio.Consumer`; takes the same arguments.

    Iterate for records (blocks until one arrives), or `poll(timeout_s)`.
    At most `CHUNK_RECORDS` records are held here beyond the credit window.
    """

    def __init__(self, bootstrap: Bootstrap, topic: str, **options: Any) -> None:
        self._thread = LoopThread("weir-consumer")
        try:
            self._consumer = self._thread.run(self._make(bootstrap, topic, options))
        except BaseException:
            self._thread.close()
            raise
        self._local: collections.deque[ConsumedRecord] = collections.deque()
        self._positions: dict[int, int] = {}
        # The fetch of the last wait, kept when that wait was interrupted.
        self._fetching: concurrent.futures.Future[None] | None = None

    @staticmethod
    async def _make(bootstrap: Bootstrap, topic: str, options: dict[str, Any]) -> AsyncConsumer:
        consumer = AsyncConsumer(bootstrap, topic, **options)
        await consumer.start()
        return consumer

    def __enter__(self) -> Consumer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[ConsumedRecord]:
        return self

    def __next__(self) -> ConsumedRecord:
        record = self.poll(None)
        if record is None:
            raise StopIteration
        return record

    def poll(self, timeout_s: float | None = None) -> ConsumedRecord | None:
        """The next record, or None if none arrives within `timeout_s`."""
        if not self._local and not self._fetch(timeout_s):
            return None
        record = self._local.popleft()
        self._positions[record.partition] = record.offset + 1
        return record

    def _fetch(self, timeout_s: float | None) -> bool:
        """Wait for the next chunk to land in `_local`; False if none did within `timeout_s`.

        A fetch whose wait was interrupted is waited for first.
        """
        while True:
            fetching = self._fetching
            earlier = fetching is not None
            if fetching is None:
                # poll_batch keeps the deadline itself.
                fetching = self._fetching = self._thread.submit(self._fetch_into_local(timeout_s))
            try:
                fetching.result(timeout_s if earlier else None)
            except concurrent.futures.TimeoutError:
                # An earlier, longer wait is still on its way: it stays for
                # the next poll.
                return False
            except BaseException:
                # An interruption leaves the fetch on its way; a failure ends it.
                if fetching.done():
                    self._fetching = None
                raise
            self._fetching = None
            # An earlier wait that found nothing says nothing about this
            # one's deadline.
            if self._local or not earlier:
                return bool(self._local)

    async def _fetch_into_local(self, timeout_s: float | None) -> None:
        """Runs in the loop thread: records cross into `_local` there, so that
        none is lost when the waiting thread gives up (interrupted) or the
        fetch is cancelled (`seek()`, `close()`): poll_batch takes records
        only after its last await."""
        self._local.extend(await self._consumer.poll_batch(CHUNK_RECORDS, timeout_s))

    def stop(self) -> None:
        """End iteration for good (see `weir.aio.Consumer.stop`); safe from any thread."""
        self._thread.loop.call_soon_threadsafe(self._consumer.stop)

    def commit(self, offsets: Mapping[int, int] | None = None) -> dict[int, int]:
        """Commit the positions of records yielded so far (or `offsets`)."""
        if offsets is None:
            offsets = dict(self._positions)
            if not offsets:
                return {}
        return self._thread.run(self._consumer.commit(offsets))

    def seek(self, partition: int, offset: int) -> None:
        """Continue `partition` from `offset`."""
        fetching, self._fetching = self._fetching, None
        if fetching is not None:
            # An interrupted wait's fetch must not run beside the seek. Its
            # cancellation reaches the loop before the seek does; if it
            # finished first, its records are in `_local` already.
            fetching.cancel()
        self._thread.run(self._consumer.seek(partition, offset))
        # The other partitions' records already here stay valid: the async
        # consumer re-subscribed them after these.
        kept = [r for r in self._local if r.partition != partition]
        self._local.clear()
        self._local.extend(kept)
        self._positions[partition] = offset

    def position(self, partition: int) -> int:
        """The next offset to be yielded from `partition`."""
        if partition in self._positions:
            return self._positions[partition]
        # A copy: an interrupted wait's fetch may still add to `_local`.
        for record in list(self._local):
            if record.partition == partition:
                return record.offset
        return self._consumer.position(partition)

    def assignment(self) -> list[int]:
        """The partitions being read."""
        return self._consumer.assignment()

    def end_offset(self, partition: int) -> int | None:
        """The partition's end offset as last reported by the broker."""
        return self._consumer.end_offset(partition)

    def close(self) -> None:
        """End the stream, close the channel and stop the thread."""
        try:
            self._thread.run(self._consumer.close())
        finally:
            self._thread.close()
