"""Broker errors become typed WeirErrors, from a rich status or a weir.v1.Error."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from weir import errors
from weir.v1 import errors_pb2

pytestmark = pytest.mark.timeout(10)


class FakeRpcError(grpc.RpcError):
    """What grpc raises: code(), details(), trailing_metadata()."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        trailing: tuple[tuple[str, str | bytes], ...] = (),
    ) -> None:
        super().__init__(details)
        self._code = code
        self._details = details
        self._trailing = trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailing


def rich(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: dict[str, str],
    domain: str = "weir",
) -> FakeRpcError:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return FakeRpcError(code, message, (("grpc-status-details-bin", status.SerializeToString()),))


@pytest.mark.parametrize(
    ("code", "reason", "cls"),
    [
        (grpc.StatusCode.NOT_FOUND, "TOPIC_NOT_FOUND", errors.TopicNotFoundError),
        (grpc.StatusCode.ALREADY_EXISTS, "TOPIC_EXISTS", errors.TopicExistsError),
        (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TOPIC_NAME", errors.InvalidArgumentError),
        (grpc.StatusCode.INVALID_ARGUMENT, "EMPTY_BATCH", errors.InvalidArgumentError),
        (grpc.StatusCode.FAILED_PRECONDITION, "NO_GROUP", errors.FailedPreconditionError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "RECORD_TOO_LARGE", errors.RecordTooLargeError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "BATCH_TOO_LARGE", errors.RecordTooLargeError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "STORAGE_FULL", errors.ResourceExhaustedError),
        (grpc.StatusCode.OUT_OF_RANGE, "OFFSET_OUT_OF_RANGE", errors.OffsetOutOfRangeError),
        (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN", errors.UnavailableError),
        (grpc.StatusCode.DATA_LOSS, "DATA_CORRUPTED", errors.DataCorruptedError),
    ],
)
def test_rich_status_picks_class_reason_and_metadata(
    code: grpc.StatusCode, reason: str, cls: type[errors.WeirError]
) -> None:
    err = errors.from_rpc_error(rich(code, "it failed", reason, {"topic": "t"}))
    assert type(err) is cls
    assert err.code is code
    assert err.reason == reason
    assert err.message == "it failed"
    assert err.metadata == {"topic": "t"}
    assert err.retriable is (code is grpc.StatusCode.UNAVAILABLE)
    assert str(err) == f"{reason}: it failed"


def test_status_without_details_uses_the_code() -> None:
    err = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused"))
    assert isinstance(err, errors.UnavailableError)
    assert err.retriable
    assert err.reason == ""
    assert str(err) == "UNAVAILABLE: connection refused"


def test_foreign_domain_and_garbage_details_are_ignored() -> None:
    err = errors.from_rpc_error(
        rich(grpc.StatusCode.NOT_FOUND, "no", "SOMETHING", {"a": "b"}, domain="envoy")
    )
    assert isinstance(err, errors.TopicNotFoundError)
    assert err.reason == ""  # no weir reason was given
    assert err.metadata == {}
    garbage = FakeRpcError(
        grpc.StatusCode.INTERNAL, "boom", (("grpc-status-details-bin", b"\xff\xff\xff"),)
    )
    err = errors.from_rpc_error(garbage)
    assert type(err) is errors.WeirError
    assert err.code is grpc.StatusCode.INTERNAL


def test_unknown_reason_falls_back_to_the_code_class() -> None:
    err = errors.from_rpc_error(rich(grpc.StatusCode.INVALID_ARGUMENT, "x", "NEW_REASON", {}))
    assert type(err) is errors.InvalidArgumentError
    assert err.reason == "NEW_REASON"


def test_error_proto_translation_keeps_the_retriable_flag() -> None:
    proto = errors_pb2.Error(
        code=code_pb2.UNAVAILABLE,
        reason="SHUTTING_DOWN",
        message="node is stopping",
        metadata={"node": "1"},
        retriable=True,
    )
    err = errors.from_error_proto(proto)
    assert isinstance(err, errors.UnavailableError)
    assert err.retriable and err.metadata == {"node": "1"}
    proto = errors_pb2.Error(code=code_pb2.RESOURCE_EXHAUSTED, reason="RECORD_TOO_LARGE")
    err = errors.from_error_proto(proto)
    assert isinstance(err, errors.RecordTooLargeError)
    assert not err.retriable
    assert errors.from_error_proto(errors_pb2.Error(code=999)).code is grpc.StatusCode.UNKNOWN


def test_client_side_errors_have_codes_and_reasons() -> None:
    assert errors.BufferFullError("full").reason == "BUFFER_FULL"
    assert errors.WeirTimeoutError("late").code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert errors.ClosedError("closed").code is grpc.StatusCode.CANCELLED
    assert isinstance(errors.RecordTooLargeError("big"), errors.WeirError)


def test_too_many_pings_is_typed_and_says_what_to_change() -> None:
    # What gRPC C-core raises after the broker's GOAWAY "too_many_pings".
    error = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "Too many pings"))
    assert isinstance(error, errors.TooManyPingsError)
    assert error.code is grpc.StatusCode.UNAVAILABLE
    assert error.reason == "TOO_MANY_PINGS"
    assert not error.retriable
    assert "keepalive_time_ms" in error.message
    # Any other UNAVAILABLE stays a retriable UnavailableError.
    other = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "Socket closed"))
    assert type(other) is errors.UnavailableError and other.retriable
