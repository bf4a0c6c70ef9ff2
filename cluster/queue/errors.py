"""Operating errors of queue mode: typed values, returned and never raised.

An event that is refused changes nothing and answers one of these (as the
controller's `ControllerError`). Each carries the gRPC status code name and
the machine-readable reason of docs/groups.md "Errors", so the node
translates it without a table of its own. Broken invariants are assertions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class QueueError:
    message: str

    code: ClassVar[str] = "INVALID_ARGUMENT"
    reason: ClassVar[str] = "INVALID_ARGUMENT"
    retriable: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class UnknownAckId(QueueError):
    """Garbage, another group's id, or a record (or attempt) never delivered."""

    reason: ClassVar[str] = "UNKNOWN_ACK_ID"


@dataclass(frozen=True, slots=True)
class InvalidNackDelay(QueueError):
    reason: ClassVar[str] = "INVALID_NACK_DELAY"


@dataclass(frozen=True, slots=True)
class NotInFlight(QueueError):
    """An extension for a record that is not in flight on this stream."""

    code: ClassVar[str] = "FAILED_PRECONDITION"
    reason: ClassVar[str] = "NOT_IN_FLIGHT"


@dataclass(frozen=True, slots=True)
class QueueGroupsFull(QueueError):
    """A new queue group on a partition that has `queue_groups_per_partition_max` already."""

    code: ClassVar[str] = "RESOURCE_EXHAUSTED"
    reason: ClassVar[str] = "QUEUE_GROUPS_FULL"
