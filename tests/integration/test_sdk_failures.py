"""The SDK when the broker goes away: bounded waits, retries, typed errors, no hangs."""

from __future__ import annotations

import asyncio
import random

import pytest

import weir
import weir.aio
from tests.support.broker_process import BrokerProcess
from weir.errors import BufferFullError, ClosedError, UnavailableError, WeirError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_producer_retries_across_a_broker_restart(broker: BrokerProcess) -> None:
    with weir.Admin(broker.address) as admin:
        admin.create_topic("survive")

    async def body() -> None:
        async with weir.aio.Producer(
            broker.address,
            retries=50,
            retry_backoff_ms=50,
            retry_backoff_max_ms=500,
            rng=random.Random(1),
        ) as producer:
            first = await producer.send("survive", b"before")
            assert (await first).offset == 0
            broker.kill()
            pending = await producer.send("survive", b"during")
            await asyncio.sleep(0.5)
            assert not pending.done()
            await asyncio.to_thread(broker.start)
            assert (await asyncio.wait_for(pending, 30)).offset == 1

    asyncio.run(body())


def test_full_buffer_raises_after_its_deadline_and_close_does_not_hang(
    broker: BrokerProcess,
) -> None:
    with weir.Admin(broker.address) as admin:
        admin.create_topic("stuck")

    async def body() -> None:
        producer = weir.aio.Producer(
            broker.address,
            buffer_bytes_max=4096,
            batch_bytes_max=1024,
            buffer_wait_timeout_ms=200,
            retries=1_000,
            retry_backoff_ms=50,
        )
        async with producer:
            await producer.partitions_for("stuck")  # cache metadata before the kill
            broker.kill()
            futures = []
            with pytest.raises(BufferFullError):
                for _ in range(100):
                    futures.append(await producer.send("stuck", b"x" * 500))
            assert 0 < len(futures) <= 8
            await producer.close(timeout_s=0.5)
        for fut in futures:
            with pytest.raises(ClosedError):
                await fut

    asyncio.run(body())


def test_retries_exhausted_fail_with_the_retriable_error(broker: BrokerProcess) -> None:
    with weir.Admin(broker.address) as admin:
        admin.create_topic("gone")
    with weir.Producer(broker.address, retries=2, retry_backoff_ms=20) as producer:
        producer.partitions_for("gone")
        broker.kill()
        future = producer.send("gone", b"x")
        with pytest.raises(UnavailableError) as err:
            future.result(30)
        assert err.value.retriable


def test_consumer_resubscribes_after_a_broker_restart(broker: BrokerProcess) -> None:
    with weir.Admin(broker.address) as admin:
        admin.create_topic("resume")
    with weir.Producer(broker.address) as producer:
        for i in range(10):
            producer.send("resume", b"%d" % i)
        producer.flush()

    async def body() -> None:
        async with weir.aio.Consumer(
            broker.address,
            "resume",
            start="earliest",
            reconnect_attempts=20,
            retry_backoff_ms=100,
            rng=random.Random(2),
        ) as consumer:
            for i in range(5):
                record = await consumer.poll(5.0)
                assert record is not None and record.offset == i
            await asyncio.to_thread(broker.restart)
            rest = []
            while len(rest) < 5:
                record = await consumer.poll(20.0)
                assert record is not None
                rest.append(record.offset)
            # Records buffered before the crash come first, then the
            # re-subscription continues where the iterator stood: no gap.
            assert rest == [5, 6, 7, 8, 9]

    asyncio.run(body())


def test_every_public_failure_is_a_weir_error(broker: BrokerProcess) -> None:
    address = broker.address
    broker.kill()
    with pytest.raises(WeirError):
        weir.Consumer(address, "anything", request_timeout_ms=2_000)
    with weir.Producer(address, request_timeout_ms=2_000) as producer, pytest.raises(WeirError):
        producer.send("anything", b"x").result(10)
