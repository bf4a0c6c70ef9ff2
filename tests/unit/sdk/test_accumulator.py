"""The accumulator bounds bytes, batches per partition, and waits with a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from weir.aio.accumulator import Accumulator, ByteBudget, framed_size
from weir.errors import BufferFullError, ClosedError, RecordTooLargeError, UnavailableError
from weir.v1 import records_pb2

pytestmark = pytest.mark.timeout(10)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


def record(nbytes: int) -> bytes:
    """The wire form of a record whose encoded size is exactly `nbytes` (for small sizes)."""
    rec = records_pb2.Record(value=b"x" * (nbytes - 2))
    assert rec.ByteSize() == nbytes
    return rec.SerializeToString()


def test_budget_holds_its_bound_and_fails_after_the_deadline() -> None:
    async def body() -> None:
        budget = ByteBudget(100)
        await budget.acquire(60, 1.0)
        await budget.acquire(40, 1.0)
        assert budget.used_bytes == 100
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(BufferFullError):
            await budget.acquire(1, 0.05)
        assert loop.time() - started >= 0.05
        assert budget.used_bytes == 100  # the failed wait took nothing
        budget.release(60)
        await budget.acquire(50, 0.0)
        assert budget.used_bytes == 90

    run(body)


def test_budget_wakes_waiters_in_order() -> None:
    async def body() -> None:
        budget = ByteBudget(100)
        await budget.acquire(100, 1.0)
        order: list[int] = []

        async def take(n: int) -> None:
            await budget.acquire(n, 1.0)
            order.append(n)

        big = asyncio.create_task(take(80))
        await asyncio.sleep(0)
        small = asyncio.create_task(take(10))
        await asyncio.sleep(0)
        budget.release(15)  # 10 would fit, but the 80 waiting first goes first
        await asyncio.sleep(0)
        assert order == []
        budget.release(85)
        await asyncio.gather(big, small)
        assert order == [80, 10]
        assert budget.used_bytes == 90

    run(body)


def test_record_larger_than_the_buffer_fails_at_once() -> None:
    async def body() -> None:
        budget = ByteBudget(100)
        with pytest.raises(RecordTooLargeError):
            await budget.acquire(101, 10.0)

    run(body)


def test_append_waits_for_space_then_raises_buffer_full() -> None:
    async def body() -> None:
        acc = Accumulator(batch_bytes_max=1000, buffer_bytes_max=100, linger_s=60)
        await acc.append("t", 0, record(50), 1.0)
        await acc.append("t", 1, record(50), 1.0)
        with pytest.raises(BufferFullError):
            await acc.append("t", 0, record(10), 0.05)
        # Settling a batch frees its bytes and the next append goes through.
        (batch,) = acc.drain(asyncio.get_running_loop().time() + 61, 1)
        waiter = asyncio.create_task(acc.append("t", 0, record(10), 1.0))
        await asyncio.sleep(0)
        assert not waiter.done()
        acc.complete(batch, [7], batch.partition)
        assert (await batch.future(0)).offset == 7
        await waiter
        assert acc.budget.used_bytes == 60

    run(body)


def test_batches_are_bounded_in_bytes_and_per_partition() -> None:
    async def body() -> None:
        size = 40
        per_batch = 200 // framed_size(size)
        acc = Accumulator(batch_bytes_max=200, buffer_bytes_max=10_000, linger_s=60)
        for _ in range(per_batch * 2 + 1):
            await acc.append("t", 0, record(size), 1.0)
        await acc.append("t", 1, record(size), 1.0)
        now = asyncio.get_running_loop().time()
        # Two full batches of partition 0 are ready; the open ones linger.
        ready = acc.drain(now, 10)
        assert [(b.partition, b.count) for b in ready] == [(0, per_batch)] * 2
        assert all(b.framed_bytes <= 200 for b in ready)
        later = acc.drain(now + 60, 10)
        assert sorted((b.partition, b.count) for b in later) == [(0, 1), (1, 1)]

    run(body)


def test_drain_respects_the_inflight_limit_and_requeue_keeps_order() -> None:
    async def body() -> None:
        acc = Accumulator(batch_bytes_max=50, buffer_bytes_max=10_000, linger_s=0)
        for _ in range(3):
            await acc.append("t", 0, record(45), 1.0)
        now = asyncio.get_running_loop().time()
        first = acc.drain(now, 2)
        assert len(first) == 2
        acc.requeue(first, now + 1.0)
        assert acc.drain(now, 10) == []  # the head waits for its retry time
        assert acc.next_ready_s() == pytest.approx(now + 1.0)
        again = acc.drain(now + 1.0, 10)
        assert again[:2] == first and len(again) == 3

    run(body)


def test_flush_makes_lingering_batches_ready() -> None:
    async def body() -> None:
        acc = Accumulator(batch_bytes_max=1000, buffer_bytes_max=10_000, linger_s=60)
        fut = await acc.append("t", 0, record(10), 1.0)
        now = asyncio.get_running_loop().time()
        assert acc.drain(now, 10) == []
        flushing = asyncio.create_task(acc.flush())
        await asyncio.sleep(0)
        (batch,) = acc.drain(now, 10)
        assert not flushing.done()
        acc.complete(batch, [0], 0)
        await flushing
        assert (await fut).offset == 0

    run(body)


def test_close_with_error_fails_every_waiter() -> None:
    async def body() -> None:
        acc = Accumulator(batch_bytes_max=1000, buffer_bytes_max=100, linger_s=60)
        fut = await acc.append("t", 0, record(100), 1.0)
        waiter = asyncio.create_task(acc.append("t", 0, record(10), 5.0))
        await asyncio.sleep(0)
        acc.close(UnavailableError("sender died"))
        with pytest.raises(UnavailableError):
            await fut
        with pytest.raises(UnavailableError):
            await waiter
        with pytest.raises(ClosedError):
            await acc.append("t", 0, record(10), 1.0)
        assert acc.budget.used_bytes == 0
        assert not acc.has_unsettled

    run(body)


def test_scarce_inflight_slots_rotate_over_partitions() -> None:
    async def body() -> None:
        acc = Accumulator(batch_bytes_max=50, buffer_bytes_max=10_000, linger_s=0)
        for _ in range(3):
            for partition in (0, 1, 2):
                await acc.append("t", partition, record(45), 1.0)
        now = asyncio.get_running_loop().time()
        taken = [acc.drain(now, 1)[0].partition for _ in range(6)]
        assert sorted(taken[:3]) == [0, 1, 2]
        assert sorted(taken[3:]) == [0, 1, 2]

    run(body)
