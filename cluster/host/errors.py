"""Outcomes of requests to the Raft host: operating conditions, typed, with `retriable`.

Broken invariants are assertions elsewhere; everything here is an expected
condition a caller (the produce path, the controller's admin handlers) maps
to an answer. `retriable` says whether trying again, possibly on another
node, can succeed. The one subtle case is `OutcomeUnknownError`: the
proposal may or may not commit later, so a blind retry can write twice
(an idempotent producer's sequence numbers make that safe).
"""

from __future__ import annotations

from typing import ClassVar

from ..raft.types import NodeId


class HostError(Exception):
    """Base of the host's operating errors."""

    retriable: ClassVar[bool] = False


class NotLeaderError(HostError):
    """This node does not lead the group; `leader_id` does (0 when unknown)."""

    retriable: ClassVar[bool] = True

    def __init__(self, group_id: int, leader_id: NodeId) -> None:
        super().__init__(f"not the leader of group {group_id} (leader: {leader_id or 'unknown'})")
        self.group_id = group_id
        self.leader_id = leader_id


class ProposalDroppedError(HostError):
    """The leader refused the proposal for now (a transfer, too much uncommitted)."""

    retriable: ClassVar[bool] = True

    def __init__(self, group_id: int, reason: str) -> None:
        super().__init__(f"group {group_id} dropped the proposal: {reason}")
        self.group_id = group_id
        self.reason = reason


class NotWrittenError(HostError):
    """The proposal's index was applied with another term: it will never commit.

    Safe to retry: the entry is definitely not in the log.
    """

    retriable: ClassVar[bool] = True

    def __init__(self, group_id: int, index: int, term: int, applied_term: int) -> None:
        super().__init__(
            f"group {group_id}: index {index} was applied with term {applied_term}, "
            f"not the proposal's term {term}"
        )
        self.group_id = group_id
        self.index = index


class OutcomeUnknownError(HostError):
    """The proposal may still commit or not (deadline, group or host stopped)."""

    retriable: ClassVar[bool] = True

    def __init__(self, group_id: int, reason: str) -> None:
        super().__init__(f"group {group_id}: outcome unknown: {reason}")
        self.group_id = group_id
        self.reason = reason


class GroupNotFoundError(HostError):
    """The group does not run on this node (never started, stopped or deleted)."""

    def __init__(self, group_id: int) -> None:
        super().__init__(f"group {group_id} does not run on this node")
        self.group_id = group_id


class HostStoppedError(HostError):
    """The host is not running (not started yet, stopping, or its driver died)."""

    retriable: ClassVar[bool] = True


__all__ = [
    "GroupNotFoundError",
    "HostError",
    "HostStoppedError",
    "NotLeaderError",
    "NotWrittenError",
    "OutcomeUnknownError",
    "ProposalDroppedError",
]
