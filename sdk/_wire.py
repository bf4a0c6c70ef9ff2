"""Record sizes read from the raw bytes of a ConsumeResponse.

The broker charges byte credit for each record as stored: the record's
`RecordBatch` field exactly as the producer encoded it (tag, length, body).
A record parsed and re-measured with `ByteSize()` can differ from that when
the producer's encoder was not canonical (another language writing default
values, say), and any difference would make the consumer's credit drift until
the stream stalls. So the consumer measures the records in the bytes it
received, with this small scanner, and gives back exactly what was charged.
"""

from __future__ import annotations

__all__ = ["batch_record_sizes"]

_BATCH_FIELD = 2  # ConsumeResponse.batch
_RECORDS_FIELD = 1  # ConsumedBatch.records


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


def _fields(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int, int]]:
    """(field, wire_type, field_start, value_start, value_end) of each field in [start, end)."""
    out: list[tuple[int, int, int, int, int]] = []
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _varint(data, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, value_end = _varint(data, pos)
        elif wire_type == 1:
            value_end = pos + 8
        elif wire_type == 2:
            length, pos = _varint(data, pos)
            value_end = pos + length
        elif wire_type == 5:
            value_end = pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        if value_end > end:
            raise ValueError("field runs past the end of its message")
        out.append((field, wire_type, field_start, pos, value_end))
        pos = value_end
    return out


def batch_record_sizes(raw: bytes) -> list[int]:
    """Encoded size (tag + length + body) of each record of the batch in `raw`.

    `raw` is a serialized ConsumeResponse; returns [] when it holds no batch.
    """
    sizes: list[int] = []
    for field, wire_type, _, start, end in _fields(raw, 0, len(raw)):
        if field != _BATCH_FIELD or wire_type != 2:
            continue
        for inner, inner_type, field_start, _, value_end in _fields(raw, start, end):
            if inner == _RECORDS_FIELD and inner_type == 2:
                sizes.append(value_end - field_start)
    return sizes
