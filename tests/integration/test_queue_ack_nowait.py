"""`ack_nowait()` on three real nodes: every record acked without awaiting, none left behind.

A queue consumer on node 1 (two of the three partitions read through relays
to their leaders) acks each record on its own with `ack_nowait()`, as a
worker that needs no confirmation would, and closes. `close()` waits for
the answers, so right after it the queue has nothing ready or in flight
(a closed stream's unacked records would be ready again at once), and no
warning about a refused or unsettled ack was logged.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

import weir.aio
from tests.integration.test_cluster_replication import create_topic, wait_led_by, wait_ready
from tests.support.cluster_process import ClusterProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOPIC = "jobs"
GROUP = "workers"
PARTITIONS = 3
RECORDS = 600


def test_acks_handed_over_without_waiting_all_land_before_close_returns(
    cluster: ClusterProcess, caplog: pytest.LogCaptureFixture
) -> None:
    wait_ready(cluster)
    create_topic(cluster, 1, TOPIC, PARTITIONS)
    wait_led_by(cluster, TOPIC, cluster.node_ids)
    address = cluster.address(1)

    async def body() -> None:
        async with weir.aio.Producer(cluster.addresses) as producer:
            for i in range(RECORDS):
                await producer.send(TOPIC, b"job-%d" % i, partition=i % PARTITIONS)
            await producer.flush()
        seen: set[bytes] = set()
        async with weir.aio.Consumer(
            address, TOPIC, group=GROUP, mode="queue", start="earliest"
        ) as consumer:
            async with asyncio.timeout(60):
                while len(seen) < RECORDS:
                    for record in await consumer.poll_batch(100, timeout_s=10):
                        seen.add(record.value)
                        consumer.ack_nowait(record)
        assert len(seen) == RECORDS
        async with weir.aio.Admin(address) as admin:
            stats = await admin.queue_stats(TOPIC, GROUP)
        total = stats.total(GROUP)
        assert total is not None
        assert (total.ready, total.in_flight, total.delayed, total.dead_lettered) == (0, 0, 0, 0)

    with caplog.at_level(logging.WARNING, logger="weir.consumer"):
        asyncio.run(body())
    assert not [r for r in caplog.records if r.name == "weir.consumer"], caplog.text
