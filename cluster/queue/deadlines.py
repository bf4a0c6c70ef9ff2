"""The ack deadlines of records in flight, as offset ranges: `Deadlines`.

Records handed out together share a deadline and an attempt, so an entry
is a range `[first, end)` with them: a hand-out of a run of records costs
one heap entry, not one per record (state.py `deliver_new`). Entries go
stale (the record was acked, failed or extended since); `due` skips stale
offsets by asking whether each is still in flight with that deadline and
attempt, and the heap is rebuilt from the records in flight when stale
entries outnumber them (`compact`), so its size stays bounded by theirs.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

# The heap is rebuilt when its entries outnumber twice the records in flight plus this.
HEAP_SLACK = 64


class HasDeadline(Protocol):
    @property
    def deadline_ms(self) -> int: ...

    @property
    def attempt(self) -> int: ...


class Deadlines:
    __slots__ = ("_heap",)

    def __init__(self) -> None:
        # (deadline_ms, first, end, attempt): offsets [first, end) handed out as
        # `attempt` with that deadline; stale entries (and offsets) allowed.
        self._heap: list[tuple[int, int, int, int]] = []

    def __len__(self) -> int:
        """Entries, stale ones included."""
        return len(self._heap)

    def push(self, deadline_ms: int, first: int, end: int, attempt: int) -> None:
        heapq.heappush(self._heap, (deadline_ms, first, end, attempt))

    def next_ms(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def due(self, now_ms: int, still: Callable[[int, int, int], bool]) -> Iterator[tuple[int, int]]:
        """(offset, attempt) of every entry due at `now_ms` whose offset `still`
        (offset, deadline_ms, attempt) holds; the entries are taken out."""
        heap = self._heap
        while heap and heap[0][0] <= now_ms:
            deadline_ms, first, end, attempt = heapq.heappop(heap)
            for offset in range(first, end):
                if still(offset, deadline_ms, attempt):
                    yield offset, attempt

    def covers(self, offset: int, deadline_ms: int, attempt: int) -> bool:
        """Whether an entry holds `offset` with this deadline and attempt (checks only: O(n))."""
        return any(
            (d, a) == (deadline_ms, attempt) and first <= offset < end
            for d, first, end, a in self._heap
        )

    def compact(self, in_flight: Mapping[int, HasDeadline]) -> None:
        """Rebuilds the heap from `in_flight` (offset -> record) if stale entries
        outnumber live ones: one entry per run of consecutive offsets (in the
        mapping's order, the hand-out order) that share a deadline and an attempt."""
        if len(self._heap) <= 2 * len(in_flight) + HEAP_SLACK:
            return
        entries: list[tuple[int, int, int, int]] = []
        run: list[int] | None = None
        for offset, record in in_flight.items():
            if (
                run is not None
                and offset == run[2]
                and record.deadline_ms == run[0]
                and record.attempt == run[3]
            ):
                run[2] += 1
                continue
            if run is not None:
                entries.append((run[0], run[1], run[2], run[3]))
            run = [record.deadline_ms, offset, offset + 1, record.attempt]
        if run is not None:
            entries.append((run[0], run[1], run[2], run[3]))
        heapq.heapify(entries)
        self._heap = entries
