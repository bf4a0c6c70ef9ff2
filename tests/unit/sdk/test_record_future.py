"""RecordFuture behaves as an asyncio future for await, gather, wait_for, callbacks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from weir.aio.accumulator import Accumulator
from weir.aio.batch import RecordFuture
from weir.errors import UnavailableError
from weir.types import RecordMetadata

pytestmark = pytest.mark.timeout(10)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


async def three() -> tuple[Accumulator, list[RecordFuture]]:
    acc = Accumulator(batch_bytes_max=1000, buffer_bytes_max=10_000, linger_s=60)
    futs = [await acc.append("t", 2, b"\x12\x01x", 1.0) for _ in range(3)]
    return acc, futs


def test_await_and_gather_resolve_from_the_batch() -> None:
    async def body() -> None:
        acc, futs = await three()
        assert all(asyncio.isfuture(f) and not f.done() for f in futs)
        seen: list[RecordMetadata] = []
        futs[1].add_done_callback(lambda f: seen.append(f.result()))
        gathered = asyncio.ensure_future(asyncio.gather(*futs))
        (batch,) = acc.drain(asyncio.get_running_loop().time() + 61, 1)
        acc.complete(batch, range(10, 13), 2)
        assert await futs[0] == RecordMetadata("t", 2, 10)
        assert await gathered == [RecordMetadata("t", 2, o) for o in (10, 11, 12)]
        assert seen == [RecordMetadata("t", 2, 11)]

    run(body)


def test_failure_reaches_every_record() -> None:
    async def body() -> None:
        acc, futs = await three()
        (batch,) = acc.drain(asyncio.get_running_loop().time() + 61, 1)
        acc.fail(batch, UnavailableError("gone"))
        for fut in futs:
            assert isinstance(fut.exception(), UnavailableError)
            with pytest.raises(UnavailableError):
                await fut

    run(body)


def test_wait_for_times_out_and_cancels_only_that_record() -> None:
    async def body() -> None:
        acc, futs = await three()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(futs[0], 0.01)
        assert futs[0].cancelled() and not futs[1].done()
        (batch,) = acc.drain(asyncio.get_running_loop().time() + 61, 1)
        acc.complete(batch, range(3), 2)
        assert (await futs[1]).offset == 1
        with pytest.raises(asyncio.CancelledError):
            futs[0].result()

    run(body)
