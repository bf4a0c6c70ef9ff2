"""The consume path's work is linear: counted, not timed.

The path runs in-process on real storage (LMDB in a temporary folder), the
real topic registry, offsets and replicator; only gRPC's ServicerContext is
replaced by a scripted one, since a call needs a network otherwise.

- One stored batch of many tiny records, read with small credit: every
  stored byte is read from storage and every record header scanned about
  once, not once per response.
- Consumers of a 1,024-partition topic: an append to one partition wakes
  only the streams subscribed to it, creates no task, and an idle stream
  costs little memory.
"""

from __future__ import annotations

import asyncio
import pathlib
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from weir.cluster.storage import NodeStorage, PartitionLog, StorageConfig
from weir.server.config import NodeConfig
from weir.server.consume import ConsumePath
from weir.server.consume_cursor import CURSOR_NODE_BYTES_MAX
from weir.server.offsets import GroupOffsets
from weir.server.replicator import LocalReplicator
from weir.server.topics import ConfigPatch, TopicRegistry
from weir.v1 import broker_pb2, records_pb2

pytestmark = pytest.mark.timeout(120)

STEP_TIMEOUT_S = 30.0
T0_MS = 1_700_000_000_000


class Aborted(Exception):
    pass


class ScriptedContext:
    """What the consume path needs of grpc.aio.ServicerContext, driven by the test."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[object] = asyncio.Queue(maxsize=1000)
        self.responses: list[broker_pb2.ConsumeResponse] = []
        self.records = 0
        self.changed = asyncio.Event()
        self.status: tuple[grpc.StatusCode, str] | None = None

    async def read(self) -> object:
        return await self.requests.get()

    async def write(self, raw: bytes) -> None:
        response = broker_pb2.ConsumeResponse.FromString(raw)
        self.responses.append(response)
        if response.WhichOneof("kind") == "batch":
            self.records += len(response.batch.records)
        self.changed.set()

    async def abort(self, code: grpc.StatusCode, message: str, **_: Any) -> None:
        self.status = (code, message)
        self.changed.set()
        raise Aborted(message)

    async def until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(STEP_TIMEOUT_S):
            while not condition():
                self.changed.clear()
                await self.changed.wait()

    def credit(self, messages: int, nbytes: int = 1 << 30) -> None:
        grant = broker_pb2.Credit(messages=messages, bytes=nbytes)
        self.requests.put_nowait(broker_pb2.ConsumeRequest(credit=grant))


@dataclass
class Node:
    path: ConsumePath
    topics: TopicRegistry
    replicator: LocalReplicator
    streams: list[tuple[ScriptedContext, asyncio.Task[None]]]

    def subscribe(self, subscribe: broker_pb2.Subscribe) -> ScriptedContext:
        context = ScriptedContext()
        context.requests.put_nowait(broker_pb2.ConsumeRequest(subscribe=subscribe))
        task = asyncio.create_task(self.path.serve(context))  # type: ignore[arg-type]
        self.streams.append((context, task))
        return context

    async def append(self, topic: str, partition: int, records: list[records_pb2.Record]) -> None:
        group_id = self.topics.get(topic).group_id(partition)
        payload = records_pb2.RecordBatch(records=records).SerializeToString()
        ticket = await self.replicator.append(group_id, payload, len(records), T0_MS)
        await ticket.committed


@asynccontextmanager
async def node(tmp_path: pathlib.Path) -> AsyncIterator[Node]:
    async with NodeStorage(StorageConfig(path=tmp_path / "data")) as storage:
        config = NodeConfig(data_dir=tmp_path / "data")
        topics = TopicRegistry(storage, config)
        await topics.load()
        offsets = GroupOffsets(storage.meta, topics)
        replicator = LocalReplicator(storage)
        path = ConsumePath(topics, replicator, offsets, config, asyncio.Event())
        harness = Node(path, topics, replicator, [])
        try:
            yield harness
        finally:
            for _, task in harness.streams:
                task.cancel()
            await asyncio.gather(*(t for _, t in harness.streams), return_exceptions=True)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


class ReadCounter:
    """Counts the payload bytes the consume path's reads (`PartitionLog.read_run`) hand out
    and the stored batches they visit (the real read runs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes = 0
        self.calls = 0
        self.batches = 0
        real = PartitionLog.read_run

        def counting(log: PartitionLog, offset: int, bytes_max: int, records_max: int) -> Any:
            run = real(log, offset, bytes_max, records_max)
            self.calls += 1
            if run is not None:
                self.bytes += len(run.payload)
                # Offsets are dense: the run covers these offsets, in whole batches.
                self.batches += len(log.read(run.base_offset, len(run.payload), run.record_count))
            return run

        monkeypatch.setattr(PartitionLog, "read_run", counting)


# -- no rescans -----------------------------------------------------------------

TINY_RECORDS = 20_000
CREDIT_STEP = 50


def test_a_batch_of_tiny_records_read_with_small_credit_is_scanned_once(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = ReadCounter(monkeypatch)

    async def body() -> None:
        async with node(tmp_path) as n:
            await n.topics.create("tiny", 1, 0, ConfigPatch())
            records = [records_pb2.Record(timestamp_ms=T0_MS + i) for i in range(TINY_RECORDS)]
            await n.append("tiny", 0, records)
            stored_bytes = records_pb2.RecordBatch(records=records).ByteSize()
            context = n.subscribe(
                broker_pb2.Subscribe(
                    topic="tiny",
                    start=broker_pb2.StartPosition(kind=broker_pb2.START_KIND_EARLIEST),
                    credit=broker_pb2.Credit(messages=CREDIT_STEP, bytes=1 << 30),
                )
            )
            while context.records < TINY_RECORDS:
                seen = context.records
                await context.until(lambda seen=seen: context.records > seen)  # type: ignore[misc]
                context.credit(context.records - seen)
            await context.until(lambda: context.records == TINY_RECORDS)
            delivered = [
                (r.batch.base_offset, len(r.batch.records))
                for r in context.responses
                if r.WhichOneof("kind") == "batch"
            ]
            assert sum(c for _, c in delivered) == TINY_RECORDS
            offset = 0
            for base, count in delivered:
                assert base == offset, "dense, in order"
                offset += count
            stats = n.path.stats if hasattr(n.path, "stats") else None
            print(
                f"{len(delivered)} responses; stored bytes {stored_bytes}, "
                f"read {reads.bytes} in {reads.calls} reads; "
                f"records scanned {stats.records_scanned if stats else '?'}"
            )
            # Each response used to read (and checksum) the whole batch again.
            assert reads.bytes <= 2 * stored_bytes
            if stats is not None:
                # One scan per record, plus at most one blocked look per response.
                assert stats.records_scanned <= TINY_RECORDS + len(delivered)

    run(body)


def test_a_cursor_keeps_only_the_batch_its_records_are_left_in(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read of several batches for one response keeps, of what is left,
    only the last batch (one stored batch per cursor), and the next response
    is served from it without reading again."""
    reads = ReadCounter(monkeypatch)

    async def body() -> None:
        async with node(tmp_path) as n:
            await n.topics.create("ten", 1, 0, ConfigPatch())
            batch = [records_pb2.Record(value=b"v" * 100, timestamp_ms=T0_MS)] * 10
            for _ in range(10):
                await n.append("ten", 0, batch)
            batch_bytes = records_pb2.RecordBatch(records=batch).ByteSize()
            reads.bytes = reads.calls = 0
            context = n.subscribe(
                broker_pb2.Subscribe(
                    topic="ten",
                    start=broker_pb2.StartPosition(kind=broker_pb2.START_KIND_EARLIEST),
                    credit=broker_pb2.Credit(messages=25, bytes=1 << 30),
                )
            )
            await context.until(lambda: context.records == 25)
            assert (reads.calls, reads.bytes) == (1, 3 * batch_bytes)
            kept = CURSOR_NODE_BYTES_MAX - n.path.cursors.bytes_free
            assert kept == batch_bytes
            context.credit(5)
            await context.until(lambda: context.records == 30)
            assert reads.calls == 1
            last = context.responses[-1].batch
            assert (last.base_offset, len(last.records)) == (25, 5)
            assert n.path.cursors.bytes_free == CURSOR_NODE_BYTES_MAX

    run(body)


# -- wake only the consumers of the partition that grew ---------------------------

PARTITIONS = 1024
ALL_CONSUMERS = 6  # subscribed to every partition
OTHER_CONSUMERS = 6  # subscribed to every partition but 0
IDLE_BYTES_PER_CONSUMER_MAX = 256 * 1024


def test_an_append_wakes_only_that_partitions_consumers(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with node(tmp_path) as n:
            topic = await n.topics.create("wide", PARTITIONS, 0, ConfigPatch())
            for group_id in topic.group_ids:
                n.replicator.log(group_id)  # opened before memory is measured
            latest = broker_pb2.StartPosition(kind=broker_pb2.START_KIND_LATEST)
            credit = broker_pb2.Credit(messages=1000, bytes=1 << 30)

            tracemalloc.start()
            before, _ = tracemalloc.get_traced_memory()
            everything = [
                n.subscribe(broker_pb2.Subscribe(topic="wide", start=latest, credit=credit))
                for _ in range(ALL_CONSUMERS)
            ]
            others = [
                n.subscribe(
                    broker_pb2.Subscribe(
                        topic="wide",
                        partitions=range(1, PARTITIONS),
                        start=latest,
                        credit=credit,
                    )
                )
                for _ in range(OTHER_CONSUMERS)
            ]
            for context in everything + others:
                await context.until(lambda c=context: bool(c.responses))  # type: ignore[misc]
            for _ in range(3):
                await asyncio.sleep(0)  # let every stream reach its idle wait
            after, _ = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            per_consumer = (after - before) / (ALL_CONSUMERS + OTHER_CONSUMERS)
            print(f"idle consumer of {PARTITIONS} partitions: {per_consumer / 1024:.0f} KiB")
            assert per_consumer < IDLE_BYTES_PER_CONSUMER_MAX

            loop = asyncio.get_running_loop()
            created = 0
            default_factory = loop.get_task_factory()

            def counting_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> Any:
                nonlocal created
                created += 1
                if default_factory is not None:
                    return default_factory(loop, coro, **kw)
                return asyncio.Task(coro, loop=loop, **kw)

            stats = n.path.stats if hasattr(n.path, "stats") else None
            calls = stats.listener_calls if stats else 0
            turns = stats.writer_turns if stats else 0
            loop.set_task_factory(counting_factory)
            try:
                await n.append("wide", 0, [records_pb2.Record(value=b"x")])
                for context in everything:
                    await context.until(lambda c=context: c.records == 1)  # type: ignore[misc]
                for _ in range(3):
                    await asyncio.sleep(0)
            finally:
                loop.set_task_factory(default_factory)
            assert all(c.records == 0 for c in others)
            print(f"one append: {created} tasks created")
            # Each woken stream used to recreate one waiter task per partition.
            assert created < ALL_CONSUMERS
            if stats is not None:
                assert stats.listener_calls - calls == ALL_CONSUMERS
                # Per woken stream: one turn that sends, one that finds nothing more.
                assert stats.writer_turns - turns <= 2 * ALL_CONSUMERS

    run(body)
