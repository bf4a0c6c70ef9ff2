"""The replicated half of a queue group's state on one partition: what every replica applies.

Every replica of the partition (the leader included) calls `apply` for each
queue control record of this group, in log order. The result depends only
on the records, never on a clock or a setting, so replicas that apply the
same records hold the same state (`snapshot()` compares equal). A new
leader builds its live dispatch state from it (`QueueDispatch.become_leader`).

What it knows: the acked offsets (low watermark and ranges above it), the
leader's recorded scan position (`cursor`), and per record delivered and not
yet acked its last counted attempt, its key's hash, its due time if it was
nacked (None: in flight when recorded) and the last error. Records delivered
once, without a key and never nacked (`PLAIN`) are kept as ranges
(`PendingRecords`), so a replica's apply of a turn's deliveries and acks
costs per run of offsets, not per record. Deliveries are
recorded after the fact, so a leader crash can lose the record of one
attempt (docs/groups.md "What is replicated").

Apply is total: a record a correct leader never writes (an ack of an offset
never delivered, a nack after the ack) still has a defined effect, so
replicas never diverge and never stop on it. Its size is bounded by what the
leader bounded (`queue_pending_max`), since it holds a subset of the
leader's pending records plus the same acked ranges.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from heapq import merge
from typing import Any, NamedTuple

from .ranges import AckedOffsets, RangeSet
from .types import Acked, ControlRecord, DeadLettered, Delivered, Nacked

SNAPSHOT_VERSION = 1


class PendingRecord(NamedTuple):
    """A delivered record not yet acked, as the log tells it (one per record: a
    NamedTuple, as types.py says why)."""

    attempt: int
    key_hash: int | None
    # None: in flight when last recorded. Otherwise it waits until then.
    due_ms: int | None
    last_error: str


# A record delivered once, without a key, never nacked: most pending records.
PLAIN = PendingRecord(1, None, None, "")


class PendingRecords(Mapping[int, PendingRecord]):
    """Offset -> `PendingRecord`, in offset order: the `PLAIN` records as ranges
    (`plain`: a turn's first deliveries cost a range, not an entry per record),
    every other record on its own (`other`). The two are disjoint."""

    __slots__ = ("other", "plain")

    def __init__(self) -> None:
        self.plain = RangeSet()
        self.other: dict[int, PendingRecord] = {}

    def __getitem__(self, offset: int) -> PendingRecord:
        record = self.other.get(offset)
        if record is not None:
            return record
        if offset in self.plain:
            return PLAIN
        raise KeyError(offset)

    def get(self, offset: int, default: Any = None) -> Any:  # faster than Mapping's
        record = self.other.get(offset)
        if record is not None:
            return record
        return PLAIN if offset in self.plain else default

    def __contains__(self, offset: object) -> bool:
        return offset in self.other or (isinstance(offset, int) and offset in self.plain)

    def __len__(self) -> int:
        return self.plain.count + len(self.other)

    def __iter__(self) -> Iterator[int]:
        return merge(self.plain.offsets(), sorted(self.other))

    def end(self) -> int:
        """One past the highest pending offset (0 if none)."""
        last = self.plain.last_range()
        return max(last[1] if last else 0, max(self.other, default=-1) + 1)

    def put(self, offset: int, record: PendingRecord) -> None:
        if record == PLAIN:
            self.other.pop(offset, None)
            self.plain.add(offset, offset + 1)
        else:
            self.plain.remove(offset, offset + 1)
            self.other[offset] = record

    def other_within(self, first: int, end: int) -> list[int]:
        """The offsets of `other` in `[first, end)`, at the cost of the smaller side."""
        if end - first <= len(self.other):
            return [o for o in range(first, end) if o in self.other]
        return [o for o in self.other if first <= o < end]

    def discard(self, first: int, end: int) -> None:
        """Forgets every record in `[first, end)`."""
        self.plain.remove(first, end)
        for offset in self.other_within(first, end):
            del self.other[offset]


class AppliedQueueState:
    __slots__ = ("acked", "cursor", "dead_lettered_total", "pending")

    def __init__(self) -> None:
        self.acked = AckedOffsets()
        self.cursor = 0
        self.pending = PendingRecords()
        self.dead_lettered_total = 0

    def apply(self, record: ControlRecord) -> None:
        # The cursor moves only as recorded: records above it may be pending
        # (delivered past records held behind their key), and a new leader
        # scans from it again, skipping what it knows.
        match record:
            case Delivered(cursor, runs):
                self.cursor = max(self.cursor, cursor)
                for first, count, attempt, keys in runs:
                    if attempt == 1 and keys is None:
                        self._deliver_plain(first, first + count)
                    else:
                        for i in range(count):
                            key_hash = None if keys is None else keys[i]
                            self._deliver(first + i, attempt, key_hash)
            case Acked(ranges):
                self._ack(ranges)
            case DeadLettered(ranges):
                self.dead_lettered_total += self._ack(ranges)
            case Nacked(offset, attempt, due_ms, reason):
                if offset in self.acked:
                    return
                old = self.pending.get(offset)
                if old is None:
                    self.pending.put(offset, PendingRecord(attempt, None, due_ms, reason))
                elif attempt >= old.attempt:
                    self.pending.put(
                        offset, old._replace(attempt=attempt, due_ms=due_ms, last_error=reason)
                    )

    def _deliver(self, offset: int, attempt: int, key_hash: int | None) -> None:
        if offset in self.acked:
            return
        old = self.pending.get(offset)
        error = old.last_error if old is not None else ""
        attempt = max(attempt, old.attempt) if old is not None else attempt
        self.pending.put(offset, PendingRecord(attempt, key_hash, None, error))

    def _deliver_plain(self, first: int, end: int) -> None:
        """First deliveries without keys: whole ranges, unless a record in them
        is acked or known otherwise (then that record on its own)."""
        for lo, hi in list(self.acked.missing(first, end)):
            known = self.pending.other_within(lo, hi)
            if not known:
                self.pending.plain.add(lo, hi)
                continue
            for offset in range(lo, hi):
                self._deliver(offset, 1, None)

    def _ack(self, ranges: tuple[tuple[int, int], ...]) -> int:
        added = 0
        for first, end in ranges:
            self.pending.discard(first, end)
            added += self.acked.add(first, end)
        return added

    def size(self) -> int:
        """What the state holds: pending records plus acked ranges above the low
        watermark (a subset of the leader's `QueueDispatch.size()`, so bounded by
        `queue_pending_max` + 1 as long as leaders bound it)."""
        return len(self.pending) + len(self.acked)

    def below_log_start(self, start_offset: int) -> tuple[ControlRecord, ...]:
        """The control records that write off what retention deleted (none if nothing).

        Retention deletes records whether a queue group read them or not (as
        in Kafka), so the cursor, the low watermark and pending records may
        fall below the log's first offset. The leader appends these records
        (one `Acked` of everything below the start, one `Delivered` moving the
        cursor there) so that every replica forgets the same records; a
        replica never changes its applied state on its own log start, which
        can differ between replicas.
        """
        records: list[ControlRecord] = []
        if self.acked.low_watermark < start_offset:
            records.append(Acked(((self.acked.low_watermark, start_offset),)))
        if self.cursor < start_offset:
            records.append(Delivered(start_offset, ()))
        return tuple(records)

    def check_invariants(self) -> None:
        self.acked.check_invariants()
        self.pending.plain.check_invariants()
        for first, end in self.pending.plain.ranges():
            assert list(self.acked.missing(first, end)) == [(first, end)], (first, end)
            assert not self.pending.other_within(first, end), (first, end)
        for offset, record in self.pending.other.items():
            assert offset not in self.acked, offset
            assert record.attempt >= 1 and record != PLAIN, (offset, record)

    def snapshot(self) -> dict[str, Any]:
        """Plain data (ints, strings, lists), in a deterministic order."""
        return {
            "version": SNAPSHOT_VERSION,
            "low_watermark": self.acked.low_watermark,
            "acked": [list(r) for r in self.acked.ranges()],
            "cursor": self.cursor,
            "pending": [
                [offset, r.attempt, r.key_hash, r.due_ms, r.last_error]
                for offset, r in self.pending.items()
            ],
            "dead_lettered_total": self.dead_lettered_total,
        }

    @classmethod
    def restore(cls, data: dict[str, Any]) -> AppliedQueueState:
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unknown queue snapshot version {data.get('version')!r}")
        state = cls()
        state.acked = AckedOffsets(int(data["low_watermark"]))
        for first, end in data["acked"]:
            state.acked.add(int(first), int(end))
        state.cursor = int(data["cursor"])
        # "plain": ranges of `PLAIN` records (a stored row's form; snapshot() lists them).
        for first, end in data.get("plain", ()):
            state.pending.plain.add(int(first), int(end))
        for offset, attempt, key_hash, due_ms, error in data["pending"]:
            state.pending.put(
                int(offset), PendingRecord(int(attempt), key_hash, due_ms, str(error))
            )
        state.dead_lettered_total = int(data["dead_lettered_total"])
        state.check_invariants()
        return state
