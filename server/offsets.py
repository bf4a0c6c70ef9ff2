"""Durable consumer-group offsets.

An offset is stored per (group, partition log). Keys use the partition's
group id, which is never reused, so deleting a topic and creating it again
cannot resurrect old offsets. A committed offset never moves backwards
(invariant 4): a lower commit leaves the stored offset in place.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Mapping

from weir.cluster.storage import MetaStore
from weir.server.topics import Topic

OFFSET_NS = "offset"


def _key(group: str, group_id: int) -> bytes:
    # Group names cannot contain NUL (see naming.check_group_name).
    return group.encode() + b"\0" + struct.pack(">I", group_id)


class GroupOffsets:
    def __init__(self, meta: MetaStore) -> None:
        self._meta = meta
        # Read-compare-write must not interleave with another commit, or a
        # slower, lower commit could overwrite a higher one.
        self._lock = asyncio.Lock()

    def get(self, group: str, topic: Topic, partition: int) -> int | None:
        raw = self._meta.get(OFFSET_NS, _key(group, topic.group_ids[partition]))
        return None if raw is None else int(struct.unpack(">q", raw)[0])

    async def commit(self, group: str, topic: Topic, offsets: Mapping[int, int]) -> dict[int, int]:
        """Store offsets that move forward; return the stored offset of each partition."""
        async with self._lock:
            return await self._commit_locked(group, topic, offsets)

    async def _commit_locked(
        self, group: str, topic: Topic, offsets: Mapping[int, int]
    ) -> dict[int, int]:
        result: dict[int, int] = {}
        puts = []
        for partition, offset in offsets.items():
            current = self.get(group, topic, partition)
            if current is not None and current >= offset:
                result[partition] = current
                continue
            result[partition] = offset
            puts.append(
                (OFFSET_NS, _key(group, topic.group_ids[partition]), struct.pack(">q", offset))
            )
        if puts:
            await self._meta.write(puts=puts)
        return result
