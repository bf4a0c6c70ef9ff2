"""The asyncio consumer's writes on its Consume streams: in order, and safe to cancel.

grpc.aio cancels the whole call when a task awaiting `write()` on it is
cancelled. The consumer's callers may be cancelled at any await (the task
that iterates, a deadline around `async for` or `commit()`), and that used
to end the stream under every later `commit()`. So each write runs in a
task of its own, made before the caller's first await, which a cancelled
caller leaves to finish: the request still goes out (credit already counted
as returned is not lost), and each write task waits for the one before it,
so the writes keep their order without a lock that a cancellation could
leave behind.
"""

from __future__ import annotations

import asyncio

from weir.aio import _consumer_stream as stream
from weir.aio._consumer_stream import Subscription
from weir.v1 import broker_pb2


class Writer:
    """One consumer's writes, over all its streams, in the order they were started."""

    def __init__(self) -> None:
        # The last write started; every earlier one is done before it starts.
        self._last: asyncio.Task[None] | None = None

    def start(self, sub: Subscription, request: broker_pb2.ConsumeRequest) -> asyncio.Task[None]:
        """Start writing `request` on `sub` after every earlier write; does not wait."""
        write = asyncio.create_task(_after(self._last, sub, request), name="weir-consumer-write")
        # Anything sent keeps a stream-mode member's session alive.
        sub.last_sent_s = write.get_loop().time()
        # A cancelled caller never looks at the outcome, and a failed write
        # shows up as the reader's error anyway.
        write.add_done_callback(_retrieve)
        self._last = write
        return write

    async def write(self, sub: Subscription, request: broker_pb2.ConsumeRequest) -> None:
        """Write `request` on `sub`; a cancelled caller leaves the write to go on."""
        await asyncio.shield(self.start(sub, request))

    async def drain(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for every write started so far; True if they are done."""
        last = self._last
        if last is None or last.done():
            return True
        _, pending = await asyncio.wait([last], timeout=timeout_s)
        return not pending


async def _after(
    previous: asyncio.Task[None] | None, sub: Subscription, request: broker_pb2.ConsumeRequest
) -> None:
    if previous is not None and not previous.done():
        await asyncio.wait([previous])
    await stream.write(sub, request)


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
