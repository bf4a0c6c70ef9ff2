"""Ack ids: what a delivered record carries so that any stream of its group can ack it.

    ack_id = version u8 (1) | group_hash u32 | partition u32 | offset u64 |
             attempt u32 | check u32

`group_hash` is crc32 of the group's name: a node tells another group's id
from garbage without a lookup. `check` is crc32 of the group's name
followed by the bytes before it, so a corrupted id, or one of another group
whose hash collides, fails it. It is not a secret (ids are not
credentials: any member of a group may ack any of its records). Opaque to
clients; 25 bytes.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Callable, Iterable
from typing import NamedTuple

from .errors import UnknownAckId
from .types import ATTEMPT_MAX

ACK_ID_VERSION = 1
_BODY = struct.Struct(">BIIQI")
_CHECK = struct.Struct(">I")
_ID = struct.Struct(">BIIQII")  # the body, then the check
_PREFIX = struct.Struct(">BII")  # the body's version, group hash, partition
_TAIL = struct.Struct(">QI")  # the body's offset, attempt
ACK_ID_BYTES = _BODY.size + _CHECK.size
# Group names whose hash is remembered (least recently used first out).
GROUP_HASHES_CACHED_MAX = 1024


class AckId(NamedTuple):  # one per ack id settled (types.py: why a NamedTuple)
    partition: int
    offset: int
    attempt: int


@functools.lru_cache(maxsize=GROUP_HASHES_CACHED_MAX)
def group_hash(group: str) -> int:
    # Cached: every id encoded or decoded needs it, and a node serves few groups.
    return zlib.crc32(group.encode())


def encode_ack_id(group: str, partition: int, offset: int, attempt: int) -> bytes:
    assert 0 <= offset < 2**63 and 1 <= attempt <= ATTEMPT_MAX
    return ack_id_encoder(group, partition)(offset, attempt)


def ack_id_encoder(group: str, partition: int) -> Callable[[int, int], bytes]:
    """`encode_ack_id(group, partition, offset, attempt)` as a function of
    (offset, attempt): what is the same for every id of a response (and its
    share of the check) is computed once."""
    prefix, seed = ack_id_parts(group, partition)
    pack, check, crc32 = pack_tail, pack_check, zlib.crc32

    def encode(offset: int, attempt: int) -> bytes:
        tail = pack(offset, attempt)
        return prefix + tail + check(crc32(tail, seed))

    return encode


# An id is `prefix + tail + pack_check(zlib.crc32(tail, seed))` with
# `(prefix, seed) = ack_id_parts(group, partition)` and
# `tail = pack_tail(offset, attempt)`: for encoders that write ids inside a
# larger message (server/wire.py `delivery_encoder`).
pack_tail = _TAIL.pack
pack_check = _CHECK.pack


def ack_id_parts(group: str, partition: int) -> tuple[bytes, int]:
    """(prefix, check seed) of the ids of (group, partition); see `pack_tail`."""
    assert 0 <= partition < 2**32
    hashed = group_hash(group)
    prefix = _PREFIX.pack(ACK_ID_VERSION, hashed, partition)
    return prefix, zlib.crc32(prefix, hashed)


def decode_ack_id(group: str, ack_id: bytes) -> AckId | UnknownAckId:
    """The id's fields if it is an id of `group`; a typed refusal otherwise."""
    return decode_ack_ids(group, (ack_id,))[0]


def decode_ack_ids(group: str, ack_ids: Iterable[bytes]) -> list[AckId | UnknownAckId]:
    """`decode_ack_id` of each, in one pass (a request carries thousands)."""
    expected = group_hash(group)
    unpack, crc32, body_bytes, new_tuple = _ID.unpack, zlib.crc32, _BODY.size, tuple.__new__
    out: list[AckId | UnknownAckId] = []
    for ack_id in ack_ids:
        if len(ack_id) != ACK_ID_BYTES:
            out.append(UnknownAckId(f"an ack id has {ACK_ID_BYTES} bytes, got {len(ack_id)}"))
            continue
        version, hashed, partition, offset, attempt, check = unpack(ack_id)
        if version != ACK_ID_VERSION:
            out.append(UnknownAckId(f"unknown ack id version {version}"))
        elif hashed != expected:
            out.append(UnknownAckId(f"the ack id is not one of group {group!r}"))
        elif check != crc32(ack_id[:body_bytes], expected):
            out.append(UnknownAckId("the ack id failed its check"))
        elif offset >= 2**63 or attempt == 0:
            out.append(UnknownAckId("the ack id names no delivery"))
        else:
            out.append(new_tuple(AckId, (partition, offset, attempt)))  # AckId(...) in C
    return out
