"""What the consume path needs from a stream group's coordinator (docs/groups.md).

A Consume stream in CONSUME_MODE_STREAM is a member of its group for as
long as it is open. The consume path joins through `Membership.join`,
which returns the `MemberSession` it then talks to: it waits for
`next_event()` (the member's assignment changes, or its removal), reports
everything the client sends with `seen()`, forwards `AssignmentAck`s with
`ack()`, stores commits with `commit()` (checked against the member's
generation and partitions by the coordinator) and leaves with `close()`
when the stream ends, however it ends.

Implementations: the coordinator groups of a cluster (the coordinator may
lead on another node; the session follows it across leader changes,
rejoining under the same member id) and the single node's own. Neither
buffers without bound: pending changes of one member merge into one
`AssignmentChange`, so what waits for `next_event()` is O(partitions).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from weir.server.errors import BrokerError
from weir.server.topics import Topic


@dataclass(frozen=True, slots=True)
class JoinSpec:
    """A stream subscribing as a member of `group` on `topic`."""

    group: str
    topic: str
    # "" for a new member (the coordinator chooses the id), else the id to
    # rejoin as.
    member_id: str
    session_timeout_ms: int
    rebalance_timeout_ms: int


@dataclass(frozen=True, slots=True)
class AssignmentChange:
    """The member's share changed (or is told again after a rejoin).

    `partitions` is everything the member owns now, ascending. `started`
    are the partitions to begin delivering, each with the group's committed
    offset (None when it has none: the subscription's start policy
    applies). `stopped` are the partitions to stop delivering at once.
    A partition is never in both.
    """

    member_id: str
    generation: int
    partitions: tuple[int, ...]
    started: Mapping[int, int | None]
    stopped: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Removed:
    """The member is no longer in the group: end the stream with `error`."""

    error: BrokerError


MemberEvent = AssignmentChange | Removed


class MemberSession(Protocol):
    @property
    def member_id(self) -> str: ...

    async def next_event(self) -> MemberEvent:
        """The next change for this member; raises BrokerError if the session cannot go on."""
        ...

    def seen(self) -> None:
        """The client sent something: its session starts over."""
        ...

    def ack(self, generation: int) -> None:
        """The client acknowledged the assignment of `generation`."""
        ...

    async def commit(self, generation: int, offsets: Mapping[int, int]) -> dict[int, int]:
        """Stores offsets (partition -> next offset) as this member; the stored offsets after.

        `generation` 0 means the member's latest. Raises BrokerError
        (STALE_GENERATION, PARTITION_NOT_ASSIGNED, UNKNOWN_MEMBER,
        NOT_COORDINATOR, ...) and then stored nothing.
        """
        ...

    async def close(self) -> None:
        """The stream ended: the member leaves at once. Idempotent, never raises."""
        ...


class Membership(Protocol):
    async def join(self, spec: JoinSpec, topic: Topic) -> MemberSession:
        """Joins (or rejoins) the group; raises BrokerError when refused.

        Refusals: INVALID_ARGUMENT `INVALID_JOIN` (member id, timeouts),
        RESOURCE_EXHAUSTED `GROUP_FULL`, UNAVAILABLE `NOT_COORDINATOR`.
        The first `next_event()` of a session that joined is its assignment.
        """
        ...


__all__ = ["AssignmentChange", "JoinSpec", "MemberEvent", "MemberSession", "Membership", "Removed"]
