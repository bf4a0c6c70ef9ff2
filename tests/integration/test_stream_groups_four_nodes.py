"""Stream-mode groups on four nodes with replication factor 3 (issue 8).

Each node holds a replica of three partitions in four, so a member served
by a node is sometimes assigned a partition that node has no replica of.
The node reads it from a node that has one (a relay,
server/consume_relay.py `RelayedLog`): the member consumes whatever it is
assigned, as a Kafka consumer would. Before, its stream ended with
REPLICA_NOT_AVAILABLE, and again on every node it moved to.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Callable

import pytest

import weir.aio
from tests.integration.test_cluster_replication import wait_ready
from tests.support.cluster_process import ClusterProcess
from tests.support.raw_client import RawClient, request

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOPIC = "events"
GROUP = "analytics"
PARTITIONS = 12
RECORDS_PER_PARTITION = 30
ROUNDS = 3
PRODUCE_DEADLINE_S = 30.0
BODY_TIMEOUT_S = 90.0


async def run_group(addresses: list[str], members: int) -> dict[str, list[tuple[int, int]]]:
    """`members` consumers, each bootstrapped on another node, read what a producer writes."""
    async with weir.aio.Admin(addresses) as admin:
        await admin.create_topic(TOPIC, partitions=PARTITIONS, replication_factor=3)
    total = PARTITIONS * RECORDS_PER_PARTITION
    seen: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
    processed: set[tuple[int, int]] = set()
    done = asyncio.Event()

    async def member(index: int) -> None:
        name = f"m{index}"
        # Each member starts at another node; the rest of the list is failover.
        bootstrap = addresses[index:] + addresses[:index]
        async with weir.aio.Consumer(
            bootstrap, TOPIC, group=GROUP, mode="stream", start="earliest"
        ) as consumer:
            while not done.is_set():
                record = await consumer.poll(0.2)
                if record is not None:
                    seen[name].append((record.partition, record.offset))
                    processed.add((record.partition, record.offset))
                    if len(processed) == total:
                        done.set()

    tasks = [asyncio.create_task(member(i)) for i in range(members)]
    for round_ in range(ROUNDS):
        await asyncio.to_thread(produce_round, addresses, round_)
    waiter = asyncio.create_task(done.wait())
    finished, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in finished:
        if task is not waiter:
            task.result()  # a member that failed fails the test with its error
    done.set()
    await asyncio.gather(*tasks)
    return seen


def produce_round(addresses: list[str], round_: int) -> None:
    """A batch of `RECORDS_PER_PARTITION // ROUNDS` records to every partition, retried until stored.

    Produced with the generated stubs, trying the nodes in turn. A node
    with no replica of a partition forwards to the leader it guesses and
    may answer NOT_LEADER naming the leader (test_four_nodes_any_node.py);
    the next attempt goes to another node.
    """
    per_batch = RECORDS_PER_PARTITION // ROUNDS
    deadline = time.monotonic() + PRODUCE_DEADLINE_S
    clients = [RawClient(address) for address in addresses]
    try:
        for partition in range(PARTITIONS):
            values = [b"p%d-r%d-%d" % (partition, round_, i) for i in range(per_batch)]
            for attempt in itertools.count():
                client = clients[(partition + attempt) % len(clients)]
                answer = client.produce_one(request(TOPIC, values, partition=partition))
                if not answer.HasField("error"):
                    break
                assert answer.error.retriable and time.monotonic() < deadline, answer.error
                time.sleep(0.1)
    finally:
        for client in clients:
            client.close()


def check_every_record_in_order(seen: dict[str, list[tuple[int, int]]]) -> None:
    processed: dict[int, set[int]] = collections.defaultdict(set)
    for name, records in seen.items():
        last: dict[int, int] = {}
        for partition, offset in records:
            # Within one ownership a partition moves forward by one; a new
            # ownership after a rebalance may start lower (at least once).
            previous = last.get(partition)
            assert previous is None or offset == previous + 1 or offset <= previous, (
                f"{name}: partition {partition} skipped from {previous} to {offset}"
            )
            last[partition] = offset
            processed[partition].add(offset)
    for p in range(PARTITIONS):
        assert processed[p] == set(range(RECORDS_PER_PARTITION)), (p, sorted(processed[p]))


@pytest.mark.slow
@pytest.mark.parametrize("members", [2, 3])
def test_a_group_on_four_nodes_reads_partitions_its_nodes_have_no_replica_of(
    make_cluster: Callable[..., ClusterProcess], members: int
) -> None:
    cluster = make_cluster(nodes=4)
    # Every node registered, so that the topic's replicas spread over all four.
    wait_ready(cluster)
    seen = asyncio.run(asyncio.wait_for(run_group(cluster.addresses, members), BODY_TIMEOUT_S))
    check_every_record_in_order(seen)
