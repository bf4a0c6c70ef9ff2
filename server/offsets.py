"""Durable consumer-group offsets of a single node.

The rules are those of the cluster's coordinator groups: the same
`OffsetsState` (weir.cluster.coordinator.offsets) decides every commit and
forget, here over the node's own meta store instead of a Raft log. This
module only loads that state from the rows below at start and writes the
rows a command changed, so both modes validate, bound and store alike.

An offset is stored per (group, partition log). Keys use the partition's
group id, which is never reused, so deleting a topic and creating it again
cannot resurrect old offsets. A committed offset never moves backwards
(invariant 4): a lower commit leaves the stored offset in place; only an
operator's reset (`reset`, refused while the group has members online) sets
offsets exactly.

Rows in the meta store:

    offset          group | NUL | group id u32  -> offset i64
    offset_by_log   group id u32 | group        -> (empty)

The second is an index written in the same transaction as a group's first
offset on a log, so that dropping a deleted topic's log finds that log's
offsets by prefix instead of scanning every group's. Stores written before
the index existed are indexed once at start (`load`).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Iterable, Mapping

import grpc

from weir.cluster.coordinator.offsets import (
    CONSUMER_GROUPS_MAX,
    Commit,
    Forget,
    OffsetsError,
    OffsetsState,
    Reset,
    Stored,
)
from weir.cluster.storage import MetaStore
from weir.server.errors import BrokerError, topic_not_found
from weir.server.topics import Topic, TopicRegistry

OFFSET_NS = "offset"
OFFSET_BY_LOG_NS = "offset_by_log"
# Which layout the offset rows have; absent means "before offset_by_log".
OFFSET_LAYOUT_NS = "offset_layout"
_LAYOUT_KEY = b"version"
_LAYOUT_INDEXED = b"2"
# Rows one meta write touches at most when offsets are indexed or removed in
# bulk, so that neither holds the storage writer (or the loop) for long.
ROWS_PER_WRITE_MAX = 1000

_GROUP_ID = struct.Struct(">I")


def _key(group: str, group_id: int) -> bytes:
    # Group names cannot contain NUL (see naming.check_group_name).
    return group.encode() + b"\0" + _GROUP_ID.pack(group_id)


def _split_key(key: bytes) -> tuple[bytes, int]:
    """(group name bytes, group id) of an `offset` row key."""
    name, group_id = key[: -_GROUP_ID.size - 1], key[-_GROUP_ID.size :]
    return name, int(_GROUP_ID.unpack(group_id)[0])


def _index_key(group_id: int, group: bytes) -> bytes:
    return _GROUP_ID.pack(group_id) + group


def _load_state(meta: MetaStore) -> OffsetsState:
    groups: dict[str, list[tuple[int, int]]] = {}
    for key, raw in meta.scan(OFFSET_NS):
        name, group_id = _split_key(key)
        groups.setdefault(name.decode(), []).append((group_id, int(struct.unpack(">q", raw)[0])))
    # Rows written before the state machine's bounds existed are kept as they are.
    return OffsetsState.restore(
        sorted((n, sorted(o)) for n, o in groups.items()),
        consumer_groups_max=max(len(groups), CONSUMER_GROUPS_MAX),
    )


class GroupOffsets:
    def __init__(self, meta: MetaStore, topics: TopicRegistry) -> None:
        self._meta = meta
        self._topics = topics
        # What the rows hold; every change goes through its `apply`.
        self._state = _load_state(meta)
        # Read-compare-write must not interleave with another commit, or a
        # slower, lower commit could overwrite a higher one. Removing a
        # log's offsets takes it too, so that no commit that passed its
        # liveness check can land after the removal scanned the log.
        self._lock = asyncio.Lock()
        # Whether a consumer group has stream-mode members online
        # (server/local_membership.py): only they may commit its offsets then.
        self._has_members: Callable[[str], bool] = lambda _group: False

    def refuse_outsiders_while(self, has_members: Callable[[str], bool]) -> None:
        """Commits from outside a group are refused while `has_members(group)`."""
        self._has_members = has_members

    async def load(self) -> None:
        """Indexes offsets stored before `offset_by_log` existed (once per store).

        Rows whose log belongs to no topic (left by deletes before offsets
        were removed with their topic) are removed instead of indexed.
        """
        if self._meta.get(OFFSET_LAYOUT_NS, _LAYOUT_KEY) == _LAYOUT_INDEXED:
            return
        in_use = self._topics.group_ids_in_use()
        puts: list[tuple[str, bytes, bytes]] = []
        deletes: list[tuple[str, bytes]] = []
        for key, _ in self._meta.scan(OFFSET_NS):
            group, group_id = _split_key(key)
            if group_id in in_use:
                puts.append((OFFSET_BY_LOG_NS, _index_key(group_id, group), b""))
            else:
                deletes.append((OFFSET_NS, key))
            if len(puts) + len(deletes) >= ROWS_PER_WRITE_MAX:
                await self._meta.write(puts=puts, deletes=deletes)
                puts, deletes = [], []
        # A crash before this marker re-runs the (idempotent) indexing.
        puts.append((OFFSET_LAYOUT_NS, _LAYOUT_KEY, _LAYOUT_INDEXED))
        await self._meta.write(puts=puts, deletes=deletes)
        self._state = _load_state(self._meta)

    async def fetch(self, group: str, topic: Topic, partitions: Iterable[int]) -> dict[int, int]:
        """The committed offsets of those partitions that have one."""
        found = {}
        for partition in partitions:
            offset = self.get(group, topic, partition)
            if offset is not None:
                found[partition] = offset
        return found

    def get(self, group: str, topic: Topic, partition: int) -> int | None:
        return self._state.get(group, topic.group_ids[partition])

    def group(self, group: str) -> dict[int, int]:
        """A consumer group's offsets by partition group id (a copy)."""
        return self._state.group(group)

    def consumer_groups(self) -> list[str]:
        """Every consumer group with an offset, ascending."""
        return self._state.consumer_groups()

    def _refuse_while_members(self, group: str, what: str) -> None:
        if self._has_members(group):
            raise BrokerError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "GROUP_HAS_MEMBERS",
                f"consumer group {group!r} has members online: {what}",
                {"group": group},
            )

    async def reset(self, group: str, offsets: Mapping[int, int]) -> dict[int, int]:
        """Sets offsets (partition group id -> offset) exactly, backwards too; the stored ones.

        Refused with FAILED_PRECONDITION `GROUP_HAS_MEMBERS` while the group
        has stream-mode members online, and with NOT_FOUND `TOPIC_NOT_FOUND`
        when a partition's topic was deleted meanwhile; then nothing changes.
        """
        async with self._lock:
            # Nothing awaits between this check and `apply`, so no join is
            # missed; a member that joins later reads the reset offsets.
            self._refuse_while_members(group, "stop them before resetting its offsets")
            live = {g for t in self._topics.all() for g in t.group_ids}
            gone = sorted(set(offsets) - live)
            if gone:
                raise BrokerError(
                    grpc.StatusCode.NOT_FOUND,
                    "TOPIC_NOT_FOUND",
                    "the topic of the partitions to reset was deleted",
                    {"group": group},
                )
            before = {g: self._state.get(group, g) for g in offsets}
            result = self._state.apply(Reset(group, tuple(sorted(offsets.items()))))
            return await self._stored(group, before, result)

    async def commit(
        self, group: str, topic: Topic, offsets: Mapping[int, int], *, as_member: bool = False
    ) -> dict[int, int]:
        """Store offsets that move forward; return the stored offset of each partition.

        `as_member`: the caller checked the commit against the group's
        membership (a stream-mode member's); otherwise a group with members
        online refuses it with FAILED_PRECONDITION `GROUP_HAS_MEMBERS`, as
        Kafka refuses a non-member's commit to an active group.
        """
        if not as_member:
            self._refuse_while_members(group, "only they commit its offsets")
        async with self._lock:
            # Checked under the lock: a deleted topic's offsets are removed
            # under it too, so none can be written after that removal.
            if not self._topics.is_live(topic):
                raise topic_not_found(topic.name)
            return await self._commit_locked(group, topic, offsets)

    async def _commit_locked(
        self, group: str, topic: Topic, offsets: Mapping[int, int]
    ) -> dict[int, int]:
        by_group = {topic.group_ids[p]: o for p, o in offsets.items()}
        before = {g: self._state.get(group, g) for g in by_group}
        result = self._state.apply(Commit(group, tuple(sorted(by_group.items()))))
        stored = await self._stored(group, before, result)
        return {p: stored[topic.group_ids[p]] for p in offsets}

    async def _stored(
        self, group: str, before: Mapping[int, int | None], result: object
    ) -> dict[int, int]:
        """Writes the rows a commit or reset changed; the stored offsets by group id."""
        if isinstance(result, OffsetsError):
            raise BrokerError(grpc.StatusCode[result.code], result.reason, result.message)
        assert isinstance(result, Stored), result
        stored = dict(result.offsets)
        puts = []
        for group_id, offset in stored.items():
            if before[group_id] == offset:
                continue
            puts.append((OFFSET_NS, _key(group, group_id), struct.pack(">q", offset)))
            if before[group_id] is None:
                puts.append((OFFSET_BY_LOG_NS, _index_key(group_id, group.encode()), b""))
        if puts:
            try:
                await self._meta.write(puts=puts)
            except BaseException:
                # Not stored: the state goes back to what the rows hold.
                self._state = _load_state(self._meta)
                raise
        return stored

    async def forget_log(self, group_id: int) -> None:
        """Removes every group's offset on one (deleted) partition log, in bounded writes."""
        prefix = _GROUP_ID.pack(group_id)
        async with self._lock:
            self._state.apply(Forget((group_id,)))
        while True:
            async with self._lock:
                rows = self._meta.scan(OFFSET_BY_LOG_NS, prefix)[:ROWS_PER_WRITE_MAX]
                if not rows:
                    return
                deletes: list[tuple[str, bytes]] = []
                for index_key, _ in rows:
                    group = index_key[len(prefix) :]
                    deletes.append((OFFSET_NS, group + b"\0" + prefix))
                    deletes.append((OFFSET_BY_LOG_NS, index_key))
                await self._meta.write(deletes=deletes)
