"""What goes into a stream group's state machine and what comes out of it.

Commands are the entries of the coordinator group's log: each one carries
`now_ms`, stamped by the leader that proposes it, so every replica computes
the same revocation deadlines from the same numbers and never reads a
clock. Instructions are what the node serving a member's stream must do
after a command is applied; only the coordinator leader acts on them
(replicas apply the same commands and drop the instructions).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class TopicPartition:
    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}"


class Reason(enum.StrEnum):
    """Why a commit or a join is refused; the names are the wire's ErrorInfo reasons."""

    STALE_GENERATION = "STALE_GENERATION"
    PARTITION_NOT_ASSIGNED = "PARTITION_NOT_ASSIGNED"
    UNKNOWN_MEMBER = "UNKNOWN_MEMBER"
    # RESOURCE_EXHAUSTED: the group has `group_members_max` members.
    GROUP_FULL = "GROUP_FULL"
    # INVALID_ARGUMENT: a member id, subscription or timeout outside the limits.
    INVALID_JOIN = "INVALID_JOIN"
    # RESOURCE_EXHAUSTED: a new consumer group on a coordinator group that
    # holds its maximum (offsets.CONSUMER_GROUPS_MAX) already (store.py).
    TOO_MANY_CONSUMER_GROUPS = "TOO_MANY_CONSUMER_GROUPS"


class RemovedBecause(enum.StrEnum):
    LEFT = "LEFT"
    SESSION_EXPIRED = "SESSION_EXPIRED"


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Bounds of one stream group; the same on every replica (cluster settings)."""

    group_members_max: int = 1_000
    subscription_topics_max: int = 100
    member_id_chars_max: int = 255
    session_timeout_ms_min: int = 1_000
    session_timeout_ms_max: int = 300_000
    rebalance_timeout_ms_min: int = 1_000
    rebalance_timeout_ms_max: int = 300_000


SESSION_TIMEOUT_MS_DEFAULT = 10_000
REBALANCE_TIMEOUT_MS_DEFAULT = 30_000


# --- Commands (replicated) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Join:
    """A stream subscribed as `member_id`: a new member, or a known one reconnecting.

    A new member's id is chosen by the coordinator leader before it proposes
    the command (from its own injected randomness), so replicas never draw
    one. `partition_counts` are the counts the proposer's metadata had for
    the subscribed topics; they only fill in topics the group does not know
    yet (`PartitionCount` is authoritative).
    """

    now_ms: int
    member_id: str
    topics: tuple[str, ...]
    partition_counts: tuple[tuple[str, int], ...]
    session_timeout_ms: int = SESSION_TIMEOUT_MS_DEFAULT
    rebalance_timeout_ms: int = REBALANCE_TIMEOUT_MS_DEFAULT


@dataclass(frozen=True, slots=True)
class Leave:
    """The member's stream closed: it leaves at once (idempotent)."""

    now_ms: int
    member_id: str


@dataclass(frozen=True, slots=True)
class Expire:
    """The leader's session tracker found the member silent for its session timeout."""

    now_ms: int
    member_id: str


@dataclass(frozen=True, slots=True)
class AssignmentAck:
    """The member has processed its assignment of `generation`: revocations up to it are done."""

    now_ms: int
    member_id: str
    generation: int


@dataclass(frozen=True, slots=True)
class PartitionCount:
    """A topic's partition count as the controller committed it (0: the topic is gone)."""

    now_ms: int
    topic: str
    partition_count: int


@dataclass(frozen=True, slots=True)
class Tick:
    """Proposed when `next_deadline_ms()` has passed: overdue revocations complete."""

    now_ms: int


Command = Join | Leave | Expire | AssignmentAck | PartitionCount | Tick


# --- Instructions (to the node serving the member's stream) -----------------


@dataclass(frozen=True, slots=True)
class Assignment:
    """Send on the member's stream: the partitions it owns as of `generation`."""

    member_id: str
    generation: int
    partitions: tuple[TopicPartition, ...]


@dataclass(frozen=True, slots=True)
class StopDelivery:
    """Stop delivering these partitions to the member's stream at once."""

    member_id: str
    partitions: tuple[TopicPartition, ...]


@dataclass(frozen=True, slots=True)
class StartDelivery:
    """Start delivering these partitions to the member's stream, from the committed offset."""

    member_id: str
    partitions: tuple[TopicPartition, ...]


@dataclass(frozen=True, slots=True)
class MemberRemoved:
    """The member is no longer in the group: end its stream if it is still open."""

    member_id: str
    because: RemovedBecause


@dataclass(frozen=True, slots=True)
class JoinRefused:
    member_id: str
    reason: Reason
    detail: str


Instruction = Assignment | StopDelivery | StartDelivery | MemberRemoved | JoinRefused
