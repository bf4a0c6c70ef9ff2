"""Cluster benchmarks: three real `weir serve` nodes on loopback (JSON lines on stdout).

Everything goes through the public SDK with the bootstrap list of all three
nodes, sync durability, acks=ALL; the client shares the machine's cores
with the three nodes.

- produce: `await producer.send()` of N keyless 100 B records (sticky
  partitioner) to a 6-partition topic with replication factor 3, then
  `flush()`; records/s committed on a majority, and the CPU the three
  broker processes used for it (utime + stime from /proc/<pid>/stat)
  divided by the records.
- consume: `async for` over the same records from the earliest offset.
- e2e_latency: 2,000 records/s for 5 s through a producer with
  `linger_ms=1` to a one-partition topic, timed from `send()` to the
  moment a live consumer yields the record; p50 and p99.
- idle: a topic with 1,000 partitions and replication factor 3, once every
  partition is led and the cluster has settled (5 s windows of CPU until
  one is not lower than the one before, at most 60 s): each node's CPU
  over 10 s, in percent of one core.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import weir
import weir.aio
from tests.support.cluster_process import ClusterProcess
from weir.v1 import admin_pb2, admin_pb2_grpc

RECORDS = int(os.environ.get("WEIR_BENCH_CLUSTER_RECORDS", "300000"))
VALUE_BYTES = 100
PARTITIONS = 6
LATENCY_RATE_PER_S = 2000
LATENCY_SECONDS = 5
IDLE_PARTITIONS = 1000
# After the idle topic is created, 5 s windows until one is not busier than
# the one before (elections, leader balancing with its 3 s cooldowns and
# quiescing of 1,000 groups took 10-25 s on a slower machine), at most this long.
IDLE_SETTLE_WINDOW_S = 5.0
IDLE_SETTLE_MAX_S = 60.0
IDLE_MEASURE_S = 10.0
READY_TIMEOUT_S = 60.0
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds a process used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name may hold spaces; the fields after it are fixed.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def cluster_cpu_s(cluster: ClusterProcess) -> dict[int, float]:
    return {n: cpu_s(cluster.node(n).pid) for n in cluster.node_ids}


def wait_ready(cluster: ClusterProcess) -> None:
    """Every node alive and registered (a topic with 3 copies needs all three)."""
    cluster.wait_converged()
    expected = {n: cluster.address(n) for n in cluster.node_ids}
    for node in cluster.node_ids:
        cluster.wait_until(
            lambda node=node: (
                {n.node_id: n.address for n in cluster.describe(node).nodes} == expected
            ),
            READY_TIMEOUT_S,
            f"node {node} knowing every address",
        )


def create_led_topic(cluster: ClusterProcess, name: str, partitions: int) -> None:
    with grpc.insecure_channel(cluster.address(1)) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        stub.CreateTopic(
            admin_pb2.CreateTopicRequest(
                name=name, partition_count=partitions, replication_factor=3
            ),
            timeout=READY_TIMEOUT_S,
        )

        def led() -> bool:
            described = stub.DescribeTopic(admin_pb2.DescribeTopicRequest(name=name), timeout=30)
            return all(p.leader_id != 0 for p in described.partitions)

        cluster.wait_until(led, READY_TIMEOUT_S, f"every partition of {name} led")


def describe(cluster: ClusterProcess, name: str) -> admin_pb2.DescribeTopicResponse:
    with grpc.insecure_channel(cluster.address(1)) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        return stub.DescribeTopic(admin_pb2.DescribeTopicRequest(name=name), timeout=30)


async def produce(bootstrap: Sequence[str], topic: str, records: int) -> float:
    value = os.urandom(VALUE_BYTES)
    async with weir.aio.Producer(list(bootstrap), acks="all") as producer:
        await producer.partitions_for(topic)
        started = time.perf_counter()
        last = None
        for _ in range(records):
            last = await producer.send(topic, value)
        await producer.flush()
        elapsed = time.perf_counter() - started
        assert last is not None
        await last
    return elapsed


async def consume(bootstrap: Sequence[str], topic: str, records: int) -> float:
    async with weir.aio.Consumer(list(bootstrap), topic, start="earliest") as consumer:
        started = time.perf_counter()
        received = 0
        async for _ in consumer:
            received += 1
            if received >= records:
                break
        return time.perf_counter() - started


async def latency(bootstrap: Sequence[str], consumer_at: str, topic: str) -> list[float]:
    """Seconds from `send()` to the consumer yielding the record, for every record."""
    total = LATENCY_RATE_PER_S * LATENCY_SECONDS
    sent_at: list[float] = [0.0] * total
    latencies: list[float] = []
    pad = b"x" * (VALUE_BYTES - 12)
    async with (
        weir.aio.Consumer(consumer_at, topic, start="latest") as consumer,
        weir.aio.Producer(list(bootstrap), acks="all", linger_ms=1) as producer,
    ):
        await producer.partitions_for(topic)

        async def receive() -> None:
            async for record in consumer:
                latencies.append(time.perf_counter() - sent_at[int(record.value[:12])])
                if len(latencies) >= total:
                    return

        receiving = asyncio.create_task(receive())
        # Let the subscription settle at the end of the (empty) log first.
        await asyncio.sleep(0.5)
        interval = 1 / LATENCY_RATE_PER_S
        start = time.perf_counter()
        for i in range(total):
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at[i] = time.perf_counter()
            await producer.send(topic, b"%012d" % i + pad, partition=0)
        await producer.flush()
        await asyncio.wait_for(receiving, 60)
    return latencies


def settle(cluster: ClusterProcess) -> float:
    """Waits until the nodes' CPU stops falling (see IDLE_SETTLE_WINDOW_S); seconds waited."""
    started = time.monotonic()
    busiest = float("inf")
    while time.monotonic() - started < IDLE_SETTLE_MAX_S:
        before = cluster_cpu_s(cluster)
        time.sleep(IDLE_SETTLE_WINDOW_S)
        after = cluster_cpu_s(cluster)
        window = max(after[n] - before[n] for n in after)
        if window >= busiest:
            break
        busiest = window
    return round(time.monotonic() - started, 1)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = ClusterProcess(Path(tmp), extra_args=("--durability", "sync"))
        cluster.start()
        try:
            wait_ready(cluster)
            bootstrap = cluster.addresses
            create_led_topic(cluster, "bench", PARTITIONS)
            before = cluster_cpu_s(cluster)
            elapsed = asyncio.run(produce(bootstrap, "bench", RECORDS))
            after = cluster_cpu_s(cluster)
            used_s = sum(after.values()) - sum(before.values())
            committed = sum(p.end_offset for p in describe(cluster, "bench").partitions)
            assert committed == RECORDS, (committed, RECORDS)
            rate = RECORDS / elapsed
            emit(
                bench="cluster_produce",
                nodes=3,
                partitions=PARTITIONS,
                replication_factor=3,
                acks="all",
                durability="sync",
                record_bytes=VALUE_BYTES,
                records=RECORDS,
                records_per_s=round(rate),
                mb_per_s=round(rate * VALUE_BYTES / 1e6, 1),
                broker_cpu_us_per_record=round(used_s / RECORDS * 1e6, 2),
                broker_cpu_s_per_node={n: round(after[n] - before[n], 2) for n in after},
            )
            elapsed = asyncio.run(consume(bootstrap, "bench", RECORDS))
            rate = RECORDS / elapsed
            emit(
                bench="cluster_consume",
                record_bytes=VALUE_BYTES,
                records=RECORDS,
                records_per_s=round(rate),
                mb_per_s=round(rate * VALUE_BYTES / 1e6, 1),
            )
            create_led_topic(cluster, "latency", 1)
            leader = describe(cluster, "latency").partitions[0].leader_id
            follower = next(n for n in cluster.node_ids if n != leader)
            # The consumer on the partition's leader, then on a follower (which
            # learns the commit index one message later).
            for where, node in (("leader", leader), ("follower", follower)):
                address = cluster.address(node)
                ordered = sorted(asyncio.run(latency(bootstrap, address, "latency")))
                emit(
                    bench="cluster_e2e_latency",
                    consumer_on=where,
                    rate_per_s=LATENCY_RATE_PER_S,
                    records=len(ordered),
                    p50_ms=round(statistics.median(ordered) * 1000, 2),
                    p99_ms=round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 2),
                )
            create_led_topic(cluster, "idle", IDLE_PARTITIONS)
            settle_s = settle(cluster)
            before = cluster_cpu_s(cluster)
            time.sleep(IDLE_MEASURE_S)
            after = cluster_cpu_s(cluster)
            emit(
                bench="cluster_idle",
                partitions=IDLE_PARTITIONS,
                replication_factor=3,
                seconds=IDLE_MEASURE_S,
                settled_after_s=settle_s,
                cpu_percent_per_node={
                    n: round((after[n] - before[n]) / IDLE_MEASURE_S * 100, 2) for n in after
                },
            )
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
