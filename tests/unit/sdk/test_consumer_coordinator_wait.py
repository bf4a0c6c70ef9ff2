"""The consumer waits for an election elsewhere (NOT_COORDINATOR, RELAY_FAILED) up to its deadline.

Against scripted nodes (tests/unit/sdk/fakes.py): NOT_COORDINATOR answers
use no reconnect attempt and are retried until `coordinator_wait_timeout_ms`
has passed since the first of them; any success starts the wait again;
other retriable errors still count attempts.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import grpc
import pytest

from tests.unit.sdk.fakes import FakeNodes, rpc_error
from tests.unit.sdk.test_consumer import FakeConsumeCall, batch
from weir._failover import Connection
from weir.aio import consumer as consumer_module
from weir.aio._consumer_failover import Failover
from weir.aio.consumer import Consumer
from weir.errors import UnavailableError, WeirError, make_error

pytestmark = pytest.mark.timeout(10)

ADDRESSES = ["a:1", "b:2"]


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


def not_coordinator() -> WeirError:
    return make_error(grpc.StatusCode.UNAVAILABLE, "NOT_COORDINATOR", "no leader now")


class RefusingCall(FakeConsumeCall):
    """A Consume call whose subscribe is answered with `error`."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        super().__init__([], [], record_bytes_max=100)
        self.error = error

    async def read(self) -> object:
        raise self.error


def script_calls(monkeypatch: pytest.MonkeyPatch, refusals: int | None) -> list[str]:
    """The first `refusals` subscribes (all if None) answer NOT_COORDINATOR; the rest a record."""
    FakeNodes(dict.fromkeys(ADDRESSES, True)).install(monkeypatch)
    opened: list[str] = []

    def open_call(channel: object) -> FakeConsumeCall:
        opened.append(getattr(channel, "address", ""))
        if refusals is None or len(opened) <= refusals:
            return RefusingCall(rpc_error(grpc.StatusCode.UNAVAILABLE, "NOT_COORDINATOR"))
        return FakeConsumeCall([batch(0, b"x")], [], record_bytes_max=100)

    monkeypatch.setattr(consumer_module, "consume_call", open_call)
    return opened


def test_not_coordinator_uses_no_reconnect_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    # One attempt per address would give up after the second refusal.
    opened = script_calls(monkeypatch, refusals=12)

    async def body() -> None:
        async with Consumer(
            ADDRESSES,
            "t",
            group="g",
            reconnect_attempts=1,
            retry_backoff_ms=1,
            rng=random.Random(1),
        ) as consumer:
            record = await consumer.poll(5.0)
            assert record is not None and record.value == b"x"

    run(body)
    assert len(opened) == 13


def test_not_coordinator_is_raised_once_the_wait_is_over(monkeypatch: pytest.MonkeyPatch) -> None:
    opened = script_calls(monkeypatch, refusals=None)

    async def body() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        consumer = Consumer(
            ADDRESSES,
            "t",
            group="g",
            reconnect_attempts=1,
            retry_backoff_ms=1,
            coordinator_wait_timeout_ms=300,
            rng=random.Random(2),
        )
        with pytest.raises(UnavailableError) as raised:
            await consumer.start()
        waited = loop.time() - started
        assert raised.value.reason == "NOT_COORDINATOR"
        assert 0.3 <= waited < 3.0, waited

    run(body)
    assert len(opened) > 2  # more than the reconnect attempts allow


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def failover(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> Failover:
    FakeNodes(dict.fromkeys(ADDRESSES, True)).install(monkeypatch)
    conn = Connection(ADDRESSES, rng=random.Random(3), backoff_ms=0, backoff_max_ms=0)
    return Failover(conn, reconnect_attempts=1, coordinator_wait_timeout_s=10.0, clock=clock)


def test_the_wait_counts_from_the_first_refusal_and_a_success_starts_it_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    moves = failover(monkeypatch, clock)

    async def body() -> None:
        await moves.move_on(ADDRESSES[0], not_coordinator())
        clock.now += 9.9
        await moves.move_on(ADDRESSES[1], not_coordinator())
        clock.now += 0.1
        with pytest.raises(UnavailableError, match="NOT_COORDINATOR"):
            await moves.move_on(ADDRESSES[0], not_coordinator())
        moves.succeeded(ADDRESSES[0])
        await moves.move_on(ADDRESSES[0], not_coordinator())
        assert moves.failures == 0

    run(body)


def test_other_errors_still_use_attempts_during_a_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    moves = failover(monkeypatch, clock)
    lost = UnavailableError("the connection was lost")

    async def body() -> None:
        await moves.move_on(ADDRESSES[0], not_coordinator())
        await moves.move_on(ADDRESSES[1], lost)
        await moves.move_on(ADDRESSES[0], not_coordinator())
        await moves.move_on(ADDRESSES[1], lost)
        assert moves.failures == 2  # one attempt per address, two addresses
        with pytest.raises(UnavailableError, match="lost"):
            await moves.move_on(ADDRESSES[0], lost)
        await moves.move_on(ADDRESSES[0], not_coordinator())  # still within its wait

    run(body)


def test_a_negative_wait_is_refused() -> None:
    with pytest.raises(ValueError, match="coordinator_wait_timeout_ms"):
        Consumer("a:1", "t", group="g", coordinator_wait_timeout_ms=-1)


@pytest.mark.parametrize("reason", ["RELAY_FAILED", "RELAY_ENDED"])
def test_a_relay_that_cannot_reach_a_leader_is_waited_for_too(
    monkeypatch: pytest.MonkeyPatch, reason: str
) -> None:
    # A node died and its partitions' successors are not elected yet: every
    # survivor answers this, so it must not use up the attempts.
    clock = Clock()
    moves = failover(monkeypatch, clock)
    relay_down = make_error(grpc.StatusCode.UNAVAILABLE, reason, "connection refused")

    async def body() -> None:
        for i in range(20):
            await moves.move_on(ADDRESSES[i % 2], relay_down)
            clock.now += 0.4
        assert moves.failures == 0
        clock.now += 2.0  # 10 s since the first
        with pytest.raises(UnavailableError, match=reason):
            await moves.move_on(ADDRESSES[0], relay_down)

    run(body)
