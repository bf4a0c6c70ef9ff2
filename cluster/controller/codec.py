"""Encoding of controller commands (group 0's log entries) and state (its snapshots).

The wire types are `weir.cluster.v1.controller_pb2`. Lists are written in
canonical order and serialized deterministically, so equal states encode to
equal bytes on every node. A committed entry or a snapshot that does not
decode was written by a Weir node of this release or not at all: failing to
decode one is a broken invariant (an assertion), not an operating error.
"""

from __future__ import annotations

from weir.cluster.controller.commands import (
    AddPartitions,
    AllocateProducerIds,
    Command,
    ConfirmDrops,
    CreateCoordinatorGroups,
    CreateTopic,
    DeleteTopic,
    InitNamedProducer,
    RegisterNode,
    Retired,
    SetLimits,
    UpdateTopicConfig,
)
from weir.cluster.controller.model import (
    ConfigPatch,
    DeletingTopic,
    Limits,
    NodeInfo,
    Partition,
    Topic,
    TopicConfig,
)
from weir.cluster.controller.state import ControllerState
from weir.cluster.v1 import controller_pb2 as pb


def _node(node: NodeInfo) -> pb.ControllerNode:
    return pb.ControllerNode(node_id=node.node_id, address=node.address)


def _node_of(msg: pb.ControllerNode) -> NodeInfo:
    return NodeInfo(msg.node_id, msg.address)


def _config(config: TopicConfig) -> pb.TopicConfig:
    return pb.TopicConfig(
        retention_bytes=config.retention_bytes,
        retention_ms=config.retention_ms,
        record_bytes_max=config.record_bytes_max,
        max_deliveries=config.max_deliveries,
        retry_backoff_ms_min=config.retry_backoff_ms_min,
        retry_backoff_ms_max=config.retry_backoff_ms_max,
        dead_letter_topic=config.dead_letter_topic,
    )


def _config_of(msg: pb.TopicConfig) -> TopicConfig:
    # A config written by a release before the queue settings has none of
    # them (the fields are optional on the wire): it reads as the defaults.
    default = TopicConfig()
    return TopicConfig(
        retention_bytes=msg.retention_bytes,
        retention_ms=msg.retention_ms,
        record_bytes_max=msg.record_bytes_max,
        max_deliveries=(
            msg.max_deliveries if msg.HasField("max_deliveries") else default.max_deliveries
        ),
        retry_backoff_ms_min=(
            msg.retry_backoff_ms_min
            if msg.HasField("retry_backoff_ms_min")
            else default.retry_backoff_ms_min
        ),
        retry_backoff_ms_max=(
            msg.retry_backoff_ms_max
            if msg.HasField("retry_backoff_ms_max")
            else default.retry_backoff_ms_max
        ),
        dead_letter_topic=msg.dead_letter_topic,
    )


def _patch(patch: ConfigPatch) -> pb.TopicConfigPatch:
    return pb.TopicConfigPatch(
        retention_bytes=patch.retention_bytes,
        retention_ms=patch.retention_ms,
        record_bytes_max=patch.record_bytes_max,
        max_deliveries=patch.max_deliveries,
        retry_backoff_ms_min=patch.retry_backoff_ms_min,
        retry_backoff_ms_max=patch.retry_backoff_ms_max,
        dead_letter_topic=patch.dead_letter_topic,
    )


def _patch_of(msg: pb.TopicConfigPatch) -> ConfigPatch:
    has = msg.HasField
    return ConfigPatch(
        retention_bytes=msg.retention_bytes if has("retention_bytes") else None,
        retention_ms=msg.retention_ms if has("retention_ms") else None,
        record_bytes_max=msg.record_bytes_max if has("record_bytes_max") else None,
        max_deliveries=msg.max_deliveries if has("max_deliveries") else None,
        retry_backoff_ms_min=msg.retry_backoff_ms_min if has("retry_backoff_ms_min") else None,
        retry_backoff_ms_max=msg.retry_backoff_ms_max if has("retry_backoff_ms_max") else None,
        dead_letter_topic=msg.dead_letter_topic if has("dead_letter_topic") else None,
    )


def _partition(partition: Partition) -> pb.PartitionAssignment:
    return pb.PartitionAssignment(group_id=partition.group_id, replica_ids=partition.replicas)


def _partition_of(msg: pb.PartitionAssignment) -> Partition:
    return Partition(msg.group_id, tuple(msg.replica_ids))


def _topic(topic: Topic) -> pb.ControllerTopic:
    return pb.ControllerTopic(
        name=topic.name,
        config=_config(topic.config),
        replication_factor=topic.replication_factor,
        partitions=[_partition(p) for p in topic.partitions],
    )


def _topic_of(msg: pb.ControllerTopic) -> Topic:
    return Topic(
        name=msg.name,
        config=_config_of(msg.config),
        replication_factor=msg.replication_factor,
        partitions=tuple(_partition_of(p) for p in msg.partitions),
    )


def _limits(limits: Limits) -> pb.ControllerLimits:
    return pb.ControllerLimits(
        nodes_max=limits.nodes_max,
        topics_max=limits.topics_max,
        partitions_max=limits.partitions_max,
        partitions_total_max=limits.partitions_total_max,
        record_bytes_max_limit=limits.record_bytes_max_limit,
        consumer_groups_max=limits.consumer_groups_max,
    )


def _limits_of(msg: pb.ControllerLimits) -> Limits:
    return Limits(
        nodes_max=msg.nodes_max,
        topics_max=msg.topics_max,
        partitions_max=msg.partitions_max,
        partitions_total_max=msg.partitions_total_max,
        record_bytes_max_limit=msg.record_bytes_max_limit,
        consumer_groups_max=msg.consumer_groups_max,
    )


def command_proto(command: Command) -> pb.ControllerCommand:
    match command:
        case RegisterNode(node):
            return pb.ControllerCommand(register_node=pb.RegisterNode(node=_node(node)))
        case CreateTopic(name, partition_count, replication_factor, config):
            return pb.ControllerCommand(
                create_topic=pb.CreateTopic(
                    name=name,
                    partition_count=partition_count,
                    replication_factor=replication_factor,
                    config=_config(config),
                )
            )
        case DeleteTopic(name):
            return pb.ControllerCommand(delete_topic=pb.DeleteTopic(name=name))
        case AddPartitions(name, partition_count):
            return pb.ControllerCommand(
                add_partitions=pb.AddPartitions(name=name, partition_count=partition_count)
            )
        case UpdateTopicConfig(name, patch):
            return pb.ControllerCommand(
                update_topic_config=pb.UpdateTopicConfig(name=name, patch=_patch(patch))
            )
        case ConfirmDrops(node_id, group_ids):
            return pb.ControllerCommand(
                confirm_drops=pb.ConfirmDrops(node_id=node_id, group_ids=sorted(group_ids))
            )
        case CreateCoordinatorGroups(count):
            return pb.ControllerCommand(
                create_coordinator_groups=pb.CreateCoordinatorGroups(count=count)
            )
        case SetLimits(limits):
            return pb.ControllerCommand(set_limits=pb.SetLimits(limits=_limits(limits)))
        case Retired(kind):
            # Only tests write these: entries of a data dir from an older release.
            if kind == "assign_group_home":
                return pb.ControllerCommand(assign_group_home=pb.AssignGroupHome())
            return pb.ControllerCommand(commit_offsets=pb.CommitOffsets())
        case AllocateProducerIds(count):
            return pb.ControllerCommand(allocate_producer_ids=pb.AllocateProducerIds(count=count))
        case InitNamedProducer(name):
            return pb.ControllerCommand(
                init_named_producer=pb.InitNamedProducer(producer_name=name)
            )
    raise AssertionError(f"unknown controller command {command!r}")


def command_of(msg: pb.ControllerCommand) -> Command:
    kind = msg.WhichOneof("command")
    match kind:
        case "register_node":
            return RegisterNode(_node_of(msg.register_node.node))
        case "create_topic":
            c = msg.create_topic
            return CreateTopic(
                c.name, c.partition_count, c.replication_factor, _config_of(c.config)
            )
        case "delete_topic":
            return DeleteTopic(msg.delete_topic.name)
        case "add_partitions":
            return AddPartitions(msg.add_partitions.name, msg.add_partitions.partition_count)
        case "update_topic_config":
            u = msg.update_topic_config
            return UpdateTopicConfig(u.name, _patch_of(u.patch))
        case "confirm_drops":
            d = msg.confirm_drops
            return ConfirmDrops(d.node_id, tuple(d.group_ids))
        case "create_coordinator_groups":
            return CreateCoordinatorGroups(msg.create_coordinator_groups.count)
        case "set_limits":
            return SetLimits(_limits_of(msg.set_limits.limits))
        case "assign_group_home" | "commit_offsets":
            # Written by an older release (offsets now live in the coordinator
            # groups): applied as a no-op, so such a log still replays.
            return Retired(kind)
        case "allocate_producer_ids":
            return AllocateProducerIds(msg.allocate_producer_ids.count)
        case "init_named_producer":
            return InitNamedProducer(msg.init_named_producer.producer_name)
    raise AssertionError(f"controller entry without a known command ({kind!r})")


def encode_command(command: Command) -> bytes:
    """The bytes to propose to group 0."""
    return command_proto(command).SerializeToString(deterministic=True)


def decode_command(data: bytes) -> Command:
    """A committed group 0 entry's command."""
    msg = pb.ControllerCommand()
    msg.ParseFromString(data)
    return command_of(msg)


def state_proto(state: ControllerState) -> pb.ControllerState:
    return pb.ControllerState(
        version=state.version,
        nodes=[_node(n) for n in state.nodes()],
        topics=[_topic(t) for t in state.topics()],
        deleting_topics=[
            pb.DeletingTopic(
                topic=_topic(d.topic),
                pending=[
                    pb.PendingDrop(group_id=g, node_ids=sorted(nodes)) for g, nodes in d.pending
                ],
            )
            for d in state.deleting()
        ],
        next_group_id=state.next_group_id,
        coordinator_groups=[_partition(p) for p in state.coordinator_groups()],
        limits=_limits(state.limits),
        next_producer_id=state.next_producer_id,
        named_producers=[
            pb.NamedProducer(producer_name=n, producer_id=pid, producer_epoch=e)
            for n, pid, e in state.producer_names()
        ],
    )


def state_of(msg: pb.ControllerState) -> ControllerState:
    return ControllerState.build(
        version=msg.version,
        next_group_id=msg.next_group_id,
        limits=_limits_of(msg.limits),
        nodes=tuple(_node_of(n) for n in msg.nodes),
        topics=tuple(_topic_of(t) for t in msg.topics),
        deleting=tuple(
            DeletingTopic(
                _topic_of(d.topic),
                tuple((p.group_id, frozenset(p.node_ids)) for p in d.pending),
            )
            for d in msg.deleting_topics
        ),
        coordinator_groups=tuple(_partition_of(p) for p in msg.coordinator_groups),
        next_producer_id=msg.next_producer_id,
        producer_names=tuple(
            (p.producer_name, p.producer_id, p.producer_epoch) for p in msg.named_producers
        ),
    )


def encode_state(state: ControllerState) -> bytes:
    """Group 0's snapshot data: the whole state."""
    return state_proto(state).SerializeToString(deterministic=True)


def decode_state(data: bytes) -> ControllerState:
    msg = pb.ControllerState()
    msg.ParseFromString(data)
    return state_of(msg)
