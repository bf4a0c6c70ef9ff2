"""Queue mode's dispatch state, behaviour by behaviour (docs/groups.md "Queue mode")."""

from __future__ import annotations

import random

import pytest

from weir.cluster.queue import (
    Acked,
    AppliedQueueState,
    Candidate,
    DeadLetter,
    DeadLettered,
    Delivery,
    InvalidNackDelay,
    NotInFlight,
    Outcome,
    QueueConfig,
    QueueDispatch,
    Redelivery,
    UnknownAckId,
)

from .helpers import DEADLINE_MS, dispatch, fingerprint, fresh, replicate

pytestmark = pytest.mark.timeout(30)


def within_jitter(interval_ms: int, base_ms: int) -> bool:
    return round(base_ms * 0.8) <= interval_ms <= round(base_ms * 1.2)


def test_a_record_whose_deadline_passes_is_redelivered_after_the_backoff() -> None:
    d = dispatch(retry_backoff_ms_min=100, retry_backoff_ms_max=10_000)
    assert d.deliver(1, 1, DEADLINE_MS, 0, fresh(d, 1)) == (Delivery(0, 1, DEADLINE_MS),)
    assert d.next_wakeup_ms() == DEADLINE_MS
    assert d.expire(DEADLINE_MS - 1) == ()
    (redelivery,) = d.expire(DEADLINE_MS)
    assert isinstance(redelivery, Redelivery) and redelivery.attempt == 1
    assert within_jitter(redelivery.due_ms - DEADLINE_MS, 100)
    # Not before it is due, then as attempt 2.
    assert d.deliver(2, 5, redelivery.due_ms - 1 + DEADLINE_MS, redelivery.due_ms - 1) == ()
    now = redelivery.due_ms
    assert d.deliver(2, 5, now + DEADLINE_MS, now) == (Delivery(0, 2, now + DEADLINE_MS),)
    d.check_invariants()


def test_nack_without_delay_follows_the_exponential_backoff_within_the_jitter() -> None:
    d = dispatch(seed=7, retry_backoff_ms_min=100, retry_backoff_ms_max=1_000, max_deliveries=0)
    d.deliver(1, 1, DEADLINE_MS, 0, fresh(d, 1))
    now = 0
    intervals = []
    for attempt in range(1, 9):
        answer = d.nack(0, attempt, None, "busy", now)
        assert isinstance(answer, Redelivery) and answer.attempt == attempt
        intervals.append(answer.due_ms - now)
        assert within_jitter(answer.due_ms - now, min(1_000, 100 * 2 ** (attempt - 1)))
        now = answer.due_ms
        assert d.deliver(1, 1, now + DEADLINE_MS, now) == (
            Delivery(0, attempt + 1, now + DEADLINE_MS),
        )
    # The jitter is drawn, not fixed: capped intervals differ.
    assert len(set(intervals[4:])) > 1
    d.check_invariants()


def test_nack_with_a_delay_waits_exactly_that_long_and_bad_delays_are_refused() -> None:
    d = dispatch()
    d.deliver(1, 2, DEADLINE_MS, 0, fresh(d, 2))
    before = fingerprint(d)
    assert isinstance(d.nack(0, 1, -1, "", 10), InvalidNackDelay)
    assert isinstance(d.nack(0, 1, d.config.nack_delay_ms_max + 1, "", 10), InvalidNackDelay)
    assert fingerprint(d) == before and d.take_control()[1:] == []
    assert d.nack(0, 1, 5_000, "later", 10) == Redelivery(0, 1, 5_010)
    assert d.nack(1, 1, 0, "now", 10) == Redelivery(1, 1, 10)
    assert [x.offset for x in d.deliver(1, 5, DEADLINE_MS, 10)] == [1]
    assert [x.offset for x in d.deliver(1, 5, 5_010 + DEADLINE_MS, 5_010)] == [0]


def test_max_deliveries_dead_letters_then_the_record_counts_as_acked() -> None:
    d = dispatch(max_deliveries=3, retry_backoff_ms_min=0, retry_backoff_ms_max=0)
    applied = AppliedQueueState()
    d.deliver(1, 1, DEADLINE_MS, 0, fresh(d, 1))
    assert d.nack(0, 1, None, "e1", 0) == Redelivery(0, 1, 0)
    d.deliver(1, 1, DEADLINE_MS, 0)
    assert d.nack(0, 2, None, "e2", 0) == Redelivery(0, 2, 0)
    d.deliver(1, 1, DEADLINE_MS, 0)
    assert d.nack(0, 3, None, "boom", 0) == DeadLetter(0, deliveries=3, last_error="boom")
    # Never handed out again, while the dead letter is written or after.
    assert d.deliver(1, 5, 10**9 + DEADLINE_MS, 10**9) == ()
    assert d.dead_letter_written(0) is Outcome.ACKED
    assert d.acked.low_watermark == 1 and d.size() == 0
    assert d.ack(0, 3) is Outcome.ALREADY_ACKED
    assert d.dead_letter_written(0) is Outcome.ALREADY_ACKED
    control = d.take_control()
    assert control[-1] == DeadLettered(((0, 1),))
    replicate(control, applied)
    assert applied.acked.low_watermark == 1 and applied.dead_lettered_total == 1
    assert applied.pending == {}


def test_a_deadline_missed_on_the_last_delivery_dead_letters_with_its_reason() -> None:
    d = dispatch(max_deliveries=1)
    d.deliver(1, 1, DEADLINE_MS, 0, fresh(d, 1))
    assert d.expire(DEADLINE_MS) == (DeadLetter(0, 1, "ack deadline exceeded"),)


def test_ordered_keys_a_nacked_head_blocks_only_its_own_key() -> None:
    a, b = 0xA, 0xB
    keys = {0: a, 1: a, 2: b, 3: a, 4: b}
    d = dispatch(ordered_keys=True)
    now = 0
    assert [x.offset for x in d.deliver(1, 10, DEADLINE_MS, now, fresh(d, 5, keys))] == [0, 2]
    assert d.cursor == 5 and d.held_count == 3
    assert isinstance(d.nack(0, 1, 1_000, "head failed", now), Redelivery)
    # B goes on while A's head waits.
    assert d.ack(2, 1) is Outcome.ACKED
    assert [x.offset for x in d.deliver(1, 10, DEADLINE_MS, now)] == [4]
    assert d.ack(4, 1) is Outcome.ACKED
    assert d.deliver(1, 10, DEADLINE_MS, now) == ()
    # A's head comes back, then A's records follow one at a time in offset order.
    now = 1_000
    assert d.deliver(1, 10, now + DEADLINE_MS, now) == (Delivery(0, 2, now + DEADLINE_MS),)
    assert d.ack(0, 2) is Outcome.ACKED
    assert [x.offset for x in d.deliver(1, 10, now + DEADLINE_MS, now)] == [1]
    assert d.ack(1, 1) is Outcome.ACKED
    assert [x.offset for x in d.deliver(1, 10, now + DEADLINE_MS, now)] == [3]
    assert d.ack(3, 1) is Outcome.ACKED
    assert d.acked.low_watermark == 5 and d.size() == 0
    d.check_invariants()


def test_ordered_keys_held_records_survive_a_leader_change() -> None:
    keys = {0: 1, 1: 1, 2: 1}
    d = dispatch(ordered_keys=True)
    applied = AppliedQueueState()
    assert [x.offset for x in d.deliver(1, 10, DEADLINE_MS, 0, fresh(d, 3, keys))] == [0]
    replicate(d.take_control(), applied)
    # The recorded cursor stops at the first record held back.
    assert applied.cursor == 1
    new, letters = QueueDispatch.become_leader(applied, d.config, random.Random(2), 5)
    assert letters == ()
    got = new.deliver(1, 10, DEADLINE_MS, 5, fresh(new, 2, keys))
    assert got == (Delivery(0, 2, DEADLINE_MS),)
    assert new.ack(0, 2) is Outcome.ACKED
    assert [x.offset for x in new.deliver(1, 10, DEADLINE_MS, 5)] == [1]
    new.check_invariants()


def test_acking_twice_or_an_older_attempt_since_acked_is_harmless() -> None:
    d = dispatch(retry_backoff_ms_min=0, retry_backoff_ms_max=0)
    d.deliver(1, 1, DEADLINE_MS, 0, fresh(d, 1))
    d.expire(DEADLINE_MS)
    assert d.deliver(2, 1, 2 * DEADLINE_MS, DEADLINE_MS) == (Delivery(0, 2, 2 * DEADLINE_MS),)
    assert d.ack(0, 2) is Outcome.ACKED
    d.take_control()
    before = fingerprint(d)
    assert d.ack(0, 2) is Outcome.ACKED.ALREADY_ACKED
    assert d.ack(0, 1) is Outcome.ALREADY_ACKED
    assert d.nack(0, 1, None, "late", 0) is Outcome.ALREADY_ACKED
    assert fingerprint(d) == before and d.take_control() == []


def test_a_late_ack_of_an_older_attempt_acks_and_a_stale_nack_changes_nothing() -> None:
    d = dispatch(retry_backoff_ms_min=0, retry_backoff_ms_max=0)
    d.deliver(1, 1, DEADLINE_MS, 0, fresh(d, 1))
    d.expire(DEADLINE_MS)
    d.deliver(2, 1, 2 * DEADLINE_MS, DEADLINE_MS)
    before = fingerprint(d)
    assert d.nack(0, 1, None, "late", DEADLINE_MS) is Outcome.STALE_ATTEMPT
    assert fingerprint(d) == before
    # The first consumer finished after all: its work counts.
    assert d.ack(0, 1) is Outcome.ACKED
    assert d.ack(0, 2) is Outcome.ALREADY_ACKED


def test_unknown_ack_ids_are_refused_and_change_nothing() -> None:
    d = dispatch()
    d.deliver(1, 2, DEADLINE_MS, 0, fresh(d, 3))  # 0 and 1 out, 2 never
    d.take_control()
    before = fingerprint(d)
    refusals = [
        d.ack(2, 1),  # read but never delivered
        d.ack(99, 1),  # beyond the log
        d.ack(0, 2),  # an attempt never handed out
        d.ack(0, 0),
        d.nack(5, 1, None, "", 0),
        d.nack(0, 3, 10, "", 0),
        d.extend(7, 1, 1, DEADLINE_MS),
    ]
    assert all(isinstance(r, UnknownAckId) for r in refusals), refusals
    assert all(r.reason == "UNKNOWN_ACK_ID" for r in refusals if isinstance(r, UnknownAckId))
    assert fingerprint(d) == before and d.take_control() == []


def test_extend_moves_the_deadline_only_on_the_stream_that_holds_the_record() -> None:
    d = dispatch()
    d.deliver(1, 1, DEADLINE_MS, 0, fresh(d, 1))
    assert isinstance(d.extend(0, 1, 2, 2 * DEADLINE_MS), NotInFlight)
    assert d.extend(0, 1, 1, 2 * DEADLINE_MS) is Outcome.EXTENDED
    assert d.expire(DEADLINE_MS) == ()
    assert len(d.expire(2 * DEADLINE_MS)) == 1
    d.check_invariants()


def test_a_closed_stream_returns_its_records_at_once() -> None:
    d = dispatch()
    assert len(d.deliver(1, 2, DEADLINE_MS, 0, fresh(d, 2))) == 2
    assert len(d.deliver(2, 1, DEADLINE_MS, 0, fresh(d, 1))) == 1
    assert d.stream_closed(1, 50) == (
        Redelivery(0, 1, 50),
        Redelivery(1, 1, 50),
    )
    assert d.stream_closed(1, 50) == ()
    got = d.deliver(2, 5, 50 + DEADLINE_MS, 50)
    assert [(x.offset, x.attempt) for x in got] == [(0, 2), (1, 2)]
    assert set(d.in_flight) == {0, 1, 2}
    d.check_invariants()


def test_delayed_records_are_passed_over_until_due() -> None:
    d = dispatch()
    candidates = (Candidate(0, None, 1_000), Candidate(1), Candidate(2, None, 10))
    assert [x.offset for x in d.deliver(1, 5, DEADLINE_MS, 0, candidates)] == [1]
    assert d.cursor == 3
    # The delayed-record index offers what is due; the state hands it out once.
    due = (Candidate(2, None, 10), Candidate(0, None, 1_000))
    assert [x.offset for x in d.deliver(1, 5, DEADLINE_MS, 10, due)] == [2]
    assert [x.offset for x in d.deliver(1, 5, DEADLINE_MS, 1_000, due)] == [0]
    assert d.deliver(1, 5, DEADLINE_MS, 1_000, due) == ()


def test_a_new_leader_redelivers_records_in_flight_at_once_with_their_attempt_counted() -> None:
    d = dispatch(max_deliveries=2)
    applied = AppliedQueueState()
    d.deliver(1, 3, DEADLINE_MS, 0, fresh(d, 3))
    assert d.ack(0, 1) is Outcome.ACKED
    d.nack(1, 1, None, "x", 0)
    d.deliver(1, 1, 10**6 + DEADLINE_MS, 10**6)  # 1 out again: its last delivery
    replicate(d.take_control(), applied)
    new, letters = QueueDispatch.become_leader(applied, d.config, random.Random(3), 10**6)
    # 1 was in flight on its last delivery: dead-lettered; 2 goes back at once.
    assert [(x.offset, x.deliveries) for x in letters] == [(1, 2)]
    got = new.deliver(9, 5, 10**6 + DEADLINE_MS, 10**6, fresh(new, 0))
    assert [(x.offset, x.attempt) for x in got] == [(2, 2)]
    assert new.ack(0, 1) is Outcome.ALREADY_ACKED
    new.check_invariants()


def test_the_low_watermark_folds_and_memory_stays_bounded_over_100k_acks() -> None:
    rng = random.Random(5)
    d = dispatch(queue_pending_max=1_000)
    applied = AppliedQueueState()
    total, batch, size_max = 100_000, 500, 0
    while d.acked.low_watermark < total:
        got = d.deliver(1, batch, DEADLINE_MS, 0, fresh(d, min(batch, total - d.cursor)))
        offsets = [x.offset for x in got]
        rng.shuffle(offsets)
        for offset in offsets:
            assert d.ack(offset, 1) is Outcome.ACKED
            size_max = max(size_max, d.size())
        replicate(d.take_control(), applied)
        assert len(d.acked) == 0 and len(applied.acked) == 0
    assert size_max <= 2 * batch
    assert d.size() == 0 and applied.acked.low_watermark == total and applied.pending == {}
    assert len(applied.snapshot()["acked"]) == 0


def test_at_queue_pending_max_no_new_record_goes_out_but_redeliveries_do() -> None:
    d = dispatch(queue_pending_max=4, retry_backoff_ms_min=0, retry_backoff_ms_max=0)
    assert len(d.deliver(1, 10, DEADLINE_MS, 0, fresh(d, 10))) == 4
    assert d.cursor == 4 and d.deliver(1, 10, DEADLINE_MS, 0, fresh(d, 6)) == ()
    d.nack(3, 1, 0, "", 0)
    assert [x.offset for x in d.deliver(1, 10, DEADLINE_MS, 0, fresh(d, 6))] == [3]
    # Acks out of order leave a range behind: room only for what folded.
    assert d.ack(1, 1) is Outcome.ACKED
    assert d.size() == 4 and d.deliver(1, 10, DEADLINE_MS, 0, fresh(d, 6)) == ()
    assert d.ack(0, 1) is Outcome.ACKED  # folds 0 and 1
    assert [x.offset for x in d.deliver(1, 10, DEADLINE_MS, 0, fresh(d, 6))] == [4, 5]
    assert d.size() == 4
    d.check_invariants()


def test_at_the_bound_a_due_delayed_record_at_the_low_watermark_still_goes_out() -> None:
    d = dispatch(queue_pending_max=3)
    delayed = {0, 2, 4}
    records = tuple(Candidate(o, None, 100 if o in delayed else None) for o in range(7))
    assert [x.offset for x in d.deliver(1, 10, DEADLINE_MS, 0, records)] == [1, 3, 5]
    for offset in (1, 3, 5):
        d.ack(offset, 1)
    assert d.size() == 3 and d.cursor == 6  # three ranges, the holes are delayed
    due = tuple(c for c in records if c.offset in delayed or c.offset >= d.cursor)
    # Only the hole at the low watermark: its ack folds ranges away.
    assert [x.offset for x in d.deliver(1, 10, 100 + DEADLINE_MS, 100, due)] == [0]
    assert d.size() == d.size_max() == 4
    d.ack(0, 1)
    assert d.acked.low_watermark == 2
    assert [x.offset for x in d.deliver(1, 10, 100 + DEADLINE_MS, 100, due)] == [2]
    d.ack(2, 1)
    assert [x.offset for x in d.deliver(1, 10, 100 + DEADLINE_MS, 100, due)] == [4, 6]
    d.check_invariants()


def test_control_records_keep_the_order_of_events_and_merge_neighbours() -> None:
    d = dispatch(retry_backoff_ms_min=0, retry_backoff_ms_max=0)
    d.deliver(1, 3, DEADLINE_MS, 0, fresh(d, 3))
    d.ack(0, 1)
    d.ack(1, 1)
    d.nack(2, 1, 5, "r", 0)
    d.deliver(1, 1, DEADLINE_MS, 5)
    control = d.take_control()
    assert [type(c).__name__ for c in control] == ["Delivered", "Acked", "Nacked", "Delivered"]
    assert control[1] == Acked(((0, 2),))
    assert d.take_control() == []


def test_config_asserts_its_bounds() -> None:
    with pytest.raises(AssertionError):
        QueueConfig(retry_backoff_ms_min=10, retry_backoff_ms_max=5)


def test_the_deadline_heap_does_not_keep_acked_records() -> None:
    d = dispatch()
    for _ in range(100):
        for x in d.deliver(1, 100, DEADLINE_MS, 0, fresh(d, 100)):
            d.ack(x.offset, 1)
    assert d.size() == 0 and d.acked.low_watermark == 10_000
    assert len(d._deadlines) <= 2 * len(d.in_flight) + 64
