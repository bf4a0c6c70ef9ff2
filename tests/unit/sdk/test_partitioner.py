"""murmur2 must match Kafka's Utils.murmur2 bit for bit."""

from __future__ import annotations

import pytest

from weir.partitioner import StickyPartitioner, murmur2, partition_for_key

pytestmark = pytest.mark.timeout(10)

# From Kafka's UtilsTest.testMurmur2.
KAFKA_VECTORS = [
    ("21", -973932308),
    ("foobar", -790332482),
    ("a-little-bit-long-string", -985981536),
    ("a-little-bit-longer-string", -1486304829),
    ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    ("abc", 479470107),
]


@pytest.mark.parametrize(("key", "expected"), KAFKA_VECTORS)
def test_murmur2_matches_kafka(key: str, expected: int) -> None:
    assert murmur2(key.encode()) == expected


def test_murmur2_covers_every_tail_length_and_stays_int32() -> None:
    for n in range(0, 40):
        h = murmur2(bytes(range(n)))
        assert -(1 << 31) <= h < (1 << 31)
    assert murmur2(b"") == murmur2(b"")


def test_partition_is_positive_murmur2_modulo_count() -> None:
    # Kafka: toPositive(murmur2(key)) % numPartitions.
    for key, h in KAFKA_VECTORS:
        assert partition_for_key(key.encode(), 7) == (h & 0x7FFFFFFF) % 7
    with pytest.raises(ValueError):
        partition_for_key(b"x", 0)


def test_sticky_partition_rotates_only_when_its_batch_is_sent() -> None:
    sticky = StickyPartitioner(start=1)
    assert sticky.partition("t", 3) == 1
    assert sticky.partition("t", 3) == 1
    sticky.batch_sent("t", 2, 3)  # another partition's batch: no rotation
    assert sticky.partition("t", 3) == 1
    sticky.batch_sent("t", 1, 3)
    assert sticky.partition("t", 3) == 2
    sticky.batch_sent("t", 2, 3)
    assert sticky.partition("t", 3) == 0
    assert sticky.partition("other", 3) == 1  # per topic
