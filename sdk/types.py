"""The SDK's value types: frozen dataclasses, never protobuf objects.

Results handed to applications (`RecordMetadata`, `ConsumedRecord`,
`TopicInfo`, ...) are plain immutable values so callers do not depend on the
wire encoding, and the conversions from `weir.v1` messages live here, once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from weir._wire import DeliveryFields
from weir.v1 import admin_pb2, broker_pb2, records_pb2

__all__ = [
    "TOPIC_NAME_CHARS_MAX",
    "Acks",
    "ClusterInfo",
    "ConsumedRecord",
    "NodeInfo",
    "PartitionInfo",
    "RecordMetadata",
    "StartAt",
    "StartSpec",
    "TopicConfig",
    "TopicInfo",
    "start_position",
]


# A topic name has at most this many characters (Kafka's limit); the broker
# refuses longer ones with INVALID_TOPIC_NAME (weir.server.naming).
TOPIC_NAME_CHARS_MAX = 249


class Acks(enum.Enum):
    """How much durability a producer waits for (see `weir.v1.Acks`)."""

    NONE = "none"
    LEADER = "leader"
    ALL = "all"

    @classmethod
    def parse(cls, value: Acks | str) -> Acks:
        """Accept an `Acks` or its name ("all", "leader", "none")."""
        if isinstance(value, Acks):
            return value
        try:
            return cls(value.lower())
        except ValueError:
            raise ValueError(f"acks must be 'all', 'leader' or 'none', got {value!r}") from None

    def to_proto(self) -> broker_pb2.Acks:
        """The wire value."""
        return {
            Acks.NONE: broker_pb2.ACKS_NONE,
            Acks.LEADER: broker_pb2.ACKS_LEADER,
            Acks.ALL: broker_pb2.ACKS_ALL,
        }[self]


@dataclass(frozen=True, slots=True)
class RecordMetadata:
    """Where a produced record was appended. `offset` is -1 with acks="none"."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class ConsumedRecord:
    """One record read from a partition.

    Queue mode (`Consumer(mode="queue")`) also says how the record was
    handed out; these are None in the other modes:

    - `ack_id`: names this delivery in `ack()`, `nack()` and `extend()`, on
      any stream of the group (opaque bytes);
    - `delivery_attempt`: 1 on the first delivery, one more on each redelivery;
    - `ack_deadline_ms`: when the record is delivered again unless acked or
      extended, in milliseconds since the Unix epoch by the partition
      leader's clock (as sent; `extend()` does not update it).
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]
    timestamp_ms: int
    ack_id: bytes | None = None
    delivery_attempt: int | None = None
    ack_deadline_ms: int | None = None

    @classmethod
    def from_proto(
        cls, topic: str, partition: int, offset: int, record: records_pb2.Record
    ) -> ConsumedRecord:
        """Build from a wire record and its computed offset."""
        return cls(
            topic=topic,
            partition=partition,
            offset=offset,
            key=record.key if record.HasField("key") else None,
            value=record.value,
            headers=dict(record.headers),
            timestamp_ms=record.timestamp_ms,
        )


# Building a frozen dataclass goes through `object.__setattr__` per field;
# the consumer builds one per record, so it sets the slots directly instead.
_new_object = object.__new__
_set_topic = vars(ConsumedRecord)["topic"].__set__
_set_partition = vars(ConsumedRecord)["partition"].__set__
_set_offset = vars(ConsumedRecord)["offset"].__set__
_set_key = vars(ConsumedRecord)["key"].__set__
_set_value = vars(ConsumedRecord)["value"].__set__
_set_headers = vars(ConsumedRecord)["headers"].__set__
_set_timestamp_ms = vars(ConsumedRecord)["timestamp_ms"].__set__
_set_ack_id = vars(ConsumedRecord)["ack_id"].__set__
_set_delivery_attempt = vars(ConsumedRecord)["delivery_attempt"].__set__
_set_ack_deadline_ms = vars(ConsumedRecord)["ack_deadline_ms"].__set__


def make_consumed_record(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes,
    headers: dict[str, bytes],
    timestamp_ms: int,
) -> ConsumedRecord:
    """`ConsumedRecord(...)`, the same object, built for the consume hot path."""
    record: ConsumedRecord = _new_object(ConsumedRecord)
    _set_topic(record, topic)
    _set_partition(record, partition)
    _set_offset(record, offset)
    _set_key(record, key)
    _set_value(record, value)
    _set_headers(record, headers)
    _set_timestamp_ms(record, timestamp_ms)
    _set_ack_id(record, None)
    _set_delivery_attempt(record, None)
    _set_ack_deadline_ms(record, None)
    return record


def make_delivered_record(
    topic: str,
    partition: int,
    key: bytes | None,
    value: bytes,
    headers: dict[str, bytes],
    timestamp_ms: int,
    delivery: DeliveryFields,
) -> ConsumedRecord:
    """A queue-mode record: its offset and delivery fields from `delivery`."""
    ack_id, offset, attempt, deadline_ms = delivery
    record: ConsumedRecord = _new_object(ConsumedRecord)
    _set_topic(record, topic)
    _set_partition(record, partition)
    _set_offset(record, offset)
    _set_key(record, key)
    _set_value(record, value)
    _set_headers(record, headers)
    _set_timestamp_ms(record, timestamp_ms)
    _set_ack_id(record, ack_id)
    _set_delivery_attempt(record, attempt)
    _set_ack_deadline_ms(record, deadline_ms)
    return record


@dataclass(frozen=True, slots=True)
class StartAt:
    """A start position for a consumer: `StartAt.earliest()`, `.latest()`,
    `.offset(n)` or `.timestamp(ms)`."""

    kind: str
    value: int = 0

    @staticmethod
    def earliest() -> StartAt:
        """The oldest retained record."""
        return StartAt("earliest")

    @staticmethod
    def latest() -> StartAt:
        """Only records appended after subscribing."""
        return StartAt("latest")

    @staticmethod
    def offset(offset: int) -> StartAt:
        """An explicit offset (same for every partition without a committed offset)."""
        return StartAt("offset", offset)

    @staticmethod
    def timestamp(timestamp_ms: int) -> StartAt:
        """The first record at or after this time (ms since the Unix epoch)."""
        return StartAt("timestamp", timestamp_ms)


StartSpec = str | int | datetime | StartAt


def start_position(start: StartSpec) -> broker_pb2.StartPosition:
    """Translate a user start spec into the wire `StartPosition`."""
    if isinstance(start, str):
        start = {"earliest": StartAt.earliest(), "latest": StartAt.latest()}.get(
            start.lower(), StartAt("invalid")
        )
        if start.kind == "invalid":
            raise ValueError("start must be 'earliest', 'latest', an offset, or a datetime")
    elif isinstance(start, bool):
        raise TypeError("start must not be a bool")
    elif isinstance(start, int):
        start = StartAt.offset(start)
    elif isinstance(start, datetime):
        if start.tzinfo is None:
            raise ValueError("a datetime start must be timezone-aware")
        start = StartAt.timestamp(int(start.timestamp() * 1000))
    if start.kind == "earliest":
        return broker_pb2.StartPosition(kind=broker_pb2.START_KIND_EARLIEST)
    if start.kind == "latest":
        return broker_pb2.StartPosition(kind=broker_pb2.START_KIND_LATEST)
    if start.kind == "offset":
        return broker_pb2.StartPosition(kind=broker_pb2.START_KIND_OFFSET, offset=start.value)
    if start.kind == "timestamp":
        return broker_pb2.StartPosition(
            kind=broker_pb2.START_KIND_TIMESTAMP, timestamp_ms=start.value
        )
    raise ValueError(f"unknown start kind {start.kind!r}")


@dataclass(frozen=True, slots=True)
class TopicConfig:
    """A topic's settings; -1 means unlimited for the retention fields.

    The queue-mode settings: `max_deliveries` (0: never dead-letter), the
    redelivery backoff bounds in milliseconds, and `dead_letter_topic`
    ("" means `<topic>.dlq`, except for a name of 246 to 249 characters,
    which has no default: queue mode then needs `dead_letter_topic` set or
    `max_deliveries` 0, else a subscribe is refused with
    DEAD_LETTER_TOPIC_REQUIRED).
    """

    retention_bytes: int
    retention_ms: int
    record_bytes_max: int
    max_deliveries: int = 5
    retry_backoff_ms_min: int = 1000
    retry_backoff_ms_max: int = 60_000
    dead_letter_topic: str = ""

    @classmethod
    def from_proto(cls, config: admin_pb2.TopicConfig) -> TopicConfig:
        """Build from the wire message (responses set every field).

        A node of a release before the queue settings does not send them;
        they read as their defaults then.
        """
        has = config.HasField
        return cls(
            retention_bytes=config.retention_bytes,
            retention_ms=config.retention_ms,
            record_bytes_max=config.record_bytes_max,
            max_deliveries=config.max_deliveries if has("max_deliveries") else 5,
            retry_backoff_ms_min=(
                config.retry_backoff_ms_min if has("retry_backoff_ms_min") else 1000
            ),
            retry_backoff_ms_max=(
                config.retry_backoff_ms_max if has("retry_backoff_ms_max") else 60_000
            ),
            dead_letter_topic=config.dead_letter_topic,
        )


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """One replica of a partition, as the answering node sees it."""

    node_id: int
    address: str
    alive: bool
    # Raft log entries behind the leader; -1 when the answering node does
    # not lead the partition (only the leader knows).
    lag_entries: int


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """The state of one partition (offsets and size of the answering node's replica)."""

    partition: int
    start_offset: int
    end_offset: int
    size_bytes: int
    leader_id: int
    replica_ids: tuple[int, ...]
    # The leader's client address; empty while no leader is known.
    leader_address: str = ""
    replicas: tuple[ReplicaInfo, ...] = ()

    @classmethod
    def from_proto(cls, info: admin_pb2.PartitionInfo) -> PartitionInfo:
        """Build from the wire message."""
        return cls(
            partition=info.partition,
            start_offset=info.start_offset,
            end_offset=info.end_offset,
            size_bytes=info.size_bytes,
            leader_id=info.leader_id,
            replica_ids=tuple(info.replica_ids),
            leader_address=info.leader_address,
            replicas=tuple(
                ReplicaInfo(r.node_id, r.address, r.alive, r.lag_entries) for r in info.replicas
            ),
        )


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """A topic, and its partitions' state when it was described."""

    name: str
    partition_count: int
    replication_factor: int
    config: TopicConfig
    partitions: tuple[PartitionInfo, ...] = field(default=())

    @classmethod
    def from_proto(
        cls,
        topic: admin_pb2.Topic,
        partitions: tuple[PartitionInfo, ...] = (),
    ) -> TopicInfo:
        """Build from the wire message."""
        return cls(
            name=topic.name,
            partition_count=topic.partition_count,
            replication_factor=topic.replication_factor,
            config=TopicConfig.from_proto(topic.config),
            partitions=partitions,
        )


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One broker node."""

    node_id: int
    address: str
    alive: bool
    # Partitions it leads, as far as the answering node knows.
    leader_count: int = 0


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    """The cluster as the answering node sees it."""

    cluster_id: str
    nodes: tuple[NodeInfo, ...]
    node_id: int
    version: str
    durability: str
    request_bytes_max: int
    record_bytes_max_limit: int
    # The node that leads the controller (cluster metadata); 0 while unknown.
    controller_id: int = 0

    @classmethod
    def from_proto(cls, response: admin_pb2.DescribeClusterResponse) -> ClusterInfo:
        """Build from the wire message."""
        return cls(
            cluster_id=response.cluster_id,
            nodes=tuple(
                NodeInfo(n.node_id, n.address, n.alive, n.leader_count) for n in response.nodes
            ),
            node_id=response.node_id,
            version=response.version,
            durability=response.durability,
            request_bytes_max=response.request_bytes_max,
            record_bytes_max_limit=response.record_bytes_max_limit,
            controller_id=response.controller_id,
        )
