"""Acked offsets: a set that folds into its low watermark, checked against a plain set."""

from __future__ import annotations

import random

import pytest

from weir.cluster.queue.ranges import AckedOffsets

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
