"""The asyncio consumer's group work: stream-mode membership and auto-commits, driven.

`GroupDriver` is the part of `weir.aio.Consumer` that acts on what
`_consumer_group.GroupState` decides: it fills in the stream-mode fields of
`Subscribe`, applies each `Assignment` on the reader (dropping buffered
records of revoked partitions, moving positions), and, in the iterating
task before its next record, tells the application (`on_revoke`,
`on_assign`), commits what was revoked and acknowledges the assignment. It
also owns the timer task of a stream (heartbeats, auto-commits due) and
the commits (the application's, and those made on its behalf:
auto-commit, on revoke, on close).

It is a part of the consumer split out for size, not a component of its
own: it reads and moves the consumer's positions (the consumer stays their
one owner; no other task runs between the two) and writes on the
consumer's current stream through the consumer's writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from weir.aio._consumer_group import (
    EVICTED_REASONS,
    SESSION_TIMEOUT_MS_DEFAULT,
    Change,
    GroupState,
    PartitionsCallback,
    run_callback,
)
from weir.aio._consumer_stream import Subscription
from weir.errors import WeirError, WeirTimeoutError, from_error_proto
from weir.v1 import broker_pb2

if TYPE_CHECKING:
    from weir.aio.consumer import Consumer

_log = logging.getLogger("weir.consumer")


class GroupDriver:
    """Stream mode's membership (`group` is None otherwise) and auto-commit for one consumer."""

    def __init__(
        self,
        consumer: Consumer,
        *,
        stream_mode: bool,
        on_assign: PartitionsCallback | None,
        on_revoke: PartitionsCallback | None,
        session_timeout_ms: int | None,
        rebalance_timeout_ms: int | None,
        auto_commit: bool,
        auto_commit_interval_ms: int,
    ) -> None:
        self._consumer = consumer
        # Stream mode (None otherwise): membership, see _consumer_group.
        self.group = GroupState() if stream_mode else None
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._session_timeout_ms = session_timeout_ms or 0
        self._rebalance_timeout_ms = rebalance_timeout_ms or 0
        self.auto_commit = auto_commit
        self._auto_commit_interval_s = auto_commit_interval_ms / 1000.0
        # The offset last committed (or started from) per partition: an
        # auto-commit sends only the positions that moved since.
        self.committed: dict[int, int] = {}
        self._auto_commit_task: asyncio.Task[None] | None = None
        # Work for the iterating task before its next record: an assignment
        # to apply (callbacks, revoke commit, ack) or an auto-commit. The
        # one flag the fast path of `Consumer.__anext__` looks at.
        self.due = False
        self._auto_commit_due = False
        self._next_seek_id = 1
        self._next_commit_id = 1

    @property
    def member_id(self) -> str:
        return self.group.member_id if self.group is not None else ""

    @property
    def generation(self) -> int:
        return self.group.generation if self.group is not None else 0

    # -- a new stream -------------------------------------------------------

    def configure(self, sub: Subscription, subscribe: broker_pb2.Subscribe) -> None:
        """Stream mode: join (or rejoin under the member id) with this `subscribe`."""
        group = self.group
        if group is None:
            return
        group.stream_opened()
        sub.drop_on_error = True
        subscribe.mode = broker_pb2.CONSUME_MODE_STREAM
        subscribe.member_id = group.member_id
        subscribe.session_timeout_ms = self._session_timeout_ms
        subscribe.rebalance_timeout_ms = self._rebalance_timeout_ms

    def start_timer(self, sub: Subscription) -> None:
        """Start the stream's timer task when it has something to time."""
        if self.group is not None or self.auto_commit:
            sub.timer = asyncio.create_task(self._tick(sub), name="weir-consumer-timer")

    async def _tick(self, sub: Subscription) -> None:
        """The timer of one stream: heartbeats (stream mode) and auto-commits due.

        A heartbeat goes out only when nothing else was written for a third
        of the session timeout. An auto-commit is only marked due here: the
        iterating task sends it before its next record, so a record counts
        as processed once the application asked for the next one.
        """
        loop = asyncio.get_running_loop()
        session_ms = self._session_timeout_ms or SESSION_TIMEOUT_MS_DEFAULT
        heartbeat_s = session_ms / 3000.0 if self.group is not None else None
        interval_s = self._auto_commit_interval_s if self.auto_commit else None
        next_commit_s = loop.time() + interval_s if interval_s is not None else None
        heartbeat = broker_pb2.ConsumeRequest(heartbeat=broker_pb2.Heartbeat())
        writer = self._consumer._writer
        while sub.error is None and not sub.ended:
            now = loop.time()
            wake = []
            if next_commit_s is not None and interval_s is not None:
                if now >= next_commit_s:
                    self._auto_commit_due = self.due = True
                    sub.arrived.set()
                    next_commit_s = now + interval_s
                wake.append(next_commit_s)
            if heartbeat_s is not None:
                if now - sub.last_sent_s >= heartbeat_s:
                    writer.start(sub, heartbeat)
                wake.append(sub.last_sent_s + heartbeat_s)
            await asyncio.sleep(max(0.0, min(wake) - loop.time()))

    # -- on the reader --------------------------------------------------------

    def on_assignment(self, sub: Subscription, assignment: broker_pb2.Assignment) -> None:
        """Apply an `Assignment` in stream order: drop, move positions, leave the rest pending."""
        group = self.group
        if group is None:
            return
        consumer = self._consumer
        effect = group.on_assignment(assignment)
        consumer._dropped(sub, effect.dropped)
        for partition, offset in effect.starts.items():
            consumer._positions[partition] = offset
            self.committed[partition] = offset
            consumer._yielded.discard(partition)
        if group.pending:
            self.due = True

    # -- in the iterating task ----------------------------------------------

    async def work(self) -> None:
        """Apply a pending assignment, send a due auto-commit."""
        self.due = False
        group = self.group
        if group is not None and group.pending:
            await self._apply_change(group.take())
        if self._auto_commit_due:
            self._auto_commit_due = False
            running = self._auto_commit_task
            offsets = self.moved(self._consumer._yielded)
            if offsets and (running is None or running.done()):
                # One auto-commit in flight at most; the application goes on.
                self._auto_commit_task = asyncio.create_task(
                    self._commit_quietly(offsets, "auto-commit"), name="weir-consumer-autocommit"
                )

    async def recover_evicted(self, error: WeirError) -> bool:
        """Stream mode, after `error` ended the stream: if the member was evicted,
        lose everything (`on_revoke`) and join anew; True when handled."""
        group = self.group
        if group is None or error.reason not in EVICTED_REASONS:
            return False
        _log.warning("consumer group member %s was evicted: %s", group.member_id, error)
        group.session_expired()
        await self._apply_change(group.take())
        await self._consumer._resubscribe({})
        return True

    def moved(self, partitions: Iterable[int]) -> dict[int, int]:
        """The positions of `partitions` that records were taken from since their last commit."""
        positions = self._consumer._positions
        yielded = self._consumer._yielded
        return {
            p: positions[p]
            for p in sorted(partitions)
            if p in yielded and p in positions and positions[p] != self.committed.get(p)
        }

    def committed_now(self, offsets: Mapping[int, int]) -> None:
        """A commit of `offsets` succeeded."""
        positions = self._consumer._positions
        for p, o in offsets.items():
            if p in positions:
                self.committed[p] = o

    async def commit_on(self, sub: Subscription, offsets: Mapping[int, int]) -> dict[int, int]:
        """Commit `offsets` on `sub` (with the generation) and wait for the answer."""
        consumer = self._consumer
        timeout_s = consumer._request_timeout_s
        commit_id = self._next_commit_id
        self._next_commit_id += 1
        fut: asyncio.Future[broker_pb2.CommitResult] = asyncio.get_running_loop().create_future()
        sub.commits[commit_id] = fut
        request = broker_pb2.ConsumeRequest(
            commit=broker_pb2.Commit(
                commit_id=commit_id,
                offsets=[
                    broker_pb2.PartitionOffset(partition=p, offset=o)
                    for p, o in sorted(offsets.items())
                ],
                generation=self.generation,
            )
        )
        try:
            await consumer._writer.write(sub, request)
            async with asyncio.timeout(timeout_s):
                result = await asyncio.shield(fut)
        except TimeoutError:
            raise WeirTimeoutError(f"no commit result within {timeout_s:.3f}s") from None
        finally:
            sub.commits.pop(commit_id, None)
        if result.HasField("error"):
            raise from_error_proto(result.error)
        self.committed_now(offsets)
        return {po.partition: po.offset for po in result.offsets}

    async def _commit_quietly(self, offsets: dict[int, int], what: str) -> None:
        """Commit on the current stream; a failure is logged (the next commit covers it)."""
        sub = self._consumer._sub
        if sub is None or sub.error is not None or sub.ended:
            return
        try:
            await self.commit_on(sub, offsets)
        except WeirError as exc:
            _log.warning("%s of %s failed: %s", what, offsets, exc)

    async def _apply_change(self, change: Change) -> None:
        """Tell the application what `change` says, commit what was revoked, then acknowledge."""
        group = self.group
        assert group is not None
        try:
            if change.lost:
                # Nothing can be committed for these any more.
                for p in change.lost - group.received:
                    self._forget(p)
                await run_callback(self._on_revoke, "on_revoke", change.lost)
            if change.revoked:
                await run_callback(self._on_revoke, "on_revoke", change.revoked)
                if self.auto_commit:
                    offsets = self.moved(change.revoked)
                    if offsets:
                        await self._commit_quietly(offsets, "commit on revoke")
        finally:
            for p in change.revoked - group.received:
                self._forget(p)
            sub = self._consumer._sub
            if (
                change.ack_generation
                and change.ack_stream == group.stream
                and sub is not None
                and sub.error is None
            ):
                ack = broker_pb2.AssignmentAck(generation=change.ack_generation)
                self._consumer._writer.start(sub, broker_pb2.ConsumeRequest(assignment_ack=ack))
        if change.assigned:
            await run_callback(self._on_assign, "on_assign", change.assigned)

    def _forget(self, partition: int) -> None:
        consumer = self._consumer
        consumer._positions.pop(partition, None)
        consumer._end_offsets.pop(partition, None)
        consumer._yielded.discard(partition)
        self.committed.pop(partition, None)

    async def seek_in_stream(self, partition: int, offset: int) -> None:
        """Stream mode's `seek()`: an in-stream `Seek`, answered by its `SeekResult`."""
        consumer = self._consumer
        sub = await consumer._current_sub()
        seek_id = self._next_seek_id
        self._next_seek_id += 1
        fut: asyncio.Future[broker_pb2.SeekResult] = asyncio.get_running_loop().create_future()
        sub.seeks[seek_id] = fut
        position = broker_pb2.StartPosition(kind=broker_pb2.START_KIND_OFFSET, offset=offset)
        request = broker_pb2.ConsumeRequest(
            seek=broker_pb2.Seek(seek_id=seek_id, partition=partition, position=position)
        )
        timeout_s = consumer._request_timeout_s
        try:
            await consumer._writer.write(sub, request)
            async with asyncio.timeout(timeout_s):
                result = await asyncio.shield(fut)
        except TimeoutError:
            raise WeirTimeoutError(f"no seek result within {timeout_s:.3f}s") from None
        finally:
            sub.seeks.pop(seek_id, None)
        # The reader dropped the partition's buffered records and moved its
        # position when the result arrived (records after it are new).
        if result.HasField("error"):
            raise from_error_proto(result.error)

    # -- closing --------------------------------------------------------------

    async def leave(self) -> None:
        """Before close: stream mode revokes everything; auto-commit commits what moved."""
        consumer = self._consumer
        sub = consumer._sub
        if not consumer._started or sub is None or sub.error is not None or sub.ended:
            return
        timeout_s = consumer._request_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                group = self.group
                if group is not None:
                    await self._apply_change(group.take())
                    owned = group.leave()
                    if owned:
                        await run_callback(self._on_revoke, "on_revoke", owned)
                if self.auto_commit:
                    offsets = self.moved(consumer._yielded)
                    if offsets:
                        await self._commit_quietly(offsets, "commit on close")
        except TimeoutError:
            _log.warning("leaving the group took over %.3fs", timeout_s)

    async def stop_auto_commit(self) -> None:
        """Cancel an auto-commit still in flight (the consumer is closing)."""
        task = self._auto_commit_task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
