"""A full LMDB map fails writes, not the node (issue 9, "Data safety", "Clear errors").

A real `weir serve` with a small map: one topic is filled until produce
answers UNAVAILABLE; a consumer of another topic keeps its stream and never
gets DATA_LOSS; deleting the full topic frees pages and writes succeed again.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.broker_process import BrokerProcess
from tests.support.raw_client import (
    CALL_TIMEOUT_S,
    RawClient,
    open_stream,
    ping,
    read_batches,
    request,
    start_at,
    values_of,
)
from weir.v1 import admin_pb2, broker_pb2

pytestmark = [pytest.mark.integration]

# Fills in a few seconds with ~100 KiB batches, and leaves room for the
# node's own rows (topics, offsets) once the full topic is gone.
MAP_SIZE_BYTES = 8 * 2**20
BATCH_RECORDS = 100
RECORD_BYTES = 1000
# Far more batches than fit: the loop stops at the first refusal.
FILL_REQUESTS_MAX = 1000
# How long the node may take to notice space came back (its probe runs every second).
RECOVERY_DEADLINE_S = 30.0
RETRY_PAUSE_S = 0.1
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
FULL_REASONS = ("STORAGE_FULL", "STORAGE_ERROR")


def health_status(client: RawClient) -> int:
    stub = health_pb2_grpc.HealthStub(client.channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT_S)
    return int(response.status)


def fill_until_refused(client: RawClient, topic: str) -> broker_pb2.ProduceResponse:
    value = b"f" * RECORD_BYTES
    for i in range(FILL_REQUESTS_MAX):
        response = client.produce_one(request(topic, [value] * BATCH_RECORDS, request_id=i))
        if response.HasField("error"):
            return response
    raise AssertionError(f"{FILL_REQUESTS_MAX} batches fit in a {MAP_SIZE_BYTES} byte map")


def produce_with_retry(client: RawClient, topic: str, value: bytes) -> int:
    """Produces one record, retrying refusals until the node has space again."""
    deadline = time.monotonic() + RECOVERY_DEADLINE_S
    attempt = 0
    while True:
        attempt += 1
        response = client.produce_one(request(topic, [value], request_id=10_000 + attempt))
        if not response.HasField("error"):
            (append,) = response.appends
            return int(append.base_offset)
        assert response.error.code == UNAVAILABLE, response.error
        assert time.monotonic() < deadline, f"still refused: {response.error}"
        # Retry pacing, not synchronisation: the test asserts no timing.
        time.sleep(RETRY_PAUSE_S)


def wait_for_health(client: RawClient, status: int) -> None:
    deadline = time.monotonic() + RECOVERY_DEADLINE_S
    while health_status(client) != status:
        assert time.monotonic() < deadline, f"health never became {status}"
        time.sleep(RETRY_PAUSE_S)


@pytest.mark.timeout(240)
def test_full_map_refuses_writes_but_healthy_topics_keep_being_served(tmp_path: Path) -> None:
    broker = BrokerProcess(
        tmp_path / "data", "--storage-map-size-bytes", str(MAP_SIZE_BYTES)
    ).start()
    try:
        with RawClient(broker.address) as client:
            client.create_topic("filler")
            client.create_topic("steady")
            for i in range(3):
                response = client.produce_one(request("steady", [b"steady-%d" % i], request_id=i))
                assert not response.HasField("error"), response.error
            stream, _ = open_stream(
                client,
                broker_pb2.Subscribe(
                    topic="steady",
                    partitions=[0],
                    start=start_at(broker_pb2.START_KIND_EARLIEST),
                    credit=broker_pb2.Credit(messages=100, bytes=1 << 20),
                ),
            )
            try:
                assert values_of(read_batches(stream, 3)) == [b"steady-%d" % i for i in range(3)]

                refused = fill_until_refused(client, "filler")

                assert refused.error.code == UNAVAILABLE, refused.error
                assert refused.error.reason in FULL_REASONS, refused.error
                # The steady consumer's stream is alive: a round trip answers
                # and nothing (no DATA_LOSS) ended it.
                assert ping(stream, 1) == []
                assert client.end_offsets("steady") == [3]
                wait_for_health(client, health_pb2.HealthCheckResponse.NOT_SERVING)

                client.admin.DeleteTopic(
                    admin_pb2.DeleteTopicRequest(name="filler"), timeout=CALL_TIMEOUT_S
                )
                assert produce_with_retry(client, "steady", b"after") == 3

                # The same stream delivers the new record: it never broke.
                assert values_of(read_batches(stream, 1)) == [b"after"]
                wait_for_health(client, health_pb2.HealthCheckResponse.SERVING)
            finally:
                stream.close()
    finally:
        broker.stop()
