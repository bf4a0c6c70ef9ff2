"""A stream-mode SDK consumer started together with its cluster (issue 8).

Right after a cluster starts, its coordinator groups (docs/groups.md) do
not exist yet or have no leader, and every node answers a group's
subscribe with UNAVAILABLE `NOT_COORDINATOR` at once. A user who starts a
cluster, creates a topic and starts a group consumer in one script must
not see that: the SDK waits for the coordinator (`coordinator_wait_timeout_ms`,
docs/sdk.md) instead of spending its reconnect attempts in about a second.

The second case widens the window to a sure one: the cluster names a
fourth founder that never starts, so its controller creates the
coordinator groups only after `CREATE_WAIT_S` (5 s) instead of once every
founder registered. With the default reconnect attempts alone, the
consumer gave up after about 3 s.
"""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import pytest

import weir.aio
from tests.support.cluster_process import HOST, ClusterProcess, free_ports
from weir.server.cluster_coordinator import CREATE_WAIT_S

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

TOPIC = "orders"
GROUP = "billing"
PARTITIONS = 4
RECORDS = 40
BODY_TIMEOUT_S = 40.0


class StartingCluster(ClusterProcess):
    """Three nodes whose `--peers` may also name founders that never start."""

    def __init__(self, tmp_path: Path, founders_down: int) -> None:
        super().__init__(tmp_path, nodes=3)
        # Ports nothing listens on: the founders that are down.
        self._down = {4 + i: port for i, port in enumerate(free_ports(founders_down))}

    def peers_arg(self, node: int) -> str:
        down = "".join(f",{n}={HOST}:{port}" for n, port in self._down.items())
        return super().peers_arg(node) + down


async def consume_everything(addresses: list[str]) -> dict[int, list[int]]:
    """Creates the topic, then at once starts a group consumer and a producer; what was read."""
    async with weir.aio.Admin(addresses) as admin:
        await admin.create_topic(TOPIC, partitions=PARTITIONS)
    consumer = weir.aio.Consumer(addresses, TOPIC, group=GROUP, mode="stream", start="earliest")
    seen: dict[int, list[int]] = collections.defaultdict(list)

    async def read() -> None:
        async with consumer:
            while sum(len(offsets) for offsets in seen.values()) < RECORDS:
                record = await consumer.poll(BODY_TIMEOUT_S)
                assert record is not None, "no record"
                seen[record.partition].append(record.offset)

    reader = asyncio.create_task(read())
    async with weir.aio.Producer(addresses) as producer:
        for i in range(RECORDS):
            await producer.send(TOPIC, b"r%d" % i, partition=i % PARTITIONS)
        await producer.flush()
    await reader
    return seen


@pytest.mark.parametrize("founders_down", [0, 1], ids=["all-founders", "a-founder-down"])
def test_a_group_consumer_started_with_its_cluster_reads_every_record(
    tmp_path: Path, founders_down: int
) -> None:
    assert CREATE_WAIT_S < BODY_TIMEOUT_S / 2
    with StartingCluster(tmp_path, founders_down) as cluster:
        seen = asyncio.run(asyncio.wait_for(consume_everything(cluster.addresses), BODY_TIMEOUT_S))
    per_partition = RECORDS // PARTITIONS
    assert dict(seen) == {p: list(range(per_partition)) for p in range(PARTITIONS)}
