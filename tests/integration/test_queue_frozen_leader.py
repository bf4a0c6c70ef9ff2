"""A queue consumer keeps reading a partition whose leader froze (SIGSTOP), on three real nodes.

A frozen process keeps its connections open and answers nothing, so the
relay that a consumer's node runs to the partition's leader (queue mode is
served by partition leaders) would wait on it for as long as it stays
frozen. The other nodes elect a new leader within seconds; the node that
relays hears of it and abandons the relay for one to the new leader
(server/queue_relay.py, "Ending"). Records produced to the new leader
reach the consumer while the old one is still frozen.
"""

from __future__ import annotations

import asyncio
import time

import pytest

import weir.aio
from tests.integration.test_cluster_replication import (
    create_topic,
    leaders,
    wait_led_by,
    wait_ready,
)
from tests.support.cluster_process import ClusterProcess
from tests.support.raw_client import RawClient, request

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOPIC = "jobs"
GROUP = "workers"
PARTITIONS = 3
BEFORE = 30
DURING = 30
ELECTION_DEADLINE_S = 30.0
# From the new leader's election to the consumer holding every new record.
DELIVERY_DEADLINE_S = 20.0


def test_records_of_a_partition_whose_leader_froze_reach_a_consumer_on_another_node(
    cluster: ClusterProcess,
) -> None:
    wait_ready(cluster)
    create_topic(cluster, 1, TOPIC, PARTITIONS)
    wait_led_by(cluster, TOPIC, cluster.node_ids)
    led = leaders(cluster.address(1), TOPIC)
    reader = 1
    partition = next(p for p in range(PARTITIONS) if led[p] != reader)
    victim = led[partition]
    others = [n for n in cluster.node_ids if n != victim]

    async def consume(consumer: weir.aio.Consumer, prefix: bytes, count: int) -> None:
        got: set[bytes] = set()
        while len(got) < count:
            for record in await consumer.poll_batch(100, timeout_s=1):
                if record.value.startswith(prefix):
                    got.add(record.value)
                consumer.ack_nowait(record)

    async def body() -> None:
        with RawClient(cluster.address(reader)) as raw:
            answers = list(
                raw.produce(
                    request(TOPIC, [b"before-%d" % i], request_id=i + 1, partition=i % PARTITIONS)
                    for i in range(BEFORE)
                )
            )
        assert all(not a.HasField("error") for a in answers), answers
        async with weir.aio.Consumer(
            [cluster.address(reader)], TOPIC, group=GROUP, mode="queue", start="earliest"
        ) as consumer:
            async with asyncio.timeout(30):
                await consume(consumer, b"before-", BEFORE)
            cluster.pause(victim)
            try:
                await asyncio.to_thread(
                    cluster.wait_until,
                    lambda: leaders(cluster.address(others[0]), TOPIC)[partition] in others,
                    ELECTION_DEADLINE_S,
                    f"a new leader of partition {partition} while node {victim} is frozen",
                )
                elected_at = time.monotonic()
                leader = leaders(cluster.address(others[0]), TOPIC)[partition]
                with RawClient(cluster.address(leader)) as raw:
                    answers = list(
                        raw.produce(
                            request(
                                TOPIC, [b"during-%d" % i], request_id=i + 1, partition=partition
                            )
                            for i in range(DURING)
                        )
                    )
                assert all(not a.HasField("error") for a in answers), answers
                async with asyncio.timeout(DELIVERY_DEADLINE_S):
                    await consume(consumer, b"during-", DURING)
                print(
                    f"node {victim} frozen; the new records of partition {partition} reached "
                    f"the consumer {time.monotonic() - elected_at:.1f} s after node {leader} led it"
                )
            finally:
                cluster.resume(victim)

    asyncio.run(body())
