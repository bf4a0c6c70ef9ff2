"""The coordinator groups' state machines: consumer groups (docs/groups.md).

Pure and deterministic like the controller, so the same code runs in the
coordinator Raft groups, in single-node mode and in tests:

- `StreamGroup.apply(command) -> instructions`: one stream-mode group's
  members, generation, target and owned partitions, cooperative revocation
  and commit validation (`stream.py`; commands and instructions in
  `messages.py`);
- `target_assignment`: the sticky, balanced, deterministic assignment
  (`assign.py`);
- `Sessions`: member liveness at the coordinator leader, not replicated
  (`sessions.py`);
- `MemberAcks`: what a member owes, as the node serving its stream sees
  it, and the acks that node sends on its behalf (`member_acks.py`);
- `OffsetsState`: committed offsets, never backwards, forgotten with their
  partitions (`offsets.py`); `CoordinatorStore`: one coordinator group's
  replicated state, its entries and snapshots (`store.py`).
"""

from weir.cluster.coordinator.assign import target_assignment
from weir.cluster.coordinator.messages import (
    REBALANCE_TIMEOUT_MS_DEFAULT,
    SESSION_TIMEOUT_MS_DEFAULT,
    Assignment,
    AssignmentAck,
    Command,
    Expire,
    Instruction,
    Join,
    JoinRefused,
    Leave,
    MemberRemoved,
    PartitionCount,
    Reason,
    RemovedBecause,
    StartDelivery,
    StopDelivery,
    StreamLimits,
    Tick,
    TopicPartition,
)
from weir.cluster.coordinator.offsets import OffsetsState
from weir.cluster.coordinator.sessions import Sessions
from weir.cluster.coordinator.store import CoordinatorStore
from weir.cluster.coordinator.stream import Member, Revocation, StreamGroup

__all__ = [
    "REBALANCE_TIMEOUT_MS_DEFAULT",
    "SESSION_TIMEOUT_MS_DEFAULT",
    "Assignment",
    "AssignmentAck",
    "Command",
    "CoordinatorStore",
    "Expire",
    "Instruction",
    "Join",
    "JoinRefused",
    "Leave",
    "Member",
    "MemberRemoved",
    "OffsetsState",
    "PartitionCount",
    "Reason",
    "RemovedBecause",
    "Revocation",
    "Sessions",
    "StartDelivery",
    "StopDelivery",
    "StreamGroup",
    "StreamLimits",
    "Tick",
    "TopicPartition",
    "target_assignment",
]
