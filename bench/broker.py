"""Broker benchmarks against a real `weir serve` process (JSON lines on stdout).

- produce: records/s with acks=ALL and sync durability, 100 B and 1 KiB
  records, 1,000-record requests pipelined on one stream. The client sends
  pre-encoded requests so that the figure is the broker's, not the client's.
- consume: records/s reading the 100 B log back from the start.
- latency: end-to-end (send to receipt by a live consumer) p50/p99 at
  2,000 records/s, one record per request as an interactive producer would.
"""

from __future__ import annotations

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

from weir.v1 import admin_pb2, admin_pb2_grpc, broker_pb2, records_pb2

from tests.support.broker_process import BrokerProcess

PRODUCE_RECORDS = int(os.environ.get("WEIR_BENCH_RECORDS", "600000"))
BATCH_RECORDS = 1000
LATENCY_RATE_PER_S = 2000
LATENCY_SECONDS = 5


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


def latency(channel: grpc.Channel, topic: str) -> tuple[float, float, int]:
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    total = LATENCY_RATE_PER_S * LATENCY_SECONDS
    done = threading.Event()

    def consume_requests():  # type: ignore[no-untyped-def]
        yield broker_pb2.ConsumeRequest(
            subscribe=broker_pb2.Subscribe(
                topic=topic,
                start=broker_pb2.StartPosition(kind=broker_pb2.START_KIND_LATEST),
                credit=broker_pb2.Credit(messages=1 << 30, bytes=1 << 40),
            )
        )
        done.wait()

    consumer = channel.stream_stream(
        "/weir.v1.BrokerService/Consume",
        request_serializer=broker_pb2.ConsumeRequest.SerializeToString,
        response_deserializer=broker_pb2.ConsumeResponse.FromString,
    )(consume_requests(), timeout=600)
    assert next(consumer).WhichOneof("kind") == "subscribed"

    def read() -> None:
        for response in consumer:
            now = time.perf_counter()
            for record in response.batch.records:
                latencies.append(now - sent_at[int(record.value[:12])])
            if len(latencies) >= total:
                return

    reader = threading.Thread(target=read)
    reader.start()

    def produce_requests():  # type: ignore[no-untyped-def]
        interval = 1 / LATENCY_RATE_PER_S
        start = time.perf_counter()
        for i in range(total):
            target = start + i * interval
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent_at[i] = time.perf_counter()
            yield broker_pb2.ProduceRequest(
                request_id=i,
                topic=topic,
                partition=0,
                batch=records_pb2.RecordBatch(
                    records=[records_pb2.Record(value=b"%012d" % i + b"x" * 88)]
                ),
                acks=broker_pb2.ACKS_ALL,
            )

    producer = channel.stream_stream(
        "/weir.v1.BrokerService/Produce",
        request_serializer=broker_pb2.ProduceRequest.SerializeToString,
        response_deserializer=broker_pb2.ProduceResponse.FromString,
    )
    for _ in producer(produce_requests(), timeout=600):
        pass
    reader.join(60)
    done.set()
    consumer.cancel()
    ordered = sorted(latencies)
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
                p50, p99, count = latency(channel, "lat")
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
