"""Produce validation and routing: check a request, make its batch canonical, place its parts.

What is stored is Weir's own encoding of a batch, never the client's bytes:
the broker parses the records, drops unknown fields at every level and
serializes them again, so nothing a producer sends can reach a consumer as
a field of the consume response (DESIGN §4). A record's size is the size of
that stored `weir.v1.Record` encoding, with the timestamp the broker fills
in; it is checked here against the topic's `record_bytes_max`. Byte credit
on the consume path is a record's content size instead (key, value, header
names and values; docs/sdk.md "Flow control: the credit model"), never more
than this size, so `record_bytes_max` of credit always lets a record through.

`Router.append` validates everything before it appends anything, so a bad
request changes nothing. Records are routed by murmur2 of the key, or to one
sticky partition per request for records without a key; each part goes to
the local replicator or, for a partition another node leads, to the
forwarder (for a partition with no replica here, to its leader as guessed
from the placement, produce_forward.LeaderGuesses). Requests with many records are validated and serialized on a
worker thread so the event loop keeps serving everyone else meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import grpc

from weir.cluster import controller as ctl
from weir.cluster.host import GroupNotFoundError, HostError, NotLeaderError
from weir.cluster.storage import LogClosedError, ProducerError, ProducerFields, StorageError
from weir.cluster.storage.producers import (
    PRODUCER_ID_EXPIRY_MS_DEFAULT,
    PRODUCER_ID_MAX,
    PRODUCERS_PER_PARTITION_MAX_DEFAULT,
    SEQUENCE_MODULUS,
)
from weir.partitioner import murmur2
from weir.server.errors import (
    BrokerError,
    invalid,
    not_leader,
    replication_error,
    shutting_down,
    storage_error,
    topic_not_found,
)
from weir.server.produce_forward import Forwarder, LeaderGuesses
from weir.server.registry import TopicSource
from weir.server.replicator import Replicator
from weir.server.topics import Topic
from weir.v1 import broker_pb2, records_pb2

# Requests with more records than this are validated and serialized on a
# worker thread: below it the work takes about a millisecond, less than the
# hop to a thread and back.
INLINE_RECORDS_MAX = 2048
# Worker threads busy with large requests at once, node-wide. Each holds one
# parsed request, so this also bounds the memory of that work; two matches
# the cores of the machines Weir is measured on.
WORKERS_MAX = 2
# Checked for every request: the enum's values() builds a list each call.
_ACKS_VALUES = frozenset(broker_pb2.Acks.values())


@runtime_checkable
class Placement(Protocol):
    """A topic source that knows where partitions are placed (a cluster's `ClusterTopics`)."""

    def controller_topic(self, name: str) -> ctl.Topic: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Part:
    """The stored bytes of the records of one request that go to one partition."""

    partition: int
    payload: bytes
    record_count: int
    record_indexes: list[int]
    # Some record of the request has a deliver_at_ms: the stored batch gets
    # the DELAYED flag, so apply indexes its delays (a part of a split
    # request may have none; that costs its apply one parse, nothing else).
    delayed: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """What the event loop decided about a request before its records are touched."""

    topic: str
    record_bytes_max: int
    now_ms: int
    partition: int | None  # named by the request; None: route every record
    partition_count: int
    sticky: int  # where keyless records go when routing
    # The latest deliver_at_ms the topic's time retention allows (now +
    # retention_ms): a later one could be deleted before it is due. None:
    # retention by time is off.
    deliver_at_ms_max: int | None = None


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def producer_refused(topic: str, partition: int, exc: ProducerError) -> BrokerError:
    """An idempotent producer's batch refused by the partition's producer check."""
    return BrokerError(
        grpc.StatusCode.FAILED_PRECONDITION,
        exc.reason,
        str(exc),
        {"topic": topic, "partition": partition, **exc.metadata},
    )


def producer_fields(
    request: broker_pb2.ProduceRequest, expiry_ms: int, producers_max: int
) -> ProducerFields | None:
    """The request's idempotent producer fields, checked; None when it has none."""
    if not request.producer_id:
        if request.producer_epoch or request.first_sequence:
            raise invalid(
                "INVALID_PRODUCER_FIELDS",
                "producer_epoch and first_sequence need a producer_id (from InitProducer)",
            )
        return None
    if request.producer_id > PRODUCER_ID_MAX:
        raise invalid(
            "INVALID_PRODUCER_FIELDS",
            f"producer_id {request.producer_id} is not one InitProducer hands out",
            field="producer_id",
        )
    if request.first_sequence >= SEQUENCE_MODULUS:
        raise invalid(
            "INVALID_PRODUCER_FIELDS",
            f"first_sequence must be at most {SEQUENCE_MODULUS - 1}",
            field="first_sequence",
        )
    if not request.HasField("partition"):
        raise invalid(
            "PARTITION_REQUIRED",
            "a request with a producer_id must set partition: sequence numbers count "
            "per (producer, partition)",
        )
    return ProducerFields(
        request.producer_id,
        request.producer_epoch,
        request.first_sequence,
        expiry_ms,
        producers_max,
    )


def record_too_large(topic: str, index: int, size: int, limit: int) -> BrokerError:
    return BrokerError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RECORD_TOO_LARGE",
        f"record {index} is {size} bytes; topic {topic!r} accepts at most {limit}",
        {"topic": topic, "index": index, "size": size, "limit": limit},
    )


def deliver_at_refused(index: int, deliver_at_ms: int, plan: Plan) -> BrokerError:
    """A record's deliver_at_ms that is negative or beyond the topic's retention."""
    if deliver_at_ms < 0:
        return invalid(
            "INVALID_DELIVER_AT",
            f"record {index} has a negative deliver_at_ms ({deliver_at_ms}); 0 means no delay",
            index=index,
        )
    assert plan.deliver_at_ms_max is not None
    return BrokerError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "DELIVER_AT_BEYOND_RETENTION",
        f"record {index} is due at {deliver_at_ms}, after topic {plan.topic!r} may delete it "
        f"(retention_ms from now: {plan.deliver_at_ms_max}); lower the delay or raise the "
        "topic's retention_ms",
        {
            "topic": plan.topic,
            "index": index,
            "deliver_at_ms": deliver_at_ms,
            "deliver_at_ms_max": plan.deliver_at_ms_max,
        },
    )


def prepare(batch: records_pb2.RecordBatch, plan: Plan) -> tuple[list[Part], int]:
    """Make `batch` canonical, stamp and check its records, split it; returns (parts, max timestamp).

    Pure apart from mutating `batch`, which nothing else touches meanwhile,
    so it may run on a worker thread. Raises BrokerError; nothing is
    appended before it returns.
    """
    # Unknown fields at every level go, and repeated fields were already
    # merged by the parse: what is serialized below is Weir's own encoding.
    batch.DiscardUnknownFields()
    records = batch.records
    limit = plan.record_bytes_max
    now_ms = plan.now_ms
    # A record grows only by the timestamp the broker fills in, so a batch
    # that is small enough even with one more timestamp cannot hold a record
    # over the limit, and its records need not be measured one by one.
    measure = batch.ByteSize() + 1 + _varint_size(now_ms) > limit
    max_timestamp_ms = 0
    # Without time retention any delay is allowed: the largest int64.
    deliver_at_ms_max = plan.deliver_at_ms_max
    if deliver_at_ms_max is None:
        deliver_at_ms_max = 2**63 - 1
    delayed = False
    for index, record in enumerate(records):
        deliver_at_ms = record.deliver_at_ms
        if deliver_at_ms:
            if not 0 < deliver_at_ms <= deliver_at_ms_max:
                raise deliver_at_refused(index, deliver_at_ms, plan)
            delayed = True
        timestamp_ms = record.timestamp_ms
        if timestamp_ms == 0:
            record.timestamp_ms = timestamp_ms = now_ms
        elif timestamp_ms < 0:
            raise invalid(
                "INVALID_TIMESTAMP", f"record {index} has a negative timestamp", index=index
            )
        if timestamp_ms > max_timestamp_ms:
            max_timestamp_ms = timestamp_ms
        if measure:
            size = record.ByteSize()
            if size > limit:
                raise record_too_large(plan.topic, index, size, limit)
    if plan.partition is not None:
        return [Part(plan.partition, batch.SerializeToString(), len(records), [], delayed)], (
            max_timestamp_ms
        )
    return _route(batch, plan, delayed), max_timestamp_ms


def _route(batch: records_pb2.RecordBatch, plan: Plan, delayed: bool) -> list[Part]:
    """Split a batch by partition: murmur2 of the key, or one sticky partition for no key."""
    count = plan.partition_count
    sticky = plan.sticky
    records = batch.records
    if len(records) == 1:
        # A client that sends one record per request: no split to consider.
        record = records[0]
        partition = (murmur2(record.key) & 0x7FFFFFFF) % count if record.HasField("key") else sticky
        return [Part(partition, batch.SerializeToString(), 1, [0], delayed)]
    partitions = [
        (murmur2(record.key) & 0x7FFFFFFF) % count if record.HasField("key") else sticky
        for record in batch.records
    ]
    if len(set(partitions)) == 1:
        # The common case (one key, or no keys): the batch stays whole.
        n = len(partitions)
        return [Part(partitions[0], batch.SerializeToString(), n, list(range(n)), delayed)]
    split: dict[int, tuple[records_pb2.RecordBatch, list[int]]] = {}
    for index, (partition, record) in enumerate(zip(partitions, batch.records, strict=True)):
        part_batch, indexes = split.setdefault(partition, (records_pb2.RecordBatch(), []))
        part_batch.records.append(record)
        indexes.append(index)
    return [
        Part(partition, part_batch.SerializeToString(), len(indexes), indexes, delayed)
        for partition, (part_batch, indexes) in split.items()
    ]


@dataclasses.dataclass(slots=True)
class Placed:
    """One part of a request, appended here or forwarded to its partition's leader."""

    partition: int
    record_count: int
    record_indexes: list[int]
    # None for a forwarded part until the leader's answer carries it.
    base_offset: int | None
    # What the answer waits for: the acks level's future of a local append
    # (resolving to anything), or the leader's answer (the base offset).
    answered: asyncio.Future[Any]
    # Done once the request's bytes may go back to the budget: the leader's
    # own copy is durable (or failed), or the leader answered.
    held: asyncio.Future[Any]


class Router:
    """Validates produce requests and places their parts: appended here or forwarded."""

    def __init__(
        self,
        topics: TopicSource,
        replicator: Replicator,
        clock_ms: Callable[[], int],
        stopping: asyncio.Event,
        forwarder: Forwarder | None = None,
        *,
        producer_id_expiry_ms: int = PRODUCER_ID_EXPIRY_MS_DEFAULT,
        producers_per_partition_max: int = PRODUCERS_PER_PARTITION_MAX_DEFAULT,
    ) -> None:
        """`forwarder`: where parts for partitions another node leads go (None: answer
        NOT_LEADER naming the leader; always so on a single node). The producer
        bounds are stamped into every idempotent batch this node leads."""
        # Stored as u64 and u32 in each batch header.
        self._producer_id_expiry_ms = min(producer_id_expiry_ms, 2**63 - 1)
        self._producers_per_partition_max = min(producers_per_partition_max, 2**32 - 1)
        self._topics = topics
        # In a cluster: the replicas of partitions with none here, to forward to.
        self._placement = topics if isinstance(topics, Placement) else None
        self._guesses = LeaderGuesses()
        self._forwarder = forwarder
        self._replicator = replicator
        self._clock_ms = clock_ms
        self._stopping = stopping
        self._workers = asyncio.Semaphore(WORKERS_MAX)
        # Sticky round-robin for records without a key: one counter per
        # topic, advanced once per request.
        self._round_robin: dict[str, itertools.count[int]] = {}

    def host_error(self, topic: str, partition: int, exc: HostError) -> BrokerError:
        return replication_error(exc, topic, partition, self._replicator.node_address)

    async def append(self, request: broker_pb2.ProduceRequest, forwarded: bool) -> list[Placed]:
        """Validate everything first, so a bad request changes nothing."""
        if self._stopping.is_set():
            raise shutting_down()
        if request.acks not in _ACKS_VALUES:
            raise invalid("INVALID_ACKS", f"unknown acks value {request.acks}")
        topic = self._topics.get(request.topic)
        count = len(request.batch.records)
        if not count:
            raise invalid("EMPTY_BATCH", "a produce request needs at least one record")
        producer = producer_fields(
            request, self._producer_id_expiry_ms, self._producers_per_partition_max
        )
        plan = self._plan(topic, request)
        if count <= INLINE_RECORDS_MAX:
            # Most requests: no coroutine layer for the common, inline case.
            parts, max_timestamp_ms = prepare(request.batch, plan)
        else:
            parts, max_timestamp_ms = await self._prepare_on_worker(request.batch, plan)
        placed = []
        for part in parts:
            group_id = topic.group_ids[part.partition]
            try:
                appended = await self._replicator.append(
                    group_id,
                    part.payload,
                    part.record_count,
                    max_timestamp_ms,
                    producer,
                    delayed=part.delayed,
                )
            except ProducerError as exc:
                raise producer_refused(topic.name, part.partition, exc) from None
            except LogClosedError:
                # The topic was deleted while this request waited for room.
                raise topic_not_found(topic.name) from None
            except StorageError as exc:
                raise storage_error(exc, "the append") from exc
            except NotLeaderError as exc:
                placed.append(
                    await self._forward(
                        topic.name, part, request.acks, exc.leader_id, forwarded, producer
                    )
                )
                continue
            except GroupNotFoundError:
                # No replica of the partition runs here: placed on other
                # nodes only (more nodes than its replication factor), or
                # not started here yet.
                placed.append(
                    await self._forward_elsewhere(topic, part, request.acks, forwarded, producer)
                )
                continue
            except HostError as exc:
                raise self.host_error(topic.name, part.partition, exc) from None
            placed.append(
                Placed(
                    part.partition,
                    part.record_count,
                    part.record_indexes,
                    appended.base_offset,
                    appended.acknowledged(request.acks),
                    appended.leader_durable,
                )
            )
        return placed

    async def _forward(
        self,
        topic: str,
        part: Part,
        acks: broker_pb2.Acks,
        leader_id: int,
        forwarded: bool,
        producer: ProducerFields | None = None,
    ) -> Placed:
        """Sends `part` to its partition's leader, or answers NOT_LEADER naming it.

        Waits only for room on the link to the leader; the answer comes later.
        """
        address = self._replicator.node_address(leader_id) if leader_id else ""
        if self._forwarder is None or forwarded or not address:
            raise not_leader(topic, part.partition, leader_id, address)
        answer = await self._forwarder.submit(
            leader_id, address, topic, part.partition, acks, part.payload, producer
        )
        return Placed(part.partition, part.record_count, part.record_indexes, None, answer, answer)

    async def _forward_elsewhere(
        self,
        topic: Topic,
        part: Part,
        acks: broker_pb2.Acks,
        forwarded: bool,
        producer: ProducerFields | None,
    ) -> Placed:
        """Sends `part` of a partition with no replica here to its leader as guessed.

        A replica whose link cannot take the part (down, or no address
        known) was sent nothing, so the next one is tried. A forwarded
        request is never forwarded again: it is answered NOT_LEADER naming
        the guess. The answer teaches the guesses who leads.
        """
        group_id = topic.group_ids[part.partition]
        replicas = self._replicas(topic.name, part.partition)
        refused: BrokerError | None = None
        for leader_id in self._guesses.order(group_id, replicas):
            try:
                placed = await self._forward(topic.name, part, acks, leader_id, forwarded, producer)
            except BrokerError as error:
                if forwarded or error.reason != "NOT_LEADER":
                    raise
                self._guesses.unreachable(group_id, leader_id, replicas)
                refused = refused or error
                continue
            placed.answered.add_done_callback(
                functools.partial(self._guesses.answered, group_id, leader_id, replicas)
            )
            return placed
        raise refused or not_leader(topic.name, part.partition, 0, "")

    def _replicas(self, topic: str, partition: int) -> tuple[int, ...]:
        """The partition's replicas as the controller placed them (none on a single node)."""
        if self._placement is None:
            return ()
        try:
            placed = self._placement.controller_topic(topic)
        except BrokerError:
            return ()  # deleted meanwhile
        if partition >= placed.partition_count:
            return ()
        return placed.partitions[partition].replicas

    def _plan(self, topic: Topic, request: broker_pb2.ProduceRequest) -> Plan:
        if request.HasField("partition"):
            topic.group_id(request.partition)  # PARTITION_OUT_OF_RANGE before any work
            partition: int | None = request.partition
            sticky = 0
        else:
            partition = None
            counter = self._round_robin.get(topic.name)
            if counter is None:
                counter = self._round_robin[topic.name] = itertools.count()
            sticky = next(counter) % topic.partition_count
        now_ms = self._clock_ms()
        retention_ms = topic.config.retention_ms
        return Plan(
            topic=topic.name,
            record_bytes_max=topic.config.record_bytes_max,
            now_ms=now_ms,
            partition=partition,
            partition_count=topic.partition_count,
            sticky=sticky,
            deliver_at_ms_max=now_ms + retention_ms if retention_ms >= 0 else None,
        )

    async def _prepare_on_worker(
        self, batch: records_pb2.RecordBatch, plan: Plan
    ) -> tuple[list[Part], int]:
        async with self._workers:
            job = asyncio.get_running_loop().run_in_executor(None, prepare, batch, plan)
            try:
                return await asyncio.shield(job)
            except asyncio.CancelledError:
                # A thread cannot be stopped: its slot stays taken until it
                # has finished, so at most WORKERS_MAX ever run.
                with contextlib.suppress(Exception):
                    await job
                raise
