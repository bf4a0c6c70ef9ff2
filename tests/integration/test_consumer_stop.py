"""Stopping an async consumer's iteration leaves it usable (issue 7, consumer robustness).

An application stops reading in one of three ways: it cancels the task that
runs `async for` (directly, or by a deadline around it), it `break`s out of
the loop, or another task calls `consumer.stop()`. In every case the stream
stays open under the consumer: `commit()` stores the position of the last
record the application took, iterating again continues right after it, and
`close()` ends cleanly. Each test drives a real `weir serve`.

The cancellation lands where the iterating task waits after the last record:
returning credit to the broker (a write on the stream) or waiting for the
next batch. gRPC's asyncio API cancels a whole call when a task awaiting
one of its writes is cancelled, which is what used to end the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading

import pytest

import weir
import weir.aio
from tests.support.aio import run
from tests.support.broker_process import BrokerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOPIC = "stops"
GROUP = "stoppers"
RECORDS = 40
# A small window, so that credit goes back on the stream every few records
# and the iterating task is often inside a write when it is cancelled.
WINDOW_MESSAGES = 4
WAIT_S = 20.0


async def produce(address: str, first: int, count: int) -> None:
    async with weir.aio.Producer(address, linger_ms=1) as producer:
        futures = [
            await producer.send(TOPIC, b"%d" % i, partition=0) for i in range(first, first + count)
        ]
        await asyncio.gather(*futures)


def consumer(address: str) -> weir.aio.Consumer:
    return weir.aio.Consumer(
        address,
        TOPIC,
        group=GROUP,
        start="earliest",
        max_outstanding_messages=WINDOW_MESSAGES,
        request_timeout_ms=WAIT_S * 1000,
    )


async def committed(address: str) -> int:
    """The group's committed offset of partition 0, as a new consumer starts from it."""
    async with weir.aio.Consumer(address, TOPIC, group=GROUP, start="latest") as fresh:
        return fresh.position(0)


async def continues_after(c: weir.aio.Consumer, address: str, offset: int) -> None:
    """Iterating again yields the records from `offset` on, then close() is clean."""
    await produce(address, RECORDS, 3)
    async with asyncio.timeout(WAIT_S):
        values = [(await anext(c)).value for _ in range(RECORDS + 3 - offset)]
    assert values == [b"%d" % i for i in range(offset, RECORDS + 3)]
    await c.close()


def create(address: str) -> None:
    with weir.Admin(address) as admin:
        admin.create_topic(TOPIC, 1)


def test_cancelling_the_iterating_task_keeps_the_stream(broker: BrokerProcess) -> None:
    create(broker.address)

    async def main() -> None:
        await produce(broker.address, 0, RECORDS)
        c = consumer(broker.address)
        await c.start()
        taken: list[int] = []
        rounds = 0
        while len(taken) < RECORDS:
            rounds += 1
            goal = min(len(taken) + 3, RECORDS)
            enough = asyncio.Event()

            async def iterate(goal: int = goal, enough: asyncio.Event = enough) -> None:
                async for record in c:
                    taken.append(record.offset)
                    if len(taken) >= goal:
                        # No await here: the loop goes straight on into
                        # __anext__ (taking what is buffered without an
                        # await), and the cancellation meets it where it
                        # first waits: returning credit, or for records.
                        enough.set()

            task = asyncio.create_task(iterate())
            async with asyncio.timeout(WAIT_S):
                await enough.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The stream is still there: a commit succeeds at once.
            assert await c.commit() == {0: len(taken)}
        assert rounds >= 3
        assert taken == list(range(RECORDS))
        assert await committed(broker.address) == RECORDS
        await continues_after(c, broker.address, RECORDS)

    run(main, timeout_s=100)


def test_a_deadline_around_async_for_keeps_the_stream(broker: BrokerProcess) -> None:
    create(broker.address)

    async def main() -> None:
        await produce(broker.address, 0, RECORDS)
        c = consumer(broker.address)
        await c.start()
        taken: list[int] = []
        # The loop reads everything, then waits for more until the deadline.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(3.0):
                async for record in c:
                    taken.append(record.offset)
        assert taken == list(range(RECORDS))
        assert await c.commit() == {0: RECORDS}
        # A commit cancelled while it writes does not end the stream either.
        for _ in range(3):
            cancelled = asyncio.create_task(c.commit())
            await asyncio.sleep(0)  # into its write
            cancelled.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cancelled
        assert await c.commit() == {0: RECORDS}
        await continues_after(c, broker.address, RECORDS)

    run(main, timeout_s=100)


def test_breaking_out_of_async_for_keeps_the_stream(broker: BrokerProcess) -> None:
    create(broker.address)

    async def main() -> None:
        await produce(broker.address, 0, RECORDS)
        async with consumer(broker.address) as c:
            taken: list[int] = []
            for stop_at in (9, 10, 25):
                async for record in c:
                    taken.append(record.offset)
                    if record.offset == stop_at:
                        break
                assert await c.commit() == {0: stop_at + 1}
            assert taken == list(range(26))
            assert await committed(broker.address) == 26
            await continues_after(c, broker.address, 26)

    run(main, timeout_s=100)


def test_stop_ends_async_for_from_another_task(broker: BrokerProcess) -> None:
    create(broker.address)

    async def main() -> None:
        await produce(broker.address, 0, RECORDS)
        async with consumer(broker.address) as c:
            taken: list[int] = []
            everything = asyncio.Event()

            async def iterate() -> None:
                async for record in c:
                    taken.append(record.offset)
                    if len(taken) == RECORDS:
                        everything.set()

            task = asyncio.create_task(iterate())
            async with asyncio.timeout(WAIT_S):
                await everything.wait()
            # The loop waits for more records; stop() ends it normally.
            c.stop()
            async with asyncio.timeout(WAIT_S):
                await task
            assert await c.commit() == {0: RECORDS}
            # Stopped for good: iterating again ends at once, poll() has nothing.
            assert [r async for r in c] == []
            assert await c.poll(0.1) is None
        assert await committed(broker.address) == RECORDS

    run(main, timeout_s=100)


# -- the blocking consumer ----------------------------------------------------


class Interrupted(Exception):
    """Raised in the main thread by a signal, as Ctrl-C raises KeyboardInterrupt."""


def blocking_consumer(address: str) -> weir.Consumer:
    return weir.Consumer(
        address,
        TOPIC,
        group=GROUP,
        start="earliest",
        max_outstanding_messages=WINDOW_MESSAGES,
        request_timeout_ms=WAIT_S * 1000,
    )


def test_blocking_consumer_break_stop_and_an_interrupted_wait(broker: BrokerProcess) -> None:
    create(broker.address)
    asyncio.run(produce(broker.address, 0, RECORDS))
    with blocking_consumer(broker.address) as c:
        # break, then commit.
        taken = []
        for record in c:
            taken.append(record.offset)
            if record.offset == 9:
                break
        assert c.commit() == {0: 10}

        # A wait for records that do not come, interrupted by an exception
        # (as Ctrl-C interrupts it), leaves no hole: the records that arrive
        # afterwards come with the next poll, in order.
        for _ in range(RECORDS - 10):
            record = c.poll(WAIT_S)
            assert record is not None
            taken.append(record.offset)

        def interrupt(signum: int, frame: object) -> None:
            raise Interrupted

        previous = signal.signal(signal.SIGUSR1, interrupt)
        timer = threading.Timer(
            0.5, signal.pthread_kill, (threading.main_thread().ident, signal.SIGUSR1)
        )
        try:
            timer.start()
            with pytest.raises(Interrupted):
                for record in c:
                    taken.append(record.offset)
        finally:
            timer.cancel()
            signal.signal(signal.SIGUSR1, previous)
        asyncio.run(produce(broker.address, RECORDS, 3))
        for _ in range(3):
            record = c.poll(WAIT_S)
            assert record is not None
            taken.append(record.offset)
        assert taken == list(range(RECORDS + 3))
        assert c.commit() == {0: RECORDS + 3}

        # stop() from another thread ends a waiting loop; commit still works.
        stopper = threading.Timer(0.5, c.stop)
        stopper.start()
        try:
            assert list(c) == []
        finally:
            stopper.cancel()
        assert c.commit() == {0: RECORDS + 3}
    assert asyncio.run(committed(broker.address)) == RECORDS + 3
