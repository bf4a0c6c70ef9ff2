"""Hand-built protobuf wire encoding for the consume hot path.

Stored batches are `weir.v1.RecordBatch` in wire form: a run of
`records` fields (field 1, length-delimited). `ConsumedBatch` keeps
`records` at field 1 too, so the broker builds a response by writing the
few header fields itself and appending stored bytes unchanged: no record is
decoded or re-encoded on the way out (DESIGN §4). `take_records` finds
record boundaries and each record's byte credit (its content size) by
reading only tags and length prefixes, and says what the records taken
cost.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable

from weir.cluster.queue.ackid import ACK_ID_BYTES, ack_id_parts, pack_check, pack_tail
from weir.cluster.storage import CorruptEntryError

# Tags: (field number << 3) | wire type. 0 = varint, 2 = length-delimited.
RECORDS_TAG = 0x0A  # RecordBatch.records / ConsumedBatch.records (field 1)
_TOPIC_TAG = b"\x12"  # ConsumedBatch.topic (field 2)
_PARTITION_TAG = b"\x18"  # ConsumedBatch.partition (field 3)
_BASE_OFFSET_TAG = b"\x20"  # ConsumedBatch.base_offset (field 4)
_END_OFFSET_TAG = b"\x28"  # ConsumedBatch.end_offset (field 5)
_RESPONSE_BATCH_TAG = b"\x12"  # ConsumeResponse.batch (field 2)
_DELIVERIES_TAG = b"\x32"  # ConsumedBatch.deliveries (field 6)
# Delivery: ack_id (1), offset (2), delivery_attempt (3), ack_deadline_ms (4).
_ACK_ID_FIELD = b"\x0a" + bytes((ACK_ID_BYTES,))
_OFFSET_TAG = b"\x10"
_ATTEMPT_TAG = b"\x18"
_DEADLINE_TAG = b"\x20"
# One-byte varints, by value.
_SMALL_VARINTS = tuple(bytes((i,)) for i in range(0x80))


def identity(raw: bytes) -> bytes:
    """A gRPC (de)serializer for messages the broker encodes or decodes itself."""
    return raw


def encode_varint(value: int) -> bytes:
    assert value >= 0, value
    if value < 0x80:
        return _SMALL_VARINTS[value]
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    if value < 0x200000:  # offsets below two million: three bytes, no loop
        return bytes(((value & 0x7F) | 0x80, ((value >> 7) & 0x7F) | 0x80, value >> 14))
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
    charged_bytes: int  # their byte credit: the sum of their content sizes
    # The byte credit the next record needs when byte credit stopped the
    # scan (its content size), else -1.
    blocked_bytes: int = -1


def varint_at(payload: bytes | memoryview, pos: int) -> tuple[int, int]:
    """(value, position after it) of the varint at `pos`; IndexError past the end."""
    value = 0
    shift = 0
    while True:
        byte = payload[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise MalformedBatchError(f"varint longer than ten bytes before byte {pos}")


def _header_entry_bytes(payload: bytes | memoryview, at: int) -> tuple[int, int]:
    """(position after it, content size) of the header entry field at `at`."""
    n, at = varint_at(payload, at + 1)
    entry_end = at + n
    content = 0
    while at < entry_end:
        if payload[at] != 0x0A and payload[at] != 0x12:
            raise MalformedBatchError(f"unexpected header field at byte {at}")
        n, at = varint_at(payload, at + 1)
        at += n
        content += n
    if at != entry_end:
        raise MalformedBatchError(f"header entry at byte {at} overruns")
    return at, content


def take_records(
    payload: bytes | memoryview,
    start: int,
    count_max: int,
    charged_bytes_max: int,
    framed_bytes_max: int,
) -> Taken:
    """Takes whole records from `payload[start:]` while all three limits hold.

    Each record is one `0x0A <varint length> <Record>` field. A record is
    charged its content size, the definition of byte credit (`Credit` in
    broker.proto, `credit_bytes` in the SDK):

        len(key) + len(value) + sum of (len(name) + len(value)) over headers

    (lengths in bytes, a name's as UTF-8), which any client computes from the
    record it decoded. It is read from the encoding's length prefixes: the
    lengths of `key` and `value` and of each header entry's two fields; the
    timestamp's and deliver_at's varints are skipped. It is never more than the `Record`
    encoding, which produce checks against record_bytes_max, so that much
    credit always lets a record through. `framed_bytes_max` bounds the bytes
    the taken records occupy in the response (a caller whose response is
    still empty passes no real bound, so that one record larger than a
    response's usual size still goes).

    Only the records taken (and at most one more) are read, so a caller
    that resumes from `Taken.end` scans every stored byte once.
    """
    pos = start
    size = len(payload)
    count = 0
    charged = 0
    blocked = -1
    try:
        while count < count_max and pos < size:
            if payload[pos] != RECORDS_TAG:
                raise MalformedBatchError(f"unexpected tag {payload[pos]:#x} at byte {pos}")
            length = payload[pos + 1]
            if length < 0x80:
                body = pos + 2
            elif payload[pos + 2] < 0x80:  # two bytes: records up to 16 KiB
                length = (length & 0x7F) | (payload[pos + 2] << 7)
                body = pos + 3
            else:
                length, body = varint_at(payload, pos + 1)
            end = body + length
            if end > size:
                raise MalformedBatchError(f"record at byte {pos} runs past the end of its batch")
            # Its content size, from the length prefixes. Stored records are
            # the broker's own encoding (produce re-serializes every batch):
            # fields in number order, each at most once, so key, value,
            # header entries and the timestamp last. Lengths below 128 (one
            # varint byte) are read inline, the common case.
            charge = 0
            at = body
            tag = payload[at] if at < end else 0
            if tag == 0x0A:  # Record.key
                n = payload[at + 1]
                if n < 0x80:
                    at += 2 + n
                else:
                    n, at = varint_at(payload, at + 1)
                    at += n
                charge = n
                tag = payload[at] if at < end else 0
            if tag == 0x12:  # Record.value
                n = payload[at + 1]
                if n < 0x80:
                    at += 2 + n
                elif payload[at + 2] < 0x80:
                    n = (n & 0x7F) | (payload[at + 2] << 7)
                    at += 3 + n
                else:
                    n, at = varint_at(payload, at + 1)
                    at += n
                charge += n
                tag = payload[at] if at < end else 0
            while tag == 0x1A:  # one Record.headers entry: name (1), value (2)
                n = payload[at + 1]
                if n < 0x80 and n >= 4 and payload[at + 2] == 0x0A:
                    # The broker writes both fields of an entry, name first;
                    # under 128 bytes each length takes one byte, so all but
                    # the two tags and two lengths count.
                    at += 2 + n
                    charge += n - 4
                else:
                    at, n = _header_entry_bytes(payload, at)
                    charge += n
                tag = payload[at] if at < end else 0
            if tag == 0x20:  # Record.timestamp_ms: costs nothing
                # Usually the last field: then it is not decoded, only its last
                # byte is checked (the stored bytes are checksummed). A record
                # with a deliver_at_ms after it takes the walk below.
                if payload[end - 1] < 0x80 and end - at <= 11:
                    at = end
                else:
                    _, at = varint_at(payload, at + 1)
                    if at > end or end - at > 11:
                        raise MalformedBatchError(f"bad timestamp at byte {at}")
                    tag = payload[at] if at < end else 0
            if tag == 0x28 and at < end:  # Record.deliver_at_ms, the last field: costs nothing
                _, at = varint_at(payload, at + 1)
            if at != end:
                raise MalformedBatchError(f"record at byte {pos} is not in canonical field order")
            if charged + charge > charged_bytes_max:
                blocked = charge
                break
            if end - start > framed_bytes_max:
                break
            charged += charge
            count += 1
            pos = end
    except IndexError:
        raise MalformedBatchError(f"a record at byte {pos} is cut off") from None
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
    header = _batch_header(topic_field, partition, base_offset, end_offset)
    body_size = len(header) + sum(len(r) for r in records)
    return b"".join((_RESPONSE_BATCH_TAG, encode_varint(body_size), header, *records))


def delivery_encoder(group: str, partition: int) -> Callable[[int, int, int], bytes]:
    """(offset, attempt, ack_deadline_ms) -> one `ConsumedBatch.deliveries` field, as bytes.

    The same bytes protobuf writes for `Delivery(ack_id=encode_ack_id(group,
    partition, offset, attempt), offset, delivery_attempt, ack_deadline_ms)`
    (zero fields left out); tests compare them. What every delivery of the
    partition shares (the ack id's prefix and its share of the check) is
    computed once, and the deadline's bytes while it stays the same.
    """
    prefix, seed = ack_id_parts(group, partition)
    crc32 = zlib.crc32
    last_deadline = -1
    deadline_field = b""

    def encode(offset: int, attempt: int, deadline_ms: int) -> bytes:
        nonlocal last_deadline, deadline_field
        if deadline_ms != last_deadline:
            last_deadline = deadline_ms
            deadline_field = _DEADLINE_TAG + encode_varint(deadline_ms) if deadline_ms else b""
        tail = pack_tail(offset, attempt)
        body = b"".join(
            (
                _ACK_ID_FIELD,
                prefix,
                tail,
                pack_check(crc32(tail, seed)),
                _OFFSET_TAG + encode_varint(offset) if offset else b"",
                _ATTEMPT_TAG,
                encode_varint(attempt),
                deadline_field,
            )
        )
        return _DELIVERIES_TAG + encode_varint(len(body)) + body

    return encode


def queue_batch_response(
    topic_field: bytes,
    partition: int,
    base_offset: int,
    end_offset: int,
    records: list[bytes],
    deliveries: list[bytes],
) -> bytes:
    """A serialized ConsumeResponse{batch} of queue mode: `records` as stored
    (`QueueRecord.framed`), then `deliveries` (`delivery_encoder`), one each."""
    header = _batch_header(topic_field, partition, base_offset, end_offset)
    body_size = len(header) + sum(map(len, records)) + sum(map(len, deliveries))
    return b"".join((_RESPONSE_BATCH_TAG, encode_varint(body_size), *records, header, *deliveries))


def _batch_header(topic_field: bytes, partition: int, base_offset: int, end_offset: int) -> bytes:
    """ConsumedBatch's topic, partition, base_offset and end_offset fields."""
    return b"".join(
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


def topic_field(topic: str) -> bytes:
    raw = topic.encode()
    return _TOPIC_TAG + encode_varint(len(raw)) + raw
