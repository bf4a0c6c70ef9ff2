"""The applied state keeps first deliveries as ranges: it must mean what a record per offset meant.

`Model` is the plain reading of each control record (a dict entry per
pending record); random sequences of runs, acks, nacks and dead letters,
including the ones a correct leader never writes (acks of offsets never
delivered, deliveries of acked offsets), must leave `AppliedQueueState`
with the same snapshot, and its stored row (both formats) must decode to it.
"""

from __future__ import annotations

import random
import struct
import zlib

import pytest

from weir.cluster.queue import (
    Acked,
    AppliedQueueState,
    ControlRecord,
    DeadLettered,
    Delivered,
    DeliveredRecord,
    Nacked,
    PendingRecord,
)
from weir.cluster.storage.queues import decode_row, encode_row

pytestmark = pytest.mark.timeout(30)


class Model:
    def __init__(self) -> None:
        self.acked: set[int] = set()
        self.cursor = 0
        self.pending: dict[int, PendingRecord] = {}
        self.dead_lettered_total = 0

    def apply(self, record: ControlRecord) -> None:
        match record:
            case Delivered(cursor, _):
                self.cursor = max(self.cursor, cursor)
                for offset, attempt, key_hash in record.records():
                    if offset in self.acked:
                        continue
                    old = self.pending.get(offset)
                    error = old.last_error if old else ""
                    attempt = max(attempt, old.attempt) if old else attempt
                    self.pending[offset] = PendingRecord(attempt, key_hash, None, error)
            case Acked(ranges) | DeadLettered(ranges):
                for first, end in ranges:
                    new = set(range(first, end)) - self.acked
                    self.acked |= new
                    for offset in range(first, end):
                        self.pending.pop(offset, None)
                    if isinstance(record, DeadLettered):
                        self.dead_lettered_total += len(new)
            case Nacked(offset, attempt, due_ms, reason):
                if offset in self.acked:
                    return
                old = self.pending.get(offset)
                if old is None:
                    self.pending[offset] = PendingRecord(attempt, None, due_ms, reason)
                elif attempt >= old.attempt:
                    self.pending[offset] = old._replace(
                        attempt=attempt, due_ms=due_ms, last_error=reason
                    )

    def snapshot(self) -> dict[str, object]:
        low = 0
        while low in self.acked:
            low += 1
        return {
            "low_watermark": low,
            "acked_above": sorted(o for o in self.acked if o > low),
            "cursor": self.cursor,
            "pending": [
                [o, r.attempt, r.key_hash, r.due_ms, r.last_error]
                for o, r in sorted(self.pending.items())
            ],
            "dead_lettered_total": self.dead_lettered_total,
        }


def seen(state: AppliedQueueState) -> dict[str, object]:
    snapshot = state.snapshot()
    return {
        "low_watermark": snapshot["low_watermark"],
        "acked_above": [o for first, end in state.acked.ranges() for o in range(first, end)],
        "cursor": snapshot["cursor"],
        "pending": snapshot["pending"],
        "dead_lettered_total": snapshot["dead_lettered_total"],
    }


def random_record(rng: random.Random, cursor: int) -> ControlRecord:
    roll = rng.random()
    if roll < 0.4:
        first = max(0, cursor - rng.randrange(8))
        records = []
        for offset in range(first, first + rng.randrange(1, 12)):
            attempt = 1 if rng.random() < 0.8 else rng.randrange(1, 4)
            key_hash = None if rng.random() < 0.8 else rng.randrange(3)
            records.append(DeliveredRecord(offset, attempt, key_hash))
        return Delivered.of(cursor + rng.randrange(6), records)
    if roll < 0.8:
        ranges = []
        at = rng.randrange(max(1, cursor + 4))
        for _ in range(rng.randrange(1, 4)):
            end = at + rng.randrange(1, 5)
            ranges.append((at, end))
            at = end + rng.randrange(1, 4)
        return (Acked if roll < 0.7 else DeadLettered)(tuple(ranges))
    return Nacked(
        rng.randrange(max(1, cursor + 4)), rng.randrange(1, 4), rng.randrange(10_000), "e"
    )


def v1_row(name: str, state: AppliedQueueState) -> bytes:
    """The row as format version 1 wrote it: every pending record listed."""
    raw = name.encode()
    parts = [
        struct.pack(">BH", 1, len(raw)),
        raw,
        struct.pack(">QQQ", state.acked.low_watermark, state.cursor, state.dead_lettered_total),
        struct.pack(">I", len(state.acked)),
    ]
    parts += [struct.pack(">QQ", first, end) for first, end in state.acked.ranges()]
    parts.append(struct.pack(">I", len(state.pending)))
    for offset, r in state.pending.items():
        flags = (1 if r.key_hash is not None else 0) | (2 if r.due_ms is not None else 0)
        error = r.last_error.encode()
        fields = (offset, r.attempt, flags, r.key_hash or 0, r.due_ms or 0, len(error))
        parts.append(struct.pack(">QIBIqH", *fields) + error)
    body = b"".join(parts)
    return body + zlib.crc32(body).to_bytes(4, "big")


@pytest.mark.parametrize("seed", range(40))
def test_runs_apply_as_a_record_per_offset_would(seed: int) -> None:
    rng = random.Random(seed)
    state, model = AppliedQueueState(), Model()
    for step in range(120):
        record = random_record(rng, model.cursor)
        state.apply(record)
        model.apply(record)
        state.check_invariants()
        assert seen(state) == model.snapshot(), (step, record)
        assert len(state.pending) == len(model.pending)
        if step % 10 == 0:
            for row in (encode_row("g", state), v1_row("g", state)):
                name, decoded = decode_row(row)
                assert name == "g" and decoded.snapshot() == state.snapshot()


def test_a_turn_of_first_deliveries_is_one_range_in_the_state_and_the_row() -> None:
    state = AppliedQueueState()
    state.apply(Delivered.of(1_000, (DeliveredRecord(o, 1) for o in range(1_000))))
    state.apply(Acked(((10, 20), (500, 501))))
    assert len(state.pending) == 989 and list(state.pending.plain.ranges()) == [
        (0, 10),
        (20, 500),
        (501, 1_000),
    ]
    assert not state.pending.other
    assert len(encode_row("g", state)) < 200
