"""Standard gRPC health checking and server reflection against a real node.

Both are served by the standard servicers behind the broker's own request
parser, so bytes that are not a valid request get INVALID_ARGUMENT /
MALFORMED_REQUEST with an ErrorInfo, as on every other method, instead of
UNKNOWN "DecodeError". The malformed calls go through a raw channel with
identity serializers, as a client with a broken encoder would send them.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support.broker_process import BrokerProcess
from tests.support.raw_client import CALL_TIMEOUT_S, error_info

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

StatusCode = grpc.StatusCode
CHECK = "/grpc.health.v1.Health/Check"
WATCH = "/grpc.health.v1.Health/Watch"
LIST = "/grpc.health.v1.Health/List"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"

# Each is not a protobuf message: a length-delimited field that claims more
# bytes than follow, an invalid wire type, a truncated varint.
GARBAGE = [b"\x0a\x05ab", b"\x0f", b"\x08\xff\xff"]
MALFORMED = (StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")


@pytest.fixture
def channel(broker: BrokerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(broker.address) as channel:
        yield channel


@pytest.mark.parametrize("garbage", GARBAGE)
def test_malformed_health_check_is_invalid_argument(channel: grpc.Channel, garbage: bytes) -> None:
    check = channel.unary_unary(CHECK)
    with pytest.raises(grpc.RpcError) as raised:
        check(garbage, timeout=CALL_TIMEOUT_S)
    assert error_info(raised.value) == MALFORMED


@pytest.mark.parametrize("garbage", GARBAGE)
def test_malformed_health_watch_is_invalid_argument(channel: grpc.Channel, garbage: bytes) -> None:
    watch = channel.unary_stream(WATCH)
    with pytest.raises(grpc.RpcError) as raised:
        for _ in watch(garbage, timeout=CALL_TIMEOUT_S):
            pass
    assert error_info(raised.value) == MALFORMED


def test_malformed_health_list_is_invalid_argument(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        channel.unary_unary(LIST)(GARBAGE[0], timeout=CALL_TIMEOUT_S)
    assert error_info(raised.value) == MALFORMED


@pytest.mark.parametrize("garbage", GARBAGE)
def test_malformed_reflection_request_is_invalid_argument(
    channel: grpc.Channel, garbage: bytes
) -> None:
    info = channel.stream_stream(REFLECTION)
    with pytest.raises(grpc.RpcError) as raised:
        for _ in info(iter([garbage]), timeout=CALL_TIMEOUT_S):
            pass
    assert error_info(raised.value) == MALFORMED


def test_reflection_answers_valid_requests_then_rejects_garbage_on_the_same_stream(
    channel: grpc.Channel,
) -> None:
    valid = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
    responses = channel.stream_stream(REFLECTION)(
        iter([valid, GARBAGE[0], valid]), timeout=CALL_TIMEOUT_S
    )
    first = reflection_pb2.ServerReflectionResponse.FromString(next(responses))
    assert "weir.v1.BrokerService" in {s.name for s in first.list_services_response.service}
    with pytest.raises(grpc.RpcError) as raised:
        next(responses)
    assert error_info(raised.value) == MALFORMED


def test_valid_health_calls_still_work(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "weir.v1.BrokerService"):
        response = health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT_S
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.RpcError) as raised:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert raised.value.code() == StatusCode.NOT_FOUND

    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT_S)
    try:
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        watch.cancel()

    listed = health.List(health_pb2.HealthListRequest(), timeout=CALL_TIMEOUT_S)
    assert {name: s.status for name, s in listed.statuses.items()} == {
        "": health_pb2.HealthCheckResponse.SERVING,
        "weir.v1.BrokerService": health_pb2.HealthCheckResponse.SERVING,
    }


def test_valid_reflection_lists_every_service(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = list(
        stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
            timeout=CALL_TIMEOUT_S,
        )
    )
    assert len(responses) == 1
    names = {s.name for s in responses[0].list_services_response.service}
    assert names == {
        "weir.v1.BrokerService",
        "weir.v1.AdminService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    symbol = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol="weir.v1.Topic")]),
        timeout=CALL_TIMEOUT_S,
    )
    (found,) = list(symbol)
    assert found.file_descriptor_response.file_descriptor_proto
