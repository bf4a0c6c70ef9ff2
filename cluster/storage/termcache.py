"""Terms of a log's recent entries, kept as runs so that `term(i)` needs no read.

Raft asks for terms constantly (matching a leader's AppendEntries, fast
backtracking, elections comparing last terms), almost always near the tail.
Terms change rarely, so the tail is a handful of runs (first index, term);
the cache covers `[lo, last index]` contiguously and holds at most
`TERM_CACHE_RUNS_MAX` runs. Older indexes are read from LMDB.
"""

from __future__ import annotations

import bisect

# Each run is two ints; 256 runs is ~10 KiB per group at most, and a group
# sees that many terms in its retained tail only after many elections.
TERM_CACHE_RUNS_MAX = 256


class TermCache:
    def __init__(self, lo: int) -> None:
        # First index covered; with no runs the cache covers nothing and `lo`
        # is where the next appended entry will start it.
        self.lo = lo
        self._starts: list[int] = []
        self._terms: list[int] = []

    def term(self, index: int) -> int | None:
        """The cached term at `index` (the caller checked `index <= last index`)."""
        if not self._starts or index < self.lo:
            return None
        return self._terms[bisect.bisect_right(self._starts, index) - 1]

    def append(self, index: int, term: int) -> None:
        """An entry appended right after the cached tail (or starting an empty cache)."""
        if not self._starts:
            self.lo = index
        elif self._terms[-1] == term:
            return
        else:
            assert term > self._terms[-1], "terms in a log never decrease"
        self._starts.append(index)
        self._terms.append(term)
        if len(self._starts) > TERM_CACHE_RUNS_MAX:
            del self._starts[0], self._terms[0]
            self.lo = self._starts[0]

    def truncate_from(self, index: int) -> None:
        """Entries from `index` on are replaced (a follower's conflicting suffix)."""
        if index <= self.lo:
            self.reset(index)
            return
        cut = bisect.bisect_left(self._starts, index)
        del self._starts[cut:], self._terms[cut:]

    def compact_to(self, first_index: int) -> None:
        """Entries before `first_index` are gone (compaction)."""
        if not self._starts or first_index <= self.lo:
            return
        keep = bisect.bisect_right(self._starts, first_index) - 1
        del self._starts[:keep], self._terms[:keep]
        self._starts[0] = first_index
        self.lo = first_index

    def reset(self, lo: int) -> None:
        self.lo = lo
        self._starts.clear()
        self._terms.clear()

    @property
    def runs(self) -> int:
        return len(self._starts)
