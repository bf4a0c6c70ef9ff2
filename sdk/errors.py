"""The SDK's error classes, and the translation of broker errors into them.

Every failure the public SDK API reports is a `WeirError`. A broker error
arrives in one of two shapes: as the gRPC status that ends a call (a status
code plus a `google.rpc.ErrorInfo` detail in the `grpc-status-details-bin`
trailer), or as a `weir.v1.Error` inside a stream response, where a failed
request must not end the stream. Both are turned into the same classes here,
so callers catch `TopicNotFoundError` whatever path the error took; no
`grpc.RpcError` ever escapes the SDK.

The subclass is chosen by the machine-readable reason first (it is the more
precise of the two) and by the status code otherwise, so an unknown future
reason still lands in the class of its status code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from weir.v1 import errors_pb2

__all__ = [
    "BufferFullError",
    "ClosedError",
    "DataCorruptedError",
    "FailedPreconditionError",
    "GroupNotFoundError",
    "InvalidArgumentError",
    "NotInFlightError",
    "NotLeaderError",
    "OffsetOutOfRangeError",
    "OutOfOrderSequenceError",
    "ProducerFencedError",
    "RecordTooLargeError",
    "ResourceExhaustedError",
    "TooManyPingsError",
    "TopicExistsError",
    "TopicNotFoundError",
    "UnavailableError",
    "UnknownAckIdError",
    "UnknownProducerIdError",
    "WeirError",
    "WeirTimeoutError",
    "from_error_proto",
    "from_rpc_error",
    "make_error",
]

# The ErrorInfo domain the broker uses; details from other domains (a proxy,
# a load balancer) are ignored for the reason but the status code still counts.
ERROR_DOMAIN = "weir"
_DETAILS_KEY = "grpc-status-details-bin"


class WeirError(Exception):
    """Base of every error the Weir SDK raises.

    Attributes:
        code: The gRPC status code of the failure (client-side failures use
            the code that fits best, e.g. DEADLINE_EXCEEDED for a timeout).
        reason: Machine-readable reason in UPPER_SNAKE_CASE, e.g.
            ``TOPIC_NOT_FOUND``; empty when the broker gave none.
        message: Human-readable explanation.
        metadata: Extra context from the broker (e.g. ``topic``, ``limit``).
        retriable: True when the same request may succeed if sent again.
    """

    default_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_reason: str = ""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retriable: bool = False,
    ) -> None:
        self.code: grpc.StatusCode = code if code is not None else self.default_code
        self.reason: str = reason if reason is not None else self.default_reason
        self.message: str = message
        self.metadata: dict[str, str] = dict(metadata or {})
        self.retriable: bool = retriable
        super().__init__(message)

    def __str__(self) -> str:
        label = self.reason or self.code.name
        return f"{label}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r}, "
            f"message={self.message!r}, metadata={self.metadata!r}, retriable={self.retriable})"
        )


class TopicNotFoundError(WeirError):
    """The topic does not exist (NOT_FOUND / TOPIC_NOT_FOUND)."""

    default_code = grpc.StatusCode.NOT_FOUND
    default_reason = "TOPIC_NOT_FOUND"


class GroupNotFoundError(WeirError):
    """The consumer group has neither committed offsets nor members (NOT_FOUND / GROUP_NOT_FOUND)."""

    default_code = grpc.StatusCode.NOT_FOUND
    default_reason = "GROUP_NOT_FOUND"


class TopicExistsError(WeirError):
    """The topic already exists (ALREADY_EXISTS / TOPIC_EXISTS)."""

    default_code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "TOPIC_EXISTS"


class InvalidArgumentError(WeirError):
    """The request was malformed: bad name, partition, empty batch, ..."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


class FailedPreconditionError(InvalidArgumentError):
    """The request is valid but not in this state (e.g. commit without a group)."""

    default_code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhaustedError(WeirError):
    """A limit was exceeded (RESOURCE_EXHAUSTED), e.g. TOO_MANY_TOPICS."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class RecordTooLargeError(ResourceExhaustedError):
    """A record or batch is larger than the topic or node accepts."""

    default_reason = "RECORD_TOO_LARGE"


class BufferFullError(WeirError):
    """A client-side bound is full: the producer's buffer past `buffer_wait_timeout_ms`,
    or a queue consumer's outstanding ack ids for `ack_nowait()`."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "BUFFER_FULL"


class OutOfOrderSequenceError(FailedPreconditionError):
    """An idempotent producer's batch does not continue its partition's sequence.

    The SDK retries a partition's batches in sequence order, so it sees this
    reason as an answer to a later batch while an earlier one is being
    retried, and then simply sends the later one again after it; with
    nothing earlier pending (an earlier batch failed for good) it numbers
    the partition's waiting batches from the broker's `expected_sequence`.
    Raised to the application only when that does not help within the
    batch's retries: the partition's producer state is not what this
    producer wrote (another process used the same producer id). Not
    retriable; close the producer and create a new one (a fresh producer id).
    """

    default_reason = "OUT_OF_ORDER_SEQUENCE"


class ProducerFencedError(FailedPreconditionError):
    """A newer producer with the same `producer_name` took over (PRODUCER_FENCED).

    Another `InitProducer` with this producer's name raised the epoch, so the
    broker refuses this producer's batches on every partition the newer one
    wrote to. Not retriable, and final for the producer: every record not
    yet written fails with this error and `send()` refuses new ones. Close
    this producer; only the newest instance of a named producer may write.
    """

    default_reason = "PRODUCER_FENCED"


class UnknownProducerIdError(FailedPreconditionError):
    """The partition forgot this producer id (UNKNOWN_PRODUCER_ID).

    The broker drops a producer id that has not written to a partition for
    `producer_id_expiry_ms`, or evicts it when a partition holds more than
    `producers_per_partition_max` producers. The SDK recovers by itself when
    nothing of the partition is pending: it starts the partition's sequence
    again at 0 and resends. Raised to the application only when that is not
    possible; not retriable: close the producer and create a new one (a new
    producer id), or produce more often than the expiry.
    """

    default_reason = "UNKNOWN_PRODUCER_ID"


class UnknownAckIdError(InvalidArgumentError):
    """Queue mode: an ack id the group does not know (INVALID_ARGUMENT / UNKNOWN_ACK_ID).

    The id does not decode, names another group, or was never delivered;
    after a leader change that lost the record of a delivery, an ack of it
    is refused this way and the record comes again (at least once). The
    refusal changed nothing. Raised by `ack()`, `nack()` and `extend()`;
    `metadata["ack_index"]` is the position of the first refused record in
    the call's records and `metadata["ack_failures"]` how many were refused.
    """

    default_reason = "UNKNOWN_ACK_ID"


class NotInFlightError(FailedPreconditionError):
    """Queue mode: a nack or extension of a delivery no longer held (NOT_IN_FLIGHT).

    The record was acked, nacked, or its deadline passed and it went back to
    the queue since. Nothing changed; metadata as for `UnknownAckIdError`.
    """

    default_reason = "NOT_IN_FLIGHT"


class OffsetOutOfRangeError(WeirError):
    """The requested offset lies outside the retained range (OUT_OF_RANGE)."""

    default_code = grpc.StatusCode.OUT_OF_RANGE
    default_reason = "OFFSET_OUT_OF_RANGE"


class UnavailableError(WeirError):
    """The broker cannot serve now (UNAVAILABLE): retriable."""

    default_code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retriable: bool = True,
    ) -> None:
        super().__init__(message, code=code, reason=reason, metadata=metadata, retriable=retriable)


class NotLeaderError(UnavailableError):
    """The node does not lead what the request needs (reason NOT_LEADER): retriable.

    The broker names the leader in the metadata (`leader_id`,
    `leader_address`) when it knows one; the SDK then moves to that address,
    otherwise to the next node of its bootstrap list.
    """

    default_reason = "NOT_LEADER"

    @property
    def leader_id(self) -> int | None:
        """The leader's node id, if the broker named one."""
        value = self.metadata.get("leader_id", "")
        return int(value) if value.lstrip("-").isdigit() else None

    @property
    def leader_address(self) -> str | None:
        """The leader's "host:port", if the broker named one."""
        return self.metadata.get("leader_address") or None


class TooManyPingsError(WeirError):
    """The broker closed the connection: this client's keepalive pings came too often.

    The broker's keepalive policy (docs/operations.md, Keepalive) accepts a
    client's HTTP/2 ping every 5 s or less often by default; gRPC reports a
    connection it closed for more as UNAVAILABLE "Too many pings" (reason
    TOO_MANY_PINGS here). Not retriable: the same setting would be cut off
    again. Raise the client's `keepalive_time_ms`.
    """

    default_code = grpc.StatusCode.UNAVAILABLE
    default_reason = "TOO_MANY_PINGS"


# What gRPC C-core reports for a connection the server closed with GOAWAY
# ENHANCE_YOUR_CALM "too_many_pings" (grpc 1.85; grpc-js clients see
# RESOURCE_EXHAUSTED "Bandwidth exhausted or memory limit exceeded").
_GRPC_TOO_MANY_PINGS = "Too many pings"
TOO_MANY_PINGS_MESSAGE = (
    "the broker closed the connection because this client sent HTTP/2 keepalive pings "
    "more often than the broker's keepalive policy allows (gRPC: 'Too many pings'): "
    "set keepalive_time_ms to at least the broker's --keepalive-client-ping-interval-ms-min "
    "(5000 by default), or None; see docs/errors.md"
)


class WeirTimeoutError(WeirError):
    """An operation did not finish within its deadline."""

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "TIMEOUT"


class ClosedError(WeirError):
    """The client was closed, or its background task died, before the operation finished."""

    default_code = grpc.StatusCode.CANCELLED
    default_reason = "CLOSED"


class DataCorruptedError(WeirError):
    """The broker detected damaged stored data (DATA_LOSS / DATA_CORRUPTED)."""

    default_code = grpc.StatusCode.DATA_LOSS
    default_reason = "DATA_CORRUPTED"


_BY_REASON: dict[str, type[WeirError]] = {
    "TOPIC_NOT_FOUND": TopicNotFoundError,
    "TOPIC_EXISTS": TopicExistsError,
    "GROUP_NOT_FOUND": GroupNotFoundError,
    "RECORD_TOO_LARGE": RecordTooLargeError,
    "BATCH_TOO_LARGE": RecordTooLargeError,
    "OFFSET_OUT_OF_RANGE": OffsetOutOfRangeError,
    "SHUTTING_DOWN": UnavailableError,
    "NOT_LEADER": NotLeaderError,
    "DATA_CORRUPTED": DataCorruptedError,
    "OUT_OF_ORDER_SEQUENCE": OutOfOrderSequenceError,
    "PRODUCER_FENCED": ProducerFencedError,
    "UNKNOWN_PRODUCER_ID": UnknownProducerIdError,
    "UNKNOWN_ACK_ID": UnknownAckIdError,
    "NOT_IN_FLIGHT": NotInFlightError,
}

_BY_CODE: dict[grpc.StatusCode, type[WeirError]] = {
    grpc.StatusCode.NOT_FOUND: TopicNotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: TopicExistsError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.OUT_OF_RANGE: OffsetOutOfRangeError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: WeirTimeoutError,
    grpc.StatusCode.CANCELLED: ClosedError,
    grpc.StatusCode.DATA_LOSS: DataCorruptedError,
}

# Codes whose failures may go away on their own. DEADLINE_EXCEEDED is not
# among them: a timed-out produce may have been appended, so retrying it is
# the caller's decision, not the SDK's.
_RETRIABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})

_CODE_BY_NUMBER: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def status_code_from_number(number: int) -> grpc.StatusCode:
    """Map a google.rpc.Code number to `grpc.StatusCode` (UNKNOWN if unknown)."""
    return _CODE_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def make_error(
    code: grpc.StatusCode,
    reason: str,
    message: str,
    metadata: Mapping[str, str] | None = None,
    retriable: bool | None = None,
) -> WeirError:
    """Build the `WeirError` subclass that fits a reason and status code.

    `retriable=None` derives it from the code (only UNAVAILABLE is retriable).
    NOT_LEADER is always retriable, whatever its code and flag: sending the
    request to the leader is the way to succeed.
    """
    cls = _BY_REASON.get(reason) or _BY_CODE.get(code, WeirError)
    if retriable is None:
        retriable = code in _RETRIABLE_CODES
    if cls is NotLeaderError:
        retriable = True
    return cls(message, code=code, reason=reason, metadata=metadata, retriable=retriable)


def from_error_proto(error: errors_pb2.Error) -> WeirError:
    """Translate a per-request `weir.v1.Error` from a stream response."""
    return make_error(
        status_code_from_number(error.code),
        error.reason,
        error.message,
        dict(error.metadata),
        error.retriable,
    )


def _rich_status(trailing: Iterable[tuple[str, str | bytes]] | None) -> status_pb2.Status | None:
    for key, value in trailing or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                return None
    return None


def from_rpc_error(exc: grpc.RpcError) -> WeirError:
    """Translate the gRPC status that ended a call into a `WeirError`.

    Reads the rich status (`google.rpc.Status` in the `grpc-status-details-bin`
    trailer) for a `google.rpc.ErrorInfo` of domain "weir" and takes its
    reason and metadata; without one, only the status code speaks.
    """
    code_fn = getattr(exc, "code", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    details_fn = getattr(exc, "details", None)
    message = details_fn() if callable(details_fn) else str(exc)
    if not isinstance(message, str):
        message = str(exc)
    trailing_fn = getattr(exc, "trailing_metadata", None)
    trailing = trailing_fn() if callable(trailing_fn) else None
    reason = ""
    metadata: dict[str, str] = {}
    status = _rich_status(trailing)
    if status is not None:
        message = status.message or message
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Is(info.DESCRIPTOR) and detail.Unpack(info):
                if info.domain and info.domain != ERROR_DOMAIN:
                    continue
                reason = info.reason
                metadata = dict(info.metadata)
                break
    if code is grpc.StatusCode.UNAVAILABLE and not reason and message == _GRPC_TOO_MANY_PINGS:
        return TooManyPingsError(TOO_MANY_PINGS_MESSAGE, retriable=False)
    retriable: bool | None = None
    if metadata.get("retriable") in ("true", "false"):
        retriable = metadata["retriable"] == "true"
    return make_error(code, reason, message or code.name, metadata, retriable)
