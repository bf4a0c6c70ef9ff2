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

import struct
import zlib
from dataclasses import dataclass

from .errors import UnknownAckId
from .types import ATTEMPT_MAX

ACK_ID_VERSION = 1
_BODY = struct.Struct(">BIIQI")
_CHECK = struct.Struct(">I")
ACK_ID_BYTES = _BODY.size + _CHECK.size


@dataclass(frozen=True, slots=True)
class AckId:
    partition: int
    offset: int
    attempt: int


def group_hash(group: str) -> int:
    return zlib.crc32(group.encode())


def encode_ack_id(group: str, partition: int, offset: int, attempt: int) -> bytes:
    assert 0 <= partition < 2**32 and 0 <= offset < 2**63 and 1 <= attempt <= ATTEMPT_MAX
    name = group.encode()
    body = _BODY.pack(ACK_ID_VERSION, zlib.crc32(name), partition, offset, attempt)
    return body + _CHECK.pack(zlib.crc32(body, zlib.crc32(name)))


def decode_ack_id(group: str, ack_id: bytes) -> AckId | UnknownAckId:
    """The id's fields if it is an id of `group`; a typed refusal otherwise."""
    if len(ack_id) != ACK_ID_BYTES:
        return UnknownAckId(f"an ack id has {ACK_ID_BYTES} bytes, got {len(ack_id)}")
    version, hashed, partition, offset, attempt = _BODY.unpack_from(ack_id)
    (check,) = _CHECK.unpack_from(ack_id, _BODY.size)
    if version != ACK_ID_VERSION:
        return UnknownAckId(f"unknown ack id version {version}")
    name = group.encode()
    if hashed != zlib.crc32(name):
        return UnknownAckId(f"the ack id is not one of group {group!r}")
    if check != zlib.crc32(ack_id[: _BODY.size], zlib.crc32(name)):
        return UnknownAckId("the ack id failed its check")
    if offset >= 2**63 or attempt == 0:
        return UnknownAckId("the ack id names no delivery")
    return AckId(partition, offset, attempt)
