"""Stream-mode consumer groups in weir.aio.Consumer, against a scripted fake Consume stream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from tests.unit.sdk.fakes import FakeChannel, FakeGroupCall, FakeNodes, rpc_error
from weir.aio import consumer as consumer_module
from weir.aio._consumer_group import GroupState
from weir.aio.consumer import Consumer
from weir.errors import OffsetOutOfRangeError
from weir.v1 import broker_pb2, errors_pb2

pytestmark = pytest.mark.timeout(10)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


class Calls:
    """Every Consume call the consumer opened, in order; the last one is live."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *addresses: str) -> None:
        FakeNodes(dict.fromkeys(addresses or ("fake:1",), True)).install(monkeypatch)
        self.all: list[FakeGroupCall] = []
        self._opened = asyncio.Event()
        monkeypatch.setattr(consumer_module, "consume_call", self._open)

    def _open(self, channel: FakeChannel) -> FakeGroupCall:
        call = FakeGroupCall(channel.address)
        self.all.append(call)
        self._opened.set()
        return call

    async def opened(self, count: int) -> FakeGroupCall:
        """Wait until `count` calls were opened; the last one."""
        while len(self.all) < count:
            self._opened.clear()
            await self._opened.wait()
        return self.last

    @property
    def last(self) -> FakeGroupCall:
        return self.all[-1]


class Log:
    """Callbacks that record what they were told, and the requests sent before each."""

    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self.events: list[tuple[str, list[int]]] = []
        self.kinds_at: list[list[str]] = []

    def assigned(self, partitions: list[int]) -> None:
        self.events.append(("assign", partitions))
        self.kinds_at.append(self.calls.last.kinds())

    async def revoked(self, partitions: list[int]) -> None:
        self.events.append(("revoke", partitions))
        self.kinds_at.append(self.calls.last.kinds())


def stream_consumer(log: Log | None = None, **options: Any) -> Consumer:
    options.setdefault("auto_commit_interval_ms", 60_000)
    return Consumer(
        "fake:1",
        "t",
        group="g",
        mode="stream",
        on_assign=log.assigned if log else None,
        on_revoke=log.revoked if log else None,
        **options,
    )


def two_node_consumer(log: Log, **options: Any) -> Consumer:
    """A stream-mode consumer that fails over between two fake nodes."""
    return Consumer(
        ["a:1", "b:2"],
        "t",
        group="g",
        mode="stream",
        on_assign=log.assigned,
        on_revoke=log.revoked,
        **options,
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "stream"}, "needs a group"),
        ({"mode": "stream", "group": "g", "partitions": [0]}, "takes no partitions"),
        ({"mode": "stream", "group": "g", "session_timeout_ms": 999}, "session_timeout_ms"),
        ({"mode": "stream", "group": "g", "rebalance_timeout_ms": 300_001}, "rebalance"),
        ({"mode": "fanout", "group": "g"}, "mode must be"),
        ({"group": "g", "on_assign": print}, "only apply with mode='stream'"),
        ({"auto_commit": True}, "auto_commit needs a group"),
    ],
)
def test_bad_group_options_fail_before_any_io(options: dict[str, Any], message: str) -> None:
    # No fake is installed: any I/O would fail differently.
    with pytest.raises(ValueError, match=message):
        Consumer("fake:1", "t", **options)


def test_subscribe_joins_in_stream_mode_without_partitions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = Calls(monkeypatch)

    async def body() -> None:
        async with stream_consumer(session_timeout_ms=6000, rebalance_timeout_ms=20_000) as c:
            subscribe = calls.last.requests[0].subscribe
            assert subscribe.mode == broker_pb2.CONSUME_MODE_STREAM
            assert subscribe.group == "g" and subscribe.member_id == ""
            assert (subscribe.session_timeout_ms, subscribe.rebalance_timeout_ms) == (6000, 20_000)
            assert list(subscribe.partitions) == [] and dict(subscribe.offsets) == {}
            calls.last.assign("m-1", 1, [0, 1], started={0: 5, 1: 7})
            calls.last.batch(1, 7, b"x")
            record = await c.poll(5.0)
            assert record is not None and (record.partition, record.offset) == (1, 7)
            assert (c.member_id, c.generation, c.assignment()) == ("m-1", 1, [0, 1])
            assert c.position(0) == 5

    run(body)


def test_revoke_drops_buffered_records_then_calls_back_then_commits_then_acks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = Calls(monkeypatch)
    log = Log(calls)

    async def body() -> None:
        async with stream_consumer(log, max_outstanding_messages=100) as c:
            call = calls.last
            call.assign("m-1", 1, [0, 1], started={0: 0, 1: 10})
            call.batch(0, 0, b"a0", b"a1", b"a2", b"a3")
            call.batch(1, 10, b"b10", b"b11")
            taken = [await c.poll(5.0) for _ in range(2)]
            assert [(r.partition, r.offset) for r in taken if r] == [(0, 0), (0, 1)]
            # Partition 0 moves away while a2 and a3 wait in the buffer.
            call.assign("m-1", 2, [1], revoked=[0])
            await call.delivered()
            assert c._sub is not None and c._sub.buffered == 2  # b10, b11 only
            record = await c.poll(5.0)
            assert record is not None and (record.partition, record.offset) == (1, 10)
            assert log.events == [("assign", [0, 1]), ("revoke", [0])]
            # on_revoke ran before the commit, and the ack came after the commit.
            assert "commit" not in log.kinds_at[1]
            commit = call.sent("commit")[0].commit
            assert commit.generation == 2
            assert [(o.partition, o.offset) for o in commit.offsets] == [(0, 2)]
            ack = await call.wait_for("assignment_ack")
            assert ack.assignment_ack.generation == 2
            kinds = call.kinds()
            assert kinds.index("commit") < kinds.index("assignment_ack")
            assert c.assignment() == [1]
            with pytest.raises(ValueError):
                c.position(0)
            # The dropped records' credit goes back with the taken ones'.
            assert await c.poll(5.0) is not None
            assert await c.poll(0.01) is None
            credit = sum(r.credit.messages for r in call.sent("credit"))
            assert credit == 6  # a0, a1, b10, b11 taken; a2, a3 dropped

    run(body)


def test_without_auto_commit_the_revoke_commit_is_the_callbacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = Calls(monkeypatch)
    committed: list[dict[int, int]] = []

    async def body() -> None:
        consumer: Consumer

        async def on_revoke(partitions: list[int]) -> None:
            committed.append(await consumer.commit())

        consumer = Consumer(
            "fake:1", "t", group="g", mode="stream", on_revoke=on_revoke, auto_commit=False
        )
        async with consumer as c:
            call = calls.last
            call.assign("m-1", 1, [0, 1], started={0: 0, 1: 0})
            call.batch(0, 0, b"a0")
            call.batch(1, 0, b"b0")
            assert await c.poll(5.0) is not None
            assert await c.poll(5.0) is not None
            call.assign("m-1", 2, [1], revoked=[0])
            assert await c.poll(0.01) is None
            assert committed == [{0: 1, 1: 1}]
            await call.wait_for("assignment_ack")
            assert call.kinds()[-2:] == ["commit", "assignment_ack"]
        # Closing revokes partition 1: the callback commits it, the SDK nothing more.
        assert committed == [{0: 1, 1: 1}, {1: 1}]
        assert len(call.sent("commit")) == 2

    run(body)


def test_callbacks_merge_pending_assignments_and_survive_exceptions(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = Calls(monkeypatch)
    events: list[tuple[str, list[int]]] = []

    def on_assign(partitions: list[int]) -> None:
        events.append(("assign", partitions))
        raise RuntimeError("application bug")

    def on_revoke(partitions: list[int]) -> None:
        events.append(("revoke", partitions))

    async def body() -> None:
        async with Consumer(
            "fake:1", "t", group="g", mode="stream", on_assign=on_assign, on_revoke=on_revoke
        ) as c:
            call = calls.last
            call.assign("m-1", 1, [0, 1, 2], started={0: 0, 1: 0, 2: 0})
            assert await c.poll(0.01) is None
            # Three assignments before the application looks again: 3 comes
            # and goes unseen, 2 is revoked, 4 arrives.
            call.assign("m-1", 2, [0, 1], revoked=[2])
            call.assign("m-1", 3, [0, 1, 3], started={3: 0})
            call.assign("m-1", 4, [0, 1], revoked=[3])
            call.assign("m-1", 5, [0, 1, 4], started={4: 0})
            await call.delivered()
            assert c.assignment() == [0, 1, 2]  # nothing applied while not iterating
            call.batch(4, 0, b"x")
            record = await c.poll(5.0)
            assert record is not None and record.partition == 4
            assert events == [("assign", [0, 1, 2]), ("revoke", [2]), ("assign", [4])]
            assert c.assignment() == [0, 1, 4] and c.generation == 5
            ack = await call.wait_for("assignment_ack")
            assert ack.assignment_ack.generation == 4  # the last one that revoked
            assert len(call.sent("assignment_ack")) == 1

    with caplog.at_level(logging.ERROR, logger="weir.consumer"):
        run(body)
    assert "on_assign([0, 1, 2]) raised" in caplog.text


def test_heartbeat_when_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Calls(monkeypatch)

    async def body() -> None:
        loop = asyncio.get_running_loop()
        async with stream_consumer(session_timeout_ms=1000):
            started = loop.time()
            await calls.last.wait_for("heartbeat")
            # A third of the session timeout after the subscribe, not sooner.
            assert loop.time() - started >= 0.3
            assert calls.last.kinds() == ["subscribe", "heartbeat"]

    run(body)


def test_auto_commit_sends_positions_that_moved(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Calls(monkeypatch)

    def offsets(request: broker_pb2.ConsumeRequest) -> dict[int, int]:
        return {o.partition: o.offset for o in request.commit.offsets}

    async def body() -> None:
        async with stream_consumer(auto_commit_interval_ms=20) as c:
            call = calls.last
            call.assign("m-1", 1, [0, 1], started={0: 0, 1: 0})
            call.batch(0, 0, b"a", b"b", b"c")
            for _ in range(3):
                assert await c.poll(5.0) is not None
            # The application waits for more: the interval wakes it to commit.
            waiting = asyncio.ensure_future(c.poll(5.0))
            await call.wait_for("commit", lambda r: offsets(r) == {0: 3})
            call.batch(0, 3, b"d")
            assert (record := await waiting) is not None and record.offset == 3
            waiting = asyncio.ensure_future(c.poll(5.0))
            await call.wait_for("commit", lambda r: offsets(r) == {0: 4})
            call.batch(1, 0, b"e")
            assert (record := await waiting) is not None and record.partition == 1
            commits = [offsets(r) for r in call.sent("commit")]
            # Only what moved, each position once, though the interval passed
            # many times while the application waited with nothing new.
            assert commits in ([{0: 3}, {0: 4}], [{0: 1}, {0: 3}, {0: 4}], [{0: 2}, {0: 3}, {0: 4}])
            assert all(r.commit.generation == 1 for r in call.sent("commit"))
        # Closing commits what moved since: partition 1.
        assert offsets(call.sent("commit")[-1]) == {1: 1}

    run(body)


def test_close_revokes_everything_and_commits_what_moved(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Calls(monkeypatch)
    log = Log(calls)

    async def body() -> None:
        async with stream_consumer(log) as c:
            call = calls.last
            call.assign("m-1", 1, [0, 1], started={0: 0, 1: 4})
            call.batch(1, 4, b"x")
            assert await c.poll(5.0) is not None
        assert log.events == [("assign", [0, 1]), ("revoke", [0, 1])]
        assert [(o.partition, o.offset) for o in call.sent("commit")[0].commit.offsets] == [(1, 5)]
        assert call.kinds()[-1] == "commit"

    run(body)


def test_a_retriable_end_rejoins_with_the_member_id(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Calls(monkeypatch, "a:1", "b:2")
    log = Log(calls)

    async def body() -> None:
        async with two_node_consumer(log) as c:
            first = calls.last
            first.assign("m-1", 3, [0, 1], started={0: 0, 1: 0})
            first.batch(0, 0, b"r0", b"r1", b"r2")
            record = await c.poll(5.0)
            assert record is not None and record.offset == 0
            first.fail(rpc_error(grpc.StatusCode.UNAVAILABLE))
            await first.delivered()
            # r1 and r2 are not yielded from the dead stream.
            poll = asyncio.ensure_future(c.poll(5.0))
            second = await calls.opened(2)
            subscribe = await second.wait_for("subscribe")
            assert subscribe.subscribe.member_id == "m-1"
            # The broker gives partition 0 back from its committed offset
            # (r0 comes again: at least once) and has moved 1 elsewhere.
            second.assign("m-1", 4, [0], started={0: 0})
            second.batch(0, 0, b"r0", b"r1")
            record = await poll
            assert record is not None and (record.offset, record.value) == (0, b"r0")
            assert log.events == [("assign", [0, 1]), ("revoke", [1])]
            assert c.assignment() == [0] and c.generation == 4
            # Partition 1 was lost, not revoked: nothing to commit. The new
            # stream's first assignment is acked (its node waits for that).
            assert second.sent("commit") == []
            ack = await second.wait_for("assignment_ack")
            assert ack.assignment_ack.generation == 4
            assert first.sent("assignment_ack") == []

    run(body)


def test_a_rejoined_member_acks_its_first_assignment_on_the_new_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 8: until a rejoined member's client acks on its new stream, its node does not
    ack for it, and a member joining meanwhile waited the whole rebalance timeout. The
    first assignment there is acked when the application iterates; a later revocation is
    committed, then acked, as on any stream."""
    calls = Calls(monkeypatch, "a:1", "b:2")
    log = Log(calls)

    async def body() -> None:
        async with two_node_consumer(log, auto_commit_interval_ms=60_000) as c:
            first = calls.last
            first.assign("m-1", 1, [0, 1], started={0: 0, 1: 0})
            first.batch(1, 0, b"p1")
            assert await c.poll(5.0) is not None
            first.fail(rpc_error(grpc.StatusCode.UNAVAILABLE))
            poll = asyncio.ensure_future(c.poll(5.0))
            second = await calls.opened(2)
            subscribe = await second.wait_for("subscribe")
            assert subscribe.subscribe.member_id == "m-1"
            # The broker tells the member its assignment again (nothing was committed).
            second.assign("m-1", 1, [0, 1], started={0: 0, 1: 0})
            second.batch(1, 0, b"p1")
            record = await poll
            assert record is not None and (record.partition, record.value) == (1, b"p1")
            ack = await second.wait_for("assignment_ack")
            assert ack.assignment_ack.generation == 1
            assert second.sent("commit") == []  # nothing was given up
            # A member joins: partition 1 goes away, committed before the ack.
            second.assign("m-1", 2, [0], revoked=[1])
            second.batch(0, 0, b"p0")
            record = await c.poll(5.0)
            assert record is not None and (record.partition, record.value) == (0, b"p0")
            await second.wait_for("assignment_ack", lambda r: r.assignment_ack.generation == 2)
            kinds = second.kinds()
            assert kinds.index("commit") < len(kinds) - 1 - kinds[::-1].index("assignment_ack")
            commit = second.sent("commit")[0].commit
            assert [(o.partition, o.offset) for o in commit.offsets] == [(1, 1)]
            assert log.events == [("assign", [0, 1]), ("revoke", [1])]
            assert first.sent("assignment_ack") == []

    run(body)


@pytest.mark.parametrize("reason", ["SESSION_EXPIRED", "MEMBER_REMOVED"])
def test_session_expired_loses_everything_and_rejoins_as_new(
    monkeypatch: pytest.MonkeyPatch, reason: str
) -> None:
    calls = Calls(monkeypatch)
    log = Log(calls)

    async def body() -> None:
        async with stream_consumer(log) as c:
            first = calls.last
            first.assign("m-1", 2, [0, 1], started={0: 0, 1: 0})
            first.batch(0, 0, b"r0")
            assert await c.poll(5.0) is not None
            first.fail(rpc_error(grpc.StatusCode.ABORTED, reason, retriable="true"))
            poll = asyncio.ensure_future(c.poll(5.0))
            second = await calls.opened(2)
            subscribe = await second.wait_for("subscribe")
            assert subscribe.subscribe.member_id == ""
            # on_revoke came before the rejoin, with everything; no commit.
            assert log.events == [("assign", [0, 1]), ("revoke", [0, 1])]
            assert first.sent("commit") == [] and second.sent("commit") == []
            second.assign("m-2", 7, [1], started={1: 0})
            second.batch(1, 0, b"s0")
            record = await poll
            assert record is not None and (record.partition, record.value) == (1, b"s0")
            assert log.events[-1] == ("assign", [1])
            assert (c.member_id, c.generation, c.assignment()) == ("m-2", 7, [1])

    run(body)


def test_seek_uses_the_in_stream_seek(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Calls(monkeypatch)

    async def body() -> None:
        async with stream_consumer() as c:
            call = calls.last
            call.assign("m-1", 1, [0, 1], started={0: 0, 1: 0})
            call.batch(0, 0, b"a0", b"a1", b"a2")
            call.batch(1, 0, b"b0")
            assert await c.poll(5.0) is not None
            await c.seek(0, 40)
            assert c.position(0) == 40
            call.batch(0, 40, b"a40")
            got = [await c.poll(5.0) for _ in range(2)]
            # a1 and a2 were dropped; partition 1 went on.
            assert [(r.partition, r.offset) for r in got if r] == [(1, 0), (0, 40)]
            seek = call.sent("seek")[0].seek
            assert (seek.partition, seek.position.kind, seek.position.offset) == (
                0,
                broker_pb2.START_KIND_OFFSET,
                40,
            )
            assert len(calls.all) == 1  # no resubscribe
            with pytest.raises(ValueError, match="not assigned"):
                await c.seek(5, 0)
            call.seek_error = errors_pb2.Error(
                code=grpc.StatusCode.OUT_OF_RANGE.value[0], reason="OFFSET_OUT_OF_RANGE"
            )
            with pytest.raises(OffsetOutOfRangeError):
                await c.seek(0, 10**9)
            assert c.position(0) == 41

    run(body)


def test_pending_changes_stay_bounded_by_the_partitions() -> None:
    group = GroupState()
    first = broker_pb2.Assignment(
        member_id="m",
        generation=1,
        partitions=[0, 1, 2, 3],
        started=[broker_pb2.PartitionStart(partition=p) for p in range(4)],
    )
    group.on_assignment(first)
    assert group.take().assigned == {0, 1, 2, 3}
    # Ten thousand assignments while the application never looks.
    for generation in range(2, 10_002):
        p = generation % 4
        if generation % 2:
            change = broker_pb2.Assignment(
                member_id="m",
                generation=generation,
                partitions=[0, 1, 2, 3],
                started=[broker_pb2.PartitionStart(partition=p)],
            )
        else:
            change = broker_pb2.Assignment(
                member_id="m",
                generation=generation,
                partitions=[q for q in range(4) if q != p],
                revoked=[p],
            )
        group.on_assignment(change)
    pending = group.take()
    assert len(pending.revoked) <= 4 and len(pending.assigned) <= 4 and not pending.lost
    assert pending.ack_generation == 10_000
