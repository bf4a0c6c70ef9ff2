"""Where a new subscription starts: its Subscribe checked, each partition's first offset.

Validation costs time linear in the request, whatever it lists: partition
numbers are range-checked before anything is built from them, so a
Subscribe naming a million partitions is refused before it costs more than
one pass (issue 9). Nothing here writes to the call; errors are raised as
`BrokerError` for the stream to end with.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from weir.cluster.storage import PartitionLog
from weir.server.consume_cursor import Partition
from weir.server.errors import BrokerError, invalid, replica_not_available
from weir.server.registry import Offsets
from weir.server.replicator import NotHostedError, Replicator
from weir.server.topics import Topic
from weir.v1 import broker_pb2


def out_of_range(partition: int, offset: int, start: int, end: int) -> BrokerError:
    return BrokerError(
        grpc.StatusCode.OUT_OF_RANGE,
        "OFFSET_OUT_OF_RANGE",
        f"offset {offset} of partition {partition} is outside the retained range [{start}, {end}]",
        {"partition": partition, "offset": offset, "start_offset": start, "end_offset": end},
    )


def partition_out_of_range(topic: Topic, partition: int) -> BrokerError:
    return invalid(
        "PARTITION_OUT_OF_RANGE",
        f"topic {topic.name!r} has partitions 0..{topic.partition_count - 1}, not {partition}",
        topic=topic.name,
        partition=partition,
        partition_count=topic.partition_count,
    )


def partition_numbers(topic: Topic, subscribe: broker_pb2.Subscribe) -> list[int]:
    """Checks partitions and explicit offsets in time linear in the request.

    Ranges first (one pass each, in C), then duplicates with a set that
    holds at most partition_count numbers: a request that lists a
    million partitions is refused before anything grows with it.
    """
    count = topic.partition_count
    listed = subscribe.partitions
    if listed:
        highest = max(listed)
        if highest >= count:
            raise partition_out_of_range(topic, highest)
        # Every number is in range, so more numbers than partitions
        # means a repeat, without building anything.
        numbers = list(listed) if len(listed) <= count else []
        if not numbers or len(set(numbers)) != len(numbers):
            raise invalid("DUPLICATE_PARTITION", "a partition is listed twice")
    else:
        numbers = list(range(count))
    explicit = subscribe.offsets
    if explicit:
        highest = max(explicit)
        if highest >= count:
            raise partition_out_of_range(topic, highest)
        if listed:
            missing = explicit.keys() - set(numbers)
            if missing:
                partition = min(missing)
                raise invalid(
                    "PARTITION_NOT_SUBSCRIBED",
                    f"an offset is given for partition {partition}, which is not subscribed",
                    partition=partition,
                )
    return numbers


def start_positions(
    topic: Topic,
    subscribe: broker_pb2.Subscribe,
    replicator: Replicator,
    committed: Mapping[int, int],
) -> list[Partition]:
    """The subscribed partitions, each at the offset its stream starts from.

    In a cluster each log is this node's replica, leader or follower: its
    end offset is what this node applied, so nothing uncommitted is served.
    A partition with no replica here is REPLICA_NOT_AVAILABLE (retriable).
    `committed`: the subscription's group's committed offsets by partition
    (empty without a group), fetched by the caller (`committed_positions`).
    """
    numbers = partition_numbers(topic, subscribe)
    start = subscribe.start
    if start.kind not in broker_pb2.StartKind.values():
        raise invalid("INVALID_START", f"unknown start kind {start.kind}")
    if start.kind == broker_pb2.START_KIND_TIMESTAMP and start.timestamp_ms < 0:
        raise invalid("INVALID_START", "the start timestamp is negative")
    result = []
    for number in numbers:
        try:
            log = replicator.log(topic.group_id(number))
        except NotHostedError:
            raise replica_not_available(topic.name, number) from None
        result.append(Partition(number, log, _start_of(subscribe, number, log, committed)))
    return result


async def committed_positions(
    topic: Topic, subscribe: broker_pb2.Subscribe, offsets: Offsets
) -> dict[int, int]:
    """The group's committed offsets of the partitions that start from them."""
    if not subscribe.group:
        return {}
    explicit_all = subscribe.start.kind in (
        broker_pb2.START_KIND_OFFSET,
        broker_pb2.START_KIND_TIMESTAMP,
    )
    if explicit_all:
        return {}
    numbers = [n for n in partition_numbers(topic, subscribe) if n not in subscribe.offsets]
    return await offsets.fetch(subscribe.group, topic, numbers)


def _start_of(
    subscribe: broker_pb2.Subscribe,
    partition: int,
    log: PartitionLog,
    committed: Mapping[int, int],
) -> int:
    start_offset, end_offset = log.start_offset, log.end_offset
    explicit = subscribe.offsets.get(partition)
    if explicit is None and subscribe.start.kind == broker_pb2.START_KIND_OFFSET:
        explicit = subscribe.start.offset
    if explicit is not None:
        if not start_offset <= explicit <= end_offset:
            raise out_of_range(partition, explicit, start_offset, end_offset)
        return explicit
    if subscribe.start.kind == broker_pb2.START_KIND_TIMESTAMP:
        return log.offset_for_timestamp(subscribe.start.timestamp_ms)
    if partition in committed:
        # Retention may have deleted past the committed offset.
        return max(committed[partition], start_offset)
    if subscribe.start.kind == broker_pb2.START_KIND_EARLIEST:
        return start_offset
    return end_offset
