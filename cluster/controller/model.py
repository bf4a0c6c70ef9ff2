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


@dataclass(frozen=True, slots=True)
class ConfigPatch:
    """A partial TopicConfig: None leaves a field as it is."""

    retention_bytes: int | None = None
    retention_ms: int | None = None
    record_bytes_max: int | None = None


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


def check_config(config: TopicConfig, limits: Limits) -> ControllerError | None:
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
    return None


def merge_config(base: TopicConfig, patch: ConfigPatch) -> TopicConfig:
    changes = {k: v for k, v in dataclasses.asdict(patch).items() if v is not None}
    return dataclasses.replace(base, **changes)
