"""Retention deletes whole old batches by size and by age; offsets keep their meaning."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from tests.support.broker_process import BrokerProcess
from tests.support.raw_client import RawClient, error_info, read_partition, request
from weir.v1 import admin_pb2, broker_pb2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

BATCHES = 10
BATCH_RECORDS = 10
VALUE_BYTES = 100
DEADLINE_S = 30.0


@pytest.fixture
def fast_retention(tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path / "data", "--retention-check-interval-ms", "50").start()
    try:
        yield process
    finally:
        process.stop()


def wait_for(condition: Callable[[], bool]) -> None:
    """Poll an observable condition of the broker, failing after a deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, "retention did not run"
        time.sleep(0.02)


def value(i: int) -> bytes:
    return b"%06d" % i + b"r" * (VALUE_BYTES - 6)


def fill(client: RawClient, topic: str) -> None:
    for b in range(BATCHES):
        values = [value(b * BATCH_RECORDS + i) for i in range(BATCH_RECORDS)]
        assert not client.produce_one(request(topic, values, request_id=b)).HasField("error")


def partition_info(client: RawClient, topic: str) -> admin_pb2.PartitionInfo:
    (info,) = client.describe(topic).partitions
    return info


def test_retention_by_bytes_keeps_the_newest_whole_batches(fast_retention: BrokerProcess) -> None:
    with RawClient(fast_retention.address) as client:
        client.create_topic("sized")
        fill(client, "sized")
        full = partition_info(client, "sized")
        batch_bytes = full.size_bytes // BATCHES
        # Room for three batches and a half: three stay.
        client.admin.UpdateTopicConfig(
            admin_pb2.UpdateTopicConfigRequest(
                name="sized",
                config=admin_pb2.TopicConfig(retention_bytes=batch_bytes * 7 // 2),
            )
        )
        wait_for(lambda: partition_info(client, "sized").start_offset > 0)
        info = partition_info(client, "sized")
        assert info.start_offset == (BATCHES - 3) * BATCH_RECORDS, "whole batches only"
        assert info.end_offset == BATCHES * BATCH_RECORDS
        assert info.size_bytes <= batch_bytes * 7 // 2
        records = read_partition(client, "sized", 0)
        assert [r.value for r in records] == [
            value(i) for i in range(info.start_offset, info.end_offset)
        ], "surviving records keep their offsets"

        too_old = broker_pb2.ConsumeRequest(
            subscribe=broker_pb2.Subscribe(
                topic="sized",
                start=broker_pb2.StartPosition(kind=broker_pb2.START_KIND_OFFSET, offset=0),
            )
        )
        with pytest.raises(grpc.RpcError) as raised:
            for _ in client.broker.Consume(iter([too_old]), timeout=30):
                pass
        assert error_info(raised.value) == (grpc.StatusCode.OUT_OF_RANGE, "OFFSET_OUT_OF_RANGE")


def test_retention_by_age_empties_the_log_and_offsets_continue(
    fast_retention: BrokerProcess,
) -> None:
    with RawClient(fast_retention.address) as client:
        client.create_topic("aged")
        fill(client, "aged")
        client.admin.UpdateTopicConfig(
            admin_pb2.UpdateTopicConfigRequest(
                name="aged", config=admin_pb2.TopicConfig(retention_ms=1)
            )
        )
        end = BATCHES * BATCH_RECORDS
        wait_for(lambda: partition_info(client, "aged").start_offset == end)
        assert partition_info(client, "aged").size_bytes == 0
        response = client.produce_one(request("aged", [b"later"]))
        assert response.appends[0].base_offset == end, "offsets are never reused"
