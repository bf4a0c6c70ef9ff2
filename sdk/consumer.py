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
"""

from __future__ import annotations

import collections
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
        if not self._local:
            chunk = self._thread.run(self._consumer.poll_batch(CHUNK_RECORDS, timeout_s))
            if not chunk:
                return None
            self._local.extend(chunk)
        record = self._local.popleft()
        self._positions[record.partition] = record.offset + 1
        return record

    def commit(self, offsets: Mapping[int, int] | None = None) -> dict[int, int]:
        """Commit the positions of records yielded so far (or `offsets`)."""
        if offsets is None:
            offsets = dict(self._positions)
            if not offsets:
                return {}
        return self._thread.run(self._consumer.commit(offsets))

    def seek(self, partition: int, offset: int) -> None:
        """Continue `partition` from `offset`."""
        self._thread.run(self._consumer.seek(partition, offset))
        # The other partitions' records already here stay valid: the async
        # consumer re-subscribed them after these.
        self._local = collections.deque(r for r in self._local if r.partition != partition)
        self._positions[partition] = offset

    def position(self, partition: int) -> int:
        """The next offset to be yielded from `partition`."""
        if partition in self._positions:
            return self._positions[partition]
        for record in self._local:
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
