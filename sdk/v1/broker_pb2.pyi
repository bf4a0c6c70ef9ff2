from weir.v1 import errors_pb2 as _errors_pb2
from weir.v1 import records_pb2 as _records_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Acks(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACKS_UNSPECIFIED: _ClassVar[Acks]
    ACKS_NONE: _ClassVar[Acks]
    ACKS_LEADER: _ClassVar[Acks]
    ACKS_ALL: _ClassVar[Acks]

class StartKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    START_KIND_UNSPECIFIED: _ClassVar[StartKind]
    START_KIND_EARLIEST: _ClassVar[StartKind]
    START_KIND_LATEST: _ClassVar[StartKind]
    START_KIND_OFFSET: _ClassVar[StartKind]
    START_KIND_TIMESTAMP: _ClassVar[StartKind]

class ConsumeMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONSUME_MODE_UNSPECIFIED: _ClassVar[ConsumeMode]
    CONSUME_MODE_STREAM: _ClassVar[ConsumeMode]
    CONSUME_MODE_QUEUE: _ClassVar[ConsumeMode]
ACKS_UNSPECIFIED: Acks
ACKS_NONE: Acks
ACKS_LEADER: Acks
ACKS_ALL: Acks
START_KIND_UNSPECIFIED: StartKind
START_KIND_EARLIEST: StartKind
START_KIND_LATEST: StartKind
START_KIND_OFFSET: StartKind
START_KIND_TIMESTAMP: StartKind
CONSUME_MODE_UNSPECIFIED: ConsumeMode
CONSUME_MODE_STREAM: ConsumeMode
CONSUME_MODE_QUEUE: ConsumeMode

class InitProducerRequest(_message.Message):
    __slots__ = ("producer_name",)
    PRODUCER_NAME_FIELD_NUMBER: _ClassVar[int]
    producer_name: str
    def __init__(self, producer_name: _Optional[str] = ...) -> None: ...

class InitProducerResponse(_message.Message):
    __slots__ = ("producer_id", "producer_epoch")
    PRODUCER_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    producer_id: int
    producer_epoch: int
    def __init__(self, producer_id: _Optional[int] = ..., producer_epoch: _Optional[int] = ...) -> None: ...

class ProduceRequest(_message.Message):
    __slots__ = ("request_id", "topic", "partition", "batch", "acks", "producer_id", "producer_epoch", "first_sequence", "combine_answers")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    COMBINE_ANSWERS_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    topic: str
    partition: int
    batch: _records_pb2.RecordBatch
    acks: Acks
    producer_id: int
    producer_epoch: int
    first_sequence: int
    combine_answers: bool
    def __init__(self, request_id: _Optional[int] = ..., topic: _Optional[str] = ..., partition: _Optional[int] = ..., batch: _Optional[_Union[_records_pb2.RecordBatch, _Mapping]] = ..., acks: _Optional[_Union[Acks, str]] = ..., producer_id: _Optional[int] = ..., producer_epoch: _Optional[int] = ..., first_sequence: _Optional[int] = ..., combine_answers: _Optional[bool] = ...) -> None: ...

class PartitionAppend(_message.Message):
    __slots__ = ("partition", "base_offset", "record_count", "record_indexes")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    BASE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    RECORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    RECORD_INDEXES_FIELD_NUMBER: _ClassVar[int]
    partition: int
    base_offset: int
    record_count: int
    record_indexes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, partition: _Optional[int] = ..., base_offset: _Optional[int] = ..., record_count: _Optional[int] = ..., record_indexes: _Optional[_Iterable[int]] = ...) -> None: ...

class ProduceResponse(_message.Message):
    __slots__ = ("request_id", "appends", "error", "more")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    APPENDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    appends: _containers.RepeatedCompositeFieldContainer[PartitionAppend]
    error: _errors_pb2.Error
    more: _containers.RepeatedCompositeFieldContainer[ProduceResponse]
    def __init__(self, request_id: _Optional[int] = ..., appends: _Optional[_Iterable[_Union[PartitionAppend, _Mapping]]] = ..., error: _Optional[_Union[_errors_pb2.Error, _Mapping]] = ..., more: _Optional[_Iterable[_Union[ProduceResponse, _Mapping]]] = ...) -> None: ...

class StartPosition(_message.Message):
    __slots__ = ("kind", "offset", "timestamp_ms")
    KIND_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    kind: StartKind
    offset: int
    timestamp_ms: int
    def __init__(self, kind: _Optional[_Union[StartKind, str]] = ..., offset: _Optional[int] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...

class Credit(_message.Message):
    __slots__ = ("messages", "bytes")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    messages: int
    bytes: int
    def __init__(self, messages: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class Subscribe(_message.Message):
    __slots__ = ("topic", "partitions", "group", "start", "offsets", "credit", "mode", "member_id", "session_timeout_ms", "rebalance_timeout_ms", "ack_deadline_ms", "ordered_keys")
    class OffsetsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    REBALANCE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    ACK_DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    ORDERED_KEYS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partitions: _containers.RepeatedScalarFieldContainer[int]
    group: str
    start: StartPosition
    offsets: _containers.ScalarMap[int, int]
    credit: Credit
    mode: ConsumeMode
    member_id: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    ack_deadline_ms: int
    ordered_keys: bool
    def __init__(self, topic: _Optional[str] = ..., partitions: _Optional[_Iterable[int]] = ..., group: _Optional[str] = ..., start: _Optional[_Union[StartPosition, _Mapping]] = ..., offsets: _Optional[_Mapping[int, int]] = ..., credit: _Optional[_Union[Credit, _Mapping]] = ..., mode: _Optional[_Union[ConsumeMode, str]] = ..., member_id: _Optional[str] = ..., session_timeout_ms: _Optional[int] = ..., rebalance_timeout_ms: _Optional[int] = ..., ack_deadline_ms: _Optional[int] = ..., ordered_keys: _Optional[bool] = ...) -> None: ...

class PartitionOffset(_message.Message):
    __slots__ = ("partition", "offset")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    partition: int
    offset: int
    def __init__(self, partition: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class Commit(_message.Message):
    __slots__ = ("commit_id", "offsets", "generation")
    COMMIT_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    commit_id: int
    offsets: _containers.RepeatedCompositeFieldContainer[PartitionOffset]
    generation: int
    def __init__(self, commit_id: _Optional[int] = ..., offsets: _Optional[_Iterable[_Union[PartitionOffset, _Mapping]]] = ..., generation: _Optional[int] = ...) -> None: ...

class AssignmentAck(_message.Message):
    __slots__ = ("generation",)
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    generation: int
    def __init__(self, generation: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Seek(_message.Message):
    __slots__ = ("seek_id", "partition", "position")
    SEEK_ID_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    seek_id: int
    partition: int
    position: StartPosition
    def __init__(self, seek_id: _Optional[int] = ..., partition: _Optional[int] = ..., position: _Optional[_Union[StartPosition, _Mapping]] = ...) -> None: ...

class ConsumeRequest(_message.Message):
    __slots__ = ("subscribe", "credit", "commit", "assignment_ack", "heartbeat", "seek", "ack", "nack", "extend_deadline")
    SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_ACK_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    SEEK_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    EXTEND_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    subscribe: Subscribe
    credit: Credit
    commit: Commit
    assignment_ack: AssignmentAck
    heartbeat: Heartbeat
    seek: Seek
    ack: Ack
    nack: Nack
    extend_deadline: ExtendDeadline
    def __init__(self, subscribe: _Optional[_Union[Subscribe, _Mapping]] = ..., credit: _Optional[_Union[Credit, _Mapping]] = ..., commit: _Optional[_Union[Commit, _Mapping]] = ..., assignment_ack: _Optional[_Union[AssignmentAck, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., seek: _Optional[_Union[Seek, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., nack: _Optional[_Union[Nack, _Mapping]] = ..., extend_deadline: _Optional[_Union[ExtendDeadline, _Mapping]] = ...) -> None: ...

class PartitionStart(_message.Message):
    __slots__ = ("partition", "offset", "log_start_offset", "end_offset")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LOG_START_OFFSET_FIELD_NUMBER: _ClassVar[int]
    END_OFFSET_FIELD_NUMBER: _ClassVar[int]
    partition: int
    offset: int
    log_start_offset: int
    end_offset: int
    def __init__(self, partition: _Optional[int] = ..., offset: _Optional[int] = ..., log_start_offset: _Optional[int] = ..., end_offset: _Optional[int] = ...) -> None: ...

class Subscribed(_message.Message):
    __slots__ = ("topic", "partitions", "record_bytes_max")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    RECORD_BYTES_MAX_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partitions: _containers.RepeatedCompositeFieldContainer[PartitionStart]
    record_bytes_max: int
    def __init__(self, topic: _Optional[str] = ..., partitions: _Optional[_Iterable[_Union[PartitionStart, _Mapping]]] = ..., record_bytes_max: _Optional[int] = ...) -> None: ...

class ConsumedBatch(_message.Message):
    __slots__ = ("records", "topic", "partition", "base_offset", "end_offset", "deliveries")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    BASE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    END_OFFSET_FIELD_NUMBER: _ClassVar[int]
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[_records_pb2.Record]
    topic: str
    partition: int
    base_offset: int
    end_offset: int
    deliveries: _containers.RepeatedCompositeFieldContainer[Delivery]
    def __init__(self, records: _Optional[_Iterable[_Union[_records_pb2.Record, _Mapping]]] = ..., topic: _Optional[str] = ..., partition: _Optional[int] = ..., base_offset: _Optional[int] = ..., end_offset: _Optional[int] = ..., deliveries: _Optional[_Iterable[_Union[Delivery, _Mapping]]] = ...) -> None: ...

class Delivery(_message.Message):
    __slots__ = ("ack_id", "offset", "delivery_attempt", "ack_deadline_ms")
    ACK_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ACK_DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    ack_id: bytes
    offset: int
    delivery_attempt: int
    ack_deadline_ms: int
    def __init__(self, ack_id: _Optional[bytes] = ..., offset: _Optional[int] = ..., delivery_attempt: _Optional[int] = ..., ack_deadline_ms: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("request_id", "ack_ids")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACK_IDS_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    ack_ids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, request_id: _Optional[int] = ..., ack_ids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Nack(_message.Message):
    __slots__ = ("request_id", "ack_ids", "delay_ms", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACK_IDS_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    ack_ids: _containers.RepeatedScalarFieldContainer[bytes]
    delay_ms: int
    error: str
    def __init__(self, request_id: _Optional[int] = ..., ack_ids: _Optional[_Iterable[bytes]] = ..., delay_ms: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class ExtendDeadline(_message.Message):
    __slots__ = ("request_id", "ack_ids", "extension_ms")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACK_IDS_FIELD_NUMBER: _ClassVar[int]
    EXTENSION_MS_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    ack_ids: _containers.RepeatedScalarFieldContainer[bytes]
    extension_ms: int
    def __init__(self, request_id: _Optional[int] = ..., ack_ids: _Optional[_Iterable[bytes]] = ..., extension_ms: _Optional[int] = ...) -> None: ...

class CommitResult(_message.Message):
    __slots__ = ("commit_id", "offsets", "error")
    COMMIT_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    commit_id: int
    offsets: _containers.RepeatedCompositeFieldContainer[PartitionOffset]
    error: _errors_pb2.Error
    def __init__(self, commit_id: _Optional[int] = ..., offsets: _Optional[_Iterable[_Union[PartitionOffset, _Mapping]]] = ..., error: _Optional[_Union[_errors_pb2.Error, _Mapping]] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("member_id", "generation", "partitions", "started", "revoked")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    generation: int
    partitions: _containers.RepeatedScalarFieldContainer[int]
    started: _containers.RepeatedCompositeFieldContainer[PartitionStart]
    revoked: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, member_id: _Optional[str] = ..., generation: _Optional[int] = ..., partitions: _Optional[_Iterable[int]] = ..., started: _Optional[_Iterable[_Union[PartitionStart, _Mapping]]] = ..., revoked: _Optional[_Iterable[int]] = ...) -> None: ...

class AckResult(_message.Message):
    __slots__ = ("request_id", "failures")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    failures: _containers.RepeatedCompositeFieldContainer[AckFailure]
    def __init__(self, request_id: _Optional[int] = ..., failures: _Optional[_Iterable[_Union[AckFailure, _Mapping]]] = ...) -> None: ...

class AckFailure(_message.Message):
    __slots__ = ("index", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    error: _errors_pb2.Error
    def __init__(self, index: _Optional[int] = ..., error: _Optional[_Union[_errors_pb2.Error, _Mapping]] = ...) -> None: ...

class SeekResult(_message.Message):
    __slots__ = ("seek_id", "partition", "offset", "error")
    SEEK_ID_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    seek_id: int
    partition: int
    offset: int
    error: _errors_pb2.Error
    def __init__(self, seek_id: _Optional[int] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ..., error: _Optional[_Union[_errors_pb2.Error, _Mapping]] = ...) -> None: ...

class ConsumeResponse(_message.Message):
    __slots__ = ("subscribed", "batch", "commit", "notice", "assignment", "seek", "ack")
    SUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    NOTICE_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    SEEK_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    subscribed: Subscribed
    batch: ConsumedBatch
    commit: CommitResult
    notice: _errors_pb2.Error
    assignment: Assignment
    seek: SeekResult
    ack: AckResult
    def __init__(self, subscribed: _Optional[_Union[Subscribed, _Mapping]] = ..., batch: _Optional[_Union[ConsumedBatch, _Mapping]] = ..., commit: _Optional[_Union[CommitResult, _Mapping]] = ..., notice: _Optional[_Union[_errors_pb2.Error, _Mapping]] = ..., assignment: _Optional[_Union[Assignment, _Mapping]] = ..., seek: _Optional[_Union[SeekResult, _Mapping]] = ..., ack: _Optional[_Union[AckResult, _Mapping]] = ...) -> None: ...
