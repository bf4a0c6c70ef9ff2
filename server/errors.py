"""Operating errors of the broker and their translation to gRPC.

An operating error is an expected condition (unknown topic, record too
large, shutting down). Each is a `BrokerError` that carries its gRPC status
code, a machine-readable reason (google.rpc.ErrorInfo.reason), metadata and
whether a retry may succeed. Handlers raise them; the boundary turns them
into a per-request `weir.v1.Error` inside a stream response, or into a rich
gRPC status that ends the call. Broken invariants are assertions instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from weir.cluster.host import (
    GroupNotFoundError,
    HostError,
    HostStoppedError,
    NotLeaderError,
    NotWrittenError,
    OutcomeUnknownError,
    ProposalDroppedError,
)
from weir.cluster.storage import CorruptEntryError, StorageError, StorageFullError
from weir.v1 import errors_pb2

ERROR_DOMAIN = "weir"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
# The ErrorInfo metadata key that carries `BrokerError.retriable` in a trailer.
RETRIABLE_KEY = "retriable"

_RETRIABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class BrokerError(Exception):
    """An expected failure of one request, with everything a client needs."""

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        metadata: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = {k: str(v) for k, v in (metadata or {}).items()}

    @property
    def retriable(self) -> bool:
        return self.code in _RETRIABLE_CODES

    def to_proto(self) -> errors_pb2.Error:
        return errors_pb2.Error(
            code=self.code.value[0],
            reason=self.reason,
            message=self.message,
            metadata=self.metadata,
            retriable=self.retriable,
        )

    def status_trailer(self) -> tuple[tuple[str, bytes]]:
        """The `grpc-status-details-bin` trailer: google.rpc.Status + ErrorInfo.

        ErrorInfo has no field for "retry may succeed", so the trailer carries
        it as metadata `retriable` ("true"/"false"): a client that only sees
        the status then decides as one that reads `weir.v1.Error.retriable`.
        """
        metadata = {**self.metadata, RETRIABLE_KEY: "true" if self.retriable else "false"}
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=ERROR_DOMAIN, metadata=metadata
        )
        detail = any_pb2.Any()
        detail.Pack(info)
        status = status_pb2.Status(code=self.code.value[0], message=self.message, details=[detail])
        return ((STATUS_DETAILS_KEY, status.SerializeToString()),)

    def __repr__(self) -> str:
        return f"BrokerError({self.code.name}, {self.reason}, {self.message!r})"


def invalid(reason: str, message: str, **metadata: object) -> BrokerError:
    return BrokerError(grpc.StatusCode.INVALID_ARGUMENT, reason, message, metadata)


def topic_not_found(topic: str) -> BrokerError:
    return BrokerError(
        grpc.StatusCode.NOT_FOUND,
        "TOPIC_NOT_FOUND",
        f"topic {topic!r} does not exist",
        {"topic": topic},
    )


def dead_letter_topic_required(topic: str, suffix: str, limit: int) -> BrokerError:
    """A topic that dead-letters has no dead-letter topic: its name is too long for the default."""
    return BrokerError(
        grpc.StatusCode.FAILED_PRECONDITION,
        "DEAD_LETTER_TOPIC_REQUIRED",
        f"topic {topic!r} dead-letters after max_deliveries, but its name has {len(topic)}"
        f" characters, too many for the default dead-letter topic '<topic>{suffix}' (a topic"
        f" name has at most {limit}): set the topic's dead_letter_topic, or max_deliveries 0"
        " to never dead-letter",
        {"topic": topic, "field": "dead_letter_topic", "topic_chars": len(topic), "limit": limit},
    )


def shutting_down() -> BrokerError:
    return BrokerError(
        grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN", "the node is shutting down; retry elsewhere"
    )


def storage_error(exc: StorageError, what: str = "the request") -> BrokerError:
    """The one translation of a storage failure, used by every method.

    Damaged data is DATA_LOSS (the broker refuses to serve it); a full map or
    disk and any other write failure are UNAVAILABLE, since another node (or
    this one, once space is freed) may succeed. Callers that can tell a
    deleted topic (LogClosedError) answer TOPIC_NOT_FOUND before this.
    """
    if isinstance(exc, CorruptEntryError):
        return BrokerError(
            grpc.StatusCode.DATA_LOSS, "DATA_CORRUPTED", f"{what} met damaged data: {exc}"
        )
    if isinstance(exc, StorageFullError):
        return BrokerError(
            grpc.StatusCode.UNAVAILABLE, "STORAGE_FULL", f"{what} failed, storage is full: {exc}"
        )
    return BrokerError(
        grpc.StatusCode.UNAVAILABLE, "STORAGE_ERROR", f"{what} failed in storage: {exc}"
    )


def not_leader(topic: str, partition: int, leader_id: int, leader_address: str) -> BrokerError:
    """This node does not lead the partition: the answer names the leader.

    `leader_id` "0" and `leader_address` "" mean no leader is known yet (an
    election runs, or the partition has no replica here): back off, retry.
    """
    known = f"node {leader_id} at {leader_address or 'an unknown address'}"
    return BrokerError(
        grpc.StatusCode.UNAVAILABLE,
        "NOT_LEADER",
        f"this node does not lead partition {partition} of topic {topic!r}; "
        + (f"the leader is {known}" if leader_id else "no leader is known yet, retry shortly"),
        {
            "topic": topic,
            "partition": partition,
            "leader_id": leader_id,
            "leader_address": leader_address,
        },
    )


def replica_not_available(topic: str, partition: int) -> BrokerError:
    """No replica of the partition runs on this node (for a read): try another node."""
    return BrokerError(
        grpc.StatusCode.UNAVAILABLE,
        "REPLICA_NOT_AVAILABLE",
        f"partition {partition} of topic {topic!r} has no replica running on this node",
        {"topic": topic, "partition": partition},
    )


def replication_error(
    exc: HostError,
    topic: str,
    partition: int,
    leader_address: Callable[[int], str],
) -> BrokerError:
    """The one translation of a Raft host's outcome for a produce request.

    Every case is retriable except a bug; what a retry risks differs:
    NOT_LEADER, PROPOSAL_DROPPED and NOT_WRITTEN promise that nothing was
    written; OUTCOME_UNKNOWN may have written (a retry may duplicate until
    the idempotent producer lands).
    """
    if isinstance(exc, NotLeaderError):
        leader = exc.leader_id
        return not_leader(topic, partition, leader, leader_address(leader) if leader else "")
    if isinstance(exc, GroupNotFoundError):
        return not_leader(topic, partition, 0, "")
    if isinstance(exc, ProposalDroppedError):
        return BrokerError(
            grpc.StatusCode.UNAVAILABLE,
            "PROPOSAL_DROPPED",
            f"the leader of partition {partition} of topic {topic!r} refused the batch for now "
            f"({exc.reason}); nothing was written, retry shortly",
            {
                "topic": topic,
                "partition": partition,
                "cause": exc.reason,
            },
        )
    if isinstance(exc, NotWrittenError):
        return BrokerError(
            grpc.StatusCode.UNAVAILABLE,
            "NOT_WRITTEN",
            f"the batch for partition {partition} of topic {topic!r} lost its place in the log "
            "to a new leader; nothing was written, safe to retry",
            {"topic": topic, "partition": partition},
        )
    if isinstance(exc, OutcomeUnknownError):
        code = (
            grpc.StatusCode.DEADLINE_EXCEEDED
            if exc.reason == "deadline passed"
            else grpc.StatusCode.UNAVAILABLE
        )
        return outcome_unknown(topic, partition, exc.reason, code)
    if isinstance(exc, HostStoppedError):
        return shutting_down()
    raise AssertionError(f"unexpected host error {exc!r}")


def outcome_unknown(
    topic: str, partition: int, cause: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
) -> BrokerError:
    """The batch may or may not be written; a retry may write it twice."""
    return BrokerError(
        code,
        "OUTCOME_UNKNOWN",
        f"the outcome of the batch for partition {partition} of topic {topic!r} is unknown "
        f"({cause}); it may have been written, and a retry may write it twice",
        {"topic": topic, "partition": partition, "cause": cause},
    )


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def from_proto(error: errors_pb2.Error) -> BrokerError:
    """A `weir.v1.Error` another node answered, passed on as it came."""
    return BrokerError(
        _CODES.get(error.code, grpc.StatusCode.UNKNOWN),
        error.reason,
        error.message,
        dict(error.metadata),
    )


def internal_error(what: str, exc: BaseException) -> BrokerError:
    """A bug met while serving `what`: INTERNAL with a reason, never a bare UNKNOWN.

    The message names the exception's type only; its details (and the
    traceback) go to the node's log, not to the client.
    """
    return BrokerError(
        grpc.StatusCode.INTERNAL,
        "INTERNAL_ERROR",
        f"{what} failed inside the broker ({type(exc).__name__}); see the node's log",
    )


def malformed(what: str) -> BrokerError:
    return invalid("MALFORMED_REQUEST", f"the {what} is not a valid protobuf message")


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: BrokerError) -> NoReturn:
    """End the call with `error` as a rich status (code, message, ErrorInfo)."""
    await context.abort(error.code, error.message, trailing_metadata=error.status_trailer())
    raise AssertionError("ServicerContext.abort returns only by raising")
