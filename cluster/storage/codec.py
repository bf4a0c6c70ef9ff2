"""Encoding of log entries and per-group metadata.

An entry is a fixed big-endian header followed by the payload (a record batch
in its protobuf wire encoding, opaque here, served to consumers as stored):

    version u8 | type u8 | flags u16 (reserved, 0) | term u64 | base_offset u64 |
    record_count u32 | max_timestamp_ms i64 | append_time_ms i64 |
    payload_bytes u32 | crc32 u32 | payload

The crc32 (zlib) covers every header field before it and the payload. LMDB
has no page checksums, so the checksum is computed before the put and checked
after every get; a mismatch raises CorruptEntryError and nothing damaged is
served (DESIGN §8). The codec knows nothing of single-node mode: the Raft host
writes the same entries with real terms.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass

from .errors import CorruptEntryError

ENTRY_FORMAT_VERSION = 1
GROUP_META_FORMAT_VERSION = 1
PAYLOAD_BYTES_MAX = 2**32 - 1

_HEADER = struct.Struct(">BBHQQIqqII")
# The crc field is last in the header, so the checksummed header bytes are a prefix.
_HEADER_CHECKED_BYTES = _HEADER.size - 4
ENTRY_HEADER_BYTES = _HEADER.size

_CRC = struct.Struct(">I")
_GROUP_META = struct.Struct(">BQQQ")
GROUP_META_BYTES = _GROUP_META.size


class EntryType(enum.IntEnum):
    """What a log entry carries. Only DATA entries take offsets."""

    DATA = 1
    NOOP = 2
    CONFIG = 3
    CONTROL = 4


# Lookup table: calling the enum class per entry is measurably slow on the read path.
_ENTRY_TYPES = {int(t): t for t in EntryType}


@dataclass(frozen=True, slots=True)
class EntryHeader:
    entry_type: EntryType
    term: int
    base_offset: int
    record_count: int
    max_timestamp_ms: int
    append_time_ms: int
    payload_bytes: int


@dataclass(frozen=True, slots=True)
class Entry:
    """One Raft log entry. Control entries carry record_count 0 and the next offset as base."""

    entry_type: EntryType
    term: int
    base_offset: int
    record_count: int
    max_timestamp_ms: int
    append_time_ms: int
    payload: bytes

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.record_count


def encode_entry(entry: Entry) -> bytes:
    if entry.entry_type is not EntryType.DATA and entry.record_count != 0:
        raise ValueError("only DATA entries carry records")
    if len(entry.payload) > PAYLOAD_BYTES_MAX:
        raise ValueError(f"payload of {len(entry.payload)} bytes exceeds {PAYLOAD_BYTES_MAX}")
    fields = (
        ENTRY_FORMAT_VERSION,
        int(entry.entry_type),
        0,
        entry.term,
        entry.base_offset,
        entry.record_count,
        entry.max_timestamp_ms,
        entry.append_time_ms,
        len(entry.payload),
    )
    checked = _HEADER.pack(*fields, 0)[:_HEADER_CHECKED_BYTES]
    crc = zlib.crc32(entry.payload, zlib.crc32(checked))
    return checked + crc.to_bytes(4, "big") + entry.payload


def decode_header(value: bytes | memoryview) -> EntryHeader:
    """Header fields without verifying the payload checksum.

    Used where only sizes and times matter (retention planning, time index
    repair) so that scanning many entries does not read every payload page.
    Structural checks still catch most damage; readers verify the checksum.
    """
    if len(value) < ENTRY_HEADER_BYTES:
        raise CorruptEntryError(f"entry of {len(value)} bytes is shorter than its header")
    (version, raw_type, _flags, term, base, count, max_ts, append_ms, payload_bytes, _crc) = (
        _HEADER.unpack_from(value)
    )
    if version != ENTRY_FORMAT_VERSION:
        raise CorruptEntryError(f"unknown entry format version {version}")
    if payload_bytes != len(value) - ENTRY_HEADER_BYTES:
        raise CorruptEntryError(
            f"entry declares {payload_bytes} payload bytes, holds {len(value) - ENTRY_HEADER_BYTES}"
        )
    entry_type = _ENTRY_TYPES.get(raw_type)
    if entry_type is None:
        raise CorruptEntryError(f"unknown entry type {raw_type}")
    return EntryHeader(entry_type, term, base, count, max_ts, append_ms, payload_bytes)


def verified_payload(value: bytes | memoryview) -> bytes:
    """Checks the crc over header and payload, then copies the payload out.

    Call after `decode_header` accepted `value` (it checks the lengths).
    """
    view = memoryview(value)
    (stored_crc,) = _CRC.unpack_from(view, _HEADER_CHECKED_BYTES)
    payload = view[ENTRY_HEADER_BYTES:]
    crc = zlib.crc32(payload, zlib.crc32(view[:_HEADER_CHECKED_BYTES]))
    if crc != stored_crc:
        raise CorruptEntryError(
            f"entry checksum mismatch: stored {stored_crc:#010x}, computed {crc:#010x}"
        )
    return bytes(payload)


def verify_entry(value: bytes | memoryview) -> EntryHeader:
    """Decodes the header and checks the crc over header and payload."""
    header = decode_header(value)
    verified_payload(value)
    return header


def decode_entry(value: bytes | memoryview) -> Entry:
    """Full decode with checksum verification; copies the payload out of `value`."""
    header = decode_header(value)
    return Entry(
        header.entry_type,
        header.term,
        header.base_offset,
        header.record_count,
        header.max_timestamp_ms,
        header.append_time_ms,
        verified_payload(value),
    )


@dataclass(frozen=True, slots=True)
class GroupMeta:
    """Durable per-group facts that cannot be derived from the last log key alone.

    first_index/first_offset are the first retained Raft index and offset; when
    retention empties the log they still say where the next entry goes.
    size_bytes is the retained payload size, so reopening needs no scan.
    """

    first_index: int
    first_offset: int
    size_bytes: int


def encode_group_meta(meta: GroupMeta) -> bytes:
    return _GROUP_META.pack(
        GROUP_META_FORMAT_VERSION, meta.first_index, meta.first_offset, meta.size_bytes
    )


def decode_group_meta(value: bytes | memoryview) -> GroupMeta:
    if len(value) != _GROUP_META.size:
        raise CorruptEntryError(
            f"group_meta row of {len(value)} bytes, expected {_GROUP_META.size}"
        )
    version, first_index, first_offset, size_bytes = _GROUP_META.unpack(value)
    if version != GROUP_META_FORMAT_VERSION:
        raise CorruptEntryError(f"unknown group_meta format version {version}")
    return GroupMeta(first_index, first_offset, size_bytes)


HARD_STATE_FORMAT_VERSION = 1
# version u8 | term u64 | vote u32 (0: none; node ids start at 1) | commit u64 | crc32 u32
_HARD_STATE = struct.Struct(">BQIQI")
_HARD_STATE_CHECKED_BYTES = _HARD_STATE.size - 4


@dataclass(frozen=True, slots=True)
class HardState:
    """What Raft must never forget across a crash: term, vote, commit index (§3.8)."""

    term: int
    vote: int
    commit: int


def encode_hard_state(state: HardState) -> bytes:
    head = _HARD_STATE.pack(HARD_STATE_FORMAT_VERSION, state.term, state.vote, state.commit, 0)
    crc = zlib.crc32(head[:_HARD_STATE_CHECKED_BYTES])
    return head[:_HARD_STATE_CHECKED_BYTES] + crc.to_bytes(4, "big")


def decode_hard_state(value: bytes | memoryview) -> HardState:
    # A damaged vote could let a node vote twice in a term: checked like entries.
    if len(value) != _HARD_STATE.size:
        raise CorruptEntryError(f"hardstate row of {len(value)} bytes, expected {_HARD_STATE.size}")
    version, term, vote, commit, crc = _HARD_STATE.unpack(value)
    if version != HARD_STATE_FORMAT_VERSION:
        raise CorruptEntryError(f"unknown hardstate format version {version}")
    if zlib.crc32(bytes(value[:_HARD_STATE_CHECKED_BYTES])) != crc:
        raise CorruptEntryError("hardstate row failed its checksum")
    return HardState(term, vote, commit)
