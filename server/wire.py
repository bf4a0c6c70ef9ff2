"""Hand-built protobuf wire encoding for the consume hot path.

Stored batches are `weir.v1.RecordBatch` in wire form: a run of
`records` fields (field 1, length-delimited). `ConsumedBatch` keeps
`records` at field 1 too, so the broker builds a response by writing the
few header fields itself and appending stored bytes unchanged: no record is
decoded or re-encoded on the way out (DESIGN §4). When credit or a start
offset in mid-batch asks for part of a batch, `record_ends` finds the
record boundaries by reading only the length prefixes.
"""

from __future__ import annotations

# Tags: (field number << 3) | wire type. 0 = varint, 2 = length-delimited.
_RECORDS_TAG = 0x0A  # RecordBatch.records / ConsumedBatch.records (field 1)
_TOPIC_TAG = b"\x12"  # ConsumedBatch.topic (field 2)
_PARTITION_TAG = b"\x18"  # ConsumedBatch.partition (field 3)
_BASE_OFFSET_TAG = b"\x20"  # ConsumedBatch.base_offset (field 4)
_END_OFFSET_TAG = b"\x28"  # ConsumedBatch.end_offset (field 5)
_RESPONSE_BATCH_TAG = b"\x12"  # ConsumeResponse.batch (field 2)


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


def record_ends(payload: bytes | memoryview, count_max: int) -> list[int]:
    """End positions of the first `count_max` records of a stored batch.

    Records are consecutive `0x0A <varint length> <record>` fields. The
    payload was produced by protobuf and verified by checksum, so a wrong
    tag here is a broken invariant, not bad input.
    """
    ends: list[int] = []
    pos = 0
    size = len(payload)
    while pos < size and len(ends) < count_max:
        assert payload[pos] == _RECORDS_TAG, f"unexpected tag {payload[pos]} at {pos}"
        pos += 1
        length = 0
        shift = 0
        while True:
            byte = payload[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
        pos += length
        ends.append(pos)
    assert pos <= size, "record runs past the end of its batch"
    return ends


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
