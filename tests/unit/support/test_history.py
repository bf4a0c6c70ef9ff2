"""The history checker, on hand-built histories: each rule passes its good case and
catches its bad one."""

from __future__ import annotations

import threading

import pytest

from tests.support.history import (
    AnomalyKind,
    Attempt,
    History,
    Outcome,
    Read,
    check,
)

pytestmark = [pytest.mark.timeout(10)]

ACK = Outcome.ACKNOWLEDGED


def acked(request_id: int, base_offset: int, *payloads: str, partition: int = 0) -> Attempt:
    return Attempt(request_id, partition, payloads, ACK, base_offset)


def unknown(request_id: int, *payloads: str, partition: int = 0) -> Attempt:
    return Attempt(request_id, partition, payloads, Outcome.UNKNOWN)


def failed(request_id: int, *payloads: str, partition: int = 0) -> Attempt:
    return Attempt(request_id, partition, payloads, Outcome.FAILED)


def log(*payloads: str, partition: int = 0, start: int = 0, reader: int = 0) -> list[Read]:
    return [Read(partition, start + i, p, reader) for i, p in enumerate(payloads)]


def test_a_clean_history_passes_and_is_counted() -> None:
    report = check(
        [acked(1, 0, "a", "b"), acked(2, 2, "c"), unknown(3, "d"), failed(4, "e")],
        log("a", "b", "c", "d"),
    )
    report.assert_ok()
    assert (report.acknowledged, report.unknown, report.failed) == (3, 1, 1)
    assert report.unknown_read == 1
    assert report.reads == 4
    assert not report.duplicates


def test_an_unknown_attempt_may_be_missing() -> None:
    check([acked(1, 0, "a"), unknown(2, "b")], log("a")).assert_ok()


def test_lost_an_acknowledged_payload_never_read() -> None:
    report = check([acked(1, 0, "a"), acked(2, 1, "b")], log("a"))
    assert report.kinds() == {AnomalyKind.LOST}
    (anomaly,) = report.anomalies
    assert (anomaly.payload, anomaly.offsets) == ("b", (1,))
    assert "request 2" in anomaly.detail


def test_changed_meaning_another_payload_at_an_acknowledged_offset() -> None:
    report = check([acked(1, 0, "a"), unknown(2, "x")], log("x"))
    assert report.kinds() == {AnomalyKind.CHANGED_MEANING}
    (anomaly,) = report.anomalies
    assert anomaly.offsets == (0,)
    assert anomaly.detail == "request 1 holds 'x'"


def test_changed_meaning_an_acknowledged_payload_moved() -> None:
    report = check([acked(1, 0, "a"), unknown(2, "x")], log("x", "a"))
    assert report.kinds() == {AnomalyKind.CHANGED_MEANING}
    assert report.anomalies[0].detail == "request 1 holds 'x'; the payload read at [1]"


def test_changed_meaning_an_acknowledged_offset_is_empty_and_the_payload_elsewhere() -> None:
    report = check([acked(1, 0, "a")], log("a", start=1))
    assert report.kinds() == {AnomalyKind.CHANGED_MEANING}
    assert report.anomalies[0].detail == "request 1 not there; read at [1]"


def test_changed_meaning_two_readers_disagree_on_an_offset() -> None:
    report = check(
        [unknown(1, "a"), unknown(2, "b")],
        log("a", reader=1) + log("b", reader=2),
    )
    assert AnomalyKind.CHANGED_MEANING in report.kinds()


def test_reordered_offsets_go_back_within_one_reader() -> None:
    attempts = [acked(1, 0, "a", "b", "c")]
    reads = [Read(0, 0, "a"), Read(0, 2, "c"), Read(0, 1, "b")]
    report = check(attempts, reads)
    assert report.kinds() == {AnomalyKind.REORDERED}
    assert report.anomalies[0].offsets == (2, 1)


def test_reordered_an_offset_delivered_twice_to_one_reader() -> None:
    report = check([acked(1, 0, "a")], [Read(0, 0, "a"), Read(0, 0, "a")])
    assert report.kinds() == {AnomalyKind.REORDERED}


def test_order_is_per_reader_and_per_partition() -> None:
    attempts = [acked(1, 0, "a"), acked(2, 0, "p", partition=1)]
    reads = [Read(0, 0, "a", reader=1), Read(1, 0, "p", reader=1), Read(0, 0, "a", reader=2)]
    check(attempts, reads).assert_ok()


def test_duplicate_explained_by_an_unknown_attempt_is_allowed_and_named() -> None:
    # Request 1 timed out but was written at 0; the retry (2) was acknowledged at 1.
    report = check([unknown(1, "a"), acked(2, 1, "a")], log("a", "a"))
    report.assert_ok()
    (duplicate,) = report.duplicates
    assert duplicate.payload == "a"
    assert duplicate.offsets == (0, 1)
    assert duplicate.unknown_request_ids == (1,)
    assert "unknown attempts [1]" in report.summary()


def test_duplicated_without_an_unknown_attempt() -> None:
    report = check([acked(1, 0, "a")], log("a", "a"))
    assert report.kinds() == {AnomalyKind.DUPLICATED}
    assert report.anomalies[0].offsets == (0, 1)


def test_duplicated_beyond_what_the_unknown_attempts_explain() -> None:
    report = check([unknown(1, "a"), acked(2, 2, "a")], log("a", "a", "a"))
    assert report.kinds() == {AnomalyKind.DUPLICATED}


def test_failed_written_a_definitely_failed_payload_was_stored() -> None:
    report = check([failed(1, "a")], log("a"))
    assert report.kinds() == {AnomalyKind.FAILED_WRITTEN}


def test_a_failed_attempt_then_a_successful_retry_is_fine() -> None:
    check([failed(1, "a"), acked(2, 0, "a")], log("a")).assert_ok()


def test_phantom_a_payload_never_produced() -> None:
    report = check([acked(1, 0, "a")], log("a", "zzz"))
    assert report.kinds() == {AnomalyKind.PHANTOM}
    assert report.anomalies[0].detail == "never produced"


def test_phantom_a_payload_in_a_partition_it_was_not_sent_to() -> None:
    report = check([acked(1, 0, "a"), unknown(2, "b")], log("a") + log("b", partition=3))
    assert report.kinds() == {AnomalyKind.PHANTOM}
    assert report.anomalies[0].detail == "produced to partitions [0]"


def test_summary_lists_anomalies_and_assert_ok_raises_with_it() -> None:
    report = check([acked(i, i, f"p{i}") for i in range(30)], [])
    assert len(report.anomalies) == 30
    assert "and 10 more" in report.summary()
    with pytest.raises(AssertionError, match="30 anomalies"):
        report.assert_ok()


def test_an_attempt_must_match_its_outcome() -> None:
    with pytest.raises(AssertionError):
        Attempt(1, 0, ("a",), Outcome.ACKNOWLEDGED)
    with pytest.raises(AssertionError):
        Attempt(1, 0, ("a",), Outcome.UNKNOWN, base_offset=3)


def test_the_recorder_takes_threads_and_checks() -> None:
    history = History()

    def produce(first: int) -> None:
        for i in range(first, first + 100):
            history.acknowledged(i, 0, [f"p{i}"], i)

    threads = [threading.Thread(target=produce, args=(n * 100,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    history.unknown(1000, 0, ["late"])
    history.failed(1001, 0, ["never"])
    history.read_batch(0, 0, [f"p{i}" for i in range(400)])
    history.read(0, 400, "late")
    report = history.check()
    report.assert_ok()
    assert (report.acknowledged, report.unknown, report.failed, report.reads) == (400, 1, 1, 401)
