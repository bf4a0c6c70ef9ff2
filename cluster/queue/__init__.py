"""Queue mode (competing consumers): one queue group's state on one partition, pure.

- `types`: settings, inputs, answers and control records;
- `state`: the leader's live dispatch state (`QueueDispatch`);
- `applied`: the replicated state every replica applies (`AppliedQueueState`);
- `ranges`: sets of offsets as ranges (acked offsets folding into a low watermark);
- `deadlines`: the ack deadlines of records in flight, as offset ranges;
- `outbox`: the leader's control records of a turn, merged in event order;
- `codec`: control records as a QUEUE_CONTROL batch payload;
- `ackid`: the opaque ack id;
- `errors`: typed refusals.

docs/groups.md "Queue mode: the state machine" describes how they fit.
"""

from .ackid import AckId, ack_id_encoder, decode_ack_id, decode_ack_ids, encode_ack_id
from .applied import AppliedQueueState, PendingRecord, PendingRecords
from .codec import decode_control, encode_control
from .errors import InvalidNackDelay, NotInFlight, QueueError, QueueGroupsFull, UnknownAckId
from .state import QueueDispatch, backoff_ms
from .types import (
    Acked,
    Candidate,
    ControlRecord,
    DeadLetter,
    DeadLettered,
    Delivered,
    DeliveredRecord,
    DeliveredRun,
    Delivery,
    Nacked,
    Outcome,
    QueueConfig,
    Redelivery,
)

__all__ = [
    "AckId",
    "Acked",
    "AppliedQueueState",
    "Candidate",
    "ControlRecord",
    "DeadLetter",
    "DeadLettered",
    "Delivered",
    "DeliveredRecord",
    "DeliveredRun",
    "Delivery",
    "InvalidNackDelay",
    "Nacked",
    "NotInFlight",
    "Outcome",
    "PendingRecord",
    "PendingRecords",
    "QueueConfig",
    "QueueDispatch",
    "QueueError",
    "QueueGroupsFull",
    "Redelivery",
    "UnknownAckId",
    "ack_id_encoder",
    "backoff_ms",
    "decode_ack_id",
    "decode_ack_ids",
    "decode_control",
    "encode_ack_id",
    "encode_control",
]
