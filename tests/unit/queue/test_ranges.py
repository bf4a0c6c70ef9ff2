"""Acked offsets: a set that folds into its low watermark, checked against a plain set."""

from __future__ import annotations

import random

import pytest

from weir.cluster.queue.ranges import AckedOffsets, RangeSet

pytestmark = pytest.mark.timeout(10)


def test_acked_offsets_match_a_plain_set_and_fold() -> None:
    rng = random.Random(3)
    for _ in range(200):
        acked, plain = AckedOffsets(), set()
        for _ in range(40):
            first = rng.randrange(50)
            end = first + rng.randrange(1, 6)
            added = acked.add(first, end)
            assert added == len(set(range(first, end)) - plain)
            plain |= set(range(first, end))
            acked.check_invariants()
            assert all((o in acked) == (o in plain) for o in range(60))
            low = 0
            while low in plain:
                low += 1
            assert acked.low_watermark == low


def test_in_order_acks_keep_no_ranges() -> None:
    acked = AckedOffsets(10)
    for offset in range(10, 10_010):
        assert acked.add(offset, offset + 1) == 1
        assert len(acked) == 0
    assert acked.low_watermark == 10_010
    assert acked.add(5, 7) == 0


def test_a_range_set_matches_a_plain_set() -> None:
    rng = random.Random(5)
    for _ in range(200):
        ranges, plain = RangeSet(), set()
        for _ in range(40):
            first = rng.randrange(50)
            end = first + rng.randrange(0, 8)
            span = set(range(first, end))
            if rng.random() < 0.5:
                assert ranges.add(first, end) == len(span - plain)
                plain |= span
            else:
                assert ranges.remove(first, end) == len(span & plain)
                plain -= span
            ranges.check_invariants()
            assert ranges.count == len(plain) and list(ranges.offsets()) == sorted(plain)
            assert all((o in ranges) == (o in plain) for o in range(60))
            lo = rng.randrange(60)
            hi = lo + rng.randrange(12)
            missing = [o for first_, end_ in ranges.missing(lo, hi) for o in range(first_, end_)]
            assert missing == [o for o in range(lo, hi) if o not in plain]


def test_acked_offsets_tell_what_is_missing_above_the_watermark() -> None:
    acked = AckedOffsets(10)
    acked.add(12, 14)
    acked.add(20, 21)
    assert list(acked.missing(0, 25)) == [(10, 12), (14, 20), (21, 25)]
    assert list(acked.missing(12, 14)) == [] and list(acked.missing(5, 9)) == []
