"""SDK benchmarks against a real `weir serve` process (JSON lines on stdout).

Where `bench.broker` sends pre-encoded requests to measure the broker, this
one goes through the public SDK the way an application does, so the figures
include every per-record cost of the client:

- async_produce: `await producer.send(topic, value)` N times with
  `weir.aio.Producer` (default options: acks=all, linger 5 ms), then
  `flush()`; records/s from the first send to the end of the flush.
- async_consume: `async for record in weir.aio.Consumer(...)` from the
  earliest offset until N records arrived (default credit window).
- blocking_produce / blocking_consume: the same with `weir.Producer` and
  `weir.Consumer`.

100 B records, one partition per topic, `--durability sync` (the default).
The client and the broker share the machine's cores.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import weir
import weir.aio
from tests.support.broker_process import BrokerProcess

RECORDS = int(os.environ.get("WEIR_BENCH_SDK_RECORDS", "200000"))
VALUE_BYTES = 100


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def _figure(bench: str, records: int, elapsed_s: float) -> None:
    rate = records / elapsed_s
    emit(
        bench=bench,
        record_bytes=VALUE_BYTES,
        records=records,
        records_per_s=round(rate),
        mb_per_s=round(rate * VALUE_BYTES / 1e6, 1),
    )


async def async_produce(address: str, topic: str, records: int) -> float:
    value = os.urandom(VALUE_BYTES)
    async with weir.aio.Producer(address) as producer:
        await producer.partitions_for(topic)  # metadata outside the timing
        started = time.perf_counter()
        last = None
        for _ in range(records):
            last = await producer.send(topic, value)
        await producer.flush()
        elapsed = time.perf_counter() - started
        assert last is not None
        meta = await last
        assert meta.offset == records - 1, meta
    return elapsed


async def async_consume(address: str, topic: str, records: int) -> float:
    async with weir.aio.Consumer(address, topic, start="earliest") as consumer:
        started = time.perf_counter()
        received = 0
        async for record in consumer:
            received += 1
            if received >= records:
                assert record.offset == records - 1, record.offset
                break
        return time.perf_counter() - started


def blocking_produce(address: str, topic: str, records: int) -> float:
    value = os.urandom(VALUE_BYTES)
    with weir.Producer(address) as producer:
        producer.partitions_for(topic)
        started = time.perf_counter()
        last = None
        for _ in range(records):
            last = producer.send(topic, value)
        producer.flush()
        elapsed = time.perf_counter() - started
        assert last is not None
        assert last.result(10).offset == records - 1
    return elapsed


def blocking_consume(address: str, topic: str, records: int) -> float:
    with weir.Consumer(address, topic, start="earliest") as consumer:
        started = time.perf_counter()
        for received, record in enumerate(consumer, 1):
            if received >= records:
                assert record.offset == records - 1, record.offset
                break
        return time.perf_counter() - started


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        broker = BrokerProcess(Path(tmp) / "data").start()
        try:
            with weir.Admin(broker.address) as admin:
                admin.create_topic("sdk_async", partitions=1)
                admin.create_topic("sdk_blocking", partitions=1)
            _figure(
                "async_produce",
                RECORDS,
                asyncio.run(async_produce(broker.address, "sdk_async", RECORDS)),
            )
            _figure(
                "async_consume",
                RECORDS,
                asyncio.run(async_consume(broker.address, "sdk_async", RECORDS)),
            )
            _figure(
                "blocking_produce",
                RECORDS,
                blocking_produce(broker.address, "sdk_blocking", RECORDS),
            )
            _figure(
                "blocking_consume",
                RECORDS,
                blocking_consume(broker.address, "sdk_blocking", RECORDS),
            )
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
