"""Key layout of the named LMDB databases.

Every key starts with the Raft group id as u32 big-endian, so one group's rows
are contiguous and sort by the fields that follow (all big-endian, so LMDB's
bytewise order is numeric order). Nothing here knows about single-node mode:
the Raft host will write the same keys with real terms and indexes.

    log           group u32 | raft index u64              -> entry (codec.py)
    hardstate     group u32                               -> HardState (codec.py)
    group_meta    group u32                               -> GroupMeta (codec.py)
    group_meta    group u32 | 0x01                        -> snapshot (codec.py)
    offset_index  group u32 | base_offset u64             -> raft index u64
    time_index    group u32 | max_ts (i64 as u64) | base_offset u64 -> raft index u64
    meta          len(namespace) u8 | namespace | key     -> value
    producers     group u32 | producer id u64             -> producer state (producers.py)
    producers     group u32 | 0 (u64)                     -> offset the table covers, u64
    delay_index   group u32 | deliver_at_ms u64 | offset u64 -> empty (delays.py)
    delay_index   group u32 | 0 (u64) | 0 (u64)           -> rows of the group, u64
    delay_offsets group u32 | offset u64                  -> deliver_at_ms u64
    queue_state   group u32 | 0x01 | blake2b-128(queue group name) -> applied queue state (queues.py)
    queue_state   group u32 | 0x00                        -> raft index the stored state covers, u64
"""

from __future__ import annotations

import hashlib
import struct

GROUP_ID_MAX = 2**32 - 1
NAMESPACE_BYTES_MAX = 255

_GROUP = struct.Struct(">I")
_GROUP_U64 = struct.Struct(">IQ")
_GROUP_TS_OFFSET = struct.Struct(">IQQ")
_U64 = struct.Struct(">Q")

# Signed timestamps are stored with the sign bit flipped so that bytewise order
# equals numeric order for negative values too (producers may send -1).
_TIMESTAMP_BIAS = 2**63


def group_key(group_id: int) -> bytes:
    """The group's own row (group_meta, hardstate) and the prefix of its rows elsewhere."""
    return _GROUP.pack(group_id)


def group_end(group_id: int) -> bytes | None:
    """Smallest key past every row of the group; None means "to the end of the database"."""
    if group_id == GROUP_ID_MAX:
        return None
    return _GROUP.pack(group_id + 1)


def snapshot_key(group_id: int) -> bytes:
    """The group's snapshot row in `group_meta` (sorts right after its counters row)."""
    return _GROUP.pack(group_id) + b"\x01"


def log_key(group_id: int, raft_index: int) -> bytes:
    return _GROUP_U64.pack(group_id, raft_index)


def parse_log_key(key: bytes) -> tuple[int, int]:
    """Returns (group id, raft index)."""
    group_id, raft_index = _GROUP_U64.unpack(key)
    return group_id, raft_index


def producer_key(group_id: int, producer_id: int) -> bytes:
    """A producer's row; producer id 0 (never handed out) holds the table's covered offset."""
    return _GROUP_U64.pack(group_id, producer_id)


def parse_producer_key(key: bytes) -> tuple[int, int]:
    """Returns (group id, producer id)."""
    group_id, producer_id = _GROUP_U64.unpack(key)
    return group_id, producer_id


def queue_key(group_id: int, queue_group: str) -> bytes:
    """A queue group's row. Names may be longer than LMDB's keys (255 characters,
    up to 1,020 bytes), so the key holds a 128-bit hash and the row the name."""
    digest = hashlib.blake2b(queue_group.encode(), digest_size=16).digest()
    return _GROUP.pack(group_id) + b"\x01" + digest


def queue_covered_key(group_id: int) -> bytes:
    """The raft index a partition's stored queue state covers (written by a snapshot
    install; sorts before the group rows)."""
    return _GROUP.pack(group_id) + b"\x00"


def offset_key(group_id: int, base_offset: int) -> bytes:
    return _GROUP_U64.pack(group_id, base_offset)


def parse_offset_key(key: bytes) -> tuple[int, int]:
    """Returns (group id, base offset)."""
    group_id, base_offset = _GROUP_U64.unpack(key)
    return group_id, base_offset


def time_key(group_id: int, timestamp_ms: int, base_offset: int) -> bytes:
    return _GROUP_TS_OFFSET.pack(group_id, timestamp_ms + _TIMESTAMP_BIAS, base_offset)


def time_seek_key(group_id: int, timestamp_ms: int) -> bytes:
    """Key to `set_range` on: the first row whose running max is >= timestamp_ms."""
    return _GROUP_U64.pack(group_id, timestamp_ms + _TIMESTAMP_BIAS)


def parse_time_key(key: bytes) -> tuple[int, int, int]:
    """Returns (group id, running max timestamp ms, base offset)."""
    group_id, biased_ms, base_offset = _GROUP_TS_OFFSET.unpack(key)
    return group_id, biased_ms - _TIMESTAMP_BIAS, base_offset


def delay_key(group_id: int, deliver_at_ms: int, offset: int) -> bytes:
    """A delayed record's row: due order, then offset order."""
    return _GROUP_TS_OFFSET.pack(group_id, deliver_at_ms, offset)


def delay_count_key(group_id: int) -> bytes:
    """The group's row counter in `delay_index` (deliver_at 0 means no delay: never a row)."""
    return _GROUP_TS_OFFSET.pack(group_id, 0, 0)


def parse_delay_key(key: bytes) -> tuple[int, int, int]:
    """Returns (group id, deliver_at_ms, offset)."""
    group_id, deliver_at_ms, offset = _GROUP_TS_OFFSET.unpack(key)
    return group_id, deliver_at_ms, offset


def delay_offset_key(group_id: int, offset: int) -> bytes:
    """A delayed record's row by offset, so retention finds the rows of what it deletes."""
    return _GROUP_U64.pack(group_id, offset)


def pack_u64(value: int) -> bytes:
    return _U64.pack(value)


def unpack_u64(value: bytes) -> int:
    (result,) = _U64.unpack(value)
    return int(result)


def meta_prefix(namespace: str, prefix: bytes = b"") -> bytes:
    """Length-prefixed namespace, so no namespace's keys can collide with another's."""
    encoded = namespace.encode()
    if not encoded or len(encoded) > NAMESPACE_BYTES_MAX:
        raise ValueError(f"namespace must be 1..{NAMESPACE_BYTES_MAX} UTF-8 bytes: {namespace!r}")
    return bytes([len(encoded)]) + encoded + prefix


def meta_key(namespace: str, key: bytes) -> bytes:
    return meta_prefix(namespace, key)


def split_meta_key(namespaced: bytes) -> bytes:
    """Strips the namespace prefix, returning the caller's key."""
    return namespaced[1 + namespaced[0] :]
