"""The vocabulary of queue mode's per-partition state: settings, inputs, answers, control records.

Everything here is a frozen value: a slotted frozen dataclass, or, for the
values made once per record (`Candidate`, `Delivery`, `DeliveredRecord`), a
`NamedTuple`, which is built several times faster (a frozen dataclass sets
each field through `object.__setattr__`; profiled at a few µs per record
handed out and acked, on every node). Inputs (`Candidate`) come from
the caller, which reads the partition log; answers (`Delivery`,
`Redelivery`, `DeadLetter`, `Outcome`) tell the caller what to do; control
records (`Delivered`, `Acked`, `Nacked`, `DeadLettered`) are what the
leader writes to the partition log (codec.py) and every replica applies
(applied.py).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

# 2**32 - 1: attempts travel as u32 (codec.py, ackid.py).
ATTEMPT_MAX = 2**32 - 1
OFFSET_MAX = 2**63 - 1
KEY_HASH_MAX = 2**32 - 1


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """A queue group's settings on one partition (topic config and `Subscribe`)."""

    # Deliveries after which a record is dead-lettered; 0 means never.
    max_deliveries: int = 5
    retry_backoff_ms_min: int = 1_000
    retry_backoff_ms_max: int = 60_000
    # Records of one key are handed out one at a time, in offset order.
    ordered_keys: bool = False
    # Bound of the state: records in flight + waiting + held back by their
    # key + waiting to be dead-lettered + acked ranges above the low
    # watermark. At the bound no new record is handed out (redeliveries go
    # on: they do not grow the state), so acks must free room first.
    queue_pending_max: int = 100_000
    # The longest delay a nack may ask for (a week), so a due time stays sane.
    nack_delay_ms_max: int = 7 * 24 * 3600 * 1000
    # A nack's reason is kept (for the dead letter's header) up to this size.
    nack_reason_bytes_max: int = 256

    def __post_init__(self) -> None:
        assert 0 <= self.max_deliveries <= ATTEMPT_MAX
        assert 0 <= self.retry_backoff_ms_min <= self.retry_backoff_ms_max
        assert self.queue_pending_max > 0 and self.nack_delay_ms_max >= 0
        assert 0 <= self.nack_reason_bytes_max <= 4096


class Candidate(NamedTuple):
    """A record the caller can read: offset, its key's hash (None: no key), deliver_at_ms."""

    offset: int
    key_hash: int | None = None
    deliver_at_ms: int | None = None


class Delivery(NamedTuple):
    """Hand this record to the stream: read `offset`, send it with its ack id and deadline."""

    offset: int
    attempt: int
    deadline_ms: int


@dataclass(frozen=True, slots=True)
class Redelivery:
    """A nacked (or expired) record waits until `due_ms`, then goes out as `attempt` + 1."""

    offset: int
    attempt: int
    due_ms: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Append the record at `offset` to the dead-letter topic with these headers,
    then call `dead_letter_written(offset)`; until then it counts as pending."""

    offset: int
    deliveries: int
    last_error: str


class Outcome(enum.Enum):
    ACKED = "acked"
    # Acked before (or dead-lettered): harmless, answered OK.
    ALREADY_ACKED = "already_acked"
    # A nack or extension for an attempt that is no longer the one out (it was
    # redelivered since): changes nothing.
    STALE_ATTEMPT = "stale_attempt"
    EXTENDED = "extended"


# Control records: what the leader replicates, what every replica applies.


class DeliveredRecord(NamedTuple):
    offset: int
    attempt: int
    key_hash: int | None = None


class DeliveredRun(NamedTuple):
    """`length` records from offset `first` on, all handed out as `attempt`.

    `key_hashes` is None for records without a key, else one hash per
    record: a run never mixes the two. Runs are what the leader records and
    replicas apply, so a turn's thousands of first deliveries cost a few
    runs, not an object per record, on every replica.
    """

    first: int
    length: int
    attempt: int
    key_hashes: tuple[int, ...] | None = None


# A run's count travels as u32 (codec.py).
RUN_RECORDS_MAX = 2**32 - 1


class RunBuilder:
    """Gathers deliveries into runs as they come (one list append per keyed record)."""

    __slots__ = ("_attempt", "_count", "_first", "_keys", "_runs")

    def __init__(self) -> None:
        self._runs: list[DeliveredRun] = []
        self._first = self._count = self._attempt = 0
        self._keys: list[int] | None = None

    def add(self, offset: int, attempt: int, key_hash: int | None) -> None:
        if (
            self._count
            and offset == self._first + self._count
            and attempt == self._attempt
            and (key_hash is None) == (self._keys is None)
            and self._count < RUN_RECORDS_MAX
        ):
            self._count += 1
            if key_hash is not None and self._keys is not None:
                self._keys.append(key_hash)
            return
        self._close()
        self._first, self._count, self._attempt = offset, 1, attempt
        self._keys = None if key_hash is None else [key_hash]

    def add_run(self, first: int, length: int) -> None:
        """`length` records from `first` on, first deliveries without keys."""
        if (
            self._count
            and first == self._first + self._count
            and self._attempt == 1
            and self._keys is None
            and self._count + length <= RUN_RECORDS_MAX
        ):
            self._count += length
            return
        self._close()
        self._first, self._count, self._attempt, self._keys = first, length, 1, None

    def _close(self) -> None:
        if self._count:
            keys = None if self._keys is None else tuple(self._keys)
            self._runs.append(DeliveredRun(self._first, self._count, self._attempt, keys))
            self._count = 0

    def take(self) -> tuple[DeliveredRun, ...]:
        self._close()
        runs, self._runs = tuple(self._runs), []
        return runs


def runs_of(records: Iterable[DeliveredRecord]) -> tuple[DeliveredRun, ...]:
    """Consecutive offsets with one attempt and the same keyedness form a run."""
    builder = RunBuilder()
    for offset, attempt, key_hash in records:
        builder.add(offset, attempt, key_hash)
    return builder.take()


@dataclass(frozen=True, slots=True)
class Delivered:
    """Records handed out (after the fact), as runs, and the leader's scan position.

    `cursor` is where a new leader starts reading new records: every offset
    below it was delivered, is delayed (the delayed-record index offers it
    when due) or was acked. Offsets above it may have been delivered too
    (listed here), so a scan from it skips what the state knows.
    """

    cursor: int
    runs: tuple[DeliveredRun, ...]

    @classmethod
    def of(cls, cursor: int, records: Iterable[DeliveredRecord]) -> Delivered:
        return cls(cursor, runs_of(records))

    def records(self) -> Iterator[DeliveredRecord]:
        """One per record, in order (for tests and tools: replicas apply the runs)."""
        for first, count, attempt, keys in self.runs:
            for i in range(count):
                yield DeliveredRecord(first + i, attempt, None if keys is None else keys[i])


@dataclass(frozen=True, slots=True)
class Acked:
    """Half-open offset ranges `[first, end)` acked by consumers."""

    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Nacked:
    """A record's `attempt` failed (nack, deadline, closed stream); next due at `due_ms`."""

    offset: int
    attempt: int
    due_ms: int
    reason: str


@dataclass(frozen=True, slots=True)
class DeadLettered:
    """Records whose dead letter was written: acked at the source from now on."""

    ranges: tuple[tuple[int, int], ...]


ControlRecord = Delivered | Acked | Nacked | DeadLettered
