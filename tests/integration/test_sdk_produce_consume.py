"""Producing and consuming through the SDK against a real broker."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

import weir
import weir.aio
from tests.support.broker_process import BrokerProcess
from weir.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    OffsetOutOfRangeError,
    RecordTooLargeError,
    TopicNotFoundError,
)
from weir.partitioner import partition_for_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def create(address: str, topic: str, partitions: int = 1, **config: int) -> None:
    with weir.Admin(address) as admin:
        admin.create_topic(topic, partitions, **config)


async def take(consumer: weir.aio.Consumer, count: int) -> list[weir.ConsumedRecord]:
    """Exactly `count` records (generous waits: CI machines stall), then nothing more."""
    out = []
    for _ in range(count):
        record = await consumer.poll(20.0)
        assert record is not None, f"only {len(out)} of {count} records arrived"
        out.append(record)
    assert await consumer.poll(0.3) is None
    return out


def take_blocking(consumer: weir.Consumer, count: int) -> list[weir.ConsumedRecord]:
    out = []
    for _ in range(count):
        record = consumer.poll(20.0)
        assert record is not None, f"only {len(out)} of {count} records arrived"
        out.append(record)
    assert consumer.poll(0.3) is None
    return out


def test_keyed_records_land_by_murmur2_in_order_with_dense_offsets(broker: BrokerProcess) -> None:
    create(broker.address, "keyed", partitions=4)

    async def body() -> None:
        async with weir.aio.Producer(broker.address, linger_ms=2) as producer:
            futures = [
                await producer.send(
                    "keyed", f"v{i}".encode(), key=f"k{i % 13}".encode(), headers={"i": b"%d" % i}
                )
                for i in range(2_000)
            ]
            metas = await asyncio.gather(*futures)
        for i, meta in enumerate(metas):
            assert meta.partition == partition_for_key(f"k{i % 13}".encode(), 4)
        for partition in range(4):
            offsets = [m.offset for m in metas if m.partition == partition]
            assert offsets == list(range(len(offsets)))  # dense, in send order

        async with weir.aio.Consumer(broker.address, "keyed", start="earliest") as consumer:
            records = await take(consumer, 2_000)
        by_position = {(m.partition, m.offset): i for i, m in enumerate(metas)}
        for record in records:
            i = by_position[(record.partition, record.offset)]
            assert record.value == f"v{i}".encode()
            assert record.key == f"k{i % 13}".encode()
            assert record.headers == {"i": b"%d" % i}
            assert record.timestamp_ms > 0
        for partition in range(4):
            offsets = [r.offset for r in records if r.partition == partition]
            assert offsets == sorted(offsets)

    asyncio.run(body())


def test_keyless_records_stick_to_one_partition_per_batch(broker: BrokerProcess) -> None:
    create(broker.address, "sticky", partitions=3)
    with weir.Producer(broker.address, linger_ms=1_000) as producer:
        futures = [producer.send("sticky", b"x") for _ in range(50)]
        producer.flush()
        partitions = {f.result().partition for f in futures}
        assert len(partitions) == 1  # one lingering batch, one partition
        more = [producer.send("sticky", b"y") for _ in range(50)]
        producer.flush()
        assert {f.result().partition for f in more} != partitions  # rotated after the send


def test_blocking_roundtrip_with_group_commit_and_resume(broker: BrokerProcess) -> None:
    create(broker.address, "jobs", partitions=2)
    with weir.Producer(broker.address) as producer:
        for i in range(100):
            producer.send("jobs", b"%d" % i, partition=i % 2)
        producer.flush()

    with weir.Consumer(broker.address, "jobs", group="workers", start="earliest") as consumer:
        seen = [consumer.poll(20.0) for _ in range(30)]
        assert all(r is not None for r in seen)
        committed = consumer.commit()
        assert sum(committed.values()) == 30
        for partition, offset in committed.items():
            assert consumer.position(partition) == offset

    with weir.Consumer(broker.address, "jobs", group="workers", start="earliest") as consumer:
        rest = take_blocking(consumer, 70)
        assert {(r.partition, r.offset) for r in rest}.isdisjoint(
            {(r.partition, r.offset) for r in seen if r is not None}
        )
        # Commits never move backwards.
        assert consumer.commit() == {0: 50, 1: 50}
        assert consumer.commit({0: 0, 1: 0}) == {0: 50, 1: 50}


def test_commit_without_a_group_is_refused(broker: BrokerProcess) -> None:
    create(broker.address, "nogroup")
    with weir.Producer(broker.address) as producer:
        producer.send("nogroup", b"x").result(10)
    with weir.Consumer(broker.address, "nogroup", start="earliest") as consumer:
        assert consumer.poll(20.0) is not None
        with pytest.raises(FailedPreconditionError) as err:
            consumer.commit()
        assert err.value.reason == "NO_GROUP"
        # The stream survives a failed commit.
        assert consumer.poll(0.2) is None


def test_seek_and_explicit_start_positions(broker: BrokerProcess) -> None:
    create(broker.address, "replay")
    before_ms = int(time.time() * 1000)
    with weir.Producer(broker.address) as producer:
        for i in range(20):
            producer.send("replay", b"%d" % i)
        producer.flush()

    async def body() -> None:
        async with weir.aio.Consumer(broker.address, "replay", start=15) as consumer:
            assert [r.offset for r in await take(consumer, 5)] == list(range(15, 20))
            await consumer.seek(0, 3)
            assert consumer.position(0) == 3
            first = await consumer.poll(20.0)
            assert first is not None and first.offset == 3 and first.value == b"3"
        start = datetime.fromtimestamp(before_ms / 1000 - 1, tz=UTC)
        async with weir.aio.Consumer(broker.address, "replay", start=start) as consumer:
            assert len(await take(consumer, 20)) == 20
        async with weir.aio.Consumer(broker.address, "replay", start="latest") as consumer:
            assert await consumer.poll(0.3) is None
            assert consumer.position(0) == 20
        with pytest.raises(OffsetOutOfRangeError):
            async with weir.aio.Consumer(broker.address, "replay", start=999):
                pass

    asyncio.run(body())


def test_consumer_buffer_never_exceeds_its_credit_window(broker: BrokerProcess) -> None:
    create(broker.address, "window")
    with weir.Producer(broker.address) as producer:
        for i in range(500):
            producer.send("window", b"%04d" % i)
        producer.flush()

    async def body() -> None:
        async with weir.aio.Consumer(
            broker.address, "window", start="earliest", max_outstanding_messages=10
        ) as consumer:
            got = 0
            while got < 500:
                record = await consumer.poll(20.0)
                assert record is not None and record.offset == got
                got += 1
                await asyncio.sleep(0)  # let the reader take in whatever the broker sent
                assert consumer._sub is not None and len(consumer._sub.buffer) <= 10

    asyncio.run(body())


def test_oversized_records_fail_alone(broker: BrokerProcess) -> None:
    create(broker.address, "small", record_bytes_max=1024)

    async def body() -> None:
        async with weir.aio.Producer(broker.address, linger_ms=0) as producer:
            # Known limit: refused by send() itself, nothing reaches a batch.
            with pytest.raises(RecordTooLargeError) as local:
                await producer.send("small", b"x" * 4096)
            assert local.value.metadata["limit"] == "1024"
            # A limit lowered behind the producer's back: the broker's
            # per-request error fails that request only and the stream goes on.
            async with weir.aio.Admin(broker.address) as admin:
                await admin.update_topic_config("small", record_bytes_max=512)
            rejected = await producer.send("small", b"x" * 800)
            with pytest.raises(RecordTooLargeError) as remote:
                await rejected
            assert remote.value.reason == "RECORD_TOO_LARGE"
            assert not remote.value.retriable
            ok = await producer.send("small", b"fine")
            assert (await ok).offset == 0
            with pytest.raises(TopicNotFoundError):
                await producer.send("missing", b"x")
            with pytest.raises(InvalidArgumentError):
                await producer.send("small", b"x", partition=5)

    asyncio.run(body())


def test_acks_none_resolves_with_minus_one_and_still_delivers(broker: BrokerProcess) -> None:
    create(broker.address, "fire")
    with weir.Producer(broker.address, acks="none") as producer:
        futures = [producer.send("fire", b"%d" % i) for i in range(100)]
        producer.flush()
        assert {f.result(10).offset for f in futures} == {-1}
    with weir.Consumer(broker.address, "fire", start="earliest") as consumer:
        values = [r.value for r in take_blocking(consumer, 100)]
        assert values == [b"%d" % i for i in range(100)]


def test_blocking_consumer_chunks_keep_positions_and_seek(broker: BrokerProcess) -> None:
    create(broker.address, "chunks", partitions=2)
    with weir.Producer(broker.address) as producer:
        for i in range(40):
            producer.send("chunks", b"%d" % i, partition=i % 2)
        producer.flush()
    with weir.Consumer(broker.address, "chunks", group="c", start="earliest") as consumer:
        first = [consumer.poll(20.0) for _ in range(3)]
        assert all(r is not None for r in first)
        # Only what this iterator yielded counts, not the chunk behind it.
        assert sum(consumer.commit().values()) == 3
        consumer.seek(0, 0)
        assert consumer.position(0) == 0
        rest = take_blocking(consumer, 20 + 20 - sum(1 for r in first if r and r.partition == 1))
        p0 = [r.offset for r in rest if r.partition == 0]
        p1 = [r.offset for r in rest if r.partition == 1]
        assert p0 == list(range(20))
        seen_p1 = [r.offset for r in first if r is not None and r.partition == 1]
        assert seen_p1 + p1 == list(range(20))
