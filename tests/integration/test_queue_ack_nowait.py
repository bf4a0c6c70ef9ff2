"""`ack_nowait()` on three real nodes: every record acked without awaiting, none left behind.

A queue consumer on node 1 (two of the three partitions read through relays
to their leaders) acks each record on its own with `ack_nowait()`, as a
worker that needs no confirmation would, and closes. `close()` waits for
the answers, so right after it the queue has nothing ready or in flight
(a closed stream's unacked records would be ready again at once), and no
warning about a refused or unsettled ack was logged.

Then the same with the consumer's own node killed (-9) part-way: the
consumer moves to another node by itself, acks lost with the node only
bring their records again (at least once), and in the end every record
is acked and the queue is empty.
"""

from __future__ import annotations

import asyncio
import logging
import time

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


def test_acks_handed_over_survive_a_kill_of_the_consumers_node(cluster: ClusterProcess) -> None:
    wait_ready(cluster)
    create_topic(cluster, 1, TOPIC, PARTITIONS)
    wait_led_by(cluster, TOPIC, cluster.node_ids)
    victim: int | None = None

    async def body() -> set[bytes]:
        nonlocal victim
        async with weir.aio.Producer(cluster.addresses) as producer:
            for i in range(RECORDS):
                await producer.send(TOPIC, b"job-%d" % i, partition=i % PARTITIONS)
            await producer.flush()
        seen: set[bytes] = set()
        async with weir.aio.Consumer(
            cluster.addresses, TOPIC, group=GROUP, mode="queue", start="earliest",
            ack_deadline_ms=5_000, max_outstanding_messages=20,
        ) as consumer:  # fmt: skip
            async with asyncio.timeout(90):
                while len(seen) < RECORDS:
                    for record in await consumer.poll_batch(20, timeout_s=10):
                        seen.add(record.value)
                        consumer.ack_nowait(record)
                    if victim is None and len(seen) >= RECORDS // 3:
                        # The node the consumer reads from (an SDK internal,
                        # read here only to choose whom to kill).
                        address = consumer._conn.address
                        victim = next(n for n in cluster.node_ids if cluster.address(n) == address)
                        await asyncio.to_thread(cluster.kill, victim)
        return seen

    seen = asyncio.run(body())
    assert victim is not None and len(seen) == RECORDS
    survivor = next(n for n in cluster.node_ids if n != victim)

    async def settled() -> tuple[int, int, int, int]:
        # Records whose acks died with the node come back (at once, or after
        # their 5 s deadline) to nobody now: the queue shows them as ready,
        # and a last consumer acks them.
        async with asyncio.timeout(60):
            while True:
                async with weir.aio.Consumer(
                    cluster.address(survivor), TOPIC, group=GROUP, mode="queue",
                    start="earliest", ack_deadline_ms=5_000,
                ) as last:  # fmt: skip
                    for record in await last.poll_batch(RECORDS, timeout_s=1):
                        assert record.value in seen
                        last.ack_nowait(record)
                async with weir.aio.Admin(cluster.address(survivor)) as admin:
                    total = (await admin.queue_stats(TOPIC, GROUP)).total(GROUP)
                assert total is not None
                counts = (total.ready, total.in_flight, total.delayed, total.dead_lettered)
                if counts == (0, 0, 0, 0):
                    return counts
                await asyncio.sleep(0.5)

    started = time.monotonic()
    assert asyncio.run(settled()) == (0, 0, 0, 0)
    print(f"node {victim} killed; the queue settled {time.monotonic() - started:.1f} s later")
