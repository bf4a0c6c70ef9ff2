"""The acked offsets of one queue group on one partition: a low watermark and ranges above it.

Every offset below `low_watermark` is acked (or dead-lettered, which counts
as acked). Acked offsets at or above it are kept as disjoint, non-adjacent
half-open ranges `[first, end)`, sorted. A range that reaches the low
watermark folds into it, so a group that acks roughly in order keeps
almost nothing: memory is one pair of ints per hole-separated run, and the
holes are records in flight, waiting or held back, which the queue state
bounds (state.py, `queue_pending_max`).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator


class AckedOffsets:
    """A set of offsets: everything below `low_watermark`, plus `ranges()` above it."""

    __slots__ = ("_ends", "_starts", "low_watermark")

    def __init__(self, low_watermark: int = 0) -> None:
        assert low_watermark >= 0
        self.low_watermark = low_watermark
        # Parallel sorted lists: range i is [_starts[i], _ends[i]).
        self._starts: list[int] = []
        self._ends: list[int] = []

    def __contains__(self, offset: int) -> bool:
        if offset < self.low_watermark:
            return True
        i = bisect.bisect_right(self._starts, offset) - 1
        return i >= 0 and offset < self._ends[i]

    def __len__(self) -> int:
        """The number of ranges above the low watermark (what the state holds)."""
        return len(self._starts)

    def ranges(self) -> Iterator[tuple[int, int]]:
        return zip(self._starts, self._ends, strict=True)

    def add(self, first: int, end: int) -> int:
        """Adds `[first, end)`; returns how many offsets were not in the set before."""
        assert 0 <= first < end, (first, end)
        first = max(first, self.low_watermark)
        if first >= end:
            return 0
        # The ranges that touch or overlap [first, end) merge with it into one;
        # their union is contiguous, so what is new is the merged size minus theirs.
        lo = bisect.bisect_left(self._ends, first)
        hi = bisect.bisect_right(self._starts, end)
        before = sum(self._ends[i] - self._starts[i] for i in range(lo, hi))
        if lo < hi:
            first = min(first, self._starts[lo])
            end = max(end, self._ends[hi - 1])
        self._starts[lo:hi] = [first]
        self._ends[lo:hi] = [end]
        if self._starts[0] == self.low_watermark:
            self.low_watermark = self._ends[0]
            del self._starts[0], self._ends[0]
        return end - first - before

    def check_invariants(self) -> None:
        previous_end = self.low_watermark
        for s, e in self.ranges():
            # Strictly above: adjacent ranges would have been merged or folded.
            assert previous_end < s < e, (previous_end, s, e)
            previous_end = e
