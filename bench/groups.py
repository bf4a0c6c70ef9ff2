"""Consumer-group benchmarks on three real `weir serve` nodes (JSON lines on stdout).

- groups_stream_consume: N records of 100 B in a 6-partition topic
  (replication factor 3, acks=ALL), then a group of three SDK consumers in
  stream mode (`mode="stream"`, auto-commit), each in its own process and
  bootstrapped on a different node, reads them all from the earliest
  offset; records/s from the first consumer's start to the last record.
  Issue 8's target: >= 200,000 records/s.
- groups_stream_e2e_latency: 2,000 records/s for 5 s to a one-partition
  topic, timed from `send()` to the moment a stream-mode group member
  yields the record; p50 and p99 (target p99 <= 15 ms).

- groups_queue_consume: the same records read by a queue group of three
  SDK consumers (`mode="queue"`), one process each on a different node,
  each record acked on its own (`await consumer.ack(record)` per record,
  concurrently for a batch; the SDK sends the acks of one loop turn in one
  request); records/s from the first delivery to the last ack answered.
  Target: >= 50,000 records/s (RabbitMQ quorum queues: 22-32k msg/s
  consumed on this machine). groups_queue_list_consume: the same, each
  batch's records acked in one `ack(records)` call (still one ack id per
  record). groups_queue_nowait_consume: each record acked on its own with
  `consumer.ack_nowait(record)` (handed over, not awaited; the last acks'
  answers, a few ms, fall after the figure's end).
- groups_queue_e2e_latency: as the stream figure, through a queue-mode
  consumer (delivery, not the ack).

Each consume figure also gives the CPU per record of every node and of the
members (utime + stime from /proc/<pid>/stat, from the start of the members
to their end; a member's own figure from its first record on), which
contention on a shared machine changes less than records/s.

Environment: WEIR_BENCH_GROUP_RECORDS (default 300,000),
WEIR_BENCH_GROUP_CASES (a comma list of stream, queue, queue-list, queue-nowait,
stream-latency, queue-latency; default all), WEIR_BENCH_PYSPY_DIR (record
py-spy raw profiles of the nodes and members there, 8 s from
WEIR_BENCH_PYSPY_DELAY_S after the members start, default 4 s).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import weir.aio
from bench.cluster import (
    LATENCY_RATE_PER_S,
    LATENCY_SECONDS,
    VALUE_BYTES,
    cluster_cpu_s,
    create_led_topic,
    describe,
    emit,
    produce,
    wait_ready,
)
from tests.support.cluster_process import ClusterProcess

RECORDS = int(os.environ.get("WEIR_BENCH_GROUP_RECORDS", "300000"))
PARTITIONS = 6
MEMBERS = 3
# A member stops when nothing arrived for this long after the topic was drained.
IDLE_STOP_S = 2.0
CASES = os.environ.get(
    "WEIR_BENCH_GROUP_CASES",
    "stream,queue,queue-list,queue-nowait,stream-latency,queue-latency",
).split(",")
PYSPY_DIR = os.environ.get("WEIR_BENCH_PYSPY_DIR", "")
PYSPY_DELAY_S = float(os.environ.get("WEIR_BENCH_PYSPY_DELAY_S", "4"))
PYSPY_SECONDS = 8
PYSPY = str(Path(sys.executable).parent / "py-spy")

Outcome = tuple[int, float, float, float]  # records, first, last (time.time()), CPU s after first


def _member(bootstrap: list[str], topic: str, group: str, results: multiprocessing.Queue) -> None:
    async def run() -> Outcome:
        count = 0
        first = last = cpu = 0.0
        async with weir.aio.Consumer(
            bootstrap, topic, group=group, mode="stream", start="earliest"
        ) as consumer:
            started = time.time()
            while True:
                batch = await consumer.poll_batch(10_000, timeout_s=IDLE_STOP_S)
                if not batch:
                    if count:
                        break
                    if time.time() - started > 60:
                        break
                    continue
                if not count:
                    first, cpu = time.time(), time.process_time()
                count += len(batch)
                last = time.time()
        return count, first, last, time.process_time() - cpu

    results.put(asyncio.run(run()))


def _worker(bootstrap: list[str], topic: str, group: str, results: multiprocessing.Queue) -> None:
    async def run() -> Outcome:
        count = 0
        first = last = cpu = 0.0
        async with weir.aio.Consumer(
            bootstrap, topic, group=group, mode="queue", start="earliest"
        ) as consumer:
            started = time.time()
            while True:
                batch = await consumer.poll_batch(10_000, timeout_s=IDLE_STOP_S)
                if not batch:
                    if count or time.time() - started > 60:
                        break
                    continue
                if not count:
                    first, cpu = time.time(), time.process_time()
                if group.endswith("-nowait"):
                    # One call per record, not awaited: the SDK sends the
                    # acks of the turn in one request.
                    for record in batch:
                        consumer.ack_nowait(record)
                elif group.endswith("-list"):
                    # Every record acked on its own (an ack id each), the
                    # batch's acks handed to the SDK in one call.
                    await consumer.ack(batch)
                else:
                    # One ack call per record, as an application acking each
                    # job when it is done; the SDK batches those of one turn.
                    await asyncio.gather(*(consumer.ack(record) for record in batch))
                count += len(batch)
                last = time.time()
        return count, first, last, time.process_time() - cpu

    results.put(asyncio.run(run()))


def _profile(pids: dict[str, int], name: str) -> threading.Thread:
    """py-spy raw profiles of `pids` (label -> pid) for PYSPY_SECONDS, after PYSPY_DELAY_S."""

    def run() -> None:
        time.sleep(PYSPY_DELAY_S)
        spies = [
            subprocess.Popen(
                # Non-blocking: pausing six processes 200 times a second on two
                # cores stalled a node long enough for the members to stop.
                [PYSPY, "record", "--nonblocking", "-p", str(pid), "-d", str(PYSPY_SECONDS),
                 "-r", "200",
                 "-f", "raw", "-o", f"{PYSPY_DIR}/{name}-{label}.txt"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for label, pid in pids.items()
        ]  # fmt: skip
        for spy in spies:
            spy.wait()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def group_consume(
    cluster: ClusterProcess, topic: str, target: object, group: str
) -> dict[str, object]:
    bootstrap = cluster.addresses
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = context.Queue()
    members = []
    started = time.time()
    nodes_cpu_s = cluster_cpu_s(cluster)
    for i in range(MEMBERS):
        order = list(bootstrap[i:]) + list(bootstrap[:i])
        process = context.Process(target=target, args=(order, topic, group, results))
        process.start()
        members.append(process)
    if PYSPY_DIR:
        pids = {f"node{n}": cluster.node(n).pid for n in cluster.node_ids}
        pids.update({f"member{i}": p.pid for i, p in enumerate(members) if p.pid})
        _profile(pids, group)
    outcomes: list[Outcome] = [results.get(timeout=300) for _ in members]
    ended = cluster_cpu_s(cluster)
    for process in members:
        process.join(30)
    total = sum(c for c, _, _, _ in outcomes)
    last = max(t for _, _, t, _ in outcomes)
    # The members' start-up (process spawn, imports, joining) is left out:
    # timing starts at the first record any member received.
    first = min(f for c, f, _, _ in outcomes if c)
    return {
        "records": total,
        "records_per_s": round(total / (last - first)),
        "members": MEMBERS,
        "per_member": [c for c, _, _, _ in outcomes],
        "startup_s": round(first - started, 2),
        # Each node's CPU from the members' start to their end (joining included).
        "node_cpu_us_per_record": [
            round((ended[n] - nodes_cpu_s[n]) / total * 1e6, 1) for n in sorted(ended)
        ],
        "member_cpu_us_per_record": [
            round(cpu / c * 1e6, 1) if c else None for c, _, _, cpu in outcomes
        ],
    }


async def stream_latency(bootstrap: Sequence[str], topic: str, mode: str) -> list[float]:
    total = LATENCY_RATE_PER_S * LATENCY_SECONDS
    sent_at = [0.0] * total
    latencies: list[float] = []
    pad = b"x" * (VALUE_BYTES - 12)
    async with (
        weir.aio.Consumer(
            list(bootstrap), topic, group=f"latency-{mode}", mode=mode, start="latest"
        ) as consumer,
        weir.aio.Producer(list(bootstrap), acks="all", linger_ms=1) as producer,
    ):
        await producer.partitions_for(topic)

        async def receive() -> None:
            async for record in consumer:
                latencies.append(time.perf_counter() - sent_at[int(record.value[:12])])
                if mode == "queue":
                    # Acked without holding up the next delivery.
                    acking.add(asyncio.create_task(consumer.ack(record)))
                    acking.difference_update([t for t in acking if t.done()])
                if len(latencies) >= total:
                    return

        acking: set[asyncio.Task[None]] = set()
        receiving = asyncio.create_task(receive())
        # Let the member join and its partition start at the end of the log.
        deadline = time.monotonic() + 30
        while (  # noqa: ASYNC110
            mode == "stream" and not consumer.assignment() and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
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
        await asyncio.gather(*acking)
    return latencies


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = ClusterProcess(Path(tmp), extra_args=("--durability", "sync"))
        cluster.start()
        try:
            wait_ready(cluster)
            bootstrap = cluster.addresses
            create_led_topic(cluster, "groups", PARTITIONS)
            asyncio.run(produce(bootstrap, "groups", RECORDS))
            committed = sum(p.end_offset for p in describe(cluster, "groups").partitions)
            assert committed == RECORDS, (committed, RECORDS)
            for mode, target in (
                ("stream", _member),
                ("queue", _worker),
                ("queue-list", _worker),
                ("queue-nowait", _worker),
            ):
                if mode not in CASES:
                    continue
                figures = group_consume(cluster, "groups", target, f"bench-{mode}")
                emit(
                    bench=f"groups_{mode.replace('-', '_')}_consume",
                    nodes=3,
                    partitions=PARTITIONS,
                    record_bytes=VALUE_BYTES,
                    **figures,
                )
            for mode in ("stream", "queue"):
                if f"{mode}-latency" not in CASES:
                    continue
                topic = f"latency-{mode}"
                create_led_topic(cluster, topic, 1)
                nodes_cpu_s = cluster_cpu_s(cluster)
                client_cpu_s = time.process_time()
                ordered = sorted(asyncio.run(stream_latency(bootstrap, topic, mode)))
                client_cpu_s = time.process_time() - client_cpu_s
                ended = cluster_cpu_s(cluster)
                emit(
                    bench=f"groups_{mode}_e2e_latency",
                    rate_per_s=LATENCY_RATE_PER_S,
                    records=len(ordered),
                    p50_ms=round(statistics.median(ordered) * 1000, 2),
                    p90_ms=round(ordered[int(len(ordered) * 0.9) - 1] * 1000, 2),
                    p99_ms=round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 2),
                    max_ms=round(ordered[-1] * 1000, 2),
                    node_cpu_us_per_record=[
                        round((ended[n] - nodes_cpu_s[n]) / len(ordered) * 1e6, 1)
                        for n in sorted(ended)
                    ],
                    # The producer and the consumer share this process.
                    client_cpu_us_per_record=round(client_cpu_s / len(ordered) * 1e6, 1),
                )
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
