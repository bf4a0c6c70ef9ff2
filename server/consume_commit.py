"""Commits on a Consume stream: checked when read, stored in order by one task, in batches.

The reader hands each `Commit` to `Committer.submit`, which checks it in one
pass (group, generation, partitions, offsets within the log) and queues it;
at most `COMMITS_INFLIGHT_MAX` wait for an answer, and past that the reader
waits (and HTTP/2 pushes back on the client). The committer task stores
every commit waiting at once in one write (one replication round in a
cluster), so a client that commits after each record is not held to one
commit per round trip of the offsets' storage. Answers go to the stream's
writer, the only task that writes on the call, which calls `answered()` for
each after writing it.

A stream-mode member's commits go to its `MemberSession` under the
generation they were made in (0 in the request: the latest assignment the
stream was sent); the coordinator checks it. Commits of different
generations never share a write: one refused as stale must not take a
newer one with it.

A member may own a partition this node has no replica of (more nodes than
the topic's replication factor: the stream reads it through a relay). Its
commits are taken as Kafka takes them: the coordinator checks ownership
and generation, and this node checks only that the offset is not
negative, since no end offset of that partition is known here. A commit
past the end is clamped where a member starts from it (consume_start
`assigned_start`, and the relay's subscribe).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Callable

import grpc

from weir.cluster.storage import LogClosedError, StorageError
from weir.server.consume_cursor import ConsumeStats
from weir.server.consume_group import Member, not_a_member
from weir.server.consume_start import out_of_range
from weir.server.errors import BrokerError, replica_not_available, storage_error, topic_not_found
from weir.server.registry import Offsets
from weir.server.replicator import NotHostedError, Replicator
from weir.server.topics import Topic
from weir.v1 import broker_pb2

# Commits a stream may have read but not yet answered. Each holds at most
# one offset per partition of the topic.
COMMITS_INFLIGHT_MAX = 16


def storage_failure(exc: StorageError, topic: str) -> BrokerError:
    """A storage failure of a stream: a closed log means its topic was deleted."""
    if isinstance(exc, LogClosedError):
        return topic_not_found(topic)
    return storage_error(exc, "consuming")


def negative_offset(partition: int, offset: int) -> BrokerError:
    """A commit's negative offset (of a partition whose end offset is not known here)."""
    return BrokerError(
        grpc.StatusCode.OUT_OF_RANGE,
        "OFFSET_OUT_OF_RANGE",
        f"offset {offset} of partition {partition} is negative",
        {"partition": partition, "offset": offset, "start_offset": 0},
    )


@dataclasses.dataclass(frozen=True, slots=True)
class CommitWork:
    commit_id: int
    offsets: dict[int, int]
    error: BrokerError | None
    # Stream mode: the member generation it is stored under (0 otherwise).
    generation: int = 0


class Committer:
    """One stream's commits: checks, the bounded queue, and the task that stores them."""

    def __init__(
        self,
        topic: Topic,
        group: str,
        member: Member | None,
        offsets: Offsets,
        replicator: Replicator,
        stats: ConsumeStats,
        check_topic_live: Callable[[], None],
        wake: asyncio.Event,
    ) -> None:
        self._topic = topic
        self._group = group
        self._member = member
        self._offsets = offsets
        self._replicator = replicator
        self._stats = stats
        self._check_topic_live = check_topic_live
        self._wake = wake
        self._slots = asyncio.Semaphore(COMMITS_INFLIGHT_MAX)
        self._queue: asyncio.Queue[CommitWork] = asyncio.Queue(maxsize=COMMITS_INFLIGHT_MAX)
        # Commits read and not yet answered (written by the writer).
        self.open = 0
        # Serialized CommitResult responses for the writer, in order.
        self.answers: collections.deque[bytes] = collections.deque()

    async def submit(self, commit: broker_pb2.Commit) -> None:
        """Check and queue a commit; waits while COMMITS_INFLIGHT_MAX are unanswered."""
        await self._slots.acquire()
        self.open += 1
        self._queue.put_nowait(self._check(commit))

    def answered(self) -> None:
        """The writer wrote one answer."""
        self.open -= 1
        self._slots.release()

    def _check(self, commit: broker_pb2.Commit) -> CommitWork:
        """Validates a commit in one pass and folds it to one offset per partition."""
        offsets: dict[int, int] = {}
        generation = 0
        try:
            if not self._group:
                raise BrokerError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "NO_GROUP",
                    "commit needs a subscription with a consumer group",
                )
            if self._member is not None:
                generation = self._member.commit_generation(commit.generation)
            elif commit.generation:
                raise not_a_member("a commit with a generation")
            if commit.offsets:
                self._check_topic_live()
            for item in commit.offsets:
                try:
                    log = self._replicator.log(self._topic.group_id(item.partition))
                except NotHostedError:
                    if self._member is None:
                        raise replica_not_available(self._topic.name, item.partition) from None
                    # Read through a relay: the coordinator checks ownership.
                    if item.offset < 0:
                        raise negative_offset(item.partition, item.offset) from None
                    offsets[item.partition] = max(item.offset, offsets.get(item.partition, 0))
                    continue
                end_offset = log.end_offset
                if not 0 <= item.offset <= end_offset:
                    raise out_of_range(item.partition, item.offset, 0, end_offset)
                offsets[item.partition] = max(item.offset, offsets.get(item.partition, 0))
        except BrokerError as error:
            return CommitWork(commit.commit_id, {}, error)
        except StorageError as exc:
            return CommitWork(commit.commit_id, {}, storage_failure(exc, self._topic.name))
        return CommitWork(commit.commit_id, offsets, None, generation)

    async def run(self) -> None:
        """Store commits in order, all that wait in one write per generation.

        Offsets never move backwards, so storing the highest offset of each
        partition among the waiting commits leaves the group where storing
        them one by one would; each commit is answered with the group's
        offsets of its partitions after that write. A commit that stores
        nothing (refused, or without offsets) joins whichever write is next.
        """
        while True:
            works = [await self._queue.get()]
            while not self._queue.empty():
                works.append(self._queue.get_nowait())
            run: list[CommitWork] = []
            generation: int | None = None
            for work in works:
                if work.offsets:
                    if generation is not None and work.generation != generation:
                        await self._store(run, generation)
                        run = []
                    generation = work.generation
                run.append(work)
            await self._store(run, generation or 0)

    async def _store(self, works: list[CommitWork], generation: int) -> None:
        """Store commits of one generation in one write; queue their answers."""
        merged: dict[int, int] = {}
        for work in works:
            for partition, offset in work.offsets.items():
                merged[partition] = max(offset, merged.get(partition, 0))
        stored: dict[int, int] = {}
        failure: BrokerError | None = None
        try:
            # Checked again after the wait in the queue; offsets.commit
            # checks once more under its lock, which deletes also take.
            if merged:
                self._check_topic_live()
                self._stats.commit_writes += 1
                if self._member is not None:
                    stored = await self._member.session.commit(generation, merged)
                else:
                    stored = await self._offsets.commit(self._group, self._topic, merged)
        except BrokerError as error:
            failure = error
        except StorageError as exc:
            failure = storage_failure(exc, self._topic.name)
        for work in works:
            result = broker_pb2.CommitResult(commit_id=work.commit_id)
            refusal = work.error or (failure if work.offsets else None)
            if refusal is not None:
                result.error.CopyFrom(refusal.to_proto())
            else:
                result.offsets.extend(
                    broker_pb2.PartitionOffset(partition=p, offset=stored[p])
                    for p in sorted(work.offsets)
                )
            self.answers.append(broker_pb2.ConsumeResponse(commit=result).SerializeToString())
        self._wake.set()


__all__ = [
    "COMMITS_INFLIGHT_MAX",
    "CommitWork",
    "Committer",
    "negative_offset",
    "storage_failure",
]
