"""Queue mode on a real single node (`weir serve`), through the generated stubs only.

Four competing consumers of one queue group read a two-partition topic
whose records were produced one per request:

- two ack everything, except "poison" records, which every consumer nacks
  with no delay until the fifth delivery sends them to `t.dlq`;
- one nacks 10 % of the records on their first delivery without a delay,
  so they come back after the backoff of attempt 1 (1000 ms +-20 %);
- one takes records and cancels its stream while holding them: they come
  back at once to the others.

In the end every record is acked exactly once (no ack of one record
succeeds twice) or is in the dead-letter topic with its headers, and the
measured redelivery intervals follow the backoff (with tolerance for the
consumers' own latency).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterator

import grpc
import pytest

from tests.integration.test_cluster_replication import (
    create_topic,
    leaders,
    wait_led_by,
    wait_ready,
)
from tests.support.broker_process import BrokerProcess
from tests.support.cluster_process import ClusterProcess
from tests.support.raw_client import RawClient, read_partition, request
from weir.v1 import broker_pb2, broker_pb2_grpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

TOPIC = "t"
GROUP = "workers"
RECORDS = 200
PARTITIONS = 2
MAX_DELIVERIES = 5  # the topic default


def is_poison(i: int) -> bool:
    return i % 40 == 0


def is_flaky(i: int) -> bool:
    return i % 10 == 5


@pytest.fixture
def client(broker: BrokerProcess) -> Iterator[RawClient]:
    with RawClient(broker.address) as client:
        yield client


class Books:
    """What the consumers saw, for the final checks."""

    def __init__(self) -> None:
        self.acked: collections.Counter[int] = collections.Counter()
        self.nacked_at: dict[int, float] = {}  # flaky record -> when its nack was answered
        self.redelivered_after: dict[int, float] = {}  # flaky record -> seconds to attempt 2
        self.deliveries: collections.Counter[int] = collections.Counter()
        self.cancelled_holding = 0


def index_of(value: bytes) -> int:
    return int(value.split(b"-")[1])


async def consume(address: str, books: Books, role: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = broker_pb2_grpc.BrokerServiceStub(channel)
        call = stub.Consume()
        credit = 10 if role == "canceller" else 20
        await call.write(
            broker_pb2.ConsumeRequest(
                subscribe=broker_pb2.Subscribe(
                    topic=TOPIC,
                    group=GROUP,
                    mode=broker_pb2.CONSUME_MODE_QUEUE,
                    start=broker_pb2.StartPosition(kind=broker_pb2.START_KIND_EARLIEST),
                    credit=broker_pb2.Credit(messages=credit, bytes=1 << 20),
                )
            )
        )
        first = await call.read()
        assert first.WhichOneof("kind") == "subscribed"
        assert [p.partition for p in first.subscribed.partitions] == list(range(PARTITIONS))
        pending: dict[int, int] = {}  # request id -> record index (acks)
        nacks: dict[int, int] = {}  # request id -> record index (flaky nacks)
        held = 0
        next_id = 1
        try:
            # Runs until the test cancels it (a timeout on a read would cancel the call).
            while True:
                response = await call.read()
                kind = response.WhichOneof("kind")
                if kind == "ack":
                    assert not response.ack.failures, response.ack
                    if response.ack.request_id in pending:
                        books.acked[pending.pop(response.ack.request_id)] += 1
                    if response.ack.request_id in nacks:
                        books.nacked_at[nacks.pop(response.ack.request_id)] = time.monotonic()
                    continue
                assert kind == "batch", response
                batch = response.batch
                for record, delivery in zip(batch.records, batch.deliveries, strict=True):
                    i = index_of(record.value)
                    books.deliveries[i] += 1
                    if delivery.delivery_attempt == 2 and i in books.nacked_at:
                        books.redelivered_after.setdefault(i, time.monotonic() - books.nacked_at[i])
                    if role == "canceller":
                        held += 1
                        continue
                    request_id, next_id = next_id, next_id + 1
                    if is_poison(i):
                        body = broker_pb2.Nack(
                            request_id=request_id, ack_ids=[delivery.ack_id], delay_ms=0,
                            error=f"poison {i} attempt {delivery.delivery_attempt}",
                        )  # fmt: skip
                        await call.write(broker_pb2.ConsumeRequest(nack=body))
                    elif role == "flaky" and is_flaky(i) and delivery.delivery_attempt == 1:
                        nacks[request_id] = i
                        body = broker_pb2.Nack(request_id=request_id, ack_ids=[delivery.ack_id])
                        await call.write(broker_pb2.ConsumeRequest(nack=body))
                    else:
                        pending[request_id] = i
                        ack = broker_pb2.Ack(request_id=request_id, ack_ids=[delivery.ack_id])
                        await call.write(broker_pb2.ConsumeRequest(ack=ack))
                    await call.write(
                        broker_pb2.ConsumeRequest(credit=broker_pb2.Credit(messages=1, bytes=1024))
                    )
                if role == "canceller" and held >= credit:
                    books.cancelled_holding = held
                    call.cancel()
                    return
        finally:
            call.cancel()


def test_competing_consumers_ack_nack_cancel_and_dead_letter(
    broker: BrokerProcess, client: RawClient
) -> None:
    client.create_topic(TOPIC, partitions=PARTITIONS)
    requests = [
        request(TOPIC, [b"r-%d" % i], request_id=i + 1, partition=i % PARTITIONS)
        for i in range(RECORDS)
    ]
    answers = list(client.produce(requests))
    assert all(not a.HasField("error") for a in answers)
    poison = [i for i in range(RECORDS) if is_poison(i)]
    books = Books()

    async def main() -> None:
        # The canceller first, so that it surely holds records when it goes.
        canceller = asyncio.create_task(consume(broker.address, books, "canceller"))
        await canceller
        workers = [
            asyncio.create_task(consume(broker.address, books, role))
            for role in ("acker", "acker", "flaky")
        ]
        try:
            async with asyncio.timeout(60):
                while True:
                    done = sum(1 for i in range(RECORDS) if books.acked[i]) + len(poison)
                    dead = sum(client.end_offsets(TOPIC + ".dlq")) if _exists(client) else 0
                    if done == RECORDS and dead == len(poison):
                        break
                    await asyncio.sleep(0.2)
            # Nothing comes back after everything is settled.
            await asyncio.sleep(1.5)
        finally:
            for worker in workers:
                worker.cancel()
            results = await asyncio.gather(*workers, return_exceptions=True)
            # A worker that failed (not cancelled) fails the test with its error.
            for result in results:
                if isinstance(result, Exception):
                    raise result

    asyncio.run(main())
    assert books.cancelled_holding == 10
    assert all(books.acked[i] == 1 for i in range(RECORDS) if not is_poison(i)), books.acked
    assert not any(books.acked[i] for i in poison)
    assert all(books.deliveries[i] == MAX_DELIVERIES for i in poison)
    dead_letters = [r for p in range(PARTITIONS) for r in read_partition(client, TOPIC + ".dlq", p)]
    assert sorted(index_of(r.value) for r in dead_letters) == poison
    for record in dead_letters:
        i = index_of(record.value)
        assert record.headers["weir-dlq-topic"] == TOPIC.encode()
        assert record.headers["weir-dlq-partition"] == str(i % PARTITIONS).encode()
        assert record.headers["weir-dlq-offset"] == str(i // PARTITIONS).encode()
        assert record.headers["weir-dlq-deliveries"] == b"5"
        assert record.headers["weir-dlq-error"] == f"poison {i} attempt 5".encode()
    # Redeliveries after a nack without delay: the backoff of attempt 1.
    intervals = list(books.redelivered_after.values())
    assert len(intervals) >= 2, books.redelivered_after
    assert all(0.8 - 0.05 <= s <= 1.2 + 0.5 for s in intervals), intervals


def _reason(error: grpc.aio.AioRpcError) -> str | None:
    from google.rpc import error_details_pb2, status_pb2

    for key, raw in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(raw)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info.reason
    return None


def _exists(client: RawClient) -> bool:
    try:
        client.describe(TOPIC + ".dlq")
    except grpc.RpcError:
        return False
    return True


# -- three nodes: served at the partition leader ------------------------------------


async def _drain(
    address: str, topic: str, acked: dict[bytes, int], delivered: list[bytes], stop_after: int
) -> str | None:
    """Consume and ack one by one on `address` until `stop_after` records are acked (no ack
    left unanswered, records past that held unacked); the ErrorInfo reason the stream
    ended with, None if it was left open and cancelled."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = broker_pb2_grpc.BrokerServiceStub(channel).Consume()
        await call.write(
            broker_pb2.ConsumeRequest(
                subscribe=broker_pb2.Subscribe(
                    topic=topic,
                    group=GROUP,
                    mode=broker_pb2.CONSUME_MODE_QUEUE,
                    start=broker_pb2.StartPosition(kind=broker_pb2.START_KIND_EARLIEST),
                    credit=broker_pb2.Credit(messages=10, bytes=1 << 20),
                )
            )
        )
        pending: dict[int, bytes] = {}
        next_id = 1
        try:
            async for response in call:
                kind = response.WhichOneof("kind")
                if kind == "ack":
                    assert not response.ack.failures, response.ack
                    value = pending.pop(response.ack.request_id)
                    acked[value] = acked.get(value, 0) + 1
                    if len(acked) >= stop_after and not pending:
                        return None
                elif kind == "batch":
                    for record, delivery in zip(
                        response.batch.records, response.batch.deliveries, strict=True
                    ):
                        delivered.append(record.value)
                        if len(acked) + len(pending) >= stop_after:
                            continue  # held unacked: it goes back when the stream ends
                        pending[next_id] = record.value
                        ack = broker_pb2.Ack(request_id=next_id, ack_ids=[delivery.ack_id])
                        next_id += 1
                        await call.write(broker_pb2.ConsumeRequest(ack=ack))
                        await call.write(
                            broker_pb2.ConsumeRequest(
                                credit=broker_pb2.Credit(messages=1, bytes=1024)
                            )
                        )
        except grpc.aio.AioRpcError as error:
            return _reason(error)
        finally:
            call.cancel()
    return None


def test_a_partition_leader_serves_its_queue_and_a_new_leader_takes_over_after_kill_9(
    cluster: ClusterProcess,
) -> None:
    wait_ready(cluster)
    create_topic(cluster, 1, "jobs", 1)
    wait_led_by(cluster, "jobs", cluster.node_ids)
    total = 60
    with RawClient(cluster.address(1)) as raw:
        answers = list(
            raw.produce(
                request("jobs", [b"j-%d" % i], request_id=i + 1, partition=0) for i in range(total)
            )
        )
    assert all(not a.HasField("error") for a in answers), answers
    leader = leaders(cluster.address(1), "jobs")[0]
    other = next(n for n in cluster.node_ids if n != leader)
    acked: dict[bytes, int] = {}
    delivered: list[bytes] = []
    # Another node refuses clearly, naming the leader (no relay).
    reason = asyncio.run(_drain(cluster.address(other), "jobs", acked, delivered, total))
    assert reason == "NOT_LEADER"
    assert asyncio.run(_drain(cluster.address(leader), "jobs", acked, delivered, 25)) is None
    acked_before = set(acked)
    assert len(acked_before) == 25
    cluster.kill(leader)
    live = [n for n in cluster.node_ids if n != leader]
    wait_led_by(cluster, "jobs", live)
    new_leader = leaders(cluster.address(live[0]), "jobs")[0]
    seen_before = len(delivered)
    assert asyncio.run(_drain(cluster.address(new_leader), "jobs", acked, delivered, total)) is None
    assert sorted(acked) == sorted(b"j-%d" % i for i in range(total))
    # No record acked before the kill came back; every record was acked once
    # (a record in flight at the kill may be delivered twice, acked once).
    assert not acked_before & set(delivered[seen_before:])
    assert all(count == 1 for count in acked.values()), acked
