"""Consume of records stored one per batch, three nodes (JSON lines on stdout).

What a client generated from the proto meets when its producer sent one
record per request: every record is its own stored batch. A one-partition
topic with replication factor 3 is filled with single-record batches
(pre-encoded requests pipelined on one Produce stream to the leader,
acks=LEADER, then waiting until every node applied them), then read back
from the earliest offset by a client that does what a generated client
does: plain gRPC, responses parsed with protobuf, and credit given back per
received batch, one message and the record's content bytes (here only a
value) per record. Two credit windows:

- 1,000 messages (the issue's target: >= 100,000 records/s);
- 1 message: a round trip per record (target: >= 1,000 records/s).

The consumer reads from the partition's leader; the client shares the
machine's cores with the three nodes, so each case also reports the CPU the
client process and the leader spent per record (`client_cpu_us_per_record`,
`leader_cpu_us_per_record`): whichever is near the wall time per record is
the bottleneck. A third case reads the same records with the SDK's async
consumer (`weir.aio.Consumer`, a window of 1,000 messages), which decodes
batches with its own one-pass reader. `WEIR_BENCH_SINGLE_RECORDS` (default
50,000) and `WEIR_BENCH_SINGLE_CREDIT1_RECORDS` (default 5,000) set the
records read per case; `python -m bench consume_single` runs only this.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import weir.aio
from bench.cluster import READY_TIMEOUT_S, cpu_s, create_led_topic, describe, wait_ready
from tests.support.cluster_process import ClusterProcess
from weir.v1 import broker_pb2, records_pb2

RECORDS = int(os.environ.get("WEIR_BENCH_SINGLE_RECORDS", "50000"))
CREDIT1_RECORDS = int(os.environ.get("WEIR_BENCH_SINGLE_CREDIT1_RECORDS", "5000"))
VALUE_BYTES = 100
PRODUCE_WINDOW = 1000
WINDOWS = (1000, 1)
TOPIC = "single"


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def _identity(raw: bytes) -> bytes:
    return raw


async def fill(address: str, records: int) -> float:
    """Append `records` single-record batches, at most PRODUCE_WINDOW unanswered; seconds taken."""
    value = os.urandom(VALUE_BYTES)
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream(
            "/weir.v1.BrokerService/Produce",
            request_serializer=_identity,
            response_deserializer=broker_pb2.ProduceResponse.FromString,
        )()
        window = asyncio.Semaphore(PRODUCE_WINDOW)

        async def send() -> None:
            for i in range(records):
                await window.acquire()
                await call.write(
                    broker_pb2.ProduceRequest(
                        request_id=i,
                        topic=TOPIC,
                        partition=0,
                        batch=records_pb2.RecordBatch(records=[records_pb2.Record(value=value)]),
                        acks=broker_pb2.ACKS_LEADER,
                    ).SerializeToString()
                )
            await call.done_writing()

        started = time.perf_counter()
        sending = asyncio.create_task(send())
        answered = 0
        while answered < records:
            response = await call.read()
            assert isinstance(response, broker_pb2.ProduceResponse), response
            assert not response.HasField("error"), response.error
            answered += 1
            window.release()
        await sending
        return time.perf_counter() - started


async def consume(address: str, records: int, window: int) -> float:
    """Seconds to read `records` from the earliest offset with a credit window of `window`."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream(
            "/weir.v1.BrokerService/Consume",
            request_serializer=broker_pb2.ConsumeRequest.SerializeToString,
            response_deserializer=broker_pb2.ConsumeResponse.FromString,
        )()
        await call.write(
            broker_pb2.ConsumeRequest(
                subscribe=broker_pb2.Subscribe(
                    topic=TOPIC,
                    start=broker_pb2.StartPosition(kind=broker_pb2.START_KIND_EARLIEST),
                    credit=broker_pb2.Credit(messages=window, bytes=window * VALUE_BYTES),
                )
            )
        )
        first = await call.read()
        assert first.WhichOneof("kind") == "subscribed", first
        started = time.perf_counter()
        received = 0
        while received < records:
            response = await call.read()
            kind = response.WhichOneof("kind")
            assert kind == "batch", f"{kind}: {response}"
            got = response.batch.records
            received += len(got)
            # Credit back: one message and the content bytes of each record.
            content = sum(len(r.key) + len(r.value) for r in got)
            await call.write(
                broker_pb2.ConsumeRequest(
                    credit=broker_pb2.Credit(messages=len(got), bytes=content)
                )
            )
        elapsed = time.perf_counter() - started
        call.cancel()
        return elapsed


async def consume_sdk(address: str, records: int, window: int) -> float:
    """Seconds for the SDK's async consumer to yield `records` from the earliest offset."""
    async with weir.aio.Consumer(
        address,
        TOPIC,
        start="earliest",
        max_outstanding_messages=window,
        max_outstanding_bytes=window * VALUE_BYTES,
    ) as consumer:
        received = 0
        started = 0.0
        async for _ in consumer:
            if received == 0:
                # As for the generated client: from the first record on.
                started = time.perf_counter()
            received += 1
            if received == records:
                break
        return time.perf_counter() - started


def main() -> None:
    total = max(RECORDS, CREDIT1_RECORDS)
    with tempfile.TemporaryDirectory() as tmp:
        cluster = ClusterProcess(Path(tmp), extra_args=("--durability", "sync"))
        cluster.start()
        try:
            wait_ready(cluster)
            create_led_topic(cluster, TOPIC, 1)
            leader = describe(cluster, TOPIC).partitions[0].leader_id
            address = cluster.address(leader)
            fill_s = asyncio.run(fill(address, total))
            cluster.wait_until(
                lambda: describe(cluster, TOPIC).partitions[0].end_offset == total,
                READY_TIMEOUT_S,
                "every single-record batch committed",
            )
            leader_pid = cluster.node(leader).pid
            cases = [("generated", window) for window in WINDOWS] + [("sdk", WINDOWS[0])]
            for client, window in cases:
                records = RECORDS if window > 1 else CREDIT1_RECORDS
                reader = consume if client == "generated" else consume_sdk
                client_cpu_s, leader_cpu_s = time.process_time(), cpu_s(leader_pid)
                elapsed = asyncio.run(reader(address, records, window))
                client_cpu_s = time.process_time() - client_cpu_s
                leader_cpu_s = cpu_s(leader_pid) - leader_cpu_s
                emit(
                    bench="cluster_consume_single_record_batches",
                    client=client,
                    nodes=3,
                    replication_factor=3,
                    record_bytes=VALUE_BYTES,
                    credit_messages=window,
                    records=records,
                    records_per_s=round(records / elapsed),
                    target_records_per_s=100_000 if window > 1 else 1_000,
                    # Over the whole case, subscribe and close included.
                    client_cpu_us_per_record=round(client_cpu_s / records * 1e6, 1),
                    leader_cpu_us_per_record=round(leader_cpu_s / records * 1e6, 1),
                    fill_records_per_s=round(total / fill_s),
                    load_avg_1m=os.getloadavg()[0],
                )
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
