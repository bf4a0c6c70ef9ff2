"""The consumer's writes keep their order and survive their callers' cancellation."""

from __future__ import annotations

import asyncio

import pytest

from weir.aio._consumer_stream import Subscription
from weir.aio._consumer_writer import Writer
from weir.v1 import broker_pb2

pytestmark = pytest.mark.timeout(10)


class SlowCall:
    """A stream call whose writes finish only when the test lets them.

    Like grpc.aio's, a write cancelled while it waits cancels the whole call.
    """

    def __init__(self) -> None:
        self.written: list[int] = []
        self.cancelled = False
        self.proceed = asyncio.Event()

    async def write(self, request: broker_pb2.ConsumeRequest) -> None:
        try:
            await self.proceed.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.written.append(request.credit.messages)

    def cancel(self) -> bool:
        self.cancelled = True
        return True

    def done(self) -> bool:
        return self.cancelled


def credit(messages: int) -> broker_pb2.ConsumeRequest:
    return broker_pb2.ConsumeRequest(credit=broker_pb2.Credit(messages=messages))


def test_a_cancelled_caller_leaves_its_write_to_finish_in_order() -> None:
    async def main() -> None:
        call = SlowCall()
        sub = Subscription(call=call, address="node:1")  # type: ignore[arg-type]
        writer = Writer()
        first = asyncio.create_task(writer.write(sub, credit(1)))
        await asyncio.sleep(0)  # into the write
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        writer.start(sub, credit(2))  # started without waiting, as credit is
        third = asyncio.create_task(writer.write(sub, credit(3)))
        assert not await writer.drain(0.01)
        call.proceed.set()
        await third
        assert await writer.drain(1.0)
        # The call was never cancelled, and every request went out in order.
        assert not call.cancelled
        assert call.written == [1, 2, 3]

    asyncio.run(main())
