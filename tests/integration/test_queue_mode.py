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
        # Flaky record -> when its nack was written: the broker's backoff starts
        # once it has the nack, never before, so no redelivery may come sooner.
        # (Timing from the nack's answer shortened the interval by the answer's
        # own delay: 0.73 s on a loaded CI machine.)
        self.nack_sent_at: dict[int, float] = {}
        self.nacks_answered = 0
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
                    if nacks.pop(response.ack.request_id, None) is not None:
                        books.nacks_answered += 1
                    continue
                assert kind == "batch", response
                batch = response.batch
                for record, delivery in zip(batch.records, batch.deliveries, strict=True):
                    i = index_of(record.value)
                    books.deliveries[i] += 1
                    if delivery.delivery_attempt == 2 and i in books.nack_sent_at:
                        after = time.monotonic() - books.nack_sent_at[i]
                        books.redelivered_after.setdefault(i, after)
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
                        books.nack_sent_at[i] = time.monotonic()
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
    competing_consumers(client, [broker.address] * 4)


def test_competing_consumers_on_three_nodes(cluster: ClusterProcess) -> None:
    """The same on a three-node cluster: the four consumers on different nodes (relays)."""
    wait_ready(cluster)
    create_topic(cluster, 1, TOPIC, PARTITIONS)
    wait_led_by(cluster, TOPIC, cluster.node_ids)
    addresses = [cluster.address(n) for n in (*cluster.node_ids, cluster.node_ids[0])]
    with RawClient(cluster.address(1)) as client:
        competing_consumers(client, addresses, create=False)


def competing_consumers(client: RawClient, addresses: list[str], create: bool = True) -> None:
    """Canceller on addresses[0], then two ackers and the flaky one on the others."""
    if create:
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
        canceller = asyncio.create_task(consume(addresses[0], books, "canceller"))
        await canceller
        # The flaky one first, until it nacked a few records, so that some
        # redeliveries after its nacks are surely measured.
        workers = [asyncio.create_task(consume(addresses[3], books, "flaky"))]
        async with asyncio.timeout(30):
            while books.nacks_answered < 2:  # noqa: ASYNC110 (books are plain state)
                await asyncio.sleep(0.01)
        workers += [
            asyncio.create_task(consume(address, books, "acker")) for address in addresses[1:3]
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
    # Redeliveries after a nack without delay: the backoff of attempt 1
    # (1000 ms +-20 %), timed from the nack's write, so never sooner (10 ms for
    # the broker's millisecond clock); later by the nack's way there and the
    # redelivery's way back.
    intervals = list(books.redelivered_after.values())
    assert len(intervals) >= 2, books.redelivered_after
    assert all(0.8 - 0.01 <= s <= 1.2 + 0.5 for s in intervals), intervals


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


# -- three nodes: relayed to partition leaders ---------------------------------------


class ClusterBooks:
    def __init__(self) -> None:
        self.acked: dict[bytes, int] = {}
        # Values an ack was sent for (its answer may be lost with a killed node,
        # while the ack itself committed).
        self.ack_sent: set[bytes] = set()
        # (when, value) of every delivery.
        self.delivered: list[tuple[float, bytes]] = []
        self.ended: dict[int, str | None] = {}
        self.progress = asyncio.Event()

    async def until_acked(self, count: int) -> None:
        while len(self.acked) < count:
            self.progress.clear()
            await self.progress.wait()

    async def until_ack_sent(self, count: int) -> None:
        while len(self.ack_sent) < count:
            self.progress.clear()
            await self.progress.wait()


async def _worker(address: str, node: int, topic: str, books: ClusterBooks) -> None:
    """Consume and ack one by one on `address` until cancelled (or the node dies)."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = broker_pb2_grpc.BrokerServiceStub(channel).Consume()
        try:
            await call.write(
                broker_pb2.ConsumeRequest(
                    subscribe=broker_pb2.Subscribe(
                        topic=topic,
                        group=GROUP,
                        mode=broker_pb2.CONSUME_MODE_QUEUE,
                        start=broker_pb2.StartPosition(kind=broker_pb2.START_KIND_EARLIEST),
                        credit=broker_pb2.Credit(messages=6, bytes=1 << 20),
                    )
                )
            )
            pending: dict[int, bytes] = {}
            next_id = 1
            async for response in call:
                kind = response.WhichOneof("kind")
                if kind == "ack":
                    value = pending.pop(response.ack.request_id)
                    if not response.ack.failures:
                        books.acked[value] = books.acked.get(value, 0) + 1
                        books.progress.set()
                elif kind == "batch":
                    for record, delivery in zip(
                        response.batch.records, response.batch.deliveries, strict=True
                    ):
                        books.delivered.append((time.monotonic(), record.value))
                        pending[next_id] = record.value
                        ack = broker_pb2.Ack(request_id=next_id, ack_ids=[delivery.ack_id])
                        next_id += 1
                        await asyncio.sleep(0.01)  # a consumer that takes time per record
                        await call.write(broker_pb2.ConsumeRequest(ack=ack))
                        books.ack_sent.add(record.value)
                        books.progress.set()
                        await call.write(
                            broker_pb2.ConsumeRequest(
                                credit=broker_pb2.Credit(messages=1, bytes=1024)
                            )
                        )  # a consumer that takes time per record
        except grpc.aio.AioRpcError as error:
            books.ended[node] = _reason(error)
        finally:
            call.cancel()


async def _relayed_subscribe(address: str, topic: str, partition: int) -> str | None:
    """A Subscribe marked as another node's relay: the reason it is refused with."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = broker_pb2_grpc.BrokerServiceStub(channel).Consume(
            metadata=(("weir-queue-relay", "1"),)
        )
        subscribe = broker_pb2.Subscribe(
            topic=topic, group=GROUP, mode=broker_pb2.CONSUME_MODE_QUEUE, partitions=[partition]
        )
        await call.write(broker_pb2.ConsumeRequest(subscribe=subscribe))
        try:
            await call.read()
        except grpc.aio.AioRpcError as error:
            return _reason(error)
        finally:
            call.cancel()
    return None


async def _records_within(address: str, topic: str, messages: int) -> int:
    """Records a stream with `messages` of credit gets (acking none) in 1 s after the first
    `messages`; the stream is then cancelled, so they go back."""
    got = 0
    async with grpc.aio.insecure_channel(address) as channel:
        call = broker_pb2_grpc.BrokerServiceStub(channel).Consume()
        subscribe = broker_pb2.Subscribe(
            topic=topic,
            group=GROUP,
            mode=broker_pb2.CONSUME_MODE_QUEUE,
            start=broker_pb2.StartPosition(kind=broker_pb2.START_KIND_EARLIEST),
            credit=broker_pb2.Credit(messages=messages, bytes=1 << 20),
        )
        await call.write(broker_pb2.ConsumeRequest(subscribe=subscribe))

        async def read() -> None:
            nonlocal got
            async for response in call:
                if response.WhichOneof("kind") == "batch":
                    got += len(response.batch.records)

        reader = asyncio.create_task(read())
        try:
            async with asyncio.timeout(30):
                while got < messages and not reader.done():
                    await asyncio.wait({reader}, timeout=0.05)
            await asyncio.wait({reader}, timeout=1.0)
        finally:
            call.cancel()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
    return got


def test_consumers_on_every_node_share_the_queue_through_relays_and_a_leader_kill_9(
    cluster: ClusterProcess,
) -> None:
    wait_ready(cluster)
    create_topic(cluster, 1, "jobs", 3)
    wait_led_by(cluster, "jobs", cluster.node_ids)
    total = 150
    with RawClient(cluster.address(1)) as raw:
        answers = list(
            raw.produce(
                request("jobs", [b"j-%d" % i], request_id=i + 1, partition=i % 3)
                for i in range(total)
            )
        )
    assert all(not a.HasField("error") for a in answers), answers
    lead = leaders(cluster.address(1), "jobs")
    victim = lead[0]
    other = next(n for n in cluster.node_ids if n != victim)
    # A relayed subscribe is never relayed again.
    assert asyncio.run(_relayed_subscribe(cluster.address(other), "jobs", 0)) == "NOT_LEADER"
    # Credit holds across relays: 10 messages are 10 records, whoever leads them.
    assert asyncio.run(_records_within(cluster.address(other), "jobs", 10)) == 10
    books = ClusterBooks()
    acked_before: set[bytes] = set()
    killed_at = 0.0

    async def main() -> None:
        nonlocal acked_before, killed_at
        workers = [
            asyncio.create_task(_worker(cluster.address(n), n, "jobs", books))
            for n in cluster.node_ids
        ]
        try:
            async with asyncio.timeout(60):
                await books.until_acked(total // 3)
                acked_before = set(books.acked)
                killed_at = time.monotonic()
                await asyncio.to_thread(cluster.kill, victim)
                await books.until_ack_sent(total)
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        # Whatever was still in flight (an ack lost with the killed node and
        # not committed) comes back at once to a last consumer.
        last = asyncio.create_task(_worker(cluster.address(other), other, "jobs", books))
        try:
            async with asyncio.timeout(3):
                await asyncio.shield(last)
        except TimeoutError:
            pass
        finally:
            last.cancel()
            await asyncio.gather(last, return_exceptions=True)

    asyncio.run(main())
    everything = {b"j-%d" % i for i in range(total)}
    # Nothing lost: every record was delivered and an ack sent for it.
    assert {v for _, v in books.delivered} == everything
    assert books.ack_sent == everything
    # Acked once: no ack of a record was answered OK twice.
    assert all(count == 1 for count in books.acked.values()), books.acked
    # No record whose ack was answered before the kill came back after it.
    assert not acked_before & {v for when, v in books.delivered if when > killed_at}
    # Only the consumer on the killed node lost its stream.
    assert set(books.ended) <= {victim}, books.ended
