"""Retention below a queue group's position (issue 8): the applied state tolerates a
cursor, watermark and pending records below the log start, and the leader's write-off
records make every replica forget the same records."""

from __future__ import annotations

import pytest

from weir.cluster.queue import (
    Acked,
    AppliedQueueState,
    Delivered,
    DeliveredRecord,
    Nacked,
    decode_control,
    encode_control,
)

pytestmark = pytest.mark.timeout(10)


def test_records_below_the_log_start_are_written_off_through_the_log() -> None:
    state = AppliedQueueState()
    state.apply(Delivered.of(6, tuple(DeliveredRecord(o, 1) for o in range(6))))
    state.apply(Acked(((0, 2), (4, 5))))
    state.apply(Nacked(3, 1, 9_000, "busy"))
    assert state.below_log_start(2) == ()
    records = state.below_log_start(10)
    assert records == (Acked(((2, 10),)), Delivered(10, ()))
    assert decode_control(encode_control("g", records)) == ("g", records)
    replica = AppliedQueueState.restore(state.snapshot())
    for record in records:
        state.apply(record)
        replica.apply(record)
    state.check_invariants()
    assert state.snapshot() == replica.snapshot()
    assert state.acked.low_watermark == 10 and state.cursor == 10
    assert not state.pending and state.size() == 0
    assert state.below_log_start(10) == ()


def test_size_counts_pending_records_and_acked_ranges() -> None:
    state = AppliedQueueState()
    state.apply(Delivered.of(5, tuple(DeliveredRecord(o, 1) for o in range(5))))
    state.apply(Acked(((1, 2), (3, 4))))
    assert state.size() == 3 + 2
