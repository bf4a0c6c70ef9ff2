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

Stream mode (`mode="stream"`): the async consumer runs `on_assign` /
`on_revoke` in its iterating task, which here is a fetch in the loop
thread. A fetch only starts once every record of the last chunk was
yielded, so the async consumer's positions are then this iterator's, and
its revoke commits and auto-commits count only records the application
had. The callbacks themselves are relayed to the application's thread
while it waits in `poll()` (or `close()`), so they may call `commit()` and
`seek()` like any other code of the application: run in the loop thread,
such a call would wait for the loop forever.

Queue mode (`mode="queue"`): `ack()`, `nack()` and `extend()` each make
one round trip into the loop thread and wait for the broker's answer;
pass a list to settle many records in one request.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

from weir._nodes import Bootstrap
from weir._sync import LoopThread
from weir.aio.consumer import Consumer as AsyncConsumer
from weir.errors import ClosedError
from weir.types import ConsumedRecord

__all__ = ["Consumer"]

# Records moved per round trip into the loop thread: the only memory this
# layer adds on top of the async consumer's credit window.
CHUNK_RECORDS = 256


class Consumer:
    """Blocking twin of `weir.aio.Consumer`; takes the same arguments.

    Iterate for records (blocks until one arrives), or `poll(timeout_s)`.
    At most `CHUNK_RECORDS` records are held here beyond the credit window.
    Stream mode's `on_assign` / `on_revoke` are plain functions, run in the
    thread that waits in `poll()`, iteration or `close()`.
    """

    def __init__(self, bootstrap: Bootstrap, topic: str, **options: Any) -> None:
        self._relay = _CallbackRelay()
        for name in ("on_assign", "on_revoke"):
            if options.get(name) is not None:
                options[name] = self._relay.wrap(options[name])
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
        if record.ack_id is None:  # queue mode has no positions
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
                if not self._relay.wait(fetching, timeout_s if earlier else None):
                    # An earlier, longer wait is still on its way: it stays
                    # for the next poll.
                    return False
                fetching.result()
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
        # Stream mode: forget the positions of partitions revoked meanwhile,
        # so that `commit()` does not name a partition the member gave up.
        owned = set(self._consumer.assignment())
        for partition in [p for p in self._positions if p not in owned]:
            del self._positions[partition]

    def stop(self) -> None:
        """End iteration for good (see `weir.aio.Consumer.stop`); safe from any thread."""
        self._thread.loop.call_soon_threadsafe(self._consumer.stop)

    def commit(self, offsets: Mapping[int, int] | None = None) -> dict[int, int]:
        """Commit the positions of records yielded so far (or `offsets`)."""
        if offsets is None and not self._consumer._queue_mode:
            offsets = dict(self._positions)
            if not offsets:
                return {}
        return self._thread.run(self._consumer.commit(offsets))

    def ack(self, records: ConsumedRecord | Sequence[ConsumedRecord]) -> None:
        """Queue mode: `records` are done (see `weir.aio.Consumer.ack`).

        One request per call: pass a list to ack many records at once.
        """

        async def ack() -> None:
            await self._consumer.ack(records)

        self._thread.run(ack())

    def ack_nowait(self, records: ConsumedRecord | Sequence[ConsumedRecord]) -> None:
        """Queue mode: as `weir.aio.Consumer.ack_nowait`: hands the acks over, no broker wait."""

        async def hand_over() -> None:
            self._consumer.ack_nowait(records)

        self._thread.run(hand_over())

    def nack(
        self,
        records: ConsumedRecord | Sequence[ConsumedRecord],
        delay_ms: int | None = None,
        error: str = "",
    ) -> None:
        """Queue mode: processing failed, deliver again later (see `weir.aio.Consumer.nack`)."""
        self._thread.run(self._consumer.nack(records, delay_ms, error))

    def extend(self, records: ConsumedRecord | Sequence[ConsumedRecord], extension_ms: int) -> None:
        """Queue mode: hold `records` longer (see `weir.aio.Consumer.extend`)."""
        self._thread.run(self._consumer.extend(records, extension_ms))

    @property
    def member_id(self) -> str:
        """Stream mode: the id the broker gave this member ("" before it joined)."""
        return self._consumer.member_id

    @property
    def generation(self) -> int:
        """Stream mode: the generation of the last assignment received."""
        return self._consumer.generation

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
        if self._consumer._queue_mode:
            return self._consumer.position(partition)  # raises: no positions in queue mode
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
        """End the stream, close the channel and stop the thread.

        With auto-commit or in stream mode this runs `on_revoke` and commits
        first (see `weir.aio.Consumer.close`).
        """
        try:
            closing = self._thread.submit(self._consumer.close())
            self._relay.wait(closing, None)
            closing.result()
        finally:
            self._thread.close()


PartitionsCallback = Callable[[list[int]], object]


class _CallbackRelay:
    """Hands stream mode's callbacks from the loop thread to the thread waiting on a fetch.

    At most two callbacks wait at once (the async consumer awaits each one,
    and only its iterating task and `close()` call them).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._requests: list[tuple[PartitionsCallback, list[int], concurrent.futures.Future[None]]]
        self._requests = []

    def wrap(self, callback: PartitionsCallback) -> Callable[[list[int]], Any]:
        """The async callback the async consumer gets: it waits for `callback` to run."""

        async def relay(partitions: list[int]) -> None:
            done: concurrent.futures.Future[None] = concurrent.futures.Future()
            request = (callback, partitions, done)
            with self._cond:
                self._requests.append(request)
                self._cond.notify_all()
            try:
                await asyncio.wrap_future(done)
            finally:
                with self._cond:
                    if request in self._requests:
                        self._requests.remove(request)

        return relay

    def _wake(self, _: object) -> None:
        with self._cond:
            self._cond.notify_all()

    def wait(self, fut: concurrent.futures.Future[Any], timeout_s: float | None) -> bool:
        """Wait for `fut`, running relayed callbacks meanwhile; False on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        fut.add_done_callback(self._wake)
        while True:
            with self._cond:
                while not self._requests and not fut.done():
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                if not self._requests:
                    return True
                callback, partitions, done = self._requests.pop(0)
            try:
                callback(partitions)
            except Exception as exc:
                # The async consumer logs it, as for its own callbacks.
                done.set_exception(exc)
            except BaseException:
                done.set_exception(ClosedError("the callback was interrupted"))
                raise
            else:
                done.set_result(None)
