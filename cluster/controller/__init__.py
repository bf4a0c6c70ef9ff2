"""The controller: cluster metadata as Raft group 0's state machine (DESIGN §5).

Pure and deterministic, so the same code runs inside the node's group 0 and
inside the simulator:

- `ControllerState.apply(command)`: nodes, topics, partition assignments,
  configs, coordinator groups and limits (`state.py`, commands
  in `commands.py`, typed errors in `errors.py`);
- `encode_command` / `decode_command` for group 0's entries and
  `encode_state` / `decode_state` for its snapshots (`codec.py`);
- `place_partitions`: replicas with even preferred leaders (`placement.py`);
- `plan_leader_transfers`: leadership moves that even out leaders over live
  nodes (`balance.py`);
- `reconcile`: the groups a node must start, stop and wipe (`reconcile.py`).
"""

from weir.cluster.controller.balance import (
    CAUGHT_UP_LAG_ENTRIES_MAX,
    TRANSFERS_PER_PLAN_MAX,
    Transfer,
    caught_up_replicas,
    leader_spread,
    plan_leader_transfers,
)
from weir.cluster.controller.codec import (
    decode_command,
    decode_state,
    encode_command,
    encode_state,
)
from weir.cluster.controller.commands import (
    AddPartitions,
    AllocateProducerIds,
    Command,
    ConfirmDrops,
    CoordinatorGroups,
    CreateCoordinatorGroups,
    CreateTopic,
    DeleteTopic,
    Done,
    InitNamedProducer,
    ProducerIdBlock,
    ProducerIdentity,
    RegisterNode,
    Result,
    Retired,
    SetLimits,
    UpdateTopicConfig,
)
from weir.cluster.controller.errors import (
    ControllerError,
    InvalidConfig,
    InvalidCoordinatorGroups,
    InvalidGroupName,
    InvalidLimits,
    InvalidNode,
    InvalidOffset,
    InvalidPartitionCount,
    InvalidReplicationFactor,
    InvalidTopicName,
    NoNodes,
    TooManyConsumerGroups,
    TooManyNodes,
    TooManyPartitions,
    TooManyTopics,
    TopicExists,
    TopicNotFound,
)
from weir.cluster.controller.model import (
    CONTROLLER_GROUP,
    FIRST_PARTITION_GROUP,
    ConfigPatch,
    DeletingTopic,
    GroupId,
    Limits,
    NodeId,
    NodeInfo,
    Partition,
    Topic,
    TopicConfig,
)
from weir.cluster.controller.placement import place_partitions
from weir.cluster.controller.reconcile import (
    Action,
    ConfirmDropped,
    DeleteGroupData,
    StartGroup,
    StopGroup,
    reconcile,
)
from weir.cluster.controller.state import (
    COORDINATOR_GROUPS_DEFAULT,
    COORDINATOR_GROUPS_MAX,
    ControllerState,
)

__all__ = [
    "CAUGHT_UP_LAG_ENTRIES_MAX",
    "CONTROLLER_GROUP",
    "COORDINATOR_GROUPS_DEFAULT",
    "COORDINATOR_GROUPS_MAX",
    "FIRST_PARTITION_GROUP",
    "TRANSFERS_PER_PLAN_MAX",
    "Action",
    "AddPartitions",
    "AllocateProducerIds",
    "Command",
    "ConfigPatch",
    "ConfirmDropped",
    "ConfirmDrops",
    "ControllerError",
    "ControllerState",
    "CoordinatorGroups",
    "CreateCoordinatorGroups",
    "CreateTopic",
    "DeleteGroupData",
    "DeleteTopic",
    "DeletingTopic",
    "Done",
    "GroupId",
    "InitNamedProducer",
    "InvalidConfig",
    "InvalidCoordinatorGroups",
    "InvalidGroupName",
    "InvalidLimits",
    "InvalidNode",
    "InvalidOffset",
    "InvalidPartitionCount",
    "InvalidReplicationFactor",
    "InvalidTopicName",
    "Limits",
    "NoNodes",
    "NodeId",
    "NodeInfo",
    "Partition",
    "ProducerIdBlock",
    "ProducerIdentity",
    "RegisterNode",
    "Result",
    "Retired",
    "SetLimits",
    "StartGroup",
    "StopGroup",
    "TooManyConsumerGroups",
    "TooManyNodes",
    "TooManyPartitions",
    "TooManyTopics",
    "Topic",
    "TopicConfig",
    "TopicExists",
    "TopicNotFound",
    "Transfer",
    "UpdateTopicConfig",
    "caught_up_replicas",
    "decode_command",
    "decode_state",
    "encode_command",
    "encode_state",
    "leader_spread",
    "place_partitions",
    "plan_leader_transfers",
    "reconcile",
]
