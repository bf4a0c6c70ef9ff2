"""The replicated half of a queue group's state on one partition: what every replica applies.

Every replica of the partition (the leader included) calls `apply` for each
queue control record of this group, in log order. The result depends only
on the records, never on a clock or a setting, so replicas that apply the
same records hold the same state (`snapshot()` compares equal). A new
leader builds its live dispatch state from it (`QueueDispatch.become_leader`).

What it knows: the acked offsets (low watermark and ranges above it), the
leader's recorded scan position (`cursor`), and per record delivered and not
yet acked its last counted attempt, its key's hash, its due time if it was
nacked (None: in flight when recorded) and the last error. Deliveries are
recorded after the fact, so a leader crash can lose the record of one
attempt (docs/groups.md "What is replicated").

Apply is total: a record a correct leader never writes (an ack of an offset
never delivered, a nack after the ack) still has a defined effect, so
replicas never diverge and never stop on it. Its size is bounded by what the
leader bounded (`queue_pending_max`), since it holds a subset of the
leader's pending records plus the same acked ranges.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .ranges import AckedOffsets
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


class AppliedQueueState:
    __slots__ = ("acked", "cursor", "dead_lettered_total", "pending")

    def __init__(self) -> None:
        self.acked = AckedOffsets()
        self.cursor = 0
        self.pending: dict[int, PendingRecord] = {}
        self.dead_lettered_total = 0

    def apply(self, record: ControlRecord) -> None:
        # The cursor moves only as recorded: records above it may be pending
        # (delivered past records held behind their key), and a new leader
        # scans from it again, skipping what it knows.
        match record:
            case Delivered(cursor, records):
                self.cursor = max(self.cursor, cursor)
                for r in records:
                    if r.offset in self.acked:
                        continue
                    old = self.pending.get(r.offset)
                    error = old.last_error if old is not None else ""
                    attempt = max(r.attempt, old.attempt) if old is not None else r.attempt
                    self.pending[r.offset] = PendingRecord(attempt, r.key_hash, None, error)
            case Acked(ranges):
                self._ack(ranges)
            case DeadLettered(ranges):
                self.dead_lettered_total += self._ack(ranges)
            case Nacked(offset, attempt, due_ms, reason):
                if offset in self.acked:
                    return
                old = self.pending.get(offset)
                if old is None:
                    self.pending[offset] = PendingRecord(attempt, None, due_ms, reason)
                elif attempt >= old.attempt:
                    self.pending[offset] = old._replace(
                        attempt=attempt, due_ms=due_ms, last_error=reason
                    )

    def _ack(self, ranges: tuple[tuple[int, int], ...]) -> int:
        added = 0
        for first, end in ranges:
            if end - first <= len(self.pending):
                for offset in range(first, end):
                    self.pending.pop(offset, None)
            else:
                # A wide range (many records acked at once) costs what is pending.
                for offset in [o for o in self.pending if first <= o < end]:
                    del self.pending[offset]
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
        for offset, record in self.pending.items():
            assert offset not in self.acked, offset
            assert record.attempt >= 1, (offset, record)

    def snapshot(self) -> dict[str, Any]:
        """Plain data (ints, strings, lists), in a deterministic order."""
        return {
            "version": SNAPSHOT_VERSION,
            "low_watermark": self.acked.low_watermark,
            "acked": [list(r) for r in self.acked.ranges()],
            "cursor": self.cursor,
            "pending": [
                [offset, r.attempt, r.key_hash, r.due_ms, r.last_error]
                for offset, r in sorted(self.pending.items())
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
        for offset, attempt, key_hash, due_ms, error in data["pending"]:
            state.pending[int(offset)] = PendingRecord(int(attempt), key_hash, due_ms, str(error))
        state.dead_lettered_total = int(data["dead_lettered_total"])
        state.check_invariants()
        return state
