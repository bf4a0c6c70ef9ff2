"""The backpressure contract: a consumer that stops reading costs the broker nothing.

A consumer grants 100 records of credit and stops reading while a producer
writes 500 MB. The broker sends it exactly 100 records, its resident memory
stays under RSS_BOUND_BYTES (read from /proc/PID/status, sampled while the
producer runs), and once the consumer grants more credit it receives every
record, in order.
"""

from __future__ import annotations

import threading

import pytest

from tests.support.broker_process import BrokerProcess
from tests.support.raw_client import ConsumeStream, RawClient, request
from weir.v1 import broker_pb2

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VALUE_BYTES = 64 * 1024
RECORDS = 8_000  # 8,000 x 64 KiB = 500 MiB
BATCH_RECORDS = 32  # 2 MiB per request
CREDIT_MESSAGES = 100
# The broker's stated bound while it ingests 500 MB for a stalled consumer:
# the storage writer queue (64 MiB) plus one write transaction (16 MiB),
# gRPC's receive windows, and the interpreter itself (~60 MiB).
RSS_BOUND_BYTES = 256 * 1024 * 1024
_PATTERN = bytes(range(256)) * (VALUE_BYTES // 256)


def value(i: int) -> bytes:
    return i.to_bytes(8, "big") + _PATTERN[8:]


class RssSampler(threading.Thread):
    def __init__(self, broker: BrokerProcess) -> None:
        super().__init__(daemon=True)
        self.broker = broker
        self.peak = 0
        self.samples = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.peak = max(self.peak, self.broker.rss_bytes())
            self.samples += 1


@pytest.mark.timeout(600)
def test_stalled_consumer_bounds_broker_memory_and_loses_nothing(broker: BrokerProcess) -> None:
    with RawClient(broker.address) as client:
        client.create_topic("bp")
        stream = ConsumeStream(
            client,
            broker_pb2.Subscribe(
                topic="bp",
                group="bp-group",
                start=broker_pb2.StartPosition(kind=broker_pb2.START_KIND_EARLIEST),
                credit=broker_pb2.Credit(messages=CREDIT_MESSAGES, bytes=1 << 40),
            ),
        )
        assert stream.next().WhichOneof("kind") == "subscribed"

        sampler = RssSampler(broker)
        sampler.start()
        requests = (
            request("bp", [value(i) for i in range(j, j + BATCH_RECORDS)], request_id=j)
            for j in range(0, RECORDS, BATCH_RECORDS)
        )
        acked = sum(1 for r in client.produce(requests, timeout_s=500) if not r.HasField("error"))
        sampler.done.set()
        sampler.join()
        assert acked == RECORDS // BATCH_RECORDS
        print(f"broker peak RSS {sampler.peak / 2**20:.1f} MiB over {sampler.samples} samples")
        assert sampler.samples > 0
        assert sampler.peak < RSS_BOUND_BYTES

        # The broker answers a commit on the same stream as the records, so
        # the records it sent before the answer arrive before it. Reading up
        # to commit answers until 100 records are in, then one more round
        # trip, shows that nothing beyond the credit was sent.
        received: list[bytes] = []
        settled = False
        for commit_id in range(1, 1000):
            stream.send(
                broker_pb2.ConsumeRequest(
                    commit=broker_pb2.Commit(
                        commit_id=commit_id,
                        offsets=[broker_pb2.PartitionOffset(partition=0, offset=len(received))],
                    )
                )
            )
            while (response := stream.next()).WhichOneof("kind") != "commit":
                received.extend(r.value for r in response.batch.records)
            assert response.commit.commit_id == commit_id
            if len(received) >= CREDIT_MESSAGES and settled:
                break
            settled = len(received) >= CREDIT_MESSAGES
        assert len(received) == CREDIT_MESSAGES

        stream.credit(RECORDS)
        while len(received) < RECORDS:
            response = stream.next()
            assert response.batch.base_offset == len(received)
            received.extend(r.value for r in response.batch.records)
        stream.close()
    assert len(received) == RECORDS
    for i, got in enumerate(received):
        assert got[:8] == i.to_bytes(8, "big") and len(got) == VALUE_BYTES, i
