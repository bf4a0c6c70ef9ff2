"""The producer table and the leader's check (pure): retries, gaps, fencing,
expiry and eviction from what the entries carry, snapshots that run ahead."""

from __future__ import annotations

import random

import pytest

from weir.cluster.storage.errors import CorruptEntryError
from weir.cluster.storage.producers import (
    BATCHES_REMEMBERED,
    EVICTIONS_PER_APPLY_MAX,
    SEQUENCE_MODULUS,
    Append,
    Duplicate,
    InFlight,
    OutOfOrderSequenceError,
    ProducerFencedError,
    ProducerFields,
    ProducerTable,
    TailBatch,
    UnknownProducerIdError,
    decide,
    decode_entry,
    decode_table,
    encode_entry,
    encode_table,
)

pytestmark = pytest.mark.timeout(30)

PID = 7


def fields(seq: int, epoch: int = 0, pid: int = PID, **bounds: int) -> ProducerFields:
    return ProducerFields(pid, epoch, seq, **bounds)


class Log:
    """A partition's log as the table sees it: dense offsets, a clock per batch."""

    def __init__(self) -> None:
        self.table = ProducerTable()
        self.next_offset = 0
        self.batches: list[tuple[ProducerFields | None, int, int, int]] = []

    def append(self, f: ProducerFields | None, count: int = 1, time_ms: int = 0) -> int:
        base = self.next_offset
        self.batches.append((f, base, count, time_ms))
        self.table.apply(f, base, count, time_ms)
        self.next_offset += count
        return base

    def check(self, f: ProducerFields, count: int = 1) -> object:
        return decide(self.table.get(f.producer_id), (), f, count)


def test_a_new_producer_starts_at_sequence_zero() -> None:
    log = Log()
    assert log.check(fields(0)) == Append()
    with pytest.raises(UnknownProducerIdError) as caught:
        log.check(fields(3))
    assert caught.value.reason == "UNKNOWN_PRODUCER_ID"


def test_the_next_batch_continues_the_sequence_and_a_gap_is_refused() -> None:
    log = Log()
    log.append(fields(0), count=3)
    assert log.check(fields(3)) == Append()
    with pytest.raises(OutOfOrderSequenceError) as caught:
        log.check(fields(4))
    assert caught.value.metadata["expected_sequence"] == 3
    assert caught.value.reason == "OUT_OF_ORDER_SEQUENCE"


def test_a_retry_of_any_of_the_last_five_batches_gets_its_offsets() -> None:
    log = Log()
    log.append(None, count=10)  # someone else's records first
    bases = [log.append(fields(i * 2), count=2) for i in range(BATCHES_REMEMBERED + 2)]
    for i in range(2, BATCHES_REMEMBERED + 2):
        assert log.check(fields(i * 2), count=2) == Duplicate(bases[i])
    # Older than the last five: not remembered, so not the next one either.
    with pytest.raises(OutOfOrderSequenceError):
        log.check(fields(0), count=2)
    # Same first sequence, different length: not a retry.
    with pytest.raises(OutOfOrderSequenceError):
        log.check(fields(12), count=1)


def test_an_older_epoch_is_fenced_and_a_newer_one_starts_over() -> None:
    log = Log()
    log.append(fields(0, epoch=1))
    with pytest.raises(ProducerFencedError) as caught:
        log.check(fields(1, epoch=0))
    assert caught.value.metadata["current_epoch"] == 1
    assert log.check(fields(0, epoch=2)) == Append()
    with pytest.raises(OutOfOrderSequenceError):
        log.check(fields(5, epoch=2))
    log.append(fields(0, epoch=2))
    with pytest.raises(ProducerFencedError):
        log.check(fields(1, epoch=1))


def test_sequences_wrap_after_the_largest_int32() -> None:
    log = Log()
    log.append(fields(0))
    table = ProducerTable()
    table.apply(fields(0), 0, SEQUENCE_MODULUS - 1, 0)
    assert decide(table.get(PID), (), fields(SEQUENCE_MODULUS - 1), 2) == Append()
    table.apply(fields(SEQUENCE_MODULUS - 1), SEQUENCE_MODULUS - 1, 2, 0)
    assert decide(table.get(PID), (), fields(1), 1) == Append()


def test_the_tail_counts_before_the_table() -> None:
    log = Log()
    log.append(fields(0), count=2)
    tail = (TailBatch(0, 2, 3, 2, index=9, term=2), TailBatch(0, 5, 1, 5, index=10, term=2))
    entry = log.table.get(PID)
    assert decide(entry, tail, fields(6), 1) == Append()
    assert decide(entry, tail, fields(2), 3) == InFlight(tail[0])
    assert decide(entry, tail, fields(0), 2) == Duplicate(0)
    with pytest.raises(OutOfOrderSequenceError):
        decide(entry, tail, fields(7), 1)
    # A tail batch of a newer epoch fences the table's epoch.
    newer = (TailBatch(1, 0, 1, 2, index=9, term=2),)
    with pytest.raises(ProducerFencedError):
        decide(entry, newer, fields(2), 1)
    # Unknown to the table, known to the tail.
    assert decide(None, tail[:1], fields(5), 1) == Append()


def test_idle_producers_expire_by_the_entries_clock() -> None:
    log = Log()
    log.append(fields(0, pid=1, expiry_ms=1000), time_ms=0)
    log.append(fields(0, pid=2, expiry_ms=1000), time_ms=500)
    log.append(fields(1, pid=2, expiry_ms=1000), time_ms=1500)
    assert log.table.get(1) is None
    assert log.table.get(2) is not None
    with pytest.raises(UnknownProducerIdError):
        log.check(fields(1, pid=1))


def test_the_least_recently_written_producer_is_evicted_at_the_bound() -> None:
    log = Log()
    for pid in (1, 2, 3):
        log.append(fields(0, pid=pid, producers_max=3))
    log.append(fields(1, pid=1, producers_max=3))
    log.append(fields(0, pid=4, producers_max=3))
    assert [pid for pid, _ in log.table.items()] == [3, 1, 4]


def test_evictions_per_apply_are_bounded() -> None:
    table = ProducerTable()
    for pid in range(1, 40):
        table.apply(fields(0, pid=pid), pid, 1, 0)
    changes = table.apply(fields(0, pid=100, producers_max=1), 100, 1, 0)
    assert sum(1 for e in changes.rows.values() if e is None) == EVICTIONS_PER_APPLY_MAX


def test_undo_restores_the_table() -> None:
    log = Log()
    for pid in (1, 2, 3):
        log.append(fields(0, pid=pid, producers_max=3))
    before = decode_table(encode_table(log.table))
    changes = log.table.apply(fields(0, pid=9, producers_max=3), 3, 1, 5)
    assert log.table != before
    log.table.undo(changes)
    assert log.table == before


def test_a_table_ahead_of_the_log_ignores_replayed_batches() -> None:
    """A snapshot may carry a table newer than its index: replaying the entries
    between onto it changes nothing, so every replica ends equal."""
    rng = random.Random(5)
    log = Log()
    sequences: dict[int, int] = {}
    for _ in range(200):
        pid = rng.randint(1, 12)
        count = rng.randint(1, 3)
        f = fields(sequences.get(pid, 0), pid=pid, producers_max=8, expiry_ms=400)
        log.append(f, count, time_ms=len(log.batches) * 7)
        sequences[pid] = sequences.get(pid, 0) + count
    ahead = decode_table(encode_table(log.table))
    replica = decode_table(encode_table(ahead))
    for f, base, count, time_ms in log.batches[150:]:
        assert not replica.apply(f, base, count, time_ms)
    assert replica == log.table
    # A replica that applied everything from the start agrees too.
    fresh = ProducerTable()
    for f, base, count, time_ms in log.batches:
        fresh.apply(f, base, count, time_ms)
    assert fresh == log.table
    # And rows loaded in any order rebuild the same order of last writes.
    shuffled = log.table.items()
    rng.shuffle(shuffled)
    assert ProducerTable(shuffled, log.table.applied_next_offset) == log.table


def test_encodings_round_trip_and_catch_damage() -> None:
    log = Log()
    log.append(fields(0), count=4, time_ms=-3)
    entry = log.table.get(PID)
    assert entry is not None
    assert decode_entry(encode_entry(entry)) == entry
    raw = bytearray(encode_entry(entry))
    raw[3] ^= 1
    with pytest.raises(CorruptEntryError):
        decode_entry(bytes(raw))
    table = encode_table(log.table)
    assert decode_table(table) == log.table
    with pytest.raises(CorruptEntryError):
        decode_table(table[:-1])
