"""The blocking producer's handoff: byte bound, chunking, SendFuture resolution."""

from __future__ import annotations

import concurrent.futures

import pytest

from weir._handoff import Chunk, Flush, Handoff, SendFuture
from weir.errors import ClosedError

pytestmark = pytest.mark.timeout(10)


def record(value: bytes) -> tuple[str, bytes, None, None, None, int]:
    return ("t", value, None, None, None, 0, None)


def test_full_chunks_are_queued_and_the_open_one_is_taken_too() -> None:
    handoff = Handoff(chunk_records_max=2, chunk_bytes_max=1 << 20, bytes_max=1 << 20)
    handoff.idle = True
    added = [handoff.append(record(b"x"), 1, 1.0) for _ in range(3)]
    assert all(a is not None for a in added)
    assert [a[1] for a in added if a is not None] == [True, False, False]  # one wake-up
    items = handoff.take(idle_if_empty=True)
    assert [len(c.records) for c in items if isinstance(c, Chunk)] == [2, 1]
    assert handoff.take(idle_if_empty=True) == [] and handoff.idle


def test_a_full_buffer_times_out_until_bytes_are_released() -> None:
    handoff = Handoff(chunk_records_max=10, chunk_bytes_max=1 << 20, bytes_max=10)
    assert handoff.append(record(b"x" * 8), 8, 1.0) is not None
    assert handoff.append(record(b"y" * 8), 8, 0.05) is None
    handoff.release(8)
    assert handoff.append(record(b"y" * 8), 8, 0.05) is not None
    handoff.close()
    with pytest.raises(ClosedError):
        handoff.append(record(b"z"), 1, 0.05)


def test_send_future_resolves_with_its_chunk_and_runs_callbacks() -> None:
    chunk = Chunk()
    chunk.records.append(record(b"x"))
    fut = SendFuture(chunk, 0)
    assert isinstance(fut, concurrent.futures.Future)
    assert not fut.done() and not fut.cancel()
    with pytest.raises(TimeoutError):
        fut.result(0.01)
    seen: list[concurrent.futures.Future[object]] = []
    fut.add_done_callback(seen.append)
    chunk.fail_unsent(ClosedError("stopped"))
    assert fut.done() and seen == [fut]
    assert isinstance(fut.exception(0), ClosedError)
    with pytest.raises(ClosedError):
        fut.result(0)
    late: list[object] = []
    fut.add_done_callback(late.append)
    assert late == [fut]


def test_flush_goes_behind_the_open_chunk() -> None:
    handoff = Handoff(chunk_records_max=10, chunk_bytes_max=1 << 20, bytes_max=1 << 20)
    handoff.append(record(b"x"), 1, 1.0)
    flush = Flush(None)
    handoff.put_flush(flush)
    items = handoff.take(idle_if_empty=False)
    assert isinstance(items[0], Chunk) and items[1] is flush
