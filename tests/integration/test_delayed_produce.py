"""Producing delayed records with the SDK to a real single node (issue 8).

The record keeps its `deliver_at_ms` as stored (a raw consumer reads it
back), the broker indexes it, and bad delays are refused: a negative one by
the SDK before it is sent, one beyond the topic's retention by the broker,
which then writes nothing of that batch.
"""

from __future__ import annotations

import asyncio
import time

import pytest

import weir
import weir.aio
from tests.support.broker_process import BrokerProcess
from tests.support.raw_client import RawClient, read_partition
from weir.errors import InvalidArgumentError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

DAY_MS = 86_400_000


def test_delayed_records_are_stored_with_their_time_and_bad_ones_refused(
    broker: BrokerProcess,
) -> None:
    with weir.Admin(broker.address) as admin:
        admin.create_topic("jobs", 1, retention_ms=DAY_MS)
    now_ms = int(time.time() * 1000)

    async def produce() -> None:
        async with weir.aio.Producer(broker.address, linger_ms=0) as producer:
            first = await producer.send("jobs", b"later", deliver_at_ms=now_ms + 60_000)
            second = await producer.send("jobs", b"now")
            third = await producer.send("jobs", b"k", key=b"k", deliver_at_ms=now_ms + 5)
            assert [(await f).offset for f in (first, second, third)] == [0, 1, 2]
            with pytest.raises(InvalidArgumentError) as refused:
                await producer.send("jobs", b"bad", deliver_at_ms=-1)
            assert refused.value.reason == "INVALID_DELIVER_AT"
            too_late = await producer.send("jobs", b"too late", deliver_at_ms=now_ms + 2 * DAY_MS)
            with pytest.raises(InvalidArgumentError) as beyond:
                await too_late
            assert beyond.value.reason == "DELIVER_AT_BEYOND_RETENTION"

    asyncio.run(produce())
    with weir.Producer(broker.address) as producer:
        assert producer.send("jobs", b"sync", deliver_at_ms=now_ms + 7).result(20).offset == 3

    with RawClient(broker.address) as client:
        records = read_partition(client, "jobs", 0)
    assert [(r.value, r.deliver_at_ms) for r in records] == [
        (b"later", now_ms + 60_000),
        (b"now", 0),
        (b"k", now_ms + 5),
        (b"sync", now_ms + 7),
    ]
