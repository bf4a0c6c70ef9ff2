"""Queue mode in weir.aio.Consumer and weir.Consumer, against a scripted fake Consume stream."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

import weir
from tests.unit.sdk.fakes import FakeChannel, FakeNodes, FakeQueueCall, ack_id, rpc_error
from weir.aio import _consumer_queue
from weir.aio import consumer as consumer_module
from weir.aio.consumer import Consumer
from weir.errors import ClosedError, NotInFlightError, UnavailableError, UnknownAckIdError
from weir.types import ConsumedRecord
from weir.v1 import broker_pb2

pytestmark = pytest.mark.timeout(10)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


class Calls:
    """Every Consume call the consumer opened, in order; the last one is live."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *addresses: str) -> None:
        FakeNodes(dict.fromkeys(addresses or ("fake:1",), True)).install(monkeypatch)
        self.all: list[FakeQueueCall] = []
        self.hold_answers = False
        self._opened = asyncio.Event()
        monkeypatch.setattr(consumer_module, "consume_call", self._open)

    def _open(self, channel: FakeChannel) -> FakeQueueCall:
        call = FakeQueueCall(channel.address)
        call.hold_answers = self.hold_answers
        self.all.append(call)
        self._opened.set()
        return call

    async def opened(self, count: int) -> FakeQueueCall:
        while len(self.all) < count:
            self._opened.clear()
            await self._opened.wait()
        return self.all[-1]

    @property
    def last(self) -> FakeQueueCall:
        return self.all[-1]


def queue_consumer(**options: Any) -> Consumer:
    return Consumer(options.pop("bootstrap", "fake:1"), "t", group="g", mode="queue", **options)


def record(partition: int, offset: int) -> ConsumedRecord:
    """A record as a queue-mode consumer hands it out (for calls that need no stream data)."""
    return ConsumedRecord(
        "t",
        partition,
        offset,
        None,
        b"",
        {},
        0,
        ack_id=ack_id(partition, offset),
        delivery_attempt=1,
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "queue"}, "mode='queue' needs a group"),
        ({"mode": "queue", "group": "g", "ack_deadline_ms": 999}, "ack_deadline_ms must be"),
        ({"mode": "queue", "group": "g", "ack_deadline_ms": 600_001}, "ack_deadline_ms must be"),
        ({"group": "g", "ack_deadline_ms": 5000}, "only apply with mode='queue'"),
        ({"mode": "stream", "group": "g", "ordered_keys": True}, "only apply with mode='queue'"),
        ({"mode": "queue", "group": "g", "auto_commit": True}, "auto_commit does not apply"),
        ({"mode": "queue", "group": "g", "start": 5}, "'earliest' or 'latest'"),
        ({"mode": "queue", "group": "g", "on_revoke": print}, "only apply with mode='stream'"),
    ],
)
def test_bad_queue_options_fail_before_any_io(options: dict[str, Any], message: str) -> None:
    # No fake is installed: any I/O would fail differently.
    with pytest.raises(ValueError, match=message):
        Consumer("fake:1", "t", **options)


def test_the_deadline_bounds_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    for deadline in (1000, 600_000):
        queue_consumer(ack_deadline_ms=deadline)


def test_subscribe_in_queue_mode_and_deliveries_surface_on_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = Calls(monkeypatch)

    async def body() -> None:
        options = {"ack_deadline_ms": 5000, "ordered_keys": True, "start": "earliest"}
        async with queue_consumer(partitions=[0, 2], **options) as c:
            subscribe = calls.last.requests[0].subscribe
            assert subscribe.mode == broker_pb2.CONSUME_MODE_QUEUE
            assert (subscribe.group, list(subscribe.partitions)) == ("g", [0, 2])
            assert (subscribe.ack_deadline_ms, subscribe.ordered_keys) == (5000, True)
            assert subscribe.start.kind == broker_pb2.START_KIND_EARLIEST
            assert dict(subscribe.offsets) == {}
            # A redelivery of offset 3 comes back among newer records.
            calls.last.deliver(2, (7, b"a", 1), (3, b"b", 2), (8, b"c", 1))
            got = [await c.poll(5.0) for _ in range(3)]
            assert [
                (r.partition, r.offset, r.value, r.ack_id, r.delivery_attempt, r.ack_deadline_ms)
                for r in got
                if r
            ] == [
                (2, 7, b"a", ack_id(2, 7, 1), 1, 1007),
                (2, 3, b"b", ack_id(2, 3, 2), 2, 1003),
                (2, 8, b"c", ack_id(2, 8, 1), 1, 1008),
            ]
            # No commit, seek or position in queue mode: the broker keeps the progress.
            with pytest.raises(ValueError, match="commit"):
                await c.commit()
            with pytest.raises(ValueError, match="seek"):
                await c.seek(2, 0)
            with pytest.raises(ValueError, match="position"):
                c.position(2)

    run(body)


def test_records_outside_queue_mode_have_no_delivery_and_cannot_be_acked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = Calls(monkeypatch)

    async def body() -> None:
        async with Consumer("fake:1", "t", group="g") as c:
            calls.last.batch(0, 4, b"x")
            r = await c.poll(5.0)
            assert r is not None and r.offset == 4
            assert (r.ack_id, r.delivery_attempt, r.ack_deadline_ms) == (None, None, None)
            with pytest.raises(ValueError, match="need mode='queue'"):
                await c.ack(r)
        async with queue_consumer() as q:
            with pytest.raises(ValueError, match="has no ack id"):
                await q.ack(r)

    run(body)


def test_ack_nack_extend_send_their_requests_and_resolve_on_the_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = Calls(monkeypatch)

    async def body() -> None:
        async with queue_consumer() as c:
            call = calls.last
            call.deliver(0, (0, b"a", 1), (1, b"b", 1), (2, b"c", 3))
            a, b, c2 = [await c.poll(5.0) for _ in range(3)]
            assert a and b and c2
            await c.ack(a)
            await c.nack(b, delay_ms=2500, error="timeout talking to mail server")
            await c.nack(c2)
            await c.extend([a, b], 60_000)
            ack, nack_delay, nack, extend = call.settlements()
            assert list(ack.ack.ack_ids) == [a.ack_id]
            assert list(nack_delay.nack.ack_ids) == [b.ack_id]
            assert nack_delay.nack.delay_ms == 2500
            assert nack_delay.nack.error == "timeout talking to mail server"
            # Without a delay the broker's backoff applies: the field is absent.
            assert not nack.nack.HasField("delay_ms") and nack.nack.error == ""
            assert list(extend.extend_deadline.ack_ids) == [a.ack_id, b.ack_id]
            assert extend.extend_deadline.extension_ms == 60_000
            ids = [ack.ack.request_id, nack_delay.nack.request_id, nack.nack.request_id]
            ids.append(extend.extend_deadline.request_id)
            assert len(set(ids)) == 4
            # Bad arguments fail before any I/O.
            with pytest.raises(ValueError, match="extension_ms"):
                await c.extend(a, 999)
            with pytest.raises(ValueError, match="delay_ms"):
                await c.nack(a, delay_ms=86_400_001)
            with pytest.raises(ValueError, match="1024 bytes"):
                await c.nack(a, error="é" * 513)
            assert len(call.settlements()) == 4

    run(body)


def test_refused_ids_raise_the_typed_error_and_the_others_are_settled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = Calls(monkeypatch)

    async def body() -> None:
        async with queue_consumer() as c:
            call = calls.last
            call.refuse = {ack_id(0, 1): "UNKNOWN_ACK_ID", ack_id(0, 2): "NOT_IN_FLIGHT"}
            with pytest.raises(UnknownAckIdError) as raised:
                await c.ack([record(0, 0), record(0, 1)])
            assert raised.value.reason == "UNKNOWN_ACK_ID"
            assert raised.value.metadata["ack_index"] == "1"
            assert raised.value.metadata["ack_failures"] == "1"
            assert not raised.value.retriable
            with pytest.raises(NotInFlightError):
                await c.extend(record(0, 2), 5000)
            with pytest.raises(NotInFlightError):
                await c.nack([record(0, 2)])
            # Two callers in one request: each hears only of its own ids.
            results = await asyncio.gather(
                c.ack(record(0, 0)), c.ack(record(0, 1)), return_exceptions=True
            )
            assert results[0] is None and isinstance(results[1], UnknownAckIdError)
            assert results[1].metadata["ack_index"] == "0"
            assert len(call.sent("ack")[-1].ack.ack_ids) == 2

    run(body)


def test_acks_within_one_turn_go_in_one_request_of_at_most_10000_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = Calls(monkeypatch)

    async def body() -> None:
        async with queue_consumer() as c:
            call = calls.last
            await asyncio.gather(*(c.ack(record(1, o)) for o in range(5)))
            assert len(call.sent("ack")) == 1
            assert list(call.sent("ack")[0].ack.ack_ids) == [ack_id(1, o) for o in range(5)]
            # Nacks with different delays cannot share a request; equal ones do.
            await asyncio.gather(
                c.nack(record(1, 0), delay_ms=10),
                c.nack(record(1, 1), delay_ms=20),
                c.nack(record(1, 2), delay_ms=10),
            )
            nacks = sorted((r.nack.delay_ms, len(r.nack.ack_ids)) for r in call.sent("nack"))
            assert nacks == [(10, 2), (20, 1)]
            # One call with more ids than a request takes.
            await c.ack([record(2, o) for o in range(10_001)])
            sizes = [len(r.ack.ack_ids) for r in call.sent("ack")[1:]]
            assert sizes == [10_000, 1]
            # A sequence of awaited acks: one request each (nothing to wait for).
            for o in range(3):
                await c.ack(record(3, o))
            assert len(call.sent("ack")) == 6

    run(body)


def test_outstanding_ack_ids_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_consumer_queue, "ACK_IDS_OUTSTANDING_MAX", 3)
    calls = Calls(monkeypatch)
    calls.hold_answers = True

    async def body() -> None:
        async with queue_consumer() as c:
            call = calls.last
            first = asyncio.ensure_future(c.ack([record(0, o) for o in range(3)]))
            request = await call.wait_for("ack")
            second = asyncio.ensure_future(c.ack(record(0, 3)))
            await asyncio.sleep(0)  # let `second` run up to its wait for room
            await call.delivered()
            assert not second.done() and c._settler.outstanding == 3
            assert len(call.sent("ack")) == 1
            call.answer(request)
            await first
            answered = await call.wait_for("ack", lambda r: r.ack.ack_ids == [ack_id(0, 3)])
            call.answer(answered)
            await second
            assert c._settler.outstanding == 0

    run(body)


def test_credit_returns_when_records_are_taken_not_when_acked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = Calls(monkeypatch)

    async def body() -> None:
        async with queue_consumer(max_outstanding_messages=4) as c:
            call = calls.last
            call.deliver(0, *[(o, b"v", 1) for o in range(4)])
            held = [await c.poll(5.0) for _ in range(4)]
            assert await c.poll(0.01) is None
            # All four are held unacked, and the whole window went back.
            assert sum(r.credit.messages for r in call.sent("credit")) == 4
            assert call.settlements() == []
            await c.ack([r for r in held if r])

    run(body)


def test_records_held_across_a_reconnect_stay_ackable(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Calls(monkeypatch, "a:1", "b:2")

    async def body() -> None:
        async with queue_consumer(bootstrap=["a:1", "b:2"]) as c:
            first = calls.last
            first.deliver(0, (0, b"r0", 1), (1, b"r1", 1))
            held = await c.poll(5.0)
            assert held is not None and held.offset == 0
            first.fail(rpc_error(grpc.StatusCode.UNAVAILABLE))
            await first.delivered()
            # The ack itself subscribes again (the application is not iterating).
            await c.ack(held)
            second = await calls.opened(2)
            assert second.requests[0].subscribe.mode == broker_pb2.CONSUME_MODE_QUEUE
            assert [list(r.ack.ack_ids) for r in second.sent("ack")] == [[held.ack_id]]
            assert first.sent("ack") == []
            # r1 was not yielded from the dead stream: the broker gives it out again.
            second.deliver(0, (1, b"r1", 2))
            again = await c.poll(5.0)
            assert again is not None and (again.offset, again.delivery_attempt) == (1, 2)

    run(body)


def test_an_ack_whose_stream_ended_unanswered_is_sent_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = Calls(monkeypatch, "a:1", "b:2")
    calls.hold_answers = True

    async def body() -> None:
        async with queue_consumer(bootstrap=["a:1", "b:2"]) as c:
            first = calls.last
            acking = asyncio.ensure_future(c.ack(record(0, 5)))
            nacking = asyncio.ensure_future(c.nack(record(0, 6)))
            await first.wait_for("ack")
            await first.wait_for("nack")
            calls.hold_answers = False
            first.fail(rpc_error(grpc.StatusCode.UNAVAILABLE))
            await acking
            second = await calls.opened(2)
            assert [list(r.ack.ack_ids) for r in second.sent("ack")] == [[ack_id(0, 5)]]
            # A nack's outcome is unknown: raised (retriable), not repeated.
            with pytest.raises(UnavailableError) as raised:
                await nacking
            assert raised.value.retriable and second.sent("nack") == []

    run(body)


def blocking_calls(monkeypatch: pytest.MonkeyPatch) -> list[FakeQueueCall]:
    """The Consume calls a blocking consumer opens (its loop runs in another thread)."""
    FakeNodes({"fake:1": True}).install(monkeypatch)
    calls: list[FakeQueueCall] = []

    def open_call(channel: FakeChannel) -> FakeQueueCall:
        calls.append(FakeQueueCall(channel.address))
        return calls[-1]

    monkeypatch.setattr(consumer_module, "consume_call", open_call)
    return calls


def test_the_blocking_consumer_settles_too(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = blocking_calls(monkeypatch)
    with weir.Consumer("fake:1", "t", group="g", mode="queue", ack_deadline_ms=10_000) as c:
        call = calls[-1]
        assert call.requests[0].subscribe.ack_deadline_ms == 10_000
        c._thread.loop.call_soon_threadsafe(call.deliver, 0, (3, b"job", 1), (4, b"job2", 1))
        job = c.poll(5.0)
        job2 = c.poll(5.0)
        assert job is not None and job2 is not None and job.ack_id == ack_id(0, 3)
        c.extend(job, 30_000)
        c.nack(job2, delay_ms=100, error="busy")
        c.ack([job])
        kinds = [r.WhichOneof("kind") for r in call.settlements()]
        assert kinds == ["extend_deadline", "nack", "ack"]
        call.refuse = {job.ack_id: "UNKNOWN_ACK_ID"}
        with pytest.raises(UnknownAckIdError):
            c.ack(job)
        with pytest.raises(ValueError, match="commit"):
            c.commit()


def test_close_fails_settlements_still_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Calls(monkeypatch)
    calls.hold_answers = True

    async def body() -> None:
        c = queue_consumer()
        await c.start()
        acking = asyncio.ensure_future(c.ack(record(0, 1)))
        await calls.last.wait_for("ack")
        await c.close()
        with pytest.raises(ClosedError):
            await acking
        assert c._settler.outstanding == 0
        with pytest.raises(ClosedError):
            await c.ack(record(0, 2))

    run(body)


def test_a_caller_cancelled_leaves_the_others_of_its_request_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Callers of one request wait on futures of their own, not on the request.
    calls = Calls(monkeypatch)
    calls.hold_answers = True

    async def body() -> None:
        async with queue_consumer() as c:
            call = calls.last
            leaving = asyncio.ensure_future(c.ack(record(0, 1)))
            staying = asyncio.ensure_future(c.ack(record(0, 2)))
            request = await call.wait_for("ack")
            assert list(request.ack.ack_ids) == [ack_id(0, 1), ack_id(0, 2)]
            leaving.cancel()
            with pytest.raises(asyncio.CancelledError):
                await leaving
            call.answer(request)
            await staying
            assert c._settler.outstanding == 0

    run(body)


def test_an_unanswered_ack_fails_after_the_request_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A call with room has no timer of its own: its request's timeout bounds it.
    calls = Calls(monkeypatch)
    calls.hold_answers = True

    async def body() -> None:
        async with queue_consumer(request_timeout_ms=200) as c:
            with pytest.raises(weir.errors.WeirTimeoutError):
                await asyncio.wait_for(c.ack(record(0, 1)), 5)
            assert c._settler.outstanding == 0

    run(body)


def test_an_empty_batch_in_queue_mode_is_harmless(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Calls(monkeypatch)

    async def body() -> None:
        async with queue_consumer() as c:
            calls.last.batch(0, 9)  # no records: only the end offset
            calls.last.deliver(0, (9, b"x", 1))
            got = await c.poll(5.0)
            assert got is not None and got.ack_id == ack_id(0, 9)
            assert c.assignment() == [0]

    run(body)


def test_close_right_after_an_ack_fails_it_before_it_is_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = Calls(monkeypatch)

    async def body() -> None:
        c = queue_consumer()
        await c.start()
        acking = c.ack(record(0, 1))  # its request is open; the send has not run
        await c.close()
        with pytest.raises(ClosedError):
            await acking
        assert c._settler.outstanding == 0 and calls.last.sent("ack") == []

    run(body)


def test_ack_hands_its_ids_over_at_once_as_a_future(monkeypatch: pytest.MonkeyPatch) -> None:
    # Not a coroutine: awaiting many acks together needs no task each, and an
    # ack is sent even if nobody awaits it.
    calls = Calls(monkeypatch)

    async def body() -> None:
        async with queue_consumer() as c:
            acks = [c.ack(record(0, offset)) for offset in range(3)]
            assert all(isinstance(a, asyncio.Future) for a in acks)
            assert await asyncio.gather(*acks) == [None, None, None]
            sent = calls.last.sent("ack")
            assert [list(s.ack.ack_ids) for s in sent] == [[ack_id(0, o) for o in range(3)]]

    run(body)


def test_an_ack_can_be_made_a_task_as_when_it_was_a_coroutine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = Calls(monkeypatch)

    async def body() -> None:
        async with queue_consumer() as c:
            call = calls.last
            call.refuse = {ack_id(0, 1): "UNKNOWN_ACK_ID"}
            assert await asyncio.create_task(c.ack(record(0, 0))) is None
            with pytest.raises(UnknownAckIdError):
                await asyncio.create_task(c.ack(record(0, 1)))
            # A list longer than one request goes through a task of its own.
            many = [record(0, o) for o in range(2, 10_010)]
            assert await asyncio.create_task(c.ack(many)) is None

    run(body)
