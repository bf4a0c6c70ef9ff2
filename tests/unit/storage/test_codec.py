"""Row, batch, snapshot and group-meta codecs, and the key layout."""

from __future__ import annotations

import pytest

from weir.cluster.raft import ConfState, Entry, EntryType, SnapshotMeta
from weir.cluster.storage import (
    BatchKind,
    CompactedError,
    CorruptEntryError,
    StorageError,
    UnavailableError,
    decode_partition_snapshot,
    decode_row,
    encode_batch,
    encode_control,
    encode_partition_snapshot,
    encode_row,
    keys,
)
from weir.cluster.storage.codec import (
    BATCH_HEADER_BYTES,
    ROW_HEADER_BYTES,
    GroupMeta,
    decode_batch_header,
    decode_group_meta,
    decode_row_header,
    decode_snapshot,
    encode_group_meta,
    encode_snapshot,
    entry_next_offset,
)


def _batch(**overrides: object) -> bytes:
    fields: dict[str, object] = {
        "kind": BatchKind.RECORDS,
        "base_offset": 1234,
        "record_count": 10,
        "max_timestamp_ms": -5,
        "append_time_ms": 1_700_000_000_000,
        "payload": bytes(range(256)) * 3,
    }
    fields.update(overrides)
    return encode_batch(**fields)  # type: ignore[arg-type]


def test_a_row_is_the_raft_entry_behind_a_header() -> None:
    data = _batch()
    row = encode_row(EntryType.NORMAL, 7, 1244, data)
    assert len(row) == ROW_HEADER_BYTES + len(data)
    assert row[ROW_HEADER_BYTES:] == data  # Entry.data unchanged: no second copy
    assert decode_row(row, 9) == Entry(7, 9, EntryType.NORMAL, data)
    assert decode_row(memoryview(row), 9) == Entry(7, 9, EntryType.NORMAL, data)
    header = decode_row_header(row)
    assert (header.entry_type, header.term, header.next_offset) == (EntryType.NORMAL, 7, 1244)


def test_batch_header_round_trip_and_offsets() -> None:
    batch = decode_batch_header(_batch())
    assert (batch.kind, batch.base_offset, batch.record_count, batch.max_timestamp_ms) == (
        BatchKind.RECORDS,
        1234,
        10,
        -5,
    )
    assert batch.takes_offsets and batch.next_offset == 1244
    control = decode_batch_header(encode_control(b"commit"))
    assert (control.kind, control.takes_offsets) == (BatchKind.CONTROL, False)
    with pytest.raises(ValueError):
        encode_batch(BatchKind.CONTROL, 0, 3, 0, 0, b"")
    with pytest.raises(ValueError):
        encode_batch(BatchKind.RECORDS, 0, 0, 0, 0, b"")


def test_entry_next_offset_asserts_dense_offsets() -> None:
    entry = Entry(1, 5, EntryType.NORMAL, _batch(base_offset=100))
    assert entry_next_offset(entry, 100) == 110
    assert entry_next_offset(Entry(1, 6, EntryType.NOOP), 110) == 110
    assert entry_next_offset(Entry(1, 6, EntryType.NORMAL, encode_control(b"x")), 110) == 110
    with pytest.raises(AssertionError):
        entry_next_offset(entry, 99)


@pytest.mark.parametrize("position", [0, 1, 5, 12, 20, 27, ROW_HEADER_BYTES - 1, 40, -1])
def test_any_flipped_byte_is_detected(position: int) -> None:
    damaged = bytearray(encode_row(EntryType.NORMAL, 3, 10, _batch()))
    damaged[position] ^= 0x01
    with pytest.raises(CorruptEntryError):
        decode_row(bytes(damaged), 1)


def test_a_header_is_checked_without_reading_the_data() -> None:
    damaged = bytearray(encode_row(EntryType.NORMAL, 3, 10, _batch()))
    damaged[-1] ^= 0x01
    assert decode_row_header(bytes(damaged)).term == 3  # data damage: found by decode_row
    damaged[9] ^= 0x01  # inside the term
    with pytest.raises(CorruptEntryError):
        decode_row_header(bytes(damaged))


def test_truncated_rows_and_batches_are_detected() -> None:
    row = encode_row(EntryType.CONFIG, 1, 0, b"conf")
    with pytest.raises(CorruptEntryError):
        decode_row_header(row[:-1])
    with pytest.raises(CorruptEntryError):
        decode_row_header(row[: ROW_HEADER_BYTES - 1])
    with pytest.raises(CorruptEntryError):
        decode_batch_header(_batch()[: BATCH_HEADER_BYTES - 1])
    with pytest.raises(CorruptEntryError):
        decode_batch_header(bytes([9]) + _batch()[1:])


def test_group_meta_and_snapshot_round_trip() -> None:
    meta = GroupMeta(5, 40, 900, 7, True)
    assert decode_group_meta(encode_group_meta(meta)) == meta
    damaged = bytearray(encode_group_meta(meta))
    damaged[10] ^= 1
    with pytest.raises(CorruptEntryError):
        decode_group_meta(bytes(damaged))
    snap = SnapshotMeta(20, 3, ConfState(frozenset({1, 2}), frozenset({4})))
    assert decode_snapshot(encode_snapshot(snap, b"app")) == (snap, b"app")
    assert decode_partition_snapshot(encode_partition_snapshot(77, b"x")) == (77, b"x")


def test_one_error_family_with_the_raft_core() -> None:
    from weir.cluster import raft

    assert issubclass(StorageError, raft.StorageError)
    assert CompactedError is raft.CompactedError
    assert UnavailableError is raft.UnavailableError
    assert EntryType is raft.EntryType


def test_keys_sort_numerically() -> None:
    assert keys.log_key(1, 255) < keys.log_key(1, 256) < keys.log_key(2, 0)
    assert keys.parse_log_key(keys.log_key(7, 2**40)) == (7, 2**40)
    assert keys.time_key(1, -1, 0) < keys.time_key(1, 0, 0) < keys.time_key(1, 5, 0)
    assert keys.parse_time_key(keys.time_key(3, -42, 9)) == (3, -42, 9)
    assert keys.group_end(keys.GROUP_ID_MAX) is None
    assert keys.group_key(4) < keys.snapshot_key(4) < keys.log_key(4, 0)[:4] + b"\xff"


def test_meta_namespaces_do_not_collide() -> None:
    # "a" + key "b..." must not fall inside namespace "ab".
    assert not keys.meta_key("a", b"bx").startswith(keys.meta_prefix("ab"))
    assert keys.split_meta_key(keys.meta_key("topics", b"k")) == b"k"
    with pytest.raises(ValueError):
        keys.meta_prefix("")
