"""Sets of offsets kept as ranges: `RangeSet`, and `AckedOffsets` that folds into a low watermark.

`RangeSet` holds disjoint, non-adjacent half-open ranges `[first, end)`,
sorted, so a run of consecutive offsets costs one pair of ints however long
it is: the applied queue state keeps its records delivered once and not yet
acked that way (applied.py), the commonest pending records by far.

`AckedOffsets` is a `RangeSet` above a low watermark: every offset below
`low_watermark` is acked (or dead-lettered, which counts as acked), and a
range that reaches the low watermark folds into it, so a group that acks
roughly in order keeps almost nothing: memory is one pair of ints per
hole-separated run, and the holes are records in flight, waiting or held
back, which the queue state bounds (state.py, `queue_pending_max`).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator


class RangeSet:
    """A set of offsets as sorted, disjoint, non-adjacent ranges; `count` is its size."""

    __slots__ = ("_ends", "_starts", "count")

    def __init__(self) -> None:
        # Parallel sorted lists: range i is [_starts[i], _ends[i]).
        self._starts: list[int] = []
        self._ends: list[int] = []
        self.count = 0

    def __contains__(self, offset: int) -> bool:
        i = bisect.bisect_right(self._starts, offset) - 1
        return i >= 0 and offset < self._ends[i]

    def __len__(self) -> int:
        """The number of ranges (what the set costs), not of offsets (`count`)."""
        return len(self._starts)

    def ranges(self) -> Iterator[tuple[int, int]]:
        return zip(self._starts, self._ends, strict=True)

    def offsets(self) -> Iterator[int]:
        for first, end in zip(self._starts, self._ends, strict=True):
            yield from range(first, end)

    def first_range(self) -> tuple[int, int] | None:
        return (self._starts[0], self._ends[0]) if self._starts else None

    def last_range(self) -> tuple[int, int] | None:
        return (self._starts[-1], self._ends[-1]) if self._starts else None

    def add(self, first: int, end: int) -> int:
        """Adds `[first, end)`; returns how many offsets were not in the set before."""
        if first >= end:
            return 0
        if end - first == 1:
            return self._add_one(first)
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
        added = end - first - before
        self.count += added
        return added

    def _add_one(self, offset: int) -> int:
        # One offset (an ack): at most two neighbours to join, no slices.
        starts, ends = self._starts, self._ends
        i = bisect.bisect_right(starts, offset)  # ranges before it: [0, i)
        if i and offset < ends[i - 1]:
            return 0
        joins_before = i > 0 and ends[i - 1] == offset
        joins_after = i < len(starts) and starts[i] == offset + 1
        if joins_before and joins_after:
            ends[i - 1] = ends[i]
            del starts[i], ends[i]
        elif joins_before:
            ends[i - 1] = offset + 1
        elif joins_after:
            starts[i] = offset
        else:
            starts.insert(i, offset)
            ends.insert(i, offset + 1)
        self.count += 1
        return 1

    def remove(self, first: int, end: int) -> int:
        """Removes `[first, end)`; returns how many offsets were in the set."""
        lo = bisect.bisect_right(self._ends, first)
        hi = bisect.bisect_left(self._starts, end)
        if first >= end or lo >= hi:
            return 0
        removed = sum(min(self._ends[i], end) - max(self._starts[i], first) for i in range(lo, hi))
        starts, ends = [], []
        if self._starts[lo] < first:
            starts.append(self._starts[lo])
            ends.append(first)
        if self._ends[hi - 1] > end:
            starts.append(end)
            ends.append(self._ends[hi - 1])
        self._starts[lo:hi] = starts
        self._ends[lo:hi] = ends
        self.count -= removed
        return removed

    def pop_first(self) -> None:
        """Removes the first range."""
        self.count -= self._ends[0] - self._starts[0]
        del self._starts[0], self._ends[0]

    def missing(self, first: int, end: int) -> Iterator[tuple[int, int]]:
        """The parts of `[first, end)` not in the set, in order."""
        i = bisect.bisect_right(self._ends, first)
        while first < end:
            if i >= len(self._starts) or self._starts[i] >= end:
                yield first, end
                return
            if self._starts[i] > first:
                yield first, self._starts[i]
            first = self._ends[i]
            i += 1

    def check_invariants(self, floor: int = -1) -> None:
        """Ranges sorted, non-empty, and strictly above `floor` and each other
        (adjacent ranges would have been merged)."""
        previous_end = floor
        for s, e in self.ranges():
            assert previous_end < s < e, (previous_end, s, e)
            previous_end = e
        assert self.count == sum(e - s for s, e in self.ranges())


class AckedOffsets:
    """A set of offsets: everything below `low_watermark`, plus `ranges()` above it."""

    __slots__ = ("_above", "low_watermark")

    def __init__(self, low_watermark: int = 0) -> None:
        assert low_watermark >= 0
        self.low_watermark = low_watermark
        self._above = RangeSet()

    def __contains__(self, offset: int) -> bool:
        return offset < self.low_watermark or offset in self._above

    def __len__(self) -> int:
        """The number of ranges above the low watermark (what the state holds)."""
        return len(self._above)

    def ranges(self) -> Iterator[tuple[int, int]]:
        return self._above.ranges()

    def missing(self, first: int, end: int) -> Iterator[tuple[int, int]]:
        """The parts of `[first, end)` not acked, in order."""
        return self._above.missing(max(first, self.low_watermark), end)

    def add(self, first: int, end: int) -> int:
        """Adds `[first, end)`; returns how many offsets were not in the set before."""
        assert 0 <= first < end, (first, end)
        added = self._above.add(max(first, self.low_watermark), end)
        lowest = self._above.first_range()
        if lowest is not None and lowest[0] == self.low_watermark:
            self.low_watermark = lowest[1]
            self._above.pop_first()
        return added

    def check_invariants(self) -> None:
        # Strictly above the watermark: a range at it would have been folded.
        self._above.check_invariants(self.low_watermark)
