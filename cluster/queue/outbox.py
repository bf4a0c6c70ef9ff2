"""The leader's control records of one turn, in the order of their events, merged where consecutive.

Order matters only between records of the same offset (delivered, then
nacked, then delivered again, then acked), so records are kept in event
order and only neighbours of one kind merge: consecutive deliveries into one
`Delivered` (with the latest cursor), consecutive acks into one `Acked` whose
adjacent offsets join into ranges, likewise for dead letters. The caller
drains it every turn (`take`), so it holds one turn's events.
"""

from __future__ import annotations

from .types import Acked, ControlRecord, DeadLettered, Delivered, DeliveredRecord, Nacked


class ControlOutbox:
    __slots__ = ("_acked", "_dead", "_records")

    def __init__(self) -> None:
        self._records: list[ControlRecord] = []
        # Open ranges of the newest Acked or DeadLettered (only one is open).
        self._acked: list[tuple[int, int]] = []
        self._dead: list[tuple[int, int]] = []

    def delivered(self, cursor: int, records: list[DeliveredRecord]) -> None:
        self._close_ranges()
        previous = self._records[-1] if self._records else None
        if isinstance(previous, Delivered):
            assert cursor >= previous.cursor
            self._records[-1] = Delivered(cursor, previous.records + tuple(records))
        else:
            self._records.append(Delivered(cursor, tuple(records)))

    def nacked(self, record: Nacked) -> None:
        self._close_ranges()
        self._records.append(record)

    def acked(self, offset: int) -> None:
        if self._dead:
            self._close_ranges()
        self._add(self._acked, offset)

    def dead_lettered(self, offset: int) -> None:
        if self._acked:
            self._close_ranges()
        self._add(self._dead, offset)

    @staticmethod
    def _add(ranges: list[tuple[int, int]], offset: int) -> None:
        if ranges and ranges[-1][1] == offset:
            ranges[-1] = (ranges[-1][0], offset + 1)
        else:
            ranges.append((offset, offset + 1))

    def _close_ranges(self) -> None:
        if self._acked:
            self._records.append(Acked(tuple(self._acked)))
            self._acked.clear()
        if self._dead:
            self._records.append(DeadLettered(tuple(self._dead)))
            self._dead.clear()

    def take(self) -> list[ControlRecord]:
        self._close_ranges()
        records, self._records = self._records, []
        return records
