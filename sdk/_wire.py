"""Hand-built wire encoding for the SDK's hot paths, and a record's byte credit.

Byte credit, the one definition on the client side (`credit_bytes`, as
`Credit` in broker.proto says): a record costs its content size, the bytes
of its key, its value and its header names (UTF-8) and values. The broker
computes the same from the stored bytes (`take_records` in
weir/server/wire.py); a consumer computes it from the decoded record, so
any client in any language can give back exactly what was charged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from weir.v1 import broker_pb2

__all__ = [
    "VALUE_ONLY_SMALL_MAX",
    "DeliveryFields",
    "RecordFields",
    "credit_bytes",
    "decode_batch_response",
    "framed_record",
    "produce_request",
    "record_body",
    "topic_field",
    "value_only_framed",
    "varint",
]


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def credit_bytes(key: bytes | None, value: bytes, headers: Mapping[str, bytes]) -> int:
    """A record's cost in byte credit: its content size.

    len(key) + len(value) + the sum over headers of the UTF-8 length of the
    name plus the length of the value; an absent key counts 0. Never more
    than the record's encoded size, which produce checks against the
    topic's `record_bytes_max`.
    """
    total = len(value)
    if key is not None:
        total += len(key)
    for name, header_value in headers.items():
        total += len(name.encode()) + len(header_value)
    return total


# -- producer side: hand-encoded records and requests ----------------------
#
# Building a `records_pb2.Record` per record and serializing the batch costs
# more than everything else `send()` does together, so the producer writes
# each record's wire form itself (tests compare it byte for byte with
# protobuf's) and appends it to its batch's `RecordBatch` body. Field order
# and presence follow protobuf's encoder: fields in number order, the
# optional `key` whenever it is set (even empty), `value` and `timestamp_ms`
# only when not the default, header entries with both their fields.

_KEY_TAG = b"\x0a"  # Record.key (field 1)
_VALUE_TAG = b"\x12"  # Record.value (field 2)
_HEADER_TAG = b"\x1a"  # Record.headers (field 3), one entry each
_TIMESTAMP_TAG = b"\x20"  # Record.timestamp_ms (field 4)
_DELIVER_AT_TAG = b"\x28"  # Record.deliver_at_ms (field 5)
_ENTRY_KEY_TAG = b"\x0a"  # map entry key (field 1)
_ENTRY_VALUE_TAG = b"\x12"  # map entry value (field 2)
_RECORD_TAG = b"\x0a"  # RecordBatch.records (field 1)
_UINT64_MASK = (1 << 64) - 1

# Single-byte varints, the common case for lengths of small records.
_VARINTS = tuple(bytes((i,)) for i in range(128))
# `RecordBatch.records` framing plus `Record.value` header of a record with
# only a value of n < 126 bytes: both lengths fit in one byte.
_VALUE_ONLY_PREFIX = tuple(bytes((0x0A, n + 2, 0x12, n)) for n in range(126))
VALUE_ONLY_SMALL_MAX = len(_VALUE_ONLY_PREFIX) - 1


def varint(value: int) -> bytes:
    """Protobuf varint of a non-negative int below 2**64."""
    if value < 0x80:
        return _VARINTS[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def record_body(
    value: bytes,
    key: bytes | None = None,
    headers: dict[str, bytes] | None = None,
    timestamp_ms: int = 0,
    deliver_at_ms: int = 0,
) -> bytes:
    """The wire form of `weir.v1.Record(key, value, headers, timestamp_ms, deliver_at_ms)`."""
    parts: list[bytes] = []
    if key is not None:
        parts += (_KEY_TAG, varint(len(key)), key)
    if value:
        parts += (_VALUE_TAG, varint(len(value)), value)
    if headers:
        for name, header_value in headers.items():
            raw_name = name.encode()
            entry = b"".join(
                (
                    _ENTRY_KEY_TAG,
                    varint(len(raw_name)),
                    raw_name,
                    _ENTRY_VALUE_TAG,
                    varint(len(header_value)),
                    header_value,
                )
            )
            parts += (_HEADER_TAG, varint(len(entry)), entry)
    if timestamp_ms:
        # int64: a negative value is its two's complement as ten varint bytes.
        parts += (_TIMESTAMP_TAG, varint(timestamp_ms & _UINT64_MASK))
    if deliver_at_ms:
        parts += (_DELIVER_AT_TAG, varint(deliver_at_ms & _UINT64_MASK))
    return b"".join(parts)


def framed_record(body: bytes) -> bytes:
    """`body` as one `RecordBatch.records` field (tag, length, body)."""
    return b"".join((_RECORD_TAG, varint(len(body)), body))


def value_only_framed(value: bytes) -> bytes:
    """`framed_record(record_body(value))` for a value of at most VALUE_ONLY_SMALL_MAX bytes."""
    return _VALUE_ONLY_PREFIX[len(value)] + value if value else b"\x0a\x00"


# `ProduceRequest.combine_answers` (field 9) = true: the broker may answer
# several requests in one response (`ProduceResponse.more`), which saves a
# stream message per answer on both ends when many small requests are in
# flight. The SDK reads `more` always, so it always asks. It goes last, after
# an idempotent producer's fields 6-8, which keeps the bytes canonical.
COMBINE_ANSWERS_FIELD = b"\x48\x01"


def produce_request(
    request_id: int, topic_field: bytes, partition: int, payload: bytes | bytearray, acks: int
) -> bytes:
    """A serialized `ProduceRequest` around a `RecordBatch` body `payload`.

    `topic_field` is `topic_field(topic)`; `partition` is always present (the
    field is optional in the schema and the SDK always names it).
    """
    return b"".join(
        (
            b"\x08",  # request_id (field 1)
            varint(request_id),
            topic_field,
            b"\x18",  # partition (field 3)
            varint(partition),
            b"\x22",  # batch (field 4)
            varint(len(payload)),
            payload,
            b"\x28" + varint(acks) if acks else b"",  # acks (field 5)
        )
    )


def topic_field(topic: str) -> bytes:
    """`ProduceRequest.topic` (field 2) encoded, once per topic."""
    raw = topic.encode()
    return b"\x12" + varint(len(raw)) + raw


# -- consumer side: one pass over a received batch -------------------------
#
# Parsing a ConsumeResponse with protobuf is quick, but then every field of
# every record is one more call into it (about 1.5 us a record here). So the
# consumer reads a batch in one Python pass that finds each record's span
# and, for the usual record that has a value (and maybe a key) and nothing
# else, slices them out there and then. Any other record is parsed by
# protobuf from its span; anything unexpected in the batch itself falls back
# to protobuf for the whole message.

# (key, value, headers, timestamp_ms) of one record.
RecordFields = tuple[bytes | None, bytes, dict[str, bytes], int]
# (ack_id, offset, delivery_attempt, ack_deadline_ms) of one queue-mode `Delivery`.
DeliveryFields = tuple[bytes, int, int, int]


def _record_fields(body: bytes) -> RecordFields:
    from weir.v1 import records_pb2

    record = records_pb2.Record.FromString(body)
    return (
        record.key if record.HasField("key") else None,
        record.value,
        dict(record.headers),
        record.timestamp_ms,
    )


def delivery_fields(delivery: broker_pb2.Delivery) -> DeliveryFields:
    """What the fast reader makes of one `Delivery`, from protobuf (the slow path)."""
    return delivery.ack_id, delivery.offset, delivery.delivery_attempt, delivery.ack_deadline_ms


def decode_batch_response(
    raw: bytes,
) -> tuple[str, int, int, int, list[RecordFields], list[int], list[DeliveryFields] | None] | None:
    """(topic, partition, base_offset, end_offset, records, charges, deliveries) of a batch response.

    `raw` is a serialized ConsumeResponse. `charges[i]` is record i's byte
    credit, `credit_bytes` of its fields. `deliveries` is None when the batch
    has none (stream mode), else queue mode's one per record, in order. None
    when `raw` is not a lone `batch` field, or not in the shape this fast
    reader handles: the caller then uses protobuf and `credit_bytes`.
    """
    size = len(raw)
    if size < 2 or raw[0] != 0x12:
        return None
    length, pos = _varint(raw, 1)
    if pos + length != size:
        return None
    topic = ""
    partition = base_offset = end_offset = 0
    records: list[RecordFields] = []
    charges: list[int] = []
    deliveries: list[DeliveryFields] = []
    append_record = records.append
    append_charge = charges.append
    append_delivery = deliveries.append
    # The deliveries of one response mostly share their deadline's bytes.
    last_deadline: bytes | None = None
    last_deadline_ms = 0
    # None matches no stamp, not even an empty one (a cut-off varint).
    last_stamp: bytes | None = None
    last_timestamp_high = 0
    while pos < size:
        tag = raw[pos]
        if tag == 0x0A:  # records
            length = raw[pos + 1]
            if length < 0x80:
                pos += 2
            else:
                length, pos = _varint(raw, pos + 1)
            end = pos + length
            if end > size:
                raise ValueError("record runs past the end of its batch")
            # Key, value and timestamp are read here, in field order (the
            # broker stamps a timestamp on every record that had none);
            # headers or anything else go to protobuf.
            key: bytes | None = None
            value = b""
            timestamp_ms = 0
            field_pos = pos
            if field_pos < end and raw[field_pos] == 0x0A:
                length, field_pos = _varint(raw, field_pos + 1)
                key = raw[field_pos : field_pos + length]
                field_pos += length
            if field_pos < end and raw[field_pos] == 0x12:
                length = raw[field_pos + 1]
                if length < 0x80:
                    field_pos += 2
                else:
                    length, field_pos = _varint(raw, field_pos + 1)
                value = raw[field_pos : field_pos + length]
                field_pos += length
            if field_pos < end and raw[field_pos] == 0x20:
                # A timestamp is a six-byte varint that takes longer to decode
                # than all the rest. Records appended within the same 128 ms
                # share all its bytes but the first (the lowest seven bits),
                # so the value of the others is kept from the last record:
                # stored one per batch, records rarely share a whole stamp.
                at = field_pos + 1
                stamp = raw[at + 1 : end]
                if stamp == last_stamp and raw[at] >= 0x80:
                    timestamp_ms = last_timestamp_high | (raw[at] & 0x7F)
                    field_pos = end
                else:
                    timestamp_ms, field_pos = _varint(raw, at)
                    if timestamp_ms >= 1 << 63:
                        timestamp_ms -= 1 << 64
                    if field_pos == end and raw[at] >= 0x80:
                        last_stamp, last_timestamp_high = stamp, timestamp_ms & ~0x7F
            if field_pos == end:
                append_record((key, value, {}, timestamp_ms))
                # credit_bytes of a record without headers.
                append_charge(len(value) if key is None else len(key) + len(value))
            else:
                fields = _record_fields(raw[pos:end])
                append_record(fields)
                append_charge(credit_bytes(fields[0], fields[1], fields[2]))
            pos = end
        elif tag == 0x32:  # deliveries: ack_id, offset, delivery_attempt, ack_deadline_ms
            length = raw[pos + 1]
            if length < 0x80:
                pos += 2
            else:
                length, pos = _varint(raw, pos + 1)
            end = pos + length
            if end > size:
                raise ValueError("delivery runs past the end of its batch")
            ack_id = b""
            offset = attempt = deadline_ms = 0
            if pos < end and raw[pos] == 0x0A:
                length = raw[pos + 1]
                if length < 0x80:
                    pos += 2
                else:
                    length, pos = _varint(raw, pos + 1)
                ack_id = raw[pos : pos + length]
                pos += length
            if pos < end and raw[pos] == 0x10:
                # Offsets below 2**21 (three varint bytes) without a call.
                byte = raw[pos + 1]
                if byte < 0x80:
                    offset, pos = byte, pos + 2
                else:
                    offset = byte & 0x7F
                    byte = raw[pos + 2]
                    if byte < 0x80:
                        offset |= byte << 7
                        pos += 3
                    else:
                        offset |= (byte & 0x7F) << 7
                        byte = raw[pos + 3]
                        if byte < 0x80:
                            offset |= byte << 14
                            pos += 4
                        else:
                            offset, pos = _varint(raw, pos + 1)
            if pos < end and raw[pos] == 0x18:
                attempt = raw[pos + 1]
                if attempt < 0x80:
                    pos += 2
                else:
                    attempt, pos = _varint(raw, pos + 1)
            if pos < end and raw[pos] == 0x20:
                stamp = raw[pos + 1 : end]
                if stamp == last_deadline:
                    deadline_ms, pos = last_deadline_ms, end
                else:
                    deadline_ms, pos = _varint(raw, pos + 1)
                    if pos == end:
                        last_deadline, last_deadline_ms = stamp, deadline_ms
            if pos != end or offset >= 1 << 63 or attempt >= 1 << 32 or deadline_ms >= 1 << 63:
                return None  # another field, a field twice or a negative int64: protobuf
            append_delivery((ack_id, offset, attempt, deadline_ms))
        elif tag == 0x12:  # topic
            length, pos = _varint(raw, pos + 1)
            topic = raw[pos : pos + length].decode()
            pos += length
        elif tag == 0x18:  # partition
            partition, pos = _varint(raw, pos + 1)
        elif tag == 0x20:  # base_offset
            base_offset, pos = _varint(raw, pos + 1)
        elif tag == 0x28:  # end_offset
            end_offset, pos = _varint(raw, pos + 1)
        else:
            return None  # a field this reader does not know: let protobuf do it
    if pos != size or base_offset >= 1 << 63 or end_offset >= 1 << 63:
        return None
    return topic, partition, base_offset, end_offset, records, charges, deliveries or None
