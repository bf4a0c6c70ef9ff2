"""Operating errors of controller commands: typed values, returned and never raised.

A command that fails validation changes nothing and comes back as one of
these. They are expected conditions (a name taken, too many topics), so
`ControllerState.apply` returns them like the Raft core returns `NotLeader`.
Each carries the gRPC status code name and the machine-readable reason the
public API uses (docs/errors.md), so the node translates one into a
`BrokerError` without a table of its own: `grpc.StatusCode[error.code]`.
A broken invariant of the state is an assertion instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self


@dataclass(frozen=True, slots=True)
class ControllerError:
    """Base of every controller operating error."""

    message: str
    # Sorted (key, value) pairs for google.rpc.ErrorInfo.metadata.
    metadata: tuple[tuple[str, str], ...] = ()

    # The name of the grpc.StatusCode member (cluster/ does not import grpc).
    code: ClassVar[str] = "INVALID_ARGUMENT"
    reason: ClassVar[str] = "INVALID_ARGUMENT"
    # None of these succeeds when retried unchanged: each needs a different
    # request or a different cluster.
    retriable: ClassVar[bool] = False

    @classmethod
    def of(cls, message: str, **metadata: object) -> Self:
        return cls(message, tuple(sorted((k, str(v)) for k, v in metadata.items())))


@dataclass(frozen=True, slots=True)
class InvalidTopicName(ControllerError):
    reason: ClassVar[str] = "INVALID_TOPIC_NAME"


@dataclass(frozen=True, slots=True)
class TopicExists(ControllerError):
    code: ClassVar[str] = "ALREADY_EXISTS"
    reason: ClassVar[str] = "TOPIC_EXISTS"


@dataclass(frozen=True, slots=True)
class TopicNotFound(ControllerError):
    code: ClassVar[str] = "NOT_FOUND"
    reason: ClassVar[str] = "TOPIC_NOT_FOUND"


@dataclass(frozen=True, slots=True)
class InvalidPartitionCount(ControllerError):
    reason: ClassVar[str] = "INVALID_PARTITION_COUNT"


@dataclass(frozen=True, slots=True)
class InvalidReplicationFactor(ControllerError):
    reason: ClassVar[str] = "INVALID_REPLICATION_FACTOR"


@dataclass(frozen=True, slots=True)
class InvalidConfig(ControllerError):
    reason: ClassVar[str] = "INVALID_CONFIG"


@dataclass(frozen=True, slots=True)
class TooManyTopics(ControllerError):
    code: ClassVar[str] = "RESOURCE_EXHAUSTED"
    reason: ClassVar[str] = "TOO_MANY_TOPICS"


@dataclass(frozen=True, slots=True)
class TooManyPartitions(ControllerError):
    code: ClassVar[str] = "RESOURCE_EXHAUSTED"
    reason: ClassVar[str] = "TOO_MANY_PARTITIONS"


@dataclass(frozen=True, slots=True)
class InvalidNode(ControllerError):
    reason: ClassVar[str] = "INVALID_NODE"


@dataclass(frozen=True, slots=True)
class TooManyNodes(ControllerError):
    code: ClassVar[str] = "RESOURCE_EXHAUSTED"
    reason: ClassVar[str] = "TOO_MANY_NODES"


@dataclass(frozen=True, slots=True)
class NoNodes(ControllerError):
    """Nothing can be placed before a node registered (the cluster is starting)."""

    code: ClassVar[str] = "UNAVAILABLE"
    reason: ClassVar[str] = "NO_NODES"
    retriable: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class InvalidGroupName(ControllerError):
    reason: ClassVar[str] = "INVALID_GROUP_NAME"


@dataclass(frozen=True, slots=True)
class TooManyConsumerGroups(ControllerError):
    code: ClassVar[str] = "RESOURCE_EXHAUSTED"
    reason: ClassVar[str] = "TOO_MANY_CONSUMER_GROUPS"


@dataclass(frozen=True, slots=True)
class InvalidLimits(ControllerError):
    reason: ClassVar[str] = "INVALID_LIMITS"


@dataclass(frozen=True, slots=True)
class InvalidOffset(ControllerError):
    reason: ClassVar[str] = "INVALID_OFFSET"


@dataclass(frozen=True, slots=True)
class InvalidProducerName(ControllerError):
    reason: ClassVar[str] = "INVALID_PRODUCER_NAME"


@dataclass(frozen=True, slots=True)
class TooManyProducerNames(ControllerError):
    code: ClassVar[str] = "RESOURCE_EXHAUSTED"
    reason: ClassVar[str] = "TOO_MANY_PRODUCER_NAMES"


@dataclass(frozen=True, slots=True)
class InvalidCoordinatorGroups(ControllerError):
    reason: ClassVar[str] = "INVALID_COORDINATOR_GROUPS"
