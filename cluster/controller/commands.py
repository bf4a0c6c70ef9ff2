"""The commands replicated through group 0's log, and what applying one answers.

A command states an intent (create this topic with this many partitions),
not its outcome: group ids and replica placement are decided when the
command is applied, from the committed state, so two creations proposed at
once are both placed against the state the first one left. Every replica
applies the same commands in the same order with the same code, so they
decide alike (see docs/cluster.md on changing placement between releases).
"""

from __future__ import annotations

from dataclasses import dataclass

from weir.cluster.controller.errors import ControllerError
from weir.cluster.controller.model import (
    ConfigPatch,
    GroupId,
    Limits,
    NodeId,
    NodeInfo,
    Partition,
    Topic,
    TopicConfig,
)


@dataclass(frozen=True, slots=True)
class RegisterNode:
    """Adds a node, or changes a registered node's address."""

    node: NodeInfo


@dataclass(frozen=True, slots=True)
class CreateTopic:
    name: str
    partition_count: int
    # 0 means the default: 3, or the number of registered nodes if smaller.
    replication_factor: int
    # Complete: the proposer fills in defaults from its node's settings.
    config: TopicConfig


@dataclass(frozen=True, slots=True)
class DeleteTopic:
    name: str


@dataclass(frozen=True, slots=True)
class AddPartitions:
    name: str
    # The new total, above the current count.
    partition_count: int


@dataclass(frozen=True, slots=True)
class UpdateTopicConfig:
    name: str
    # Merged into the config committed when the command is applied, so two
    # updates of different fields never undo each other.
    patch: ConfigPatch


@dataclass(frozen=True, slots=True)
class ConfirmDrops:
    """A node has no data left of these deleted partitions (idempotent)."""

    node_id: NodeId
    group_ids: tuple[GroupId, ...]


@dataclass(frozen=True, slots=True)
class CreateCoordinatorGroups:
    """Creates the cluster's coordinator groups; once they exist, answers them unchanged.

    Proposed by the controller's leader when the cluster starts (and on the
    first start of a cluster created before coordinator groups existed).
    The count of the first one applied is the cluster's for good.
    """

    count: int


@dataclass(frozen=True, slots=True)
class SetLimits:
    limits: Limits


@dataclass(frozen=True, slots=True)
class Retired:
    """An entry of a command this release no longer has (`AssignGroupHome`, `CommitOffsets`).

    Committed offsets moved to the coordinator groups; such entries in a
    data dir written before are applied as no-ops (answer `Done`).
    """

    kind: str


@dataclass(frozen=True, slots=True)
class AllocateProducerIds:
    """A block of `count` producer ids for one node to hand out (never reused)."""

    count: int


@dataclass(frozen=True, slots=True)
class InitNamedProducer:
    """The named producer's id (the same every time) with its epoch raised by one."""

    producer_name: str


Command = (
    RegisterNode
    | CreateTopic
    | DeleteTopic
    | AddPartitions
    | UpdateTopicConfig
    | ConfirmDrops
    | CreateCoordinatorGroups
    | SetLimits
    | Retired
    | AllocateProducerIds
    | InitNamedProducer
)


@dataclass(frozen=True, slots=True)
class Done:
    """A command that succeeded with nothing to report (or had nothing left to do)."""


@dataclass(frozen=True, slots=True)
class CoordinatorGroups:
    """The cluster's coordinator groups; coordinator i is `groups[i]`."""

    groups: tuple[Partition, ...]


@dataclass(frozen=True, slots=True)
class ProducerIdBlock:
    """Producer ids [first, first + count), for the proposing node alone."""

    first: int
    count: int


@dataclass(frozen=True, slots=True)
class ProducerIdentity:
    producer_id: int
    epoch: int


# What `ControllerState.apply` answers: the created/changed value, or the
# typed error of a command that changed nothing.
Result = (
    NodeInfo
    | Topic
    | CoordinatorGroups
    | ProducerIdBlock
    | ProducerIdentity
    | Done
    | ControllerError
)
