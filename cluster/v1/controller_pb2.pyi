from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ControllerNode(_message.Message):
    __slots__ = ("node_id", "address")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    address: str
    def __init__(self, node_id: _Optional[int] = ..., address: _Optional[str] = ...) -> None: ...

class TopicConfig(_message.Message):
    __slots__ = ("retention_bytes", "retention_ms", "record_bytes_max", "max_deliveries", "retry_backoff_ms_min", "retry_backoff_ms_max", "dead_letter_topic")
    RETENTION_BYTES_FIELD_NUMBER: _ClassVar[int]
    RETENTION_MS_FIELD_NUMBER: _ClassVar[int]
    RECORD_BYTES_MAX_FIELD_NUMBER: _ClassVar[int]
    MAX_DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    RETRY_BACKOFF_MS_MIN_FIELD_NUMBER: _ClassVar[int]
    RETRY_BACKOFF_MS_MAX_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_TOPIC_FIELD_NUMBER: _ClassVar[int]
    retention_bytes: int
    retention_ms: int
    record_bytes_max: int
    max_deliveries: int
    retry_backoff_ms_min: int
    retry_backoff_ms_max: int
    dead_letter_topic: str
    def __init__(self, retention_bytes: _Optional[int] = ..., retention_ms: _Optional[int] = ..., record_bytes_max: _Optional[int] = ..., max_deliveries: _Optional[int] = ..., retry_backoff_ms_min: _Optional[int] = ..., retry_backoff_ms_max: _Optional[int] = ..., dead_letter_topic: _Optional[str] = ...) -> None: ...

class TopicConfigPatch(_message.Message):
    __slots__ = ("retention_bytes", "retention_ms", "record_bytes_max", "max_deliveries", "retry_backoff_ms_min", "retry_backoff_ms_max", "dead_letter_topic")
    RETENTION_BYTES_FIELD_NUMBER: _ClassVar[int]
    RETENTION_MS_FIELD_NUMBER: _ClassVar[int]
    RECORD_BYTES_MAX_FIELD_NUMBER: _ClassVar[int]
    MAX_DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    RETRY_BACKOFF_MS_MIN_FIELD_NUMBER: _ClassVar[int]
    RETRY_BACKOFF_MS_MAX_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_TOPIC_FIELD_NUMBER: _ClassVar[int]
    retention_bytes: int
    retention_ms: int
    record_bytes_max: int
    max_deliveries: int
    retry_backoff_ms_min: int
    retry_backoff_ms_max: int
    dead_letter_topic: str
    def __init__(self, retention_bytes: _Optional[int] = ..., retention_ms: _Optional[int] = ..., record_bytes_max: _Optional[int] = ..., max_deliveries: _Optional[int] = ..., retry_backoff_ms_min: _Optional[int] = ..., retry_backoff_ms_max: _Optional[int] = ..., dead_letter_topic: _Optional[str] = ...) -> None: ...

class PartitionAssignment(_message.Message):
    __slots__ = ("group_id", "replica_ids")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICA_IDS_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    replica_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, group_id: _Optional[int] = ..., replica_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ControllerTopic(_message.Message):
    __slots__ = ("name", "config", "replication_factor", "partitions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FACTOR_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    config: TopicConfig
    replication_factor: int
    partitions: _containers.RepeatedCompositeFieldContainer[PartitionAssignment]
    def __init__(self, name: _Optional[str] = ..., config: _Optional[_Union[TopicConfig, _Mapping]] = ..., replication_factor: _Optional[int] = ..., partitions: _Optional[_Iterable[_Union[PartitionAssignment, _Mapping]]] = ...) -> None: ...

class PendingDrop(_message.Message):
    __slots__ = ("group_id", "node_ids")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    node_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, group_id: _Optional[int] = ..., node_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class DeletingTopic(_message.Message):
    __slots__ = ("topic", "pending")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    topic: ControllerTopic
    pending: _containers.RepeatedCompositeFieldContainer[PendingDrop]
    def __init__(self, topic: _Optional[_Union[ControllerTopic, _Mapping]] = ..., pending: _Optional[_Iterable[_Union[PendingDrop, _Mapping]]] = ...) -> None: ...

class ControllerLimits(_message.Message):
    __slots__ = ("nodes_max", "topics_max", "partitions_max", "partitions_total_max", "record_bytes_max_limit", "consumer_groups_max")
    NODES_MAX_FIELD_NUMBER: _ClassVar[int]
    TOPICS_MAX_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_MAX_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_TOTAL_MAX_FIELD_NUMBER: _ClassVar[int]
    RECORD_BYTES_MAX_LIMIT_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_GROUPS_MAX_FIELD_NUMBER: _ClassVar[int]
    nodes_max: int
    topics_max: int
    partitions_max: int
    partitions_total_max: int
    record_bytes_max_limit: int
    consumer_groups_max: int
    def __init__(self, nodes_max: _Optional[int] = ..., topics_max: _Optional[int] = ..., partitions_max: _Optional[int] = ..., partitions_total_max: _Optional[int] = ..., record_bytes_max_limit: _Optional[int] = ..., consumer_groups_max: _Optional[int] = ...) -> None: ...

class ControllerState(_message.Message):
    __slots__ = ("version", "nodes", "topics", "deleting_topics", "next_group_id", "limits", "next_producer_id", "named_producers", "coordinator_groups")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    DELETING_TOPICS_FIELD_NUMBER: _ClassVar[int]
    NEXT_GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PRODUCER_ID_FIELD_NUMBER: _ClassVar[int]
    NAMED_PRODUCERS_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_GROUPS_FIELD_NUMBER: _ClassVar[int]
    version: int
    nodes: _containers.RepeatedCompositeFieldContainer[ControllerNode]
    topics: _containers.RepeatedCompositeFieldContainer[ControllerTopic]
    deleting_topics: _containers.RepeatedCompositeFieldContainer[DeletingTopic]
    next_group_id: int
    limits: ControllerLimits
    next_producer_id: int
    named_producers: _containers.RepeatedCompositeFieldContainer[NamedProducer]
    coordinator_groups: _containers.RepeatedCompositeFieldContainer[PartitionAssignment]
    def __init__(self, version: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[ControllerNode, _Mapping]]] = ..., topics: _Optional[_Iterable[_Union[ControllerTopic, _Mapping]]] = ..., deleting_topics: _Optional[_Iterable[_Union[DeletingTopic, _Mapping]]] = ..., next_group_id: _Optional[int] = ..., limits: _Optional[_Union[ControllerLimits, _Mapping]] = ..., next_producer_id: _Optional[int] = ..., named_producers: _Optional[_Iterable[_Union[NamedProducer, _Mapping]]] = ..., coordinator_groups: _Optional[_Iterable[_Union[PartitionAssignment, _Mapping]]] = ...) -> None: ...

class PartitionOffset(_message.Message):
    __slots__ = ("group_id", "offset")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    offset: int
    def __init__(self, group_id: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class RegisterNode(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: ControllerNode
    def __init__(self, node: _Optional[_Union[ControllerNode, _Mapping]] = ...) -> None: ...

class CreateTopic(_message.Message):
    __slots__ = ("name", "partition_count", "replication_factor", "config")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARTITION_COUNT_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FACTOR_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    name: str
    partition_count: int
    replication_factor: int
    config: TopicConfig
    def __init__(self, name: _Optional[str] = ..., partition_count: _Optional[int] = ..., replication_factor: _Optional[int] = ..., config: _Optional[_Union[TopicConfig, _Mapping]] = ...) -> None: ...

class DeleteTopic(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class AddPartitions(_message.Message):
    __slots__ = ("name", "partition_count")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARTITION_COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    partition_count: int
    def __init__(self, name: _Optional[str] = ..., partition_count: _Optional[int] = ...) -> None: ...

class UpdateTopicConfig(_message.Message):
    __slots__ = ("name", "patch")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATCH_FIELD_NUMBER: _ClassVar[int]
    name: str
    patch: TopicConfigPatch
    def __init__(self, name: _Optional[str] = ..., patch: _Optional[_Union[TopicConfigPatch, _Mapping]] = ...) -> None: ...

class ConfirmDrops(_message.Message):
    __slots__ = ("node_id", "group_ids")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_IDS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    group_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, node_id: _Optional[int] = ..., group_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class AssignGroupHome(_message.Message):
    __slots__ = ("consumer_group",)
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    consumer_group: str
    def __init__(self, consumer_group: _Optional[str] = ...) -> None: ...

class CreateCoordinatorGroups(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class SetLimits(_message.Message):
    __slots__ = ("limits",)
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    limits: ControllerLimits
    def __init__(self, limits: _Optional[_Union[ControllerLimits, _Mapping]] = ...) -> None: ...

class CommitOffsets(_message.Message):
    __slots__ = ("consumer_group", "offsets")
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    consumer_group: str
    offsets: _containers.RepeatedCompositeFieldContainer[PartitionOffset]
    def __init__(self, consumer_group: _Optional[str] = ..., offsets: _Optional[_Iterable[_Union[PartitionOffset, _Mapping]]] = ...) -> None: ...

class ControllerCommand(_message.Message):
    __slots__ = ("register_node", "create_topic", "delete_topic", "add_partitions", "update_topic_config", "confirm_drops", "assign_group_home", "set_limits", "commit_offsets", "allocate_producer_ids", "init_named_producer", "create_coordinator_groups")
    REGISTER_NODE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TOPIC_FIELD_NUMBER: _ClassVar[int]
    DELETE_TOPIC_FIELD_NUMBER: _ClassVar[int]
    ADD_PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TOPIC_CONFIG_FIELD_NUMBER: _ClassVar[int]
    CONFIRM_DROPS_FIELD_NUMBER: _ClassVar[int]
    ASSIGN_GROUP_HOME_FIELD_NUMBER: _ClassVar[int]
    SET_LIMITS_FIELD_NUMBER: _ClassVar[int]
    COMMIT_OFFSETS_FIELD_NUMBER: _ClassVar[int]
    ALLOCATE_PRODUCER_IDS_FIELD_NUMBER: _ClassVar[int]
    INIT_NAMED_PRODUCER_FIELD_NUMBER: _ClassVar[int]
    CREATE_COORDINATOR_GROUPS_FIELD_NUMBER: _ClassVar[int]
    register_node: RegisterNode
    create_topic: CreateTopic
    delete_topic: DeleteTopic
    add_partitions: AddPartitions
    update_topic_config: UpdateTopicConfig
    confirm_drops: ConfirmDrops
    assign_group_home: AssignGroupHome
    set_limits: SetLimits
    commit_offsets: CommitOffsets
    allocate_producer_ids: AllocateProducerIds
    init_named_producer: InitNamedProducer
    create_coordinator_groups: CreateCoordinatorGroups
    def __init__(self, register_node: _Optional[_Union[RegisterNode, _Mapping]] = ..., create_topic: _Optional[_Union[CreateTopic, _Mapping]] = ..., delete_topic: _Optional[_Union[DeleteTopic, _Mapping]] = ..., add_partitions: _Optional[_Union[AddPartitions, _Mapping]] = ..., update_topic_config: _Optional[_Union[UpdateTopicConfig, _Mapping]] = ..., confirm_drops: _Optional[_Union[ConfirmDrops, _Mapping]] = ..., assign_group_home: _Optional[_Union[AssignGroupHome, _Mapping]] = ..., set_limits: _Optional[_Union[SetLimits, _Mapping]] = ..., commit_offsets: _Optional[_Union[CommitOffsets, _Mapping]] = ..., allocate_producer_ids: _Optional[_Union[AllocateProducerIds, _Mapping]] = ..., init_named_producer: _Optional[_Union[InitNamedProducer, _Mapping]] = ..., create_coordinator_groups: _Optional[_Union[CreateCoordinatorGroups, _Mapping]] = ...) -> None: ...

class AllocateProducerIds(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class InitNamedProducer(_message.Message):
    __slots__ = ("producer_name",)
    PRODUCER_NAME_FIELD_NUMBER: _ClassVar[int]
    producer_name: str
    def __init__(self, producer_name: _Optional[str] = ...) -> None: ...

class NamedProducer(_message.Message):
    __slots__ = ("producer_name", "producer_id", "producer_epoch")
    PRODUCER_NAME_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    producer_name: str
    producer_id: int
    producer_epoch: int
    def __init__(self, producer_name: _Optional[str] = ..., producer_id: _Optional[int] = ..., producer_epoch: _Optional[int] = ...) -> None: ...
