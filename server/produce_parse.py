"""Produce request parsing: count a request's records before building one object per record.

Work per request is proportional to its record count, so that count has a
limit (`produce_request_records_max`) checked here on the raw bytes, before
a parse builds one object per record. What the Produce method's
deserializer returns is a `Received`: the size of the bytes and either a
ProduceRequest, `TooManyRecords` (well-formed but over the limit, refused
unparsed) or `MALFORMED` (bytes protobuf would refuse too).
"""

from __future__ import annotations

import dataclasses

import grpc
from google.protobuf.message import DecodeError

from weir.server.errors import BrokerError, invalid
from weir.v1 import broker_pb2


class _Malformed:
    """Bytes that are not a ProduceRequest: the stream ends with MALFORMED_REQUEST."""


MALFORMED = _Malformed()


@dataclasses.dataclass(frozen=True, slots=True)
class TooManyRecords:
    """A well-formed request over the record limit, refused without being parsed."""

    request_id: int
    limit: int

    def error(self) -> BrokerError:
        return too_many_records(self.limit)


class BadWire(Exception):
    """The scan met bytes protobuf would not parse either."""


_UINT64_MASK = (1 << 64) - 1
# The first byte of a `RecordBatch.records` tag (field 1, length-delimited):
# 0x0A, or 0x8A when a client pads the tag varint (protobuf accepts that).
_RECORD_TAG_FIRST_BYTES = (b"\x0a", b"\x8a")
# Fields a request may carry besides its records before the scan calls it
# hostile: the five of ProduceRequest, repeated or unknown, with room to spare.
_OTHER_FIELDS_SLACK = 64


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while pos < end:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            break
    raise BadWire


def _skip(data: bytes, pos: int, end: int, key: int) -> tuple[int, int]:
    """Skip the value of the field whose tag is `key`; returns (position, fields skipped).

    Groups (wire types 3 and 4) are obsolete but valid protobuf, and the
    parser accepts them as unknown fields, so they are skipped here too,
    counting every field inside them.
    """
    wire_type = key & 7
    if key >> 3 == 0:
        raise BadWire
    if wire_type == 0:
        return _varint(data, pos, end)[1], 0
    if wire_type == 1:
        pos += 8
    elif wire_type == 2:
        length, pos = _varint(data, pos, end)
        pos += length
    elif wire_type == 5:
        pos += 4
    elif wire_type == 3:
        open_groups = [key >> 3]
        inner = 0
        while open_groups:
            if pos >= end:
                raise BadWire
            inner_key, pos = _varint(data, pos, end)
            inner += 1
            if inner_key & 7 == 4:
                if inner_key >> 3 != open_groups.pop():
                    raise BadWire
            elif inner_key & 7 == 3:
                open_groups.append(inner_key >> 3)
            else:
                pos, nested = _skip(data, pos, end, inner_key)
                inner += nested
        return pos, inner
    else:
        raise BadWire  # 4: a group end without its start; 6, 7: no such wire type
    if pos > end:
        raise BadWire
    return pos, 0


def count_records(raw: bytes, records_max: int) -> tuple[int, bool]:
    """(request_id, over the limit) of a serialized ProduceRequest, without parsing it.

    Records are the `records` fields of every `batch` field (protobuf merges
    repeated `batch` fields into one). Each record starts with the byte
    0x0A (or 0x8A), so counting those bytes (in C) bounds the record count
    from above;
    only when that bound exceeds the limit does a walk count exactly, and the
    walk stops as soon as the count does. Unknown fields cost the walk as
    much as records, so more than `records_max` of those is over the limit
    too. Raises `BadWire` where protobuf would refuse the bytes as well.
    """
    end = len(raw)
    request_id = 0
    batches: list[tuple[int, int]] = []
    others = 0
    pos = 0
    while pos < end:
        key, pos = _varint(raw, pos, end)
        others += 1
        if key == 0x08:  # request_id, varint
            value, pos = _varint(raw, pos, end)
            request_id = value & _UINT64_MASK
        elif key == 0x22:  # batch, length-delimited
            length, pos = _varint(raw, pos, end)
            if pos + length > end:
                raise BadWire
            batches.append((pos, pos + length))
            pos += length
        else:
            pos, nested = _skip(raw, pos, end, key)
            others += nested
        if others > records_max + _OTHER_FIELDS_SLACK:
            return request_id, True
    bound = sum(
        raw.count(first, start, stop)
        for start, stop in batches
        for first in _RECORD_TAG_FIRST_BYTES
    )
    if bound <= records_max:
        return request_id, False
    records = 0
    for start, stop in batches:
        pos = start
        while pos < stop:
            key, pos = _varint(raw, pos, stop)
            if key == 0x0A:
                length, pos = _varint(raw, pos, stop)
                pos += length
                if pos > stop:
                    raise BadWire
                records += 1
                if records > records_max:
                    return request_id, True
            else:
                pos, nested = _skip(raw, pos, stop, key)
                others += 1 + nested
                if others > records_max + _OTHER_FIELDS_SLACK:
                    return request_id, True
    return request_id, False


def parse_request(raw: bytes, records_max: int) -> object:
    """A ProduceRequest, `TooManyRecords` or `MALFORMED`; never raises.

    The smallest record (an empty one) takes two bytes, so a request of L
    bytes holds at most L / 2 records and smaller requests skip the count.
    """
    if len(raw) // 2 > records_max:
        try:
            request_id, over = count_records(raw, records_max)
        except BadWire:
            return MALFORMED
        if over:
            return TooManyRecords(request_id, records_max)
    try:
        return broker_pb2.ProduceRequest.FromString(raw)
    except DecodeError:
        # gRPC would answer a deserializer exception with INTERNAL.
        return MALFORMED


@dataclasses.dataclass(frozen=True, slots=True)
class Received:
    """What the Produce method's deserializer returns: a `parse_request` result and its size."""

    raw_bytes: int
    message: object


def too_many_records(limit: int) -> BrokerError:
    return BrokerError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "TOO_MANY_RECORDS",
        f"a produce request may hold at most {limit} records; send several requests",
        {"limit": limit},
    )


def malformed_produce() -> BrokerError:
    return invalid("MALFORMED_REQUEST", "a ProduceRequest could not be parsed")
