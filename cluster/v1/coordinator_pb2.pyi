from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GroupPartitionOffset(_message.Message):
    __slots__ = ("group_id", "offset")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    offset: int
    def __init__(self, group_id: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class CommitOffsetsCommand(_message.Message):
    __slots__ = ("consumer_group", "offsets")
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    consumer_group: str
    offsets: _containers.RepeatedCompositeFieldContainer[GroupPartitionOffset]
    def __init__(self, consumer_group: _Optional[str] = ..., offsets: _Optional[_Iterable[_Union[GroupPartitionOffset, _Mapping]]] = ...) -> None: ...

class ForgetPartitionsCommand(_message.Message):
    __slots__ = ("group_ids",)
    GROUP_IDS_FIELD_NUMBER: _ClassVar[int]
    group_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, group_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class CoordinatorCommand(_message.Message):
    __slots__ = ("commit_offsets", "forget_partitions")
    COMMIT_OFFSETS_FIELD_NUMBER: _ClassVar[int]
    FORGET_PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    commit_offsets: CommitOffsetsCommand
    forget_partitions: ForgetPartitionsCommand
    def __init__(self, commit_offsets: _Optional[_Union[CommitOffsetsCommand, _Mapping]] = ..., forget_partitions: _Optional[_Union[ForgetPartitionsCommand, _Mapping]] = ...) -> None: ...

class GroupCommittedOffsets(_message.Message):
    __slots__ = ("consumer_group", "offsets")
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    consumer_group: str
    offsets: _containers.RepeatedCompositeFieldContainer[GroupPartitionOffset]
    def __init__(self, consumer_group: _Optional[str] = ..., offsets: _Optional[_Iterable[_Union[GroupPartitionOffset, _Mapping]]] = ...) -> None: ...

class CoordinatorSnapshot(_message.Message):
    __slots__ = ("groups",)
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[GroupCommittedOffsets]
    def __init__(self, groups: _Optional[_Iterable[_Union[GroupCommittedOffsets, _Mapping]]] = ...) -> None: ...

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
