"""The producer's metadata cache: each topic's partitions and who leads them.

The producer asks `Admin.DescribeTopic` (through any node) for a topic's
partition count, its `record_bytes_max` and, per partition, the leader's
node id and client address. The sender sends each batch to its partition's
leader; a `NOT_LEADER` answer that names the new leader updates one entry
at once (`set_leader`), and one that names none ("no leader yet"), a broken
stream to a node or a refusal that hints at a change (`forget`,
`forget_address`) drops entries and asks for a refresh in the background
(`request_refresh`), at most one per topic at a time and no more often than
every `refresh_interval_s`.

The protocol carries no leader term, so an entry's `epoch` is this cache's
own count of changes to it: a refresh that started before a `NOT_LEADER`
hint arrived does not overwrite that newer hint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from weir.errors import WeirError
from weir.v1 import admin_pb2

__all__ = ["MetadataCache", "PartitionLeader", "TopicMetadata"]

_log = logging.getLogger("weir.producer")

# Topics with a refresh running at once, at most; one producer rarely writes
# to more, and a refresh per topic is one small unary call.
REFRESHES_INFLIGHT_MAX = 64


@dataclass(frozen=True, slots=True)
class PartitionLeader:
    """Who leads a partition, as far as the cache knows."""

    leader_id: int
    # The leader's client address; "" while none is known.
    address: str
    # The cache's own count of changes to this entry (see the module docstring).
    epoch: int


@dataclass(slots=True)
class TopicMetadata:
    partition_count: int
    record_bytes_max: int
    leaders: list[PartitionLeader]
    fetched_s: float


Describe = Callable[[str], Awaitable[admin_pb2.DescribeTopicResponse]]


class MetadataCache:
    """Topic metadata fetched with `describe`, kept for `max_age_s`.

    `on_change` is called after every change to a leader entry (the sender
    wakes up on it). `clock` is injected for tests.
    """

    def __init__(
        self,
        describe: Describe,
        *,
        max_age_s: float,
        refresh_interval_s: float,
        on_change: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._describe = describe
        self.max_age_s = max_age_s
        self.refresh_interval_s = refresh_interval_s
        self.on_change = on_change
        self._clock = clock
        self._topics: dict[str, TopicMetadata] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        self._last_refresh_s: dict[str, float] = {}

    # -- reading ------------------------------------------------------------

    def cached(self, topic: str) -> TopicMetadata | None:
        """The topic's metadata if cached and not older than `max_age_s`."""
        meta = self._topics.get(topic)
        if meta is None or self._clock() - meta.fetched_s >= self.max_age_s:
            return None
        return meta

    def leader(self, topic: str, partition: int) -> PartitionLeader | None:
        """The partition's leader entry, if the topic was ever fetched."""
        meta = self._topics.get(topic)
        if meta is None or partition >= len(meta.leaders):
            return None
        return meta.leaders[partition]

    async def get(self, topic: str, *, refresh: bool = False) -> TopicMetadata:
        """The topic's metadata, fetched if missing, stale, or `refresh`."""
        started = self._clock()
        meta = None if refresh else self.cached(topic)
        if meta is not None:
            return meta
        lock = self._locks.setdefault(topic, asyncio.Lock())
        async with lock:
            meta = self._topics.get(topic)
            if meta is not None and meta.fetched_s > started:
                return meta  # another task fetched it while this one waited
            return await self._fetch(topic)

    # -- updating -----------------------------------------------------------

    def set_leader(self, topic: str, partition: int, leader_id: int, address: str) -> None:
        """A broker named the partition's leader (NOT_LEADER metadata)."""
        meta = self._topics.get(topic)
        if meta is None or partition >= len(meta.leaders):
            return
        old = meta.leaders[partition]
        if (old.leader_id, old.address) != (leader_id, address):
            meta.leaders[partition] = PartitionLeader(leader_id, address, old.epoch + 1)
            self._changed()

    def forget(self, topic: str, partition: int) -> None:
        """The partition's leader is unknown now (an election runs); a refresh is asked for."""
        self.set_leader(topic, partition, 0, "")
        self.request_refresh(topic)

    def forget_address(self, address: str) -> None:
        """The node at `address` failed: forget every leadership it held, refresh those topics."""
        for topic, meta in list(self._topics.items()):
            hit = False
            for partition, leader in enumerate(meta.leaders):
                if leader.address == address:
                    meta.leaders[partition] = PartitionLeader(0, "", leader.epoch + 1)
                    hit = True
            if hit:
                self.request_refresh(topic)
        self._changed()

    def request_refresh(self, topic: str) -> None:
        """Fetch the topic again in the background, unless a fetch runs or ran just now."""
        if topic in self._refreshing or len(self._refreshing) >= REFRESHES_INFLIGHT_MAX:
            return
        now = self._clock()
        delay = self._last_refresh_s.get(topic, -1e9) + self.refresh_interval_s - now
        self._refreshing[topic] = asyncio.create_task(
            self._refresh(topic, max(0.0, delay)), name=f"weir-metadata-{topic}"
        )

    async def close(self) -> None:
        """Stop every background refresh."""
        tasks = list(self._refreshing.values())
        self._refreshing.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- internals ----------------------------------------------------------

    async def _refresh(self, topic: str, delay_s: float) -> None:
        try:
            if delay_s:
                await asyncio.sleep(delay_s)
            lock = self._locks.setdefault(topic, asyncio.Lock())
            async with lock:
                await self._fetch(topic)
        except WeirError as error:
            _log.info("refreshing metadata of %r failed: %s", topic, error)
        finally:
            if self._refreshing.get(topic) is asyncio.current_task():
                del self._refreshing[topic]

    async def _fetch(self, topic: str) -> TopicMetadata:
        epochs_before = self._epochs(topic)
        self._last_refresh_s[topic] = self._clock()
        response = await self._describe(topic)
        fetched = self._clock()
        old = self._topics.get(topic)
        leaders: list[PartitionLeader] = []
        by_number = {p.partition: p for p in response.partitions}
        for partition in range(response.topic.partition_count):
            info = by_number.get(partition)
            leader_id = info.leader_id if info is not None else 0
            address = info.leader_address if info is not None and leader_id else ""
            previous = old.leaders[partition] if old and partition < len(old.leaders) else None
            if previous is None:
                leaders.append(PartitionLeader(leader_id, address, 0))
            elif epochs_before.get(partition, -1) != previous.epoch:
                # A NOT_LEADER hint arrived while this fetch was under way: newer.
                leaders.append(previous)
            elif (previous.leader_id, previous.address) == (leader_id, address):
                leaders.append(previous)
            else:
                leaders.append(PartitionLeader(leader_id, address, previous.epoch + 1))
        meta = TopicMetadata(
            response.topic.partition_count,
            response.topic.config.record_bytes_max,
            leaders,
            fetched,
        )
        self._topics[topic] = meta
        self._changed()
        return meta

    def _epochs(self, topic: str) -> dict[int, int]:
        meta = self._topics.get(topic)
        if meta is None:
            return {}
        return {partition: leader.epoch for partition, leader in enumerate(meta.leaders)}

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()
