"""Idempotent producers: what one partition remembers of each producer, and the check.

A producer that retries a batch (after a timeout, a failover, a lost answer)
must get the offsets of the first copy instead of a second copy (DESIGN §6,
invariant 3). Every batch from an idempotent producer carries its producer
id, epoch and the sequence number of its first record (`ProducerFields`,
stored in the batch header, codec.py). Sequences count records per
(producer, partition): a batch's first sequence is the previous batch's last
sequence + 1 (modulo 2**31, as Kafka).

Two halves, both pure:

- `ProducerTable` is a partition's replicated producer state: per producer
  its epoch, the append time of its newest batch and its last
  `BATCHES_REMEMBERED` batches with their base offsets. It is a deterministic
  function of the log: every replica calls `apply` for every applied RECORDS
  batch, in log order, and expiry and eviction read only what the entries
  carry (the leader's append time and the leader's bounds), never a
  replica's clock or settings. It is persisted with the apply and carried in
  snapshots (`encode_table` / `decode_table`).
- `decide` is the leader's check of a new batch against the applied table
  plus the batches the leader's log holds beyond the applied index (the
  "tail", which may be committed later): append it, answer it as a duplicate
  (of an applied or of an in-flight batch), or refuse it with a typed
  `ProducerError`.

Apply is total: a batch that the check would have refused (it never reaches
the log through a correct leader) still updates the table in a defined way,
so replicas never diverge and never stop on it.
"""

from __future__ import annotations

import collections
import dataclasses
import struct
import zlib
from collections.abc import Iterable, Sequence

from .errors import CorruptEntryError

# Kafka's figure: a producer with up to 5 requests in flight per partition
# can have each of them retried and still be recognised.
BATCHES_REMEMBERED = 5
# Sequences are non-negative int32, wrapping to 0 after the largest (Kafka).
SEQUENCE_MODULUS = 2**31
EPOCH_MAX = 2**32 - 1
PRODUCER_ID_MAX = 2**63 - 1
# Producers one apply expires or evicts at most, so that its write is bounded
# (and reserved ahead); a backlog of expired producers goes a few per apply.
EVICTIONS_PER_APPLY_MAX = 8
# The largest encoded producer row (see encode_entry).
ENTRY_BYTES_MAX = 14 + 16 * BATCHES_REMEMBERED + 4
# Defaults of the node settings a leader stamps into every idempotent batch.
PRODUCER_ID_EXPIRY_MS_DEFAULT = 7 * 24 * 3600 * 1000
PRODUCERS_PER_PARTITION_MAX_DEFAULT = 1_000


@dataclasses.dataclass(frozen=True, slots=True)
class ProducerFields:
    """What an idempotent batch carries besides its records (stored in its header).

    `expiry_ms` and `producers_max` are the leader's bounds when it appended
    the batch: applying them from the entry keeps expiry and eviction the
    same on every replica whatever each node's own settings say.
    """

    producer_id: int
    epoch: int
    first_sequence: int
    expiry_ms: int = PRODUCER_ID_EXPIRY_MS_DEFAULT
    producers_max: int = PRODUCERS_PER_PARTITION_MAX_DEFAULT


def last_sequence(first_sequence: int, record_count: int) -> int:
    return (first_sequence + record_count - 1) % SEQUENCE_MODULUS


@dataclasses.dataclass(frozen=True, slots=True)
class Remembered:
    """One applied batch of a producer: its sequences and where it landed."""

    first_sequence: int
    record_count: int
    base_offset: int

    @property
    def last_sequence(self) -> int:
        return last_sequence(self.first_sequence, self.record_count)


@dataclasses.dataclass(frozen=True, slots=True)
class ProducerEntry:
    """A producer as one partition knows it; `batches` oldest first."""

    epoch: int
    last_time_ms: int
    batches: tuple[Remembered, ...]

    @property
    def last_base_offset(self) -> int:
        return self.batches[-1].base_offset if self.batches else -1


@dataclasses.dataclass(frozen=True, slots=True)
class TailBatch:
    """A producer batch in the leader's log beyond its applied index (maybe not committed)."""

    epoch: int
    first_sequence: int
    record_count: int
    base_offset: int
    index: int
    term: int


# ---- the leader's check --------------------------------------------------------------


class ProducerError(Exception):
    """A batch refused by the producer check: nothing was appended."""

    reason = "PRODUCER_ERROR"

    def __init__(self, producer_id: int, message: str, **metadata: int) -> None:
        super().__init__(message)
        self.producer_id = producer_id
        self.metadata = {"producer_id": producer_id, **metadata}


class OutOfOrderSequenceError(ProducerError):
    reason = "OUT_OF_ORDER_SEQUENCE"


class ProducerFencedError(ProducerError):
    reason = "PRODUCER_FENCED"


class UnknownProducerIdError(ProducerError):
    reason = "UNKNOWN_PRODUCER_ID"


@dataclasses.dataclass(frozen=True, slots=True)
class Append:
    """Append the batch: it continues the producer's sequence."""


@dataclasses.dataclass(frozen=True, slots=True)
class Duplicate:
    """A retry of an applied batch: answer its offsets, append nothing."""

    base_offset: int


@dataclasses.dataclass(frozen=True, slots=True)
class InFlight:
    """A retry of a batch in the leader's log tail: answer with that batch's outcome."""

    batch: TailBatch


Decision = Append | Duplicate | InFlight

APPEND = Append()


def decide(
    entry: ProducerEntry | None,
    tail: Sequence[TailBatch],
    fields: ProducerFields,
    record_count: int,
) -> Decision:
    """What the leader does with a batch; raises a `ProducerError` to refuse it.

    `entry` is the applied table's view of the producer, `tail` its batches
    in the leader's log beyond the applied index, oldest first.
    """
    pid, epoch, first = fields.producer_id, fields.epoch, fields.first_sequence
    last = last_sequence(first, record_count)
    if tail:
        current_epoch: int | None = tail[-1].epoch
    else:
        current_epoch = None if entry is None else entry.epoch
    if current_epoch is None:
        if first == 0:
            return APPEND
        raise UnknownProducerIdError(
            pid,
            f"this partition does not know producer {pid} (it expired, was evicted, or never "
            "wrote here) and the batch does not start at sequence 0; call InitProducer for a "
            "new producer id and start its sequences at 0",
            sequence=first,
        )
    if epoch < current_epoch:
        raise ProducerFencedError(
            pid,
            f"producer {pid} epoch {epoch} is fenced: epoch {current_epoch} has written here "
            "(another producer took over this producer name)",
            epoch=epoch,
            current_epoch=current_epoch,
        )
    if epoch > current_epoch:
        if first == 0:
            return APPEND
        raise OutOfOrderSequenceError(
            pid,
            f"producer {pid}'s first batch in epoch {epoch} must start at sequence 0, not {first}",
            expected_sequence=0,
            sequence=first,
        )
    # Same epoch: a retry of something remembered, or the next batch.
    for batch in reversed(tail):
        if batch.epoch == epoch and batch.first_sequence == first:
            if batch.record_count == record_count:
                return InFlight(batch)
            break
    else:
        if entry is not None and entry.epoch == epoch:
            for remembered in entry.batches:
                if remembered.first_sequence == first and remembered.last_sequence == last:
                    return Duplicate(remembered.base_offset)
    if tail and tail[-1].epoch == epoch:
        previous_last = last_sequence(tail[-1].first_sequence, tail[-1].record_count)
    else:
        assert entry is not None and entry.batches
        previous_last = entry.batches[-1].last_sequence
    expected = (previous_last + 1) % SEQUENCE_MODULUS
    if first == expected:
        return APPEND
    raise OutOfOrderSequenceError(
        pid,
        f"producer {pid} epoch {epoch}: expected sequence {expected}, got {first}; "
        "an earlier batch is missing (or this one is not a retry of a remembered batch)",
        expected_sequence=expected,
        sequence=first,
    )


# ---- the replicated table -------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Changes:
    """What one apply changed: for the rows to write and, on a failed write, the undo."""

    # pid -> new entry (None: deleted), in the order they changed.
    rows: dict[int, ProducerEntry | None] = dataclasses.field(default_factory=dict)
    # pid -> entry before this apply (None: absent), for `ProducerTable.undo`.
    previous: dict[int, ProducerEntry | None] = dataclasses.field(default_factory=dict)
    previous_next_offset: int = 0

    def __bool__(self) -> bool:
        return bool(self.rows)


class ProducerTable:
    """One partition's producers, least recently written first."""

    def __init__(
        self, entries: Iterable[tuple[int, ProducerEntry]] = (), applied_next_offset: int = 0
    ) -> None:
        # Ordered by the base offset of each producer's newest batch, which is
        # the order of their last writes in the log: the same on every replica
        # and recoverable from the rows alone (they are keyed by producer id).
        ordered = sorted(entries, key=lambda item: item[1].last_base_offset)
        self._producers: collections.OrderedDict[int, ProducerEntry] = collections.OrderedDict(
            ordered
        )
        # Batches below this offset are already reflected (a snapshot may hold
        # a table newer than its index: see `apply`).
        self.applied_next_offset = applied_next_offset

    def __len__(self) -> int:
        return len(self._producers)

    def get(self, producer_id: int) -> ProducerEntry | None:
        return self._producers.get(producer_id)

    def items(self) -> list[tuple[int, ProducerEntry]]:
        return list(self._producers.items())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProducerTable):
            return NotImplemented
        return (
            self.items() == other.items() and self.applied_next_offset == other.applied_next_offset
        )

    def __repr__(self) -> str:
        return f"ProducerTable({self.items()!r}, applied_next_offset={self.applied_next_offset})"

    def apply(
        self,
        fields: ProducerFields | None,
        base_offset: int,
        record_count: int,
        append_time_ms: int,
    ) -> Changes:
        """Applies one RECORDS batch (`fields` None: not from an idempotent producer).

        A batch below `applied_next_offset` is already in the table (a
        follower that installed a snapshot taken after its index replays the
        entries between) and changes nothing.
        """
        changes = Changes(previous_next_offset=self.applied_next_offset)
        if base_offset < self.applied_next_offset:
            return changes
        self.applied_next_offset = base_offset + record_count
        if fields is None:
            return changes
        producers = self._producers
        pid = fields.producer_id
        entry = producers.get(pid)
        batch = Remembered(fields.first_sequence, record_count, base_offset)
        if entry is None or fields.epoch > entry.epoch:
            new = ProducerEntry(fields.epoch, append_time_ms, (batch,))
        elif fields.epoch == entry.epoch:
            new = ProducerEntry(
                entry.epoch, append_time_ms, (*entry.batches, batch)[-BATCHES_REMEMBERED:]
            )
        else:
            # A fenced epoch: the leader's check refuses these, so only a
            # broken leader gets here; the table ignores it (deterministically).
            return changes
        self._change(changes, pid, new)
        # Expiry and eviction, oldest write first. Never the producer just
        # written, so a table with a bound of 1 still accepts a new producer.
        cutoff_ms = append_time_ms - fields.expiry_ms
        limit = max(1, fields.producers_max)
        evicted = 0
        while producers and evicted < EVICTIONS_PER_APPLY_MAX:
            oldest_pid, oldest = next(iter(producers.items()))
            if oldest_pid == pid:
                break
            if len(producers) <= limit and oldest.last_time_ms >= cutoff_ms:
                break
            self._change(changes, oldest_pid, None)
            evicted += 1
        return changes

    def _change(self, changes: Changes, pid: int, entry: ProducerEntry | None) -> None:
        producers = self._producers
        if pid not in changes.previous:
            changes.previous[pid] = producers.get(pid)
        if entry is None:
            del producers[pid]
        else:
            producers[pid] = entry
            producers.move_to_end(pid)
        changes.rows[pid] = entry

    def undo(self, changes: Changes) -> None:
        """Reverts an apply whose write failed (the single-node path undoes newest first)."""
        for pid, entry in changes.previous.items():
            if entry is None:
                self._producers.pop(pid, None)
            else:
                self._producers[pid] = entry
        self._producers = collections.OrderedDict(
            sorted(self._producers.items(), key=lambda item: item[1].last_base_offset)
        )
        self.applied_next_offset = changes.previous_next_offset

    def replace(self, other: ProducerTable) -> None:
        """Takes `other`'s contents (a snapshot installed from the leader)."""
        self._producers = collections.OrderedDict(other._producers)
        self.applied_next_offset = other.applied_next_offset


# ---- encodings: one row per producer, and the whole table for snapshots ---------------

ENTRY_FORMAT_VERSION = 1
TABLE_FORMAT_VERSION = 1
# version u8 | epoch u32 | last_time_ms i64 | batches u8, then per batch
# first_sequence u32 | record_count u32 | base_offset u64, then crc32 u32.
_ENTRY_HEAD = struct.Struct(">BIqB")
_REMEMBERED = struct.Struct(">IIQ")
# version u8 | applied_next_offset u64 | producers u32, then per producer
# producer_id u64 | entry bytes u16 | entry.
_TABLE_HEAD = struct.Struct(">BQI")
_TABLE_ITEM = struct.Struct(">QH")


def encode_entry(entry: ProducerEntry) -> bytes:
    body = _ENTRY_HEAD.pack(
        ENTRY_FORMAT_VERSION, entry.epoch, entry.last_time_ms, len(entry.batches)
    ) + b"".join(
        _REMEMBERED.pack(b.first_sequence, b.record_count, b.base_offset) for b in entry.batches
    )
    return body + zlib.crc32(body).to_bytes(4, "big")


def decode_entry(value: bytes | memoryview) -> ProducerEntry:
    raw = bytes(value)
    if len(raw) < _ENTRY_HEAD.size + 4 or zlib.crc32(raw[:-4]) != int.from_bytes(raw[-4:], "big"):
        raise CorruptEntryError("producer state row is damaged")
    version, epoch, last_time_ms, count = _ENTRY_HEAD.unpack_from(raw)
    if version != ENTRY_FORMAT_VERSION:
        raise CorruptEntryError(f"unknown producer state format version {version}")
    if len(raw) != _ENTRY_HEAD.size + count * _REMEMBERED.size + 4:
        raise CorruptEntryError("producer state row has the wrong length")
    batches = tuple(
        Remembered(*_REMEMBERED.unpack_from(raw, _ENTRY_HEAD.size + i * _REMEMBERED.size))
        for i in range(count)
    )
    return ProducerEntry(epoch, last_time_ms, batches)


def encode_table(table: ProducerTable) -> bytes:
    items = table.items()
    parts = [_TABLE_HEAD.pack(TABLE_FORMAT_VERSION, table.applied_next_offset, len(items))]
    for pid, entry in items:
        row = encode_entry(entry)
        parts.append(_TABLE_ITEM.pack(pid, len(row)))
        parts.append(row)
    body = b"".join(parts)
    return body + zlib.crc32(body).to_bytes(4, "big")


def decode_table(data: bytes | memoryview) -> ProducerTable:
    raw = bytes(data)
    if len(raw) < _TABLE_HEAD.size + 4 or zlib.crc32(raw[:-4]) != int.from_bytes(raw[-4:], "big"):
        raise CorruptEntryError("producer table in a snapshot is damaged")
    version, applied_next_offset, count = _TABLE_HEAD.unpack_from(raw)
    if version != TABLE_FORMAT_VERSION:
        raise CorruptEntryError(f"unknown producer table format version {version}")
    at = _TABLE_HEAD.size
    end = len(raw) - 4
    entries: list[tuple[int, ProducerEntry]] = []
    for _ in range(count):
        if at + _TABLE_ITEM.size > end:
            raise CorruptEntryError("producer table in a snapshot is truncated")
        pid, size = _TABLE_ITEM.unpack_from(raw, at)
        at += _TABLE_ITEM.size
        if at + size > end:
            raise CorruptEntryError("producer table in a snapshot is truncated")
        entries.append((pid, decode_entry(raw[at : at + size])))
        at += size
    if at != end:
        raise CorruptEntryError("producer table in a snapshot has trailing bytes")
    return ProducerTable(entries, applied_next_offset)


__all__ = [
    "BATCHES_REMEMBERED",
    "ENTRY_BYTES_MAX",
    "EVICTIONS_PER_APPLY_MAX",
    "PRODUCERS_PER_PARTITION_MAX_DEFAULT",
    "PRODUCER_ID_EXPIRY_MS_DEFAULT",
    "PRODUCER_ID_MAX",
    "SEQUENCE_MODULUS",
    "Append",
    "Changes",
    "Decision",
    "Duplicate",
    "InFlight",
    "OutOfOrderSequenceError",
    "ProducerEntry",
    "ProducerError",
    "ProducerFencedError",
    "ProducerFields",
    "ProducerTable",
    "Remembered",
    "TailBatch",
    "UnknownProducerIdError",
    "decide",
    "decode_entry",
    "decode_table",
    "encode_entry",
    "encode_table",
    "last_sequence",
]
