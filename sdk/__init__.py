"""Weir: partitioned replayable streams and work queues behind one gRPC API.

Blocking clients live here (`weir.Producer`, `weir.Consumer`, `weir.Admin`);
their asyncio twins in `weir.aio`. Every failure is a `weir.errors.WeirError`.
"""

from weir._handoff import SendFuture
from weir.admin import Admin
from weir.consumer import Consumer
from weir.errors import (
    BufferFullError,
    ClosedError,
    InvalidArgumentError,
    NotInFlightError,
    NotLeaderError,
    OffsetOutOfRangeError,
    RecordTooLargeError,
    TopicExistsError,
    TopicNotFoundError,
    UnavailableError,
    UnknownAckIdError,
    WeirError,
    WeirTimeoutError,
)
from weir.producer import Producer
from weir.types import (
    Acks,
    ClusterInfo,
    ConsumedRecord,
    NodeInfo,
    PartitionInfo,
    RecordMetadata,
    ReplicaInfo,
    StartAt,
    TopicConfig,
    TopicInfo,
)

__all__ = [
    "Acks",
    "Admin",
    "BufferFullError",
    "ClosedError",
    "ClusterInfo",
    "ConsumedRecord",
    "Consumer",
    "InvalidArgumentError",
    "NodeInfo",
    "NotInFlightError",
    "NotLeaderError",
    "OffsetOutOfRangeError",
    "PartitionInfo",
    "Producer",
    "RecordMetadata",
    "RecordTooLargeError",
    "ReplicaInfo",
    "SendFuture",
    "StartAt",
    "TopicConfig",
    "TopicExistsError",
    "TopicInfo",
    "TopicNotFoundError",
    "UnavailableError",
    "UnknownAckIdError",
    "WeirError",
    "WeirTimeoutError",
]
