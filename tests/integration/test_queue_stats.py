"""`weir queue stats` and `Admin.queue_stats` against a real node and three real nodes (issue 8).

A queue-mode SDK consumer takes nine records of `jobs` (max_deliveries 2),
acks four, nacks one with a ten-minute delay and fails one twice (its
second delivery is its last: dead-lettered); a tenth record is produced
with a `deliver_at_ms` ten minutes ahead. The stats must then say: ready 0,
in flight 3, delayed 2 (the nack, the deliver_at), dead-lettered 1. When
the consumer closes, its three records go back at once: ready 3, in flight
0. In the cluster the consumer and the stats are asked of different nodes,
so the counts come from the leaders (forwarded), never a replica's guess.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import pytest

import weir.aio
from tests.support.broker_process import BrokerProcess
from tests.support.cluster_process import ClusterProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

TOPIC = "jobs"
GROUP = "workers"
FAR_MS = 600_000


def weir_cli(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "weir.server.cli", "--bootstrap", address, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def cli_stats(address: str, *args: str) -> dict[str, Any]:
    result = weir_cli(address, "--json", "queue", "stats", TOPIC, *args)
    assert result.returncode == 0, result.stderr
    value: dict[str, Any] = json.loads(result.stdout)
    return value


def totals(answer: dict[str, Any]) -> tuple[int, ...] | None:
    for t in answer["totals"]:
        if t["group"] == GROUP:
            return (t["ready"], t["in_flight"], t["delayed"], t["dead_lettered"])
    return None


async def until_totals(addresses: list[str], expected: tuple[int, ...]) -> None:
    """Every address answers `expected` (dead letters and acks land asynchronously)."""
    seen: dict[str, Any] = {}
    async with weir.aio.Admin(addresses[0]) as admin:
        # The SDK first (cheap to poll), then the CLI once it agrees.
        async with asyncio.timeout(20):
            while True:
                stats = await admin.queue_stats(TOPIC, GROUP)
                total = stats.total(GROUP)
                got = None if total is None else tuple(vars_of(total))
                if got == expected:
                    break
                await asyncio.sleep(0.05)
    for address in addresses:
        seen[address] = await asyncio.to_thread(cli_stats, address)
        assert totals(seen[address]) == expected, seen[address]
        assert all(p["from_leader"] for p in seen[address]["partitions"]), seen[address]
        assert not any(p["approximate"] for p in seen[address]["partitions"])


def vars_of(total: Any) -> tuple[int, int, int, int]:
    return (total.ready, total.in_flight, total.delayed, total.dead_lettered)


async def scenario(consume_at: str, stats_at: list[str], partitions: int) -> None:
    async with weir.aio.Admin(consume_at) as admin:
        await admin.create_topic(TOPIC, partitions=partitions, max_deliveries=2)
    async with weir.aio.Producer(consume_at) as producer:
        for i in range(9):
            await producer.send(TOPIC, b"job-%d" % i, partition=i % partitions)
        later = int(time.time() * 1000) + FAR_MS
        await producer.send(TOPIC, b"later", partition=0, deliver_at_ms=later)
        await producer.flush()
    async with weir.aio.Consumer(
        consume_at, TOPIC, group=GROUP, mode="queue", start="earliest"
    ) as consumer:
        got = []
        while len(got) < 9:
            record = await consumer.poll(10)
            assert record is not None
            got.append(record)
        assert b"later" not in {r.value for r in got}
        await consumer.ack(got[:4])
        await consumer.nack(got[4], delay_ms=FAR_MS)
        await consumer.nack(got[5], delay_ms=0, error="first")
        again = await consumer.poll(10)
        assert again is not None and again.value == got[5].value
        assert again.delivery_attempt == 2
        await consumer.nack(again, error="last")  # its last delivery: a dead letter
        await until_totals(stats_at, (0, 3, 2, 1))
        human = await asyncio.to_thread(weir_cli, stats_at[-1], "queue", "stats", TOPIC)
        assert human.returncode == 0, human.stderr
        lines = human.stdout.splitlines()
        assert lines[0].split() == [
            "GROUP", "PARTITION", "READY", "IN_FLIGHT", "DELAYED", "DEAD_LETTERED",
        ]  # fmt: skip
        assert len([line for line in lines if line.startswith(GROUP)]) == partitions + 1
        assert any(line.split() == ["workers", "0", "3", "2", "1"] for line in lines)
    # The consumer closed holding three records: they are ready again at once.
    await until_totals(stats_at, (3, 0, 2, 1))


async def refusals(address: str) -> None:
    async with weir.aio.Admin(address) as admin:
        with pytest.raises(weir.errors.TopicNotFoundError):
            await admin.queue_stats("missing")
        with pytest.raises(weir.errors.InvalidArgumentError) as caught:
            await admin.queue_stats(TOPIC, "bad\x00name")
        assert caught.value.reason == "INVALID_GROUP_NAME"
        nobody = await admin.queue_stats(TOPIC, "nobody")
        assert not nobody.partitions and not nobody.totals
    missing = await asyncio.to_thread(weir_cli, address, "queue", "stats", "missing")
    assert missing.returncode == 1 and "TOPIC_NOT_FOUND" in missing.stderr


def test_queue_stats_on_one_node(broker: BrokerProcess) -> None:
    async def body() -> None:
        await scenario(broker.address, [broker.address], partitions=1)
        await refusals(broker.address)

    asyncio.run(body())


def test_queue_stats_on_three_nodes_asked_of_every_node(cluster: ClusterProcess) -> None:
    cluster.wait_converged()

    async def body() -> None:
        await scenario(cluster.address(1), cluster.addresses, partitions=2)
        await refusals(cluster.address(2))

    asyncio.run(body())
