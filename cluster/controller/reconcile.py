"""Reconcile: which Raft groups this node must start, stop and wipe, from committed metadata.

Every node runs the groups of the partitions it hosts, as the controller's
committed state says (DESIGN §5). After each change of that state (and at
start) the host compares it with the groups it runs and the groups whose
data it holds, and carries out the actions returned here, in order: stop
before deleting a group's data, and propose `ConfirmDrops` only for groups
whose data is gone, so a deleted topic is forgotten only once no replica
holds anything of it.

Group ids at or above `next_group_id` are left alone: such a group can only
exist locally if this node's copy of the controller state is behind the
node that created it, and the state will catch up. Group 0, the
controller's own group, is started from the node's bootstrap configuration,
never by reconcile.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass

from weir.cluster.controller.model import CONTROLLER_GROUP, GroupId, NodeId
from weir.cluster.controller.state import ControllerState


@dataclass(frozen=True, slots=True)
class StartGroup:
    """Create (if new) and run the group's Raft node with these voters.

    `partition` is False for a coordinator group: an opaque group whose
    entries are coordinator commands, not record batches.
    """

    group_id: GroupId
    voters: frozenset[NodeId]
    partition: bool = True


@dataclass(frozen=True, slots=True)
class StopGroup:
    """Stop the group's Raft node; its data stays until DeleteGroupData."""

    group_id: GroupId


@dataclass(frozen=True, slots=True)
class DeleteGroupData:
    """Drop the group's log, hard state and offsets from this node's storage."""

    group_id: GroupId


@dataclass(frozen=True, slots=True)
class ConfirmDropped:
    """Propose `ConfirmDrops(node_id, group_ids)` to the controller."""

    group_ids: tuple[GroupId, ...]


Action = StartGroup | StopGroup | DeleteGroupData | ConfirmDropped


def reconcile(
    state: ControllerState,
    node_id: NodeId,
    running: Set[GroupId],
    stored: Set[GroupId] = frozenset(),
) -> tuple[Action, ...]:
    """The actions that bring this node's groups in line with `state`.

    `running`: groups whose Raft node runs here. `stored`: groups whose data
    (log rows, hard state) this node's storage holds, running or not. The
    answer lists stops, then data deletions, then starts, then at most one
    confirmation, each by group id; an empty answer means nothing to do.
    """
    hosted = {p.group_id: p for p in state.partitions() if node_id in p.replicas}
    known = state.next_group_id

    def removed(group_id: GroupId) -> bool:
        return group_id != CONTROLLER_GROUP and group_id < known and group_id not in hosted

    local = running | stored
    actions: list[Action] = [StopGroup(g) for g in sorted(running) if removed(g)]
    actions.extend(DeleteGroupData(g) for g in sorted(local) if removed(g))
    actions.extend(
        StartGroup(g, frozenset(p.replicas), not state.is_coordinator_group(g))
        for g, p in sorted(hosted.items())
        if g not in running
    )
    confirmed = sorted(
        group_id
        for deleting in state.deleting()
        for group_id, nodes in deleting.pending
        if node_id in nodes and group_id not in local
    )
    if confirmed:
        actions.append(ConfirmDropped(tuple(confirmed)))
    return tuple(actions)
