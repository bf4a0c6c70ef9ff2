"""Key to partition mapping, the same as Kafka's default partitioner.

`murmur2` is a bit-for-bit port of Kafka's `Utils.murmur2` (seed
0x9747b28c), so a key lands in the same partition number in Weir as in a
Kafka topic with the same partition count, and users can reason about
placement the way they already do. The broker routes keyed records with this
same function, so SDK and broker always agree.

Records without a key use a sticky partition: every keyless record of a topic
goes to one partition until that partition's batch is sent, then the next
partition takes over (round-robin). This fills batches instead of spreading
each record thinly over all partitions.
"""

from __future__ import annotations

import struct

__all__ = ["StickyPartitioner", "murmur2", "partition_for_key"]

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK32 = 0xFFFFFFFF
_WORDS = struct.Struct("<I")


def murmur2(key: bytes) -> int:
    """Kafka's murmur2 hash of `key`, as a signed 32-bit int (like Java's)."""
    length = len(key)
    m = _M
    h = (_SEED ^ length) & _MASK32
    tail_start = length & ~3
    # iter_unpack does the little-endian word split in C; the loop body stays
    # in 32-bit arithmetic by masking after every multiplication.
    for (k,) in _WORDS.iter_unpack(key[:tail_start]):
        k = (k * m) & _MASK32
        k ^= k >> 24
        k = (k * m) & _MASK32
        h = ((h * m) & _MASK32) ^ k
    rest = length & 3
    if rest:
        if rest == 3:
            h ^= key[tail_start + 2] << 16
        if rest >= 2:
            h ^= key[tail_start + 1] << 8
        h ^= key[tail_start]
        h = (h * m) & _MASK32
    h ^= h >> 13
    h = (h * m) & _MASK32
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for_key(key: bytes, partition_count: int) -> int:
    """The partition of a keyed record: positive murmur2 modulo the count."""
    if partition_count <= 0:
        raise ValueError(f"partition_count must be positive, got {partition_count}")
    return (murmur2(key) & 0x7FFFFFFF) % partition_count


class StickyPartitioner:
    """Chooses the partition for keyless records, per topic.

    `partition()` keeps answering the same partition until `batch_sent()`
    says that partition's batch left; then it moves round-robin to the next.
    """

    def __init__(self, start: int = 0) -> None:
        self._start = start
        self._current: dict[str, int] = {}

    def partition(self, topic: str, partition_count: int) -> int:
        """The sticky partition for a keyless record of `topic`."""
        current = self._current.get(topic)
        if current is None or current >= partition_count:
            current = self._start % partition_count
            self._current[topic] = current
        return current

    def batch_sent(self, topic: str, partition: int, partition_count: int) -> None:
        """A batch of `topic`/`partition` was closed: rotate if it was the sticky one."""
        if self._current.get(topic) == partition:
            self._current[topic] = (partition + 1) % partition_count
