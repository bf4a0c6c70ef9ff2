"""Names and node settings are checked before anything uses them."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from weir.server.config import NodeConfig
from weir.server.errors import BrokerError
from weir.server.naming import check_group_name, check_topic_name


@pytest.mark.parametrize("name", ["a", "orders.v1", "A_b-c.9", "x" * 249, "..."])
def test_valid_topic_names(name: str) -> None:
    check_topic_name(name)


@pytest.mark.parametrize("name", ["", ".", "..", "x" * 250, "a b", "a/b", "é", "a\0"])
def test_invalid_topic_names(name: str) -> None:
    with pytest.raises(BrokerError) as raised:
        check_topic_name(name)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.reason == "INVALID_TOPIC_NAME"


@pytest.mark.parametrize("name", ["g" * 256, "tab\there", "nul\0"])
def test_invalid_group_names(name: str) -> None:
    with pytest.raises(BrokerError) as raised:
        check_group_name(name)
    assert raised.value.reason == "INVALID_GROUP_NAME"


def test_error_trailer_carries_error_info() -> None:
    from google.rpc import error_details_pb2, status_pb2

    error = BrokerError(grpc.StatusCode.NOT_FOUND, "TOPIC_NOT_FOUND", "gone", {"topic": "t"})
    ((key, raw),) = error.status_trailer()
    assert key == "grpc-status-details-bin"
    status = status_pb2.Status.FromString(raw)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (status.code, info.reason, info.domain, dict(info.metadata)) == (
        grpc.StatusCode.NOT_FOUND.value[0],
        "TOPIC_NOT_FOUND",
        "weir",
        {"topic": "t", "retriable": "false"},
    )
    assert not error.retriable
    assert BrokerError(grpc.StatusCode.UNAVAILABLE, "X", "y").retriable


@pytest.mark.parametrize(
    ("code", "retriable"),
    [
        (grpc.StatusCode.UNAVAILABLE, "true"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "true"),
        (grpc.StatusCode.INVALID_ARGUMENT, "false"),
        (grpc.StatusCode.OUT_OF_RANGE, "false"),
    ],
)
def test_error_trailer_says_whether_a_retry_may_succeed(
    code: grpc.StatusCode, retriable: str
) -> None:
    """The trailer's ErrorInfo carries `retriable`, as the in-stream weir.v1.Error does."""
    from google.rpc import error_details_pb2, status_pb2

    error = BrokerError(code, "R", "m", {"partition": 1})
    ((_, raw),) = error.status_trailer()
    info = error_details_pb2.ErrorInfo()
    assert status_pb2.Status.FromString(raw).details[0].Unpack(info)
    assert info.metadata["retriable"] == retriable
    assert error.to_proto().retriable == (retriable == "true")
    # The in-stream Error has a field of its own; its metadata stays as given.
    assert dict(error.to_proto().metadata) == {"partition": "1"}


@pytest.mark.parametrize(
    "settings",
    [
        {"topics_max": 0},
        {"request_bytes_max": -1},
        {"record_bytes_max_default": 3 << 20},
        {"record_bytes_max_limit": 8 << 20},
        {"storage_txn_bytes_max": 128 << 20},
        {"request_bytes_max": 100 << 20},
    ],
)
def test_inconsistent_settings_are_refused(settings: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        NodeConfig(data_dir=Path("."), **settings)  # type: ignore[arg-type]


def test_defaults_are_consistent() -> None:
    NodeConfig(data_dir=Path("."))
