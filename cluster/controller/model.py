"""The values the controller's state is made of: nodes, topics, partitions, limits.

All are frozen dataclasses, so a value read from the state (by an admin
handler, by `reconcile`) can never change behind the reader's back; the
state replaces values, it never mutates them. Validation of user-chosen
names and configs lives here too, returning typed errors.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from weir.cluster.controller.errors import (
    ControllerError,
    InvalidConfig,
    InvalidGroupName,
    InvalidLimits,
    InvalidTopicName,
)

NodeId = int
GroupId = int

# Raft group 0 is the controller itself (DESIGN §5); partitions start at 1.
CONTROLLER_GROUP: GroupId = 0
FIRST_PARTITION_GROUP: GroupId = 1
# Group ids are a u32 key prefix in LMDB (docs/storage.md).
GROUP_ID_MAX: GroupId = (1 << 32) - 1
# Node ids travel as u64 (weir.cluster.v1.Hello); 0 means "nobody".
NODE_ID_MAX: NodeId = (1 << 64) - 1
ADDRESS_CHARS_MAX = 255
TOPIC_NAME_CHARS_MAX = 249
GROUP_NAME_CHARS_MAX = 255
REPLICATION_FACTOR_DEFAULT = 3
UNLIMITED = -1
MiB = 1024 * 1024
# Queue-mode settings of a topic (weir.v1.TopicConfig). Fixed bounds, not
# replicated limits: every release of a node agrees on them.
MAX_DELIVERIES_DEFAULT = 5
MAX_DELIVERIES_LIMIT = 1000
RETRY_BACKOFF_MS_MIN_DEFAULT = 1000
RETRY_BACKOFF_MS_MAX_DEFAULT = 60_000
RETRY_BACKOFF_MS_LIMIT = 86_400_000  # one day
# The dead-letter topic of a topic whose `dead_letter_topic` is empty.
DEAD_LETTER_SUFFIX = ".dlq"

_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class NodeInfo:
    node_id: NodeId
    address: str


@dataclass(frozen=True, slots=True)
class TopicConfig:
    retention_bytes: int = UNLIMITED
    retention_ms: int = UNLIMITED
    record_bytes_max: int = 1 * MiB
    # Queue mode: deliveries before a record is dead-lettered (0: never).
    max_deliveries: int = MAX_DELIVERIES_DEFAULT
    # Queue mode: redelivery backoff min * 2^(attempt-1), at most max.
    retry_backoff_ms_min: int = RETRY_BACKOFF_MS_MIN_DEFAULT
    retry_backoff_ms_max: int = RETRY_BACKOFF_MS_MAX_DEFAULT
    # Queue mode: where dead letters go; "" means `<topic>.dlq`.
    dead_letter_topic: str = ""


@dataclass(frozen=True, slots=True)
class ConfigPatch:
    """A partial TopicConfig: None leaves a field as it is."""

    retention_bytes: int | None = None
    retention_ms: int | None = None
    record_bytes_max: int | None = None
    max_deliveries: int | None = None
    retry_backoff_ms_min: int | None = None
    retry_backoff_ms_max: int | None = None
    # "" sets it back to the default, `<topic>.dlq`.
    dead_letter_topic: str | None = None


@dataclass(frozen=True, slots=True)
class Partition:
    """One Raft group and its replicas; `replicas[0]` is the preferred leader."""

    group_id: GroupId
    replicas: tuple[NodeId, ...]

    def __post_init__(self) -> None:
        assert self.group_id != CONTROLLER_GROUP, "group 0 is the controller's"
        assert self.replicas, "a partition has at least one replica"
        assert len(set(self.replicas)) == len(self.replicas), self.replicas

    @property
    def preferred_leader(self) -> NodeId:
        return self.replicas[0]


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    config: TopicConfig
    replication_factor: int
    partitions: tuple[Partition, ...]

    @property
    def partition_count(self) -> int:
        return len(self.partitions)

    @property
    def group_ids(self) -> tuple[GroupId, ...]:
        return tuple(p.group_id for p in self.partitions)


@dataclass(frozen=True, slots=True)
class DeletingTopic:
    """A deleted topic and, per partition, the replicas that still hold its data."""

    topic: Topic
    # group id -> nodes that have not confirmed the drop; only non-empty sets.
    pending: tuple[tuple[GroupId, frozenset[NodeId]], ...]

    @property
    def key(self) -> GroupId:
        # The first group id names this incarnation forever; the name may be reused.
        return self.topic.partitions[0].group_id


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on the metadata. Replicated, so every node validates alike."""

    nodes_max: int = 64
    topics_max: int = 10_000
    partitions_max: int = 1024
    partitions_total_max: int = 100_000
    record_bytes_max_limit: int = 2 * MiB
    consumer_groups_max: int = 100_000

    def check(self) -> ControllerError | None:
        for field in dataclasses.fields(self):
            if getattr(self, field.name) < 1:
                return InvalidLimits.of(f"limit {field.name} must be at least 1", field=field.name)
        if self.partitions_max > self.partitions_total_max:
            return InvalidLimits.of(
                "partitions_max exceeds partitions_total_max", field="partitions_max"
            )
        return None


def check_topic_name(name: str) -> ControllerError | None:
    """Kafka's rule, as the single node has it: 1..249 of [A-Za-z0-9._-], not "." or ".."."""
    if (
        not name
        or len(name) > TOPIC_NAME_CHARS_MAX
        or name in (".", "..")
        or _TOPIC_NAME.fullmatch(name) is None
    ):
        shown = name[:TOPIC_NAME_CHARS_MAX]
        return InvalidTopicName.of(
            f"invalid topic name {shown!r}: use 1 to {TOPIC_NAME_CHARS_MAX} characters "
            "from [A-Za-z0-9._-], not '.' or '..'",
            topic=shown,
        )
    return None


def check_group_name(name: str) -> ControllerError | None:
    """A consumer group that needs a home has a name: 1..255 printable characters."""
    if not name or len(name) > GROUP_NAME_CHARS_MAX or not name.isprintable():
        return InvalidGroupName.of(
            f"invalid group name: use 1 to {GROUP_NAME_CHARS_MAX} printable characters"
        )
    return None


def check_queue_config(
    topic: str,
    *,
    max_deliveries: int,
    retry_backoff_ms_min: int,
    retry_backoff_ms_max: int,
    dead_letter_topic: str,
) -> ControllerError | None:
    """The queue-mode settings of topic `topic`; the single node checks with this too."""
    if not 0 <= max_deliveries <= MAX_DELIVERIES_LIMIT:
        return InvalidConfig.of(
            f"max_deliveries must be between 0 (never dead-letter) and {MAX_DELIVERIES_LIMIT}",
            field="max_deliveries",
            limit=MAX_DELIVERIES_LIMIT,
        )
    if not 0 <= retry_backoff_ms_min <= retry_backoff_ms_max <= RETRY_BACKOFF_MS_LIMIT:
        # Name the field that is out of place, so a client can point at it.
        field = (
            "retry_backoff_ms_min"
            if not 0 <= retry_backoff_ms_min <= RETRY_BACKOFF_MS_LIMIT
            else "retry_backoff_ms_max"
        )
        return InvalidConfig.of(
            "retry backoffs must satisfy 0 <= retry_backoff_ms_min <= retry_backoff_ms_max "
            f"<= {RETRY_BACKOFF_MS_LIMIT}; got min {retry_backoff_ms_min}, "
            f"max {retry_backoff_ms_max}",
            field=field,
            limit=RETRY_BACKOFF_MS_LIMIT,
        )
    if dead_letter_topic:
        if check_topic_name(dead_letter_topic) is not None:
            shown = dead_letter_topic[:TOPIC_NAME_CHARS_MAX]
            return InvalidConfig.of(
                f"dead_letter_topic {shown!r} is not a valid topic name: use 1 to "
                f"{TOPIC_NAME_CHARS_MAX} characters from [A-Za-z0-9._-], not '.' or '..'",
                field="dead_letter_topic",
            )
        if dead_letter_topic == topic:
            return InvalidConfig.of(
                f"dead_letter_topic must not be the topic itself ({topic!r})",
                field="dead_letter_topic",
            )
    return None


def check_config(config: TopicConfig, limits: Limits, topic: str) -> ControllerError | None:
    """The whole config of topic `topic` (the dead-letter topic must differ from it)."""
    for name in ("retention_bytes", "retention_ms"):
        value = getattr(config, name)
        if value < UNLIMITED or value == 0:
            return InvalidConfig.of(f"{name} must be positive or -1 (unlimited)", field=name)
    limit = limits.record_bytes_max_limit
    if not 1 <= config.record_bytes_max <= limit:
        return InvalidConfig.of(
            f"record_bytes_max must be between 1 and {limit}",
            field="record_bytes_max",
            limit=limit,
        )
    return check_queue_config(
        topic,
        max_deliveries=config.max_deliveries,
        retry_backoff_ms_min=config.retry_backoff_ms_min,
        retry_backoff_ms_max=config.retry_backoff_ms_max,
        dead_letter_topic=config.dead_letter_topic,
    )


def merge_config(base: TopicConfig, patch: ConfigPatch) -> TopicConfig:
    changes = {k: v for k, v in dataclasses.asdict(patch).items() if v is not None}
    return dataclasses.replace(base, **changes)
