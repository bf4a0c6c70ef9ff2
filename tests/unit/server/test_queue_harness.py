"""Harness (no tests): a single node's consume path with queue mode, in-process on real storage and a fake clock.

The harness of test_consume_costs (real LMDB, topic registry, replicator;
a scripted ServicerContext instead of a network call) plus a
`QueueDispatcher` over the node's storage whose clock the test moves
(`Clock.advance` then `QueueDispatcher.tick`), and dead letters written
through a real produce `Router`.
"""

from __future__ import annotations

import asyncio
import itertools
import pathlib
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from tests.unit.server.fake_membership import StatusContext
from tests.unit.server.test_consume_costs import T0_MS
from weir.cluster.storage import NodeStorage, StorageConfig
from weir.server.config import NodeConfig
from weir.server.consume import ConsumePath
from weir.server.offsets import GroupOffsets
from weir.server.produce_route import Router
from weir.server.queue_deadletter import RouterDeadLetters
from weir.server.queue_dispatch import QueueDispatcher
from weir.server.queue_hosts import LocalQueueHost
from weir.server.replicator import LocalReplicator
from weir.server.topics import ConfigPatch, TopicRegistry
from weir.v1 import broker_pb2, records_pb2

QUEUE = broker_pb2.CONSUME_MODE_QUEUE
EARLIEST = broker_pb2.START_KIND_EARLIEST


@dataclass
class Clock:
    now_ms: int = T0_MS

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> None:
        self.now_ms += ms


@dataclass
class Consumer:
    """One queue-mode Consume call of the test."""

    context: StatusContext
    task: asyncio.Task[None]
    next_id: int = 1

    def send(self, **request: object) -> None:
        self.context.requests.put_nowait(broker_pb2.ConsumeRequest(**request))  # type: ignore[arg-type]

    def credit(self, messages: int, nbytes: int = 1 << 20) -> None:
        self.send(credit=broker_pb2.Credit(messages=messages, bytes=nbytes))

    def deliveries(self) -> list[tuple[broker_pb2.Delivery, records_pb2.Record, int]]:
        """(delivery, record, partition) of every record sent, in order."""
        out = []
        for r in self.context.responses:
            if r.WhichOneof("kind") == "batch":
                assert len(r.batch.deliveries) == len(r.batch.records)
                out.extend(
                    (d, rec, r.batch.partition)
                    for d, rec in zip(r.batch.deliveries, r.batch.records, strict=True)
                )
        return out

    def values(self) -> list[bytes]:
        return [rec.value for _, rec, _ in self.deliveries()]

    def results(self) -> dict[int, broker_pb2.AckResult]:
        return {
            r.ack.request_id: r.ack for r in self.context.responses if r.WhichOneof("kind") == "ack"
        }

    def request(self, kind: str, ack_ids: list[bytes], **fields: object) -> int:
        request_id = self.next_id
        self.next_id += 1
        message = getattr(broker_pb2, {"ack": "Ack", "nack": "Nack"}.get(kind, "ExtendDeadline"))
        self.send(**{kind: message(request_id=request_id, ack_ids=ack_ids, **fields)})
        return request_id

    async def answer(self, request_id: int) -> broker_pb2.AckResult:
        await self.context.until(lambda: request_id in self.results())
        return self.results()[request_id]

    async def until_records(self, count: int) -> None:
        await self.context.until(lambda: len(self.deliveries()) >= count)

    async def ended(self) -> str | None:
        await self.context.until(lambda: self.task.done())
        return self.context.reason


@dataclass
class QueueNode:
    path: ConsumePath
    topics: TopicRegistry
    replicator: LocalReplicator
    storage: NodeStorage
    queues: QueueDispatcher
    clock: Clock
    consumers: list[Consumer] = field(default_factory=list)

    def subscribe(self, group: str = "g", topic: str = "t", **fields: object) -> Consumer:
        fields.setdefault("start", broker_pb2.StartPosition(kind=EARLIEST))
        fields.setdefault("mode", QUEUE)
        subscribe = broker_pb2.Subscribe(topic=topic, group=group, **fields)  # type: ignore[arg-type]
        context = StatusContext()
        context.requests.put_nowait(broker_pb2.ConsumeRequest(subscribe=subscribe))
        task = asyncio.create_task(self.path.serve(context))  # type: ignore[arg-type]
        consumer = Consumer(context, task)
        self.consumers.append(consumer)
        return consumer

    async def append(
        self, partition: int, values: list[bytes], topic: str = "t", **fields: object
    ) -> None:
        group_id = self.topics.get(topic).group_id(partition)
        records = [
            records_pb2.Record(value=v, timestamp_ms=T0_MS, **fields)  # type: ignore[arg-type]
            for v in values
        ]
        payload = records_pb2.RecordBatch(records=records).SerializeToString()
        delayed = bool(fields.get("deliver_at_ms"))
        ticket = await self.replicator.append(
            group_id, payload, len(records), T0_MS, delayed=delayed
        )
        await ticket.committed

    def tick(self, ms: int) -> None:
        self.clock.advance(ms)
        self.queues.tick()

    async def until(self, condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
        """Polls a condition no event announces (the dispatch state, another topic's log)."""
        async with asyncio.timeout(timeout_s):
            for _ in itertools.count():
                if condition():
                    return
                await asyncio.sleep(0.005)

    async def settle(self) -> None:
        """Let every task run until nothing is ready (no timers involved)."""
        for _ in range(50):
            await asyncio.sleep(0)


@asynccontextmanager
async def queue_node(
    tmp_path: pathlib.Path, partitions: int = 1, clock: Clock | None = None
) -> AsyncIterator[QueueNode]:
    clock = clock or Clock()
    async with NodeStorage(StorageConfig(path=tmp_path / "data")) as storage:
        config = NodeConfig(data_dir=tmp_path / "data")
        topics = TopicRegistry(storage, config)
        await topics.load()
        if not any(t.name == "t" for t in topics.all()):
            await topics.create("t", partitions, 0, ConfigPatch())
        offsets = GroupOffsets(storage.meta, topics)
        replicator = LocalReplicator(storage)
        stopping = asyncio.Event()
        router = Router(topics, replicator, clock, stopping)
        dispatcher = QueueDispatcher(
            LocalQueueHost(storage), RouterDeadLetters(topics, router), clock, random.Random(7)
        )
        async with dispatcher:
            path = ConsumePath(topics, replicator, offsets, config, stopping, queues=dispatcher)
            n = QueueNode(path, topics, replicator, storage, dispatcher, clock)
            try:
                yield n
            finally:
                for c in n.consumers:
                    c.task.cancel()
                await asyncio.gather(*(c.task for c in n.consumers), return_exceptions=True)


def run(test: Callable[[], object]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]
