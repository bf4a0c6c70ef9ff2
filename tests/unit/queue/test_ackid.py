"""Ack ids: round trip, and refusals for garbage and for other groups' ids."""

from __future__ import annotations

import random
import struct
import zlib

import pytest

from weir.cluster.queue import (
    AckId,
    UnknownAckId,
    ack_id_encoder,
    decode_ack_id,
    decode_ack_ids,
    encode_ack_id,
)
from weir.cluster.queue.ackid import ACK_ID_BYTES

pytestmark = pytest.mark.timeout(10)


def test_an_ack_id_round_trips_every_field() -> None:
    for partition, offset, attempt in [(0, 0, 1), (2**32 - 1, 2**63 - 1, 2**32 - 1), (7, 12, 3)]:
        raw = encode_ack_id("workers", partition, offset, attempt)
        assert len(raw) == ACK_ID_BYTES
        assert decode_ack_id("workers", raw) == AckId(partition, offset, attempt)


def test_another_groups_id_is_refused() -> None:
    raw = encode_ack_id("workers", 1, 2, 3)
    answer = decode_ack_id("other", raw)
    assert isinstance(answer, UnknownAckId) and answer.reason == "UNKNOWN_ACK_ID"
    assert "group" in answer.message


def test_garbage_and_every_flipped_byte_are_refused() -> None:
    raw = encode_ack_id("workers", 1, 2, 3)
    assert isinstance(decode_ack_id("workers", b""), UnknownAckId)
    assert isinstance(decode_ack_id("workers", raw + b"\x00"), UnknownAckId)
    for i in range(len(raw)):
        flipped = raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :]
        assert isinstance(decode_ack_id("workers", flipped), UnknownAckId), i
    rng = random.Random(11)
    for _ in range(2_000):
        noise = rng.randbytes(ACK_ID_BYTES)
        assert isinstance(decode_ack_id("workers", noise), UnknownAckId)


def test_the_layout_is_the_documented_one_and_a_batch_decodes_as_each() -> None:
    # version u8 | crc32(group) u32 | partition u32 | offset u64 | attempt u32 | check u32,
    # check = crc32 of the body seeded with crc32(group): computed here from the layout alone.
    hashed = zlib.crc32(b"workers")
    body = struct.pack(">BIIQI", 1, hashed, 7, 12, 3)
    expected = body + struct.pack(">I", zlib.crc32(body, hashed))
    assert encode_ack_id("workers", 7, 12, 3) == expected
    assert ack_id_encoder("workers", 7)(12, 3) == expected
    ids = [expected, b"", encode_ack_id("other", 1, 2, 3), encode_ack_id("workers", 0, 5, 1)]
    assert decode_ack_ids("workers", ids) == [decode_ack_id("workers", i) for i in ids]
