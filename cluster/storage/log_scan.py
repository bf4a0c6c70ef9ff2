"""The read path's walk over a partition's log rows: one cursor, quick checks, bounded.

`PartitionLog.read` and `read_run` find the Raft index of the batch that
holds an offset, then call `scan_rows` inside one read transaction. It
checks each row as cheaply as it can (one unpack and two checksums per row,
raw integers instead of enum lookups) and hands back views of the payloads;
a row that fails a quick check is decoded again by the full decoders so the
error names what is wrong (`_raise_damaged`).
"""

from __future__ import annotations

import zlib
from typing import NoReturn

from ..raft.types import EntryType
from . import keys
from .codec import (
    BATCH_FLAG_PRODUCER,
    BATCH_FLAGS_KNOWN,
    ENTRY_FORMAT_VERSION,
    PRODUCER_HEADER_BYTES,
    ROW_BATCH_CHECKED,
    ROW_CHECKED_BYTES,
    ROW_HEADER_BYTES,
    ROW_PAYLOAD_START,
    BatchKind,
    decode_batch_header,
    decode_row_header,
    verify_row_data,
)
from .errors import CorruptEntryError
from .lmdbenv import Db, ReadTxn, Value

__all__ = ["scan_rows"]

# Raw values the read path compares with, so a row costs no enum lookup.
_NORMAL = int(EntryType.NORMAL)
_OFFSETLESS_ENTRY_TYPES = (int(EntryType.NOOP), int(EntryType.CONFIG))
_RECORDS = int(BatchKind.RECORDS)
# Batches that take no offsets: the read scan steps over them.
_OFFSETLESS_KINDS = (int(BatchKind.CONTROL), int(BatchKind.QUEUE_CONTROL))


def _raise_damaged(value: Value) -> NoReturn:
    """Raise the decoders' own error for a row the read path's quick checks refused."""
    row = decode_row_header(value)
    if row.entry_type is EntryType.NORMAL:
        header = decode_batch_header(value, ROW_HEADER_BYTES)
        if header.takes_offsets and row.next_offset != header.next_offset:
            raise CorruptEntryError(
                f"entry says the next offset is {row.next_offset}, its batch ends at "
                f"{header.next_offset}"
            )
    verify_row_data(value)
    raise CorruptEntryError("entry failed the read path's checks")


def scan_rows(
    txn: ReadTxn,
    group_id: int,
    first_index: int,
    rows_max: int,
    offset: int,
    end: int,
    bytes_max: int,
    records_max: int,
    whole_batches: bool,
) -> tuple[list[Value], int, int, int]:
    """Views of the payloads from the row at `first_index` on (valid inside `txn`; with
    `whole_batches` each batch with its header), the base offsets of the first
    and the last of them and the offset after them.

    The walk is bounded by `rows_max`, a count of rows, instead of a key
    compared per row: the rows from the first one read to the visible index
    all exist (Raft indexes are dense), and the last row's key is checked
    once at the end. It stops before a batch at or past `end` (not visible),
    after `bytes_max` of payload (at least one batch) and once `records_max`
    records from `offset` are in. Consecutive batches must continue each
    other's offsets.
    """
    scan = txn.scan(Db.LOG, keys.log_key(group_id, first_index))
    if scan is None:
        raise CorruptEntryError(f"group {group_id}: no log row at index {first_index}")
    unpack = ROW_BATCH_CHECKED.unpack_from
    crc32 = zlib.crc32
    views: list[Value] = []
    base_offset = last_base = -1
    next_offset = offset
    total_bytes = visited = 0
    for value in scan.values():
        visited += 1
        size = len(value)
        # Short rows are no-ops or configurations (or damage).
        if size >= ROW_PAYLOAD_START:
            (version, raw_type, row_next, data_bytes, data_crc, header_crc,
             kind, flags, count, base) = unpack(value)  # fmt: skip
            if (
                crc32(value[:ROW_CHECKED_BYTES]) != header_crc
                or version != ENTRY_FORMAT_VERSION
                or data_bytes != size - ROW_HEADER_BYTES
            ):
                _raise_damaged(value)
            if raw_type == _NORMAL:
                if kind != _RECORDS or count <= 0 or row_next != base + count:
                    if kind not in _OFFSETLESS_KINDS or count != 0 or flags != 0:
                        _raise_damaged(value)
                else:
                    payload_start = ROW_PAYLOAD_START
                    if flags:
                        if flags & BATCH_FLAG_PRODUCER:
                            payload_start += PRODUCER_HEADER_BYTES
                        if flags & ~BATCH_FLAGS_KNOWN or size < payload_start:
                            _raise_damaged(value)
                    if base >= end:
                        break
                    if base_offset < 0:
                        if not base <= offset < base + count:
                            raise CorruptEntryError(
                                f"group {group_id}: offset index points at batch {base}"
                                f"+{count}, which does not contain offset {offset}"
                            )
                        base_offset = base
                    elif base != next_offset:
                        raise CorruptEntryError(
                            f"group {group_id}: batch {base}+{count} follows the batch"
                            f" that ends at {next_offset}"
                        )
                    payload_bytes = size - payload_start
                    if views and total_bytes + payload_bytes > bytes_max:
                        break
                    data = value[ROW_HEADER_BYTES:]
                    if crc32(data) != data_crc:
                        _raise_damaged(value)
                    views.append(data if whole_batches else value[payload_start:])
                    last_base = base
                    next_offset = base + count
                    total_bytes += payload_bytes
                    if total_bytes >= bytes_max or next_offset - offset >= records_max:
                        break
            elif raw_type not in _OFFSETLESS_ENTRY_TYPES:
                _raise_damaged(value)
        elif decode_row_header(value).entry_type is EntryType.NORMAL:
            decode_batch_header(value, ROW_HEADER_BYTES)  # raises: too short for a batch
        if visited == rows_max:
            break
    else:
        raise CorruptEntryError(
            f"group {group_id}: log rows {first_index}..{first_index + rows_max - 1}"
            f" end after {visited}"
        )
    scan.reads.rows += visited
    if scan.key() != keys.log_key(group_id, first_index + visited - 1):
        raise CorruptEntryError(
            f"group {group_id}: log rows from index {first_index} are not consecutive"
        )
    if not views:
        raise CorruptEntryError(f"group {group_id}: no committed batch holds offset {offset}")
    return views, base_offset, last_base, next_offset
