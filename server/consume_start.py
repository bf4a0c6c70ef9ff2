"""Where reading starts: a Subscribe checked, each partition's first offset, and Seek targets.

Validation costs time linear in the request, whatever it lists: partition
numbers are range-checked before anything is built from them, so a
Subscribe naming a million partitions is refused before it costs more than
one pass (issue 9). Nothing here writes to the call; errors are raised as
`BrokerError` for the stream to end with (or, for a Seek, to answer it).

The same start policy serves three cases: a group-less or `assign()`-style
subscription (`start_positions`), a partition assigned to a stream-mode
member (`assigned_start`: the group's committed offset, clamped into the
log, else the subscription's `start`), and a `Seek` (`seek_target`).
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from weir.cluster.storage import PartitionLog
from weir.server.consume_cursor import Partition
from weir.server.errors import BrokerError, invalid, replica_not_available
from weir.server.membership import JoinSpec
from weir.server.registry import Offsets
from weir.server.replicator import NotHostedError, Replicator
from weir.server.topics import Topic
from weir.v1 import broker_pb2

# Stream mode: what a Subscribe's timeouts of 0 stand for (the coordinator
# checks the ranges).
SESSION_TIMEOUT_MS_DEFAULT = 10_000
REBALANCE_TIMEOUT_MS_DEFAULT = 30_000


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


def invalid_subscribe(message: str, **metadata: object) -> BrokerError:
    return invalid("INVALID_SUBSCRIBE", message, **metadata)


def check_start(start: broker_pb2.StartPosition) -> None:
    """INVALID_START unless `start` is a known kind (with a timestamp that is not negative)."""
    if start.kind not in broker_pb2.StartKind.values():
        raise invalid("INVALID_START", f"unknown start kind {start.kind}", kind=start.kind)
    if start.kind == broker_pb2.START_KIND_TIMESTAMP and start.timestamp_ms < 0:
        raise invalid("INVALID_START", "the start timestamp is negative")


def is_stream_mode(subscribe: broker_pb2.Subscribe) -> bool:
    """Checks the Subscribe's mode and the fields that go with it; True for CONSUME_MODE_STREAM.

    A stream-mode member reads what the coordinator assigns, so it may not
    name partitions or offsets. The member fields are refused without
    stream mode: a client that sets them believes it joins a group, and
    would otherwise read every partition without a word.
    """
    mode = subscribe.mode
    if mode not in broker_pb2.ConsumeMode.values():
        raise invalid_subscribe(f"unknown consume mode {mode}", field="mode", mode=mode)
    if mode != broker_pb2.CONSUME_MODE_QUEUE:
        for field in ("ack_deadline_ms", "ordered_keys"):
            if getattr(subscribe, field):
                raise invalid_subscribe(
                    f"{field} is only valid with CONSUME_MODE_QUEUE", field=field
                )
    if mode != broker_pb2.CONSUME_MODE_STREAM:
        for field in ("member_id", "session_timeout_ms", "rebalance_timeout_ms"):
            if getattr(subscribe, field):
                raise invalid_subscribe(
                    f"{field} is only valid with CONSUME_MODE_STREAM", field=field
                )
        return False
    if not subscribe.group:
        raise invalid("GROUP_REQUIRED", "CONSUME_MODE_STREAM needs a consumer group")
    if subscribe.partitions:
        raise invalid_subscribe(
            "a CONSUME_MODE_STREAM member reads the partitions it is assigned: leave"
            " partitions empty",
            field="partitions",
        )
    if subscribe.offsets:
        raise invalid_subscribe(
            "a CONSUME_MODE_STREAM member starts at the group's committed offsets: leave"
            " offsets empty (use Seek to move)",
            field="offsets",
        )
    if subscribe.start.kind == broker_pb2.START_KIND_OFFSET:
        raise invalid_subscribe(
            "START_KIND_OFFSET names no partition: a CONSUME_MODE_STREAM member starts at"
            " the group's committed offsets, else EARLIEST, LATEST or TIMESTAMP",
            field="start",
        )
    check_start(subscribe.start)
    return True


def join_spec(subscribe: broker_pb2.Subscribe) -> JoinSpec:
    """The coordinator's view of a stream-mode Subscribe (checked by `is_stream_mode`)."""
    return JoinSpec(
        group=subscribe.group,
        topic=subscribe.topic,
        member_id=subscribe.member_id,
        session_timeout_ms=subscribe.session_timeout_ms or SESSION_TIMEOUT_MS_DEFAULT,
        rebalance_timeout_ms=subscribe.rebalance_timeout_ms or REBALANCE_TIMEOUT_MS_DEFAULT,
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
    check_start(subscribe.start)
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
    return policy_start(subscribe.start, log)


def policy_start(start: broker_pb2.StartPosition, log: PartitionLog) -> int:
    """Where a partition without an explicit offset starts: EARLIEST, TIMESTAMP, else LATEST."""
    if start.kind == broker_pb2.START_KIND_TIMESTAMP:
        return log.offset_for_timestamp(start.timestamp_ms)
    if start.kind == broker_pb2.START_KIND_EARLIEST:
        return log.start_offset
    return log.end_offset


def assigned_start(
    start: broker_pb2.StartPosition, log: PartitionLog, committed: int | None
) -> int:
    """Where a partition assigned to a stream-mode member starts.

    The group's committed offset, clamped into [log start, end]: retention
    may have deleted past it, and a replica that lags the coordinator may
    not have applied up to it yet. Without one, the subscription's start
    policy (checked at subscribe: never START_KIND_OFFSET).
    """
    if committed is not None:
        return min(max(committed, log.start_offset), log.end_offset)
    return policy_start(start, log)


def seek_target(partition: int, position: broker_pb2.StartPosition, log: PartitionLog) -> int:
    """The offset a Seek of `partition` to `position` moves to; BrokerError when refused.

    UNSPECIFIED is refused: a seek that names no position is a client's
    mistake, and no guess would be the one it meant.
    """
    kind = position.kind
    if kind == broker_pb2.START_KIND_OFFSET:
        start_offset, end_offset = log.start_offset, log.end_offset
        if not start_offset <= position.offset <= end_offset:
            raise out_of_range(partition, position.offset, start_offset, end_offset)
        return position.offset
    if kind in (broker_pb2.START_KIND_EARLIEST, broker_pb2.START_KIND_LATEST):
        return policy_start(position, log)
    if kind == broker_pb2.START_KIND_TIMESTAMP:
        if position.timestamp_ms < 0:
            raise invalid("INVALID_START", "the seek timestamp is negative", partition=partition)
        return log.offset_for_timestamp(position.timestamp_ms)
    raise invalid(
        "INVALID_START",
        f"a seek needs a position kind (EARLIEST, LATEST, OFFSET or TIMESTAMP), not {kind}",
        partition=partition,
        kind=kind,
    )
