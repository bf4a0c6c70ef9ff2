"""Entry codec and key layout."""

from __future__ import annotations

import pytest

from weir.cluster.storage import (
    CorruptEntryError,
    Entry,
    EntryType,
    decode_entry,
    encode_entry,
    keys,
)
from weir.cluster.storage.codec import ENTRY_HEADER_BYTES, decode_header


def _entry(**overrides: object) -> Entry:
    fields: dict[str, object] = {
        "entry_type": EntryType.DATA,
        "term": 7,
        "base_offset": 1234,
        "record_count": 10,
        "max_timestamp_ms": -5,
        "append_time_ms": 1_700_000_000_000,
        "payload": bytes(range(256)) * 3,
    }
    fields.update(overrides)
    return Entry(**fields)  # type: ignore[arg-type]


def test_round_trip_is_exact() -> None:
    entry = _entry()
    encoded = encode_entry(entry)
    assert len(encoded) == ENTRY_HEADER_BYTES + len(entry.payload)
    assert decode_entry(encoded) == entry
    assert decode_entry(memoryview(encoded)) == entry


def test_control_entries_carry_no_records() -> None:
    noop = _entry(entry_type=EntryType.NOOP, record_count=0, payload=b"")
    assert decode_entry(encode_entry(noop)) == noop
    with pytest.raises(ValueError):
        encode_entry(_entry(entry_type=EntryType.CONFIG, record_count=3))


@pytest.mark.parametrize("position", [0, 1, 5, 12, 20, 30, ENTRY_HEADER_BYTES - 1, -1])
def test_any_flipped_byte_is_detected(position: int) -> None:
    damaged = bytearray(encode_entry(_entry()))
    damaged[position] ^= 0x01
    with pytest.raises(CorruptEntryError):
        decode_entry(bytes(damaged))


def test_truncated_entry_is_detected() -> None:
    encoded = encode_entry(_entry())
    with pytest.raises(CorruptEntryError):
        decode_header(encoded[:-1])
    with pytest.raises(CorruptEntryError):
        decode_header(encoded[: ENTRY_HEADER_BYTES - 1])


def test_key_order_is_numeric_order() -> None:
    assert keys.log_key(1, 2**40) < keys.log_key(2, 0)
    assert keys.log_key(1, 255) < keys.log_key(1, 256)
    stamps = [-(2**63), -1, 0, 1, 2**62]
    encoded = [keys.time_key(3, ts, 0) for ts in stamps]
    assert encoded == sorted(encoded)
    assert keys.parse_time_key(keys.time_key(3, -1, 9)) == (3, -1, 9)
    assert keys.group_end(keys.GROUP_ID_MAX) is None


def test_meta_namespaces_do_not_collide() -> None:
    # "a" + key "b..." must not fall inside namespace "ab".
    assert not keys.meta_key("a", b"bx").startswith(keys.meta_prefix("ab"))
    assert keys.split_meta_key(keys.meta_key("topics", b"k")) == b"k"
    with pytest.raises(ValueError):
        keys.meta_prefix("")
