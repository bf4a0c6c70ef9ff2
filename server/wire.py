"""Hand-built protobuf wire encoding for the consume hot path.

Stored batches are `weir.v1.RecordBatch` in wire form: a run of
`records` fields (field 1, length-delimited). `ConsumedBatch` keeps
`records` at field 1 too, so the broker builds a response by writing the
few header fields itself and appending stored bytes unchanged: no record is
decoded or re-encoded on the way out (DESIGN §4). `take_records` finds
record boundaries by reading only the length prefixes, and says what the
records taken cost in credit.
"""

from __future__ import annotations

import dataclasses

from weir.cluster.storage import CorruptEntryError

# Tags: (field number << 3) | wire type. 0 = varint, 2 = length-delimited.
_RECORDS_TAG = 0x0A  # RecordBatch.records / ConsumedBatch.records (field 1)
_TOPIC_TAG = b"\x12"  # ConsumedBatch.topic (field 2)
_PARTITION_TAG = b"\x18"  # ConsumedBatch.partition (field 3)
_BASE_OFFSET_TAG = b"\x20"  # ConsumedBatch.base_offset (field 4)
_END_OFFSET_TAG = b"\x28"  # ConsumedBatch.end_offset (field 5)
_RESPONSE_BATCH_TAG = b"\x12"  # ConsumeResponse.batch (field 2)


def identity(raw: bytes) -> bytes:
    """A gRPC (de)serializer for messages the broker encodes or decodes itself."""
    return raw


def encode_varint(value: int) -> bytes:
    assert value >= 0, value
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class MalformedBatchError(CorruptEntryError):
    """A stored batch whose bytes are not a run of `records` fields.

    The checksum matched, so the bytes are what was written: either a broken
    invariant upstream or damage the checksum missed. Either way it is
    damaged data for the client (DATA_CORRUPTED via `storage_error`), never
    an assertion that takes the stream down with UNKNOWN.
    """


@dataclasses.dataclass(slots=True)
class Taken:
    """What `take_records` took from a stored batch."""

    end: int  # byte position after the last record taken
    count: int  # records taken
    charged_bytes: int  # their credit: the sum of their Record encodings
    # The credit the next record needs when byte credit stopped the scan
    # (its Record encoding), else -1.
    blocked_bytes: int = -1


def take_records(
    payload: bytes | memoryview,
    start: int,
    count_max: int,
    charged_bytes_max: int,
    framed_bytes_max: int,
) -> Taken:
    """Takes whole records from `payload[start:]` while all three limits hold.

    Each record is one `0x0A <varint length> <Record>` field. A record is
    charged its Record encoding (`length`, without tag and length prefix):
    the size any client can compute from the decoded record, and the size
    the produce path checks against record_bytes_max. `framed_bytes_max`
    bounds the bytes the taken records occupy in the response (a caller
    whose response is still empty passes no real bound, so that one record
    larger than a response's usual size still goes).

    Only the records taken (and at most one more) are read, so a caller
    that resumes from `Taken.end` scans every stored byte once.
    """
    pos = start
    size = len(payload)
    count = 0
    charged = 0
    blocked = -1
    while count < count_max and pos < size:
        if payload[pos] != _RECORDS_TAG:
            raise MalformedBatchError(f"unexpected tag {payload[pos]:#x} at byte {pos}")
        body = pos + 1
        length = 0
        shift = 0
        while True:
            if body >= size or shift > 63:
                raise MalformedBatchError(f"bad record length at byte {pos}")
            byte = payload[body]
            body += 1
            length |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
        end = body + length
        if end > size:
            raise MalformedBatchError(f"record at byte {pos} runs past the end of its batch")
        if charged + length > charged_bytes_max:
            blocked = length
            break
        if end - start > framed_bytes_max:
            break
        charged += length
        count += 1
        pos = end
    return Taken(pos, count, charged, blocked)


def consume_batch_response(
    topic_field: bytes,
    partition: int,
    base_offset: int,
    end_offset: int,
    records: list[bytes | memoryview],
) -> bytes:
    """A serialized ConsumeResponse{batch: ConsumedBatch{...}}.

    `topic_field` is the pre-encoded topic field (see `topic_field`), built
    once per subscription.
    """
    header = b"".join(
        (
            topic_field,
            _PARTITION_TAG,
            encode_varint(partition),
            _BASE_OFFSET_TAG,
            encode_varint(base_offset),
            _END_OFFSET_TAG,
            encode_varint(end_offset),
        )
    )
    body_size = len(header) + sum(len(r) for r in records)
    return b"".join((_RESPONSE_BATCH_TAG, encode_varint(body_size), header, *records))


def topic_field(topic: str) -> bytes:
    raw = topic.encode()
    return _TOPIC_TAG + encode_varint(len(raw)) + raw
