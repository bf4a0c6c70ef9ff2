"""Broker benchmarks against a real `weir serve` process (JSON lines on stdout).

- produce: records/s with acks=ALL and sync durability, 100 B and 1 KiB
  records, 1,000-record requests pipelined on one stream. The client sends
  pre-encoded requests so that the figure is the broker's, not the client's.
- consume: records/s reading the 100 B log back from the start.
- latency: end-to-end (a record's arrival at the producer to its receipt by
  a live consumer) p50/p99 at 2,000 records/s, the producer sending what
  arrived each millisecond (linger 1 ms), acks=ALL, sync durability.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.broker_process import BrokerProcess
from weir.v1 import admin_pb2, admin_pb2_grpc, broker_pb2, records_pb2

PRODUCE_RECORDS = int(os.environ.get("WEIR_BENCH_RECORDS", "600000"))
BATCH_RECORDS = 1000
LATENCY_RATE_PER_S = 2000
LATENCY_SECONDS = 5
LINGER_S = 0.001


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def _identity(raw: bytes) -> bytes:
    return raw


def produce(channel: grpc.Channel, topic: str, value_bytes: int, records: int) -> float:
    value = os.urandom(value_bytes)
    batch = records_pb2.RecordBatch(records=[records_pb2.Record(value=value)] * BATCH_RECORDS)
    requests = [
        broker_pb2.ProduceRequest(
            request_id=i, topic=topic, partition=0, batch=batch, acks=broker_pb2.ACKS_ALL
        ).SerializeToString()
        for i in range(records // BATCH_RECORDS)
    ]
    call = channel.stream_stream(
        "/weir.v1.BrokerService/Produce",
        request_serializer=_identity,
        response_deserializer=broker_pb2.ProduceResponse.FromString,
    )
    started = time.perf_counter()
    answered = 0
    for response in call(iter(requests), timeout=600):
        assert not response.HasField("error"), response.error
        answered += 1
    elapsed = time.perf_counter() - started
    assert answered == len(requests)
    return len(requests) * BATCH_RECORDS / elapsed


def consume(channel: grpc.Channel, topic: str, records: int) -> float:
    subscribe = broker_pb2.ConsumeRequest(
        subscribe=broker_pb2.Subscribe(
            topic=topic,
            start=broker_pb2.StartPosition(kind=broker_pb2.START_KIND_EARLIEST),
            credit=broker_pb2.Credit(messages=records, bytes=1 << 40),
        )
    )
    done = threading.Event()

    def requests():  # type: ignore[no-untyped-def]
        yield subscribe
        done.wait()

    call = channel.stream_stream(
        "/weir.v1.BrokerService/Consume",
        request_serializer=broker_pb2.ConsumeRequest.SerializeToString,
        response_deserializer=broker_pb2.ConsumeResponse.FromString,
    )(requests(), timeout=600)
    received = 0
    started = time.perf_counter()
    for response in call:
        if response.WhichOneof("kind") == "batch":
            received += len(response.batch.records)
            if received >= records:
                break
    elapsed = time.perf_counter() - started
    done.set()
    call.cancel()
    return received / elapsed


async def _latency(address: str, topic: str) -> list[float]:
    """Send one record per request at a steady rate; time each until a live consumer has it."""
    total = LATENCY_RATE_PER_S * LATENCY_SECONDS
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        consumer = channel.stream_stream(
            "/weir.v1.BrokerService/Consume",
            request_serializer=broker_pb2.ConsumeRequest.SerializeToString,
            response_deserializer=broker_pb2.ConsumeResponse.FromString,
        )()
        await consumer.write(
            broker_pb2.ConsumeRequest(
                subscribe=broker_pb2.Subscribe(
                    topic=topic,
                    start=broker_pb2.StartPosition(kind=broker_pb2.START_KIND_LATEST),
                    credit=broker_pb2.Credit(messages=1 << 30, bytes=1 << 40),
                )
            )
        )
        first = await consumer.read()
        assert first.WhichOneof("kind") == "subscribed"

        async def receive() -> None:
            while len(latencies) < total:
                response = await consumer.read()
                now = time.perf_counter()
                for record in response.batch.records:
                    latencies.append(now - sent_at[int(record.value[:12])])

        producer = channel.stream_stream(
            "/weir.v1.BrokerService/Produce",
            request_serializer=broker_pb2.ProduceRequest.SerializeToString,
            response_deserializer=broker_pb2.ProduceResponse.FromString,
        )()

        async def drain_acks() -> None:
            async for response in producer:
                assert not response.HasField("error"), response.error

        receiving = asyncio.ensure_future(receive())
        acks = asyncio.ensure_future(drain_acks())
        # Records arrive at a steady rate; like a producer with linger_ms=1,
        # each request carries the records that arrived in the last
        # millisecond. Latency runs from a record's arrival to its delivery.
        interval = 1 / LATENCY_RATE_PER_S
        start = time.perf_counter()
        next_record = 0
        request_id = 0
        while next_record < total:
            await asyncio.sleep(LINGER_S)
            now = time.perf_counter()
            due = min(total, int((now - start) / interval) + 1)
            if due <= next_record:
                continue
            records = []
            for i in range(next_record, due):
                sent_at[i] = start + i * interval
                records.append(records_pb2.Record(value=b"%012d" % i + b"x" * 88))
            next_record = due
            request_id += 1
            await producer.write(
                broker_pb2.ProduceRequest(
                    request_id=request_id,
                    topic=topic,
                    partition=0,
                    batch=records_pb2.RecordBatch(records=records),
                    acks=broker_pb2.ACKS_ALL,
                )
            )
        await producer.done_writing()
        await asyncio.wait_for(receiving, 60)
        await acks
        consumer.cancel()
    return latencies


def latency(address: str, topic: str) -> tuple[float, float, int]:
    ordered = sorted(asyncio.run(_latency(address, topic)))
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[int(len(ordered) * 0.99) - 1] * 1000
    return p50, p99, len(ordered)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        broker = BrokerProcess(Path(tmp) / "data").start()
        try:
            with grpc.insecure_channel(broker.address) as channel:
                admin = admin_pb2_grpc.AdminServiceStub(channel)
                for topic in ("b100", "b1k", "lat"):
                    admin.CreateTopic(admin_pb2.CreateTopicRequest(name=topic, partition_count=1))
                rate = produce(channel, "b100", 100, PRODUCE_RECORDS)
                emit(
                    bench="produce",
                    record_bytes=100,
                    acks="all",
                    durability="sync",
                    records_per_s=round(rate),
                    mb_per_s=round(rate * 100 / 1e6, 1),
                )
                rate = produce(channel, "b1k", 1024, PRODUCE_RECORDS // 4)
                emit(
                    bench="produce",
                    record_bytes=1024,
                    acks="all",
                    durability="sync",
                    records_per_s=round(rate),
                    mb_per_s=round(rate * 1024 / 1e6, 1),
                )
                rate = consume(channel, "b100", PRODUCE_RECORDS)
                emit(
                    bench="consume",
                    record_bytes=100,
                    records_per_s=round(rate),
                    mb_per_s=round(rate * 100 / 1e6, 1),
                )
                p50, p99, count = latency(broker.address, "lat")
                emit(
                    bench="e2e_latency",
                    rate_per_s=LATENCY_RATE_PER_S,
                    records=count,
                    p50_ms=round(p50, 2),
                    p99_ms=round(p99, 2),
                )
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
