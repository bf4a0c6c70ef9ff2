"""The leader's control records of one turn, in the order of their events, merged where consecutive.

Order matters only between records of the same offset (delivered, then
nacked, then delivered again, then acked), so records are kept in event
order and only neighbours of one kind merge: consecutive deliveries into one
`Delivered` (with the latest cursor), consecutive acks into one `Acked` whose
adjacent offsets join into ranges, likewise for dead letters. The caller
drains it every turn (`take`), so it holds one turn's events.
"""

from __future__ import annotations

from collections.abc import Iterable

from .types import Acked, ControlRecord, DeadLettered, Delivered, Nacked, RunBuilder


class ControlOutbox:
    __slots__ = ("_acked", "_cursor", "_dead", "_records", "_runs")

    def __init__(self) -> None:
        self._records: list[ControlRecord] = []
        # The open Delivered (at most one record is open: it, or a range list):
        # its runs so far and its latest cursor (None: none is open).
        self._runs = RunBuilder()
        self._cursor: int | None = None
        # Open ranges of the newest Acked or DeadLettered.
        self._acked: list[tuple[int, int]] = []
        self._dead: list[tuple[int, int]] = []

    def delivered(self, cursor: int, deliveries: Iterable[tuple[int, int, int | None]]) -> None:
        """Records (offset, attempt, key hash) handed out, and the cursor after them."""
        if self._acked or self._dead:
            self._close_ranges()
        assert self._cursor is None or cursor >= self._cursor
        self._cursor = cursor
        for offset, attempt, key_hash in deliveries:
            self._runs.add(offset, attempt, key_hash)

    def delivered_run(self, cursor: int, first: int, length: int) -> None:
        """First deliveries without keys of offsets `[first, first + length)`."""
        self.delivered(cursor, ())
        self._runs.add_run(first, length)

    def nacked(self, record: Nacked) -> None:
        self._close()
        self._records.append(record)

    def acked(self, offset: int) -> None:
        if self._dead or self._cursor is not None:
            self._close()
        self._add(self._acked, offset)

    def acked_run(self, first: int, end: int) -> None:
        """Acks of offsets `[first, end)`, as `acked` of each in order."""
        if self._dead or self._cursor is not None:
            self._close()
        ranges = self._acked
        if ranges and ranges[-1][1] == first:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((first, end))

    def dead_lettered(self, offset: int) -> None:
        if self._acked or self._cursor is not None:
            self._close()
        self._add(self._dead, offset)

    @staticmethod
    def _add(ranges: list[tuple[int, int]], offset: int) -> None:
        if ranges and ranges[-1][1] == offset:
            ranges[-1] = (ranges[-1][0], offset + 1)
        else:
            ranges.append((offset, offset + 1))

    def _close(self) -> None:
        if self._cursor is not None:
            self._records.append(Delivered(self._cursor, self._runs.take()))
            self._cursor = None
        self._close_ranges()

    def _close_ranges(self) -> None:
        if self._acked:
            self._records.append(Acked(tuple(self._acked)))
            self._acked.clear()
        if self._dead:
            self._records.append(DeadLettered(tuple(self._dead)))
            self._dead.clear()

    def take(self) -> list[ControlRecord]:
        self._close()
        records, self._records = self._records, []
        return records
