"""`ack_nowait()` in queue mode: acks handed over without waiting, against a scripted stream.

The ids join the turn's request like awaited acks; nobody waits, so
refusals and failed requests are logged; the outstanding bound holds (a call
over it raises `BufferFullError` and sends nothing); `close()` waits for the
requests that carry such ids before it ends the stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

import weir
from tests.unit.sdk.fakes import ack_id
from tests.unit.sdk.test_consumer_queue import (
    Calls,
    blocking_calls,
    queue_consumer,
    record,
    run,
)
from weir.aio import _consumer_queue
from weir.aio.consumer import Consumer
from weir.errors import BufferFullError

pytestmark = pytest.mark.timeout(10)


def warnings_of(body: Callable[[], Awaitable[None]], caplog: pytest.LogCaptureFixture) -> list[str]:
    """Runs `body`; the consumer's warnings meanwhile."""
    with caplog.at_level(logging.WARNING, logger="weir.consumer"):
        run(body)
    return [r.getMessage() for r in caplog.records if r.name == "weir.consumer"]


def test_acks_of_one_turn_go_in_one_request_and_nothing_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = Calls(monkeypatch)
    calls.hold_answers = True

    async def body() -> None:
        async with queue_consumer() as c:
            call = calls.last
            for offset in range(5):
                assert c.ack_nowait(record(0, offset)) is None  # type: ignore[func-returns-value]
            c.ack_nowait([record(1, 0), record(1, 1)])
            assert c._settler.outstanding == 7
            # Calls in a row are one range of the request, not one pair each.
            assert [g.unwaited for g in c._settler._open.values()] == [[(0, 7)]]
            request = await call.wait_for("ack")
            expected = [ack_id(0, o) for o in range(5)] + [ack_id(1, 0), ack_id(1, 1)]
            assert list(request.ack.ack_ids) == expected
            call.answer(request)
            await c._settler.flush_unwaited()
            assert c._settler.outstanding == 0 and len(call.sent("ack")) == 1

    run(body)


def test_refused_ids_are_logged_with_their_count_and_first_reason(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = Calls(monkeypatch)

    async def body() -> None:
        async with queue_consumer() as c:
            call = calls.last
            call.refuse = {ack_id(0, 1): "UNKNOWN_ACK_ID", ack_id(0, 2): "NOT_IN_FLIGHT"}
            # An awaited ack shares the request and hears only of its own id.
            c.ack_nowait([record(0, 1), record(0, 2)])
            await c.ack(record(0, 3))
            assert len(call.sent("ack")) == 1

    warnings = warnings_of(body, caplog)
    assert len(warnings) == 1
    assert "2 ids of ack_nowait() calls were refused" in warnings[0]
    assert "UNKNOWN_ACK_ID" in warnings[0]


def test_warnings_come_at_most_one_per_interval_and_count_the_rest(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = Calls(monkeypatch)

    async def body() -> None:
        async with queue_consumer() as c:
            call = calls.last
            call.refuse = {ack_id(0, o): "UNKNOWN_ACK_ID" for o in range(5)}
            for offset in range(3):  # three requests, each refused
                c.ack_nowait(record(0, offset))
                await c._settler.flush_unwaited()
            monkeypatch.setattr(_consumer_queue, "UNSETTLED_WARNING_INTERVAL_S", 0.0)
            c.ack_nowait([record(0, 3), record(0, 4)])
            await c._settler.flush_unwaited()

    warnings = warnings_of(body, caplog)
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("1 ids of ack_nowait() calls were refused")
    assert warnings[1].startswith("2 ids of ack_nowait() calls were refused")
    assert warnings[1].endswith("(and 2 more unsettled since the last warning)")


def test_a_request_that_fails_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = Calls(monkeypatch)
    calls.hold_answers = True

    async def body() -> None:
        async with queue_consumer(request_timeout_ms=200) as c:
            c.ack_nowait(record(0, 1))
            await calls.last.wait_for("ack")
            await c._settler.flush_unwaited()  # the request times out unanswered
            assert c._settler.outstanding == 0

    warnings = warnings_of(body, caplog)
    assert any("1 ids of ack_nowait() calls were not settled" in w for w in warnings), warnings


def test_a_call_over_the_outstanding_bound_raises_and_sends_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_consumer_queue, "ACK_IDS_OUTSTANDING_MAX", 3)
    calls = Calls(monkeypatch)
    calls.hold_answers = True

    async def body() -> None:
        async with queue_consumer() as c:
            call = calls.last
            c.ack_nowait([record(0, 0), record(0, 1)])
            with pytest.raises(BufferFullError) as raised:
                c.ack_nowait([record(0, 2), record(0, 3)])
            assert raised.value.reason == "BUFFER_FULL"
            assert c._settler.outstanding == 2
            c.ack_nowait(record(0, 2))  # this one fits
            request = await call.wait_for("ack")
            assert list(request.ack.ack_ids) == [ack_id(0, o) for o in range(3)]
            # More ids than the bound in one call can never fit.
            call.answer(request)
            await c._settler.flush_unwaited()
            with pytest.raises(BufferFullError):
                c.ack_nowait([record(1, o) for o in range(4)])
            assert c._settler.outstanding == 0 and len(call.sent("ack")) == 1

    run(body)


def test_close_waits_until_the_acks_handed_over_are_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = Calls(monkeypatch)
    calls.hold_answers = True

    async def body() -> None:
        c = queue_consumer()
        await c.start()
        call = calls.last
        c.ack_nowait(record(0, 1))
        closing = asyncio.ensure_future(c.close())
        request = await call.wait_for("ack")
        await asyncio.sleep(0.05)
        assert not closing.done()
        call.answer(request)
        await closing
        assert c._settler.outstanding == 0 and len(call.sent("ack")) == 1

    run(body)


def test_it_needs_queue_mode_and_the_consumers_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    Calls(monkeypatch)

    async def open_stream_consumer() -> Consumer:
        c = Consumer("fake:1", "t", partitions=[0])
        await c.start()
        with pytest.raises(ValueError, match="mode='queue'"):
            c.ack_nowait(record(0, 1))
        return c

    async def body() -> None:
        async with queue_consumer() as c:
            # Off the event loop (here: a thread) nothing changes.
            with pytest.raises(RuntimeError):
                await asyncio.to_thread(c.ack_nowait, record(0, 1))
            assert c._settler.outstanding == 0
        stream = await open_stream_consumer()
        await stream.close()

    run(body)


def test_the_blocking_consumer_hands_acks_over_too(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = blocking_calls(monkeypatch)
    with weir.Consumer("fake:1", "t", group="g", mode="queue") as c:
        call = calls[-1]
        c._thread.loop.call_soon_threadsafe(call.deliver, 0, (3, b"job", 1))
        job = c.poll(5.0)
        assert job is not None
        c.ack_nowait(job)
    # close() waited for the answer, so the request went out.
    assert [list(r.ack.ack_ids) for r in call.sent("ack")] == [[ack_id(0, 3)]]
