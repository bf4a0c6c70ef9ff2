from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GroupPartitionOffset(_message.Message):
    __slots__ = ("group_id", "offset", "partition")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    offset: int
    partition: int
    def __init__(self, group_id: _Optional[int] = ..., offset: _Optional[int] = ..., partition: _Optional[int] = ...) -> None: ...

class CommitOffsetsCommand(_message.Message):
    __slots__ = ("consumer_group", "offsets", "member_id", "generation", "topic")
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    consumer_group: str
    offsets: _containers.RepeatedCompositeFieldContainer[GroupPartitionOffset]
    member_id: str
    generation: int
    topic: str
    def __init__(self, consumer_group: _Optional[str] = ..., offsets: _Optional[_Iterable[_Union[GroupPartitionOffset, _Mapping]]] = ..., member_id: _Optional[str] = ..., generation: _Optional[int] = ..., topic: _Optional[str] = ...) -> None: ...

class ForgetPartitionsCommand(_message.Message):
    __slots__ = ("group_ids",)
    GROUP_IDS_FIELD_NUMBER: _ClassVar[int]
    group_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, group_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class PartitionCountEntry(_message.Message):
    __slots__ = ("topic", "partition_count")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_COUNT_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition_count: int
    def __init__(self, topic: _Optional[str] = ..., partition_count: _Optional[int] = ...) -> None: ...

class StreamCommand(_message.Message):
    __slots__ = ("consumer_group", "now_ms", "member_id", "join", "leave", "expire", "assignment_ack", "partition_count", "tick")
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    JOIN_FIELD_NUMBER: _ClassVar[int]
    LEAVE_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_ACK_FIELD_NUMBER: _ClassVar[int]
    PARTITION_COUNT_FIELD_NUMBER: _ClassVar[int]
    TICK_FIELD_NUMBER: _ClassVar[int]
    consumer_group: str
    now_ms: int
    member_id: str
    join: StreamJoin
    leave: StreamLeave
    expire: StreamExpire
    assignment_ack: StreamAssignmentAck
    partition_count: PartitionCountEntry
    tick: StreamTick
    def __init__(self, consumer_group: _Optional[str] = ..., now_ms: _Optional[int] = ..., member_id: _Optional[str] = ..., join: _Optional[_Union[StreamJoin, _Mapping]] = ..., leave: _Optional[_Union[StreamLeave, _Mapping]] = ..., expire: _Optional[_Union[StreamExpire, _Mapping]] = ..., assignment_ack: _Optional[_Union[StreamAssignmentAck, _Mapping]] = ..., partition_count: _Optional[_Union[PartitionCountEntry, _Mapping]] = ..., tick: _Optional[_Union[StreamTick, _Mapping]] = ...) -> None: ...

class StreamJoin(_message.Message):
    __slots__ = ("topics", "partition_counts", "session_timeout_ms", "rebalance_timeout_ms")
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    PARTITION_COUNTS_FIELD_NUMBER: _ClassVar[int]
    SESSION_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    REBALANCE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    topics: _containers.RepeatedScalarFieldContainer[str]
    partition_counts: _containers.RepeatedCompositeFieldContainer[PartitionCountEntry]
    session_timeout_ms: int
    rebalance_timeout_ms: int
    def __init__(self, topics: _Optional[_Iterable[str]] = ..., partition_counts: _Optional[_Iterable[_Union[PartitionCountEntry, _Mapping]]] = ..., session_timeout_ms: _Optional[int] = ..., rebalance_timeout_ms: _Optional[int] = ...) -> None: ...

class StreamLeave(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StreamExpire(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StreamAssignmentAck(_message.Message):
    __slots__ = ("generation",)
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    generation: int
    def __init__(self, generation: _Optional[int] = ...) -> None: ...

class StreamTick(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CoordinatorCommand(_message.Message):
    __slots__ = ("commit_offsets", "forget_partitions", "stream", "reset_offsets")
    COMMIT_OFFSETS_FIELD_NUMBER: _ClassVar[int]
    FORGET_PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    RESET_OFFSETS_FIELD_NUMBER: _ClassVar[int]
    commit_offsets: CommitOffsetsCommand
    forget_partitions: ForgetPartitionsCommand
    stream: StreamCommand
    reset_offsets: ResetOffsetsCommand
    def __init__(self, commit_offsets: _Optional[_Union[CommitOffsetsCommand, _Mapping]] = ..., forget_partitions: _Optional[_Union[ForgetPartitionsCommand, _Mapping]] = ..., stream: _Optional[_Union[StreamCommand, _Mapping]] = ..., reset_offsets: _Optional[_Union[ResetOffsetsCommand, _Mapping]] = ...) -> None: ...

class ResetOffsetsCommand(_message.Message):
    __slots__ = ("consumer_group", "offsets")
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    consumer_group: str
    offsets: _containers.RepeatedCompositeFieldContainer[GroupPartitionOffset]
    def __init__(self, consumer_group: _Optional[str] = ..., offsets: _Optional[_Iterable[_Union[GroupPartitionOffset, _Mapping]]] = ...) -> None: ...

class GroupCommittedOffsets(_message.Message):
    __slots__ = ("consumer_group", "offsets")
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    consumer_group: str
    offsets: _containers.RepeatedCompositeFieldContainer[GroupPartitionOffset]
    def __init__(self, consumer_group: _Optional[str] = ..., offsets: _Optional[_Iterable[_Union[GroupPartitionOffset, _Mapping]]] = ...) -> None: ...

class CoordinatorSnapshot(_message.Message):
    __slots__ = ("groups", "stream_groups")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    STREAM_GROUPS_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[GroupCommittedOffsets]
    stream_groups: _containers.RepeatedCompositeFieldContainer[StreamGroupState]
    def __init__(self, groups: _Optional[_Iterable[_Union[GroupCommittedOffsets, _Mapping]]] = ..., stream_groups: _Optional[_Iterable[_Union[StreamGroupState, _Mapping]]] = ...) -> None: ...

class StreamGroupState(_message.Message):
    __slots__ = ("consumer_group", "state")
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    consumer_group: str
    state: bytes
    def __init__(self, consumer_group: _Optional[str] = ..., state: _Optional[bytes] = ...) -> None: ...

class CommitGroupOffsetsRequest(_message.Message):
    __slots__ = ("cluster_id", "coordinator_group_id", "commit")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    coordinator_group_id: int
    commit: CommitOffsetsCommand
    def __init__(self, cluster_id: _Optional[str] = ..., coordinator_group_id: _Optional[int] = ..., commit: _Optional[_Union[CommitOffsetsCommand, _Mapping]] = ...) -> None: ...

class CommitGroupOffsetsResponse(_message.Message):
    __slots__ = ("not_leader", "leader_id", "offsets", "error_reason", "error_code", "error_message")
    NOT_LEADER_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    ERROR_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    not_leader: bool
    leader_id: int
    offsets: _containers.RepeatedCompositeFieldContainer[GroupPartitionOffset]
    error_reason: str
    error_code: str
    error_message: str
    def __init__(self, not_leader: _Optional[bool] = ..., leader_id: _Optional[int] = ..., offsets: _Optional[_Iterable[_Union[GroupPartitionOffset, _Mapping]]] = ..., error_reason: _Optional[str] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ...) -> None: ...

class FetchGroupOffsetsRequest(_message.Message):
    __slots__ = ("cluster_id", "coordinator_group_id", "consumer_group", "group_ids")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    GROUP_IDS_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    coordinator_group_id: int
    consumer_group: str
    group_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, cluster_id: _Optional[str] = ..., coordinator_group_id: _Optional[int] = ..., consumer_group: _Optional[str] = ..., group_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class FetchGroupOffsetsResponse(_message.Message):
    __slots__ = ("not_leader", "leader_id", "offsets")
    NOT_LEADER_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    not_leader: bool
    leader_id: int
    offsets: _containers.RepeatedCompositeFieldContainer[GroupPartitionOffset]
    def __init__(self, not_leader: _Optional[bool] = ..., leader_id: _Optional[int] = ..., offsets: _Optional[_Iterable[_Union[GroupPartitionOffset, _Mapping]]] = ...) -> None: ...

class MembershipRequest(_message.Message):
    __slots__ = ("join", "heartbeat", "ack")
    JOIN_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    join: MembershipJoin
    heartbeat: MembershipHeartbeat
    ack: StreamAssignmentAck
    def __init__(self, join: _Optional[_Union[MembershipJoin, _Mapping]] = ..., heartbeat: _Optional[_Union[MembershipHeartbeat, _Mapping]] = ..., ack: _Optional[_Union[StreamAssignmentAck, _Mapping]] = ...) -> None: ...

class MembershipJoin(_message.Message):
    __slots__ = ("cluster_id", "coordinator_group_id", "consumer_group", "member_id", "topic", "partition_count", "session_timeout_ms", "rebalance_timeout_ms")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_COUNT_FIELD_NUMBER: _ClassVar[int]
    SESSION_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    REBALANCE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    coordinator_group_id: int
    consumer_group: str
    member_id: str
    topic: str
    partition_count: int
    session_timeout_ms: int
    rebalance_timeout_ms: int
    def __init__(self, cluster_id: _Optional[str] = ..., coordinator_group_id: _Optional[int] = ..., consumer_group: _Optional[str] = ..., member_id: _Optional[str] = ..., topic: _Optional[str] = ..., partition_count: _Optional[int] = ..., session_timeout_ms: _Optional[int] = ..., rebalance_timeout_ms: _Optional[int] = ...) -> None: ...

class MembershipHeartbeat(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MembershipResponse(_message.Message):
    __slots__ = ("not_leader", "assignment", "error")
    NOT_LEADER_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    not_leader: MembershipNotLeader
    assignment: MembershipAssignment
    error: MembershipError
    def __init__(self, not_leader: _Optional[_Union[MembershipNotLeader, _Mapping]] = ..., assignment: _Optional[_Union[MembershipAssignment, _Mapping]] = ..., error: _Optional[_Union[MembershipError, _Mapping]] = ...) -> None: ...

class MembershipNotLeader(_message.Message):
    __slots__ = ("leader_id",)
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    leader_id: int
    def __init__(self, leader_id: _Optional[int] = ...) -> None: ...

class MembershipAssignment(_message.Message):
    __slots__ = ("member_id", "generation", "partitions")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    generation: int
    partitions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, member_id: _Optional[str] = ..., generation: _Optional[int] = ..., partitions: _Optional[_Iterable[int]] = ...) -> None: ...

class MembershipError(_message.Message):
    __slots__ = ("code", "reason", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    reason: str
    message: str
    def __init__(self, code: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ListConsumerGroupsRequest(_message.Message):
    __slots__ = ("cluster_id", "coordinator_group_id", "after")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    coordinator_group_id: int
    after: str
    def __init__(self, cluster_id: _Optional[str] = ..., coordinator_group_id: _Optional[int] = ..., after: _Optional[str] = ...) -> None: ...

class ListConsumerGroupsResponse(_message.Message):
    __slots__ = ("not_leader", "leader_id", "groups", "more")
    NOT_LEADER_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    not_leader: bool
    leader_id: int
    groups: _containers.RepeatedCompositeFieldContainer[ConsumerGroupView]
    more: bool
    def __init__(self, not_leader: _Optional[bool] = ..., leader_id: _Optional[int] = ..., groups: _Optional[_Iterable[_Union[ConsumerGroupView, _Mapping]]] = ..., more: _Optional[bool] = ...) -> None: ...

class DescribeConsumerGroupRequest(_message.Message):
    __slots__ = ("cluster_id", "coordinator_group_id", "consumer_group")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    coordinator_group_id: int
    consumer_group: str
    def __init__(self, cluster_id: _Optional[str] = ..., coordinator_group_id: _Optional[int] = ..., consumer_group: _Optional[str] = ...) -> None: ...

class DescribeConsumerGroupResponse(_message.Message):
    __slots__ = ("not_leader", "leader_id", "found", "group")
    NOT_LEADER_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    not_leader: bool
    leader_id: int
    found: bool
    group: ConsumerGroupView
    def __init__(self, not_leader: _Optional[bool] = ..., leader_id: _Optional[int] = ..., found: _Optional[bool] = ..., group: _Optional[_Union[ConsumerGroupView, _Mapping]] = ...) -> None: ...

class ConsumerGroupView(_message.Message):
    __slots__ = ("consumer_group", "generation", "members", "offsets")
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    consumer_group: str
    generation: int
    members: _containers.RepeatedCompositeFieldContainer[ConsumerGroupMember]
    offsets: _containers.RepeatedCompositeFieldContainer[GroupPartitionOffset]
    def __init__(self, consumer_group: _Optional[str] = ..., generation: _Optional[int] = ..., members: _Optional[_Iterable[_Union[ConsumerGroupMember, _Mapping]]] = ..., offsets: _Optional[_Iterable[_Union[GroupPartitionOffset, _Mapping]]] = ...) -> None: ...

class ConsumerGroupMember(_message.Message):
    __slots__ = ("member_id", "generation", "topics", "owned")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    OWNED_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    generation: int
    topics: _containers.RepeatedScalarFieldContainer[str]
    owned: _containers.RepeatedCompositeFieldContainer[OwnedPartition]
    def __init__(self, member_id: _Optional[str] = ..., generation: _Optional[int] = ..., topics: _Optional[_Iterable[str]] = ..., owned: _Optional[_Iterable[_Union[OwnedPartition, _Mapping]]] = ...) -> None: ...

class OwnedPartition(_message.Message):
    __slots__ = ("topic", "partition")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    def __init__(self, topic: _Optional[str] = ..., partition: _Optional[int] = ...) -> None: ...

class ResetGroupOffsetsRequest(_message.Message):
    __slots__ = ("cluster_id", "coordinator_group_id", "reset")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    coordinator_group_id: int
    reset: ResetOffsetsCommand
    def __init__(self, cluster_id: _Optional[str] = ..., coordinator_group_id: _Optional[int] = ..., reset: _Optional[_Union[ResetOffsetsCommand, _Mapping]] = ...) -> None: ...

class ResetGroupOffsetsResponse(_message.Message):
    __slots__ = ("not_leader", "leader_id", "offsets", "error_reason", "error_code", "error_message")
    NOT_LEADER_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    ERROR_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    not_leader: bool
    leader_id: int
    offsets: _containers.RepeatedCompositeFieldContainer[GroupPartitionOffset]
    error_reason: str
    error_code: str
    error_message: str
    def __init__(self, not_leader: _Optional[bool] = ..., leader_id: _Optional[int] = ..., offsets: _Optional[_Iterable[_Union[GroupPartitionOffset, _Mapping]]] = ..., error_reason: _Optional[str] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ...) -> None: ...
