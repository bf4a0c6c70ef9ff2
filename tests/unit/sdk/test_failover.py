"""Failover of every client against scripted nodes: which node is tried, when, and with what.

Nodes are addresses of fake channels (tests/unit/sdk/fakes.py) that connect
or not; each test scripts the calls made on them.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2

from tests.unit.sdk.fakes import FakeChannel, FakeNodes, rpc_error
from tests.unit.sdk.test_consumer import FakeConsumeCall, batch
from tests.unit.sdk.test_sender import Harness, answer, failure, rec
from weir.aio import admin as admin_module
from weir.aio import consumer as consumer_module
from weir.aio.admin import Admin
from weir.aio.consumer import Consumer
from weir.errors import NotLeaderError, TopicExistsError, UnavailableError, make_error
from weir.v1 import admin_pb2

pytestmark = pytest.mark.timeout(10)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


def order_from(start: str, addresses: list[str]) -> list[str]:
    i = addresses.index(start)
    return addresses[i:] + addresses[:i]


# -- errors --------------------------------------------------------------------


def test_not_leader_is_retriable_and_names_the_leader() -> None:
    error = make_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        "NOT_LEADER",
        "not the leader",
        {"leader_id": "2", "leader_address": "b:2"},
        retriable=False,
    )
    assert isinstance(error, NotLeaderError) and isinstance(error, UnavailableError)
    assert error.retriable
    assert (error.leader_id, error.leader_address) == (2, "b:2")
    unknown = make_error(grpc.StatusCode.UNAVAILABLE, "NOT_LEADER", "election under way")
    assert isinstance(unknown, NotLeaderError)
    assert (unknown.leader_id, unknown.leader_address) == (None, None)


# -- admin: unary calls ----------------------------------------------------------


class ScriptedAdmin:
    """AdminService stubs whose CreateTopic answers from a per-address script."""

    def __init__(self, script: dict[str, list[Exception | None]]) -> None:
        self.script = script
        self.calls: list[str] = []

    def stub(self, channel: FakeChannel) -> Any:
        admin = self

        class Stub:
            async def CreateTopic(self, request: Any, timeout: float) -> Any:  # noqa: ASYNC109
                admin.calls.append(channel.address)
                outcomes = admin.script.get(channel.address, [])
                outcome = outcomes.pop(0) if outcomes else None
                if outcome is not None:
                    raise outcome
                return admin_pb2.CreateTopicResponse(
                    topic=admin_pb2.Topic(name=request.name, partition_count=1)
                )

        return Stub()


def install_admin(monkeypatch: pytest.MonkeyPatch, scripted: ScriptedAdmin) -> None:
    monkeypatch.setattr(admin_module, "admin_stub", scripted.stub)


def test_admin_skips_a_node_that_does_not_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    up = {"a:1": False, "b:2": True, "c:3": True}
    nodes = FakeNodes(up).install(monkeypatch)
    scripted = ScriptedAdmin({})
    install_admin(monkeypatch, scripted)

    async def body() -> None:
        async with Admin("a:1,b:2,c:3", rng=random.Random(0)) as admin:
            for _ in range(3):
                assert (await admin.create_topic("t")).name == "t"
        # Whatever the start, a:1 never gets a call, and once on a live node
        # the client stays there.
        assert "a:1" not in scripted.calls
        assert len(set(scripted.calls)) == 1

    run(body)
    assert nodes.connects.count("a:1") <= 1


def test_admin_moves_on_unavailable_then_follows_not_leader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    addresses = ["a:1", "b:2", "c:3"]
    FakeNodes(dict.fromkeys([*addresses, "leader:9"], True)).install(monkeypatch)
    first = random.Random(0)
    start = addresses[first.randrange(3)]
    scripted = ScriptedAdmin(
        {
            start: [rpc_error(grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")],
            order_from(start, addresses)[1]: [
                rpc_error(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "NOT_LEADER",
                    leader_id="9",
                    leader_address="leader:9",
                )
            ],
        }
    )
    install_admin(monkeypatch, scripted)

    async def body() -> None:
        async with Admin(addresses, rng=random.Random(0)) as admin:
            await admin.create_topic("t")
            await admin.create_topic("u")

    run(body)
    assert scripted.calls == [start, order_from(start, addresses)[1], "leader:9", "leader:9"]


def test_create_retried_after_an_unknown_outcome_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FakeNodes({"a:1": True, "b:2": True}).install(monkeypatch)
    exists = rpc_error(grpc.StatusCode.ALREADY_EXISTS, "TOPIC_EXISTS")
    # The connection dies with the request sent (UNAVAILABLE without a
    # reason): the first node may have created the topic.
    dead = rpc_error(grpc.StatusCode.UNAVAILABLE)
    scripted = ScriptedAdmin({"a:1": [dead, exists], "b:2": [dead, exists]})
    install_admin(monkeypatch, scripted)

    async def body() -> None:
        async with Admin(["a:1", "b:2"]) as admin:
            with pytest.raises(TopicExistsError) as err:
                await admin.create_topic("t")
        assert err.value.metadata["after_unknown_outcome"] == "true"

    run(body)


def test_admin_gives_up_after_its_attempts_with_a_typed_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nodes = FakeNodes({"a:1": False, "b:2": False}).install(monkeypatch)
    install_admin(monkeypatch, ScriptedAdmin({}))

    async def body() -> None:
        async with Admin(["a:1", "b:2"], reconnect_attempts=2, retry_backoff_ms=1) as admin:
            with pytest.raises(UnavailableError) as err:
                await admin.create_topic("t")
        assert err.value.retriable and err.value.reason == "UNAVAILABLE"

    run(body)
    assert sorted(nodes.connects) == ["a:1", "a:1", "b:2", "b:2"]


def test_admin_waits_for_a_coordinator_without_using_attempts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The loop is the same for every method; CreateTopic stands in for the
    # group calls that can meet a coordinator group with no leader.
    FakeNodes({"a:1": True, "b:2": True}).install(monkeypatch)
    waiting = [rpc_error(grpc.StatusCode.UNAVAILABLE, "NOT_COORDINATOR") for _ in range(6)]
    scripted = ScriptedAdmin({"a:1": waiting[:3], "b:2": waiting[3:]})
    install_admin(monkeypatch, scripted)

    async def body() -> None:
        # One attempt per address would give up after the second answer.
        async with Admin(["a:1", "b:2"], reconnect_attempts=1, retry_backoff_ms=1) as admin:
            assert (await admin.create_topic("t")).name == "t"

    run(body)
    assert len(scripted.calls) == 7


def test_admin_raises_not_coordinator_once_its_wait_is_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FakeNodes({"a:1": True, "b:2": True}).install(monkeypatch)
    forever = [rpc_error(grpc.StatusCode.UNAVAILABLE, "NOT_COORDINATOR") for _ in range(10_000)]
    scripted = ScriptedAdmin({"a:1": forever, "b:2": list(forever)})
    install_admin(monkeypatch, scripted)

    async def body() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with Admin(
            ["a:1", "b:2"], retry_backoff_ms=1, coordinator_wait_timeout_ms=300
        ) as admin:
            with pytest.raises(UnavailableError) as err:
                await admin.create_topic("t")
        assert err.value.reason == "NOT_COORDINATOR"
        assert 0.3 <= loop.time() - started < 3.0

    run(body)
    assert len(scripted.calls) > 6  # more than the three attempts per address allow


def test_admin_refuses_a_negative_coordinator_wait() -> None:
    with pytest.raises(ValueError, match="coordinator_wait_timeout_ms"):
        Admin("a:1", coordinator_wait_timeout_ms=-1)


# -- producer: the sender --------------------------------------------------------


def test_a_dead_stream_moves_to_the_next_node_and_resends_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body() -> None:
        h = Harness(monkeypatch, up={"a:1": True, "b:2": True, "c:3": True})
        start = h.conn.address
        task = asyncio.create_task(h.sender.run())
        first = [await h.acc.append("t", 0, rec(b"a%d" % i), 1.0) for i in range(2)]
        r1 = await h.next_request(0)
        second = await h.acc.append("t", 0, rec(b"b"), 1.0)
        r2 = await h.next_request(0)
        assert h.calls[0].address == start
        await h.calls[0].responses.put(rpc_error(grpc.StatusCode.UNAVAILABLE))
        # Both unanswered batches go to the next node, in their order.
        again = [await h.next_request(1), await h.next_request(1)]
        assert h.calls[1].address == order_from(start, ["a:1", "b:2", "c:3"])[1]
        assert [r.batch for r in again] == [r1.batch, r2.batch]
        await h.calls[1].responses.put(answer(again[0], 10))
        await h.calls[1].responses.put(answer(again[1], 12))
        assert [(await f).offset for f in first] == [10, 11]
        assert (await second).offset == 12
        # A late answer from the old stream settles nothing twice.
        await h.calls[0].responses.put(answer(r1, 99))
        await asyncio.sleep(0.01)
        assert [(await f).offset for f in first] == [10, 11]
        h.acc.close()
        h.sender.stop()
        await task

    run(body)


def test_a_connection_lost_inside_grpc_core_is_retried_on_the_next_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # After a peer's kill -9 gRPC's core may end a call with a reason-less
    # INTERNAL; the broker never sends that, so it is a lost connection.
    async def body() -> None:
        h = Harness(monkeypatch, up={"a:1": True, "b:2": True})
        task = asyncio.create_task(h.sender.run())
        fut = await h.acc.append("t", 0, rec(b"a"), 1.0)
        await h.next_request(0)
        await h.calls[0].responses.put(
            rpc_error(grpc.StatusCode.INTERNAL, message="Internal error from Core")
        )
        retried = await h.next_request(1)
        assert h.calls[1].address != h.calls[0].address
        await h.calls[1].responses.put(answer(retried, 0))
        assert (await fut).offset == 0
        h.acc.close()
        h.sender.stop()
        await task

    run(body)


def test_a_failed_connect_moves_on_without_using_an_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body() -> None:
        # retries=0: one attempt per batch, yet a dead first node costs none.
        h = Harness(monkeypatch, up={"a:1": False, "b:2": False, "c:3": True}, retries=0)
        task = asyncio.create_task(h.sender.run())
        fut = await h.acc.append("t", 0, rec(b"a"), 1.0)
        request = await h.next_request(0)
        assert [c.address for c in h.calls] == ["c:3"]
        await h.calls[0].responses.put(answer(request, 5))
        assert (await fut).offset == 5
        h.acc.close()
        h.sender.stop()
        await task

    run(body)


def test_every_node_down_costs_attempts_per_round_and_then_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body() -> None:
        h = Harness(monkeypatch, up={"a:1": False, "b:2": False}, retries=1)
        task = asyncio.create_task(h.sender.run())
        fut = await h.acc.append("t", 0, rec(b"a"), 1.0)
        with pytest.raises(UnavailableError) as err:
            await fut
        assert err.value.reason == "UNAVAILABLE" and err.value.retriable
        # Two full rounds (the attempt and one retry), and no stream opened.
        assert h.nodes.connects.count("a:1") == h.nodes.connects.count("b:2") == 2
        assert h.calls == []
        h.acc.close()
        h.sender.stop()
        await task

    run(body)


def test_not_leader_naming_the_leader_retries_there_at_once_and_keeps_the_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body() -> None:
        h = Harness(monkeypatch, up={"a:1": True, "b:2": True, "leader:9": True})
        task = asyncio.create_task(h.sender.run())
        refused = await h.acc.append("t", 0, rec(b"a"), 1.0)
        r1 = await h.next_request(0)
        other = await h.acc.append("t", 1, rec(b"b"), 1.0)
        r2 = await h.next_request(0)
        await h.calls[0].responses.put(
            failure(
                r1,
                code=code_pb2.FAILED_PRECONDITION,
                reason="NOT_LEADER",
                metadata={"leader_id": "9", "leader_address": "leader:9"},
            )
        )
        # The refused batch goes to the leader at once, while the first
        # stream stays open for r2's answer (r2 was not in doubt: not resent).
        retried = await h.next_request(1)
        assert h.calls[1].address == "leader:9"
        assert retried.batch == r1.batch
        assert not h.calls[0].cancelled and not h.calls[0].written
        await h.calls[0].responses.put(answer(r2, 3))
        assert (await other).offset == 3
        await h.calls[1].responses.put(answer(retried, 0))
        assert (await refused).offset == 0
        assert "leader:9" in h.conn.nodes.addresses
        h.acc.close()
        h.sender.stop()
        await task

    run(body)


# -- consumer ------------------------------------------------------------------


class DyingConsumeCall(FakeConsumeCall):
    """A Consume call that delivers its first batches, then dies with `error`."""

    def __init__(self, first: list[bytes], error: Exception) -> None:
        super().__init__(first, [], record_bytes_max=100)
        self.error = error

    async def read(self) -> Any:
        if self._responses.empty() and self.requests:
            raise self.error
        return await super().read()


def test_consumer_resumes_on_the_next_node_after_the_last_record_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FakeNodes({"a:1": True, "b:2": True}).install(monkeypatch)
    calls: dict[str, FakeConsumeCall] = {}

    def open_call(channel: FakeChannel) -> FakeConsumeCall:
        if not calls:
            call: FakeConsumeCall = DyingConsumeCall(
                [batch(0, b"r0", b"r1", b"r2")], rpc_error(grpc.StatusCode.UNAVAILABLE)
            )
        else:
            call = FakeConsumeCall([batch(3, b"r3", b"r4")], [], record_bytes_max=100)
        calls[channel.address] = call
        return call

    monkeypatch.setattr(consumer_module, "consume_call", open_call)

    async def body() -> None:
        async with Consumer(["a:1", "b:2"], "t", rng=random.Random(3)) as consumer:
            got = []
            for _ in range(5):
                record = await consumer.poll(5.0)
                assert record is not None
                got.append((record.offset, record.value))
        # Buffered records first, then the next node from the position after
        # the last one taken: no gap, no repeat.
        assert got == [(i, b"r%d" % i) for i in range(5)]
        assert len(calls) == 2
        resubscribe = calls[consumer._conn.address].requests[0].subscribe
        assert dict(resubscribe.offsets) == {0: 3}

    run(body)


def test_consumer_start_skips_a_dead_first_node(monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = FakeNodes({"dead:1": False, "live:2": True}).install(monkeypatch)
    monkeypatch.setattr(
        consumer_module,
        "consume_call",
        lambda channel: FakeConsumeCall([batch(0, b"x")], [], record_bytes_max=100),
    )

    async def body() -> None:
        for seed in range(4):  # whichever node comes first
            async with Consumer("dead:1,live:2", "t", rng=random.Random(seed)) as consumer:
                record = await consumer.poll(5.0)
                assert record is not None and record.value == b"x"

    run(body)
    assert "dead:1" in nodes.connects
