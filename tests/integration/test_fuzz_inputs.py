"""No input can crash a node or make it answer with INTERNAL/UNKNOWN.

Seeded random bytes and bit-flipped valid requests go to every method over
a raw channel. Each call must end with a deliberate status, and afterwards
the node must still be healthy and serve a normal produce and consume.
"""

from __future__ import annotations

import random

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.broker_process import BrokerProcess
from tests.support.raw_client import RawClient, read_partition, request
from weir.v1 import admin_pb2, broker_pb2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SEED = 20261128
CASES_PER_METHOD = 60
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,  # a valid Consume stream waits for records
}


def valid_samples() -> dict[str, list[bytes]]:
    produce = request("fz", [b"a", b"b"], request_id=3).SerializeToString()
    consume = broker_pb2.ConsumeRequest(
        subscribe=broker_pb2.Subscribe(
            topic="fz",
            group="g",
            start=broker_pb2.StartPosition(kind=broker_pb2.START_KIND_EARLIEST),
            credit=broker_pb2.Credit(messages=10, bytes=1000),
        )
    ).SerializeToString()
    return {
        "/weir.v1.BrokerService/Produce": [produce],
        "/weir.v1.BrokerService/Consume": [consume],
        "/weir.v1.AdminService/CreateTopic": [
            admin_pb2.CreateTopicRequest(name="fz2", partition_count=2).SerializeToString()
        ],
        "/weir.v1.AdminService/DescribeTopic": [
            admin_pb2.DescribeTopicRequest(name="fz").SerializeToString()
        ],
        "/weir.v1.AdminService/UpdateTopicConfig": [
            admin_pb2.UpdateTopicConfigRequest(
                name="fz", config=admin_pb2.TopicConfig(retention_bytes=1 << 30)
            ).SerializeToString()
        ],
    }


def mutate(rng: random.Random, sample: bytes) -> bytes:
    choice = rng.randrange(4)
    if choice == 0:
        return rng.randbytes(rng.randrange(0, 64))
    data = bytearray(sample)
    if choice == 1:
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif choice == 2:
        del data[rng.randrange(len(data)) :]
    else:
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def test_random_and_mutated_requests(broker: BrokerProcess) -> None:
    rng = random.Random(SEED)
    seen: dict[grpc.StatusCode, int] = {}
    with RawClient(broker.address) as client:
        client.create_topic("fz")
        for method, samples in valid_samples().items():
            streaming = "BrokerService" in method
            for case in range(CASES_PER_METHOD):
                payload = mutate(rng, rng.choice(samples))
                if streaming:
                    call = client.channel.stream_stream(method)
                    try:
                        for _ in call(iter([payload, payload]), timeout=0.5):
                            pass
                        code = grpc.StatusCode.OK
                    except grpc.RpcError as error:
                        code = error.code()  # type: ignore[attr-defined]
                else:
                    unary = client.channel.unary_unary(method)
                    try:
                        unary(payload, timeout=10)
                        code = grpc.StatusCode.OK
                    except grpc.RpcError as error:
                        code = error.code()  # type: ignore[attr-defined]
                assert code in ALLOWED, f"seed {SEED}, {method} case {case}: {code} for {payload!r}"
                seen[code] = seen.get(code, 0) + 1
        assert seen.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 0

        health = health_pb2_grpc.HealthStub(client.channel)
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert not client.produce_one(request("fz", [b"after"], request_id=9)).HasField("error")
        assert read_partition(client, "fz", 0)[-1].value == b"after"
