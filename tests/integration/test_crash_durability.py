"""Invariant 1 on one node: every record acknowledged with acks=ALL survives kill -9.

Values are unique and checked byte for byte at the offset the broker
acknowledged, so a lost, reordered, duplicated or damaged record fails.
"""

from __future__ import annotations

import random
import threading

import pytest

from tests.support.broker_process import BrokerProcess
from tests.support.raw_client import ConsumeStream, RawClient, request
from weir.v1 import broker_pb2

pytestmark = [pytest.mark.integration]

RECORDS = 100_000
BATCH_RECORDS = 500


def make_values(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    return [b"%08d:" % i + rng.randbytes(rng.randrange(20, 120)) for i in range(count)]


def read_all(client: RawClient, topic: str, partition: int, end: int) -> list[bytes]:
    stream = ConsumeStream(
        client,
        broker_pb2.Subscribe(
            topic=topic,
            partitions=[partition],
            start=broker_pb2.StartPosition(kind=broker_pb2.START_KIND_EARLIEST),
            credit=broker_pb2.Credit(messages=end, bytes=1 << 40),
        ),
    )
    try:
        first = stream.next()
        assert first.WhichOneof("kind") == "subscribed"
        values: list[bytes] = []
        while len(values) < end:
            response = stream.next()
            assert response.WhichOneof("kind") == "batch"
            assert response.batch.base_offset == len(values), "offsets are dense and in order"
            values.extend(r.value for r in response.batch.records)
        return values
    finally:
        stream.close()


@pytest.mark.timeout(300)
def test_all_acknowledged_records_survive_kill_9(broker: BrokerProcess) -> None:
    values = make_values(1, RECORDS)
    with RawClient(broker.address) as client:
        client.create_topic("durable")
        requests = [
            request("durable", values[i : i + BATCH_RECORDS], request_id=i)
            for i in range(0, RECORDS, BATCH_RECORDS)
        ]
        acked = {}
        for response in client.produce(requests):
            assert not response.HasField("error"), response.error
            (append,) = response.appends
            acked[response.request_id] = append.base_offset
        assert sorted(acked.values()) == list(range(0, RECORDS, BATCH_RECORDS))
        assert all(acked[i] == i for i in acked), "each batch got the offsets of its records"

    broker.kill()
    broker.start()
    with RawClient(broker.address) as client:
        assert client.end_offsets("durable") == [RECORDS]
        assert read_all(client, "durable", 0, RECORDS) == values


@pytest.mark.timeout(300)
def test_records_acknowledged_before_a_mid_stream_kill_survive(broker: BrokerProcess) -> None:
    values = make_values(2, RECORDS)
    acked: dict[int, int] = {}  # first value index -> base offset
    half_acked = threading.Event()
    with RawClient(broker.address) as client:
        client.create_topic("midstream")
        requests = [
            request("midstream", values[i : i + BATCH_RECORDS], request_id=i)
            for i in range(0, RECORDS, BATCH_RECORDS)
        ]

        def produce() -> None:
            try:
                for response in client.produce(requests):
                    acked[response.request_id] = response.appends[0].base_offset
                    if len(acked) >= len(requests) // 3:
                        half_acked.set()
            except Exception:
                pass
            half_acked.set()

        producer = threading.Thread(target=produce)
        producer.start()
        assert half_acked.wait(120)
        broker.kill()
        producer.join(60)
        snapshot = dict(acked)
    assert snapshot, "some requests were acknowledged before the kill"

    broker.start()
    with RawClient(broker.address) as client:
        (end,) = client.end_offsets("midstream")
        assert end >= max(snapshot.values()) + BATCH_RECORDS
        stored = read_all(client, "midstream", 0, end)
    # Batches are appended in order, so every acknowledged batch sits at its
    # acknowledged offset with its exact bytes.
    for first, base_offset in snapshot.items():
        assert (
            stored[base_offset : base_offset + BATCH_RECORDS]
            == values[first : first + BATCH_RECORDS]
        )
