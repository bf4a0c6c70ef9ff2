"""Bootstrap lists against real `weir serve` processes: failover between two nodes.

The two nodes are independent single nodes (they share no data), so these
tests prove the mechanics of moving, not replication: each node has its own
copy of the topic, the second one filled beforehand far enough that the
consumer's position on the first node exists there too. What must hold when
the first node stops (SIGTERM) or dies (SIGKILL) under a running producer
and consumer: no exception reaches the application, every send future
resolves exactly once and successfully, the clients end up on the second
node, and the consumer goes on from the offset after the last record it
yielded, with no gap and no repeat.
"""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import weir
import weir.aio
from tests.support.broker_process import BrokerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOPIC = "moves"
FIRST_PREFILL = 50
SECOND_PREFILL = 3_000  # more than the first node can get before it stops


@pytest.fixture
def second(tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path / "second").start()
    try:
        yield process
    finally:
        process.stop()


def dead_address() -> str:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def prefill(address: str, prefix: bytes, count: int) -> None:
    with weir.Admin(address) as admin:
        admin.create_topic(TOPIC)
    with weir.Producer(address) as producer:
        futures = [producer.send(TOPIC, b"%s-%d" % (prefix, i)) for i in range(count)]
        producer.flush()
    assert [f.result().offset for f in futures] == list(range(count))


def seed_starting_at(address: str, make: type) -> int:
    """A seed with which a client built by `make` starts on `address`."""
    for seed in range(200):
        client = make(seed)
        if client._conn.address == address:
            return seed
    raise AssertionError("no seed starts there")


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_producer_and_consumer_move_to_the_second_node(
    broker: BrokerProcess, second: BrokerProcess, how: str
) -> None:
    first = broker
    prefill(first.address, b"first", FIRST_PREFILL)
    prefill(second.address, b"second", SECOND_PREFILL)
    bootstrap = [first.address, second.address]
    producer_seed = seed_starting_at(
        first.address, lambda s: weir.aio.Producer(bootstrap, rng=random.Random(s))
    )
    consumer_seed = seed_starting_at(
        first.address, lambda s: weir.aio.Consumer(bootstrap, TOPIC, rng=random.Random(s))
    )

    async def body() -> None:
        settled: dict[int, int] = {}  # send number -> times its future was settled
        futures: list[weir.aio.RecordFuture] = []
        consumed: list[weir.ConsumedRecord] = []
        stop_producing = asyncio.Event()
        sent_enough = asyncio.Event()
        sent_target = [20]

        def count(i: int) -> object:
            return lambda _fut: settled.__setitem__(i, settled.get(i, 0) + 1)

        async with (
            weir.aio.Producer(bootstrap, linger_ms=1, rng=random.Random(producer_seed)) as producer,
            weir.aio.Consumer(
                bootstrap, TOPIC, start="earliest", rng=random.Random(consumer_seed)
            ) as consumer,
        ):

            async def produce() -> None:
                i = 0
                while not stop_producing.is_set():
                    fut = await producer.send(TOPIC, b"live-%d" % i)
                    fut.add_done_callback(count(i))  # type: ignore[arg-type]
                    futures.append(fut)
                    if len(futures) >= sent_target[0]:
                        sent_enough.set()
                    i += 1
                    await asyncio.sleep(0.002)

            async def consume(until: int) -> None:
                while len(consumed) < until:
                    record = await consumer.poll(30.0)
                    assert record is not None, f"stalled after {len(consumed)} records"
                    consumed.append(record)

            producing = asyncio.create_task(produce())
            # Both clients work on the first node before it goes.
            await consume(FIRST_PREFILL + 20)
            await sent_enough.wait()
            await asyncio.gather(*futures[:20])
            assert producer._conn.address == first.address
            moved_at = len(consumed)
            await asyncio.to_thread(first.terminate if how == "sigterm" else first.kill)
            sent_target[0] = len(futures) + 100
            sent_enough.clear()
            # The consumer yields what it had buffered, then goes on from the
            # second node; the producer keeps sending.
            await consume(moved_at + 300)
            await sent_enough.wait()
            stop_producing.set()
            await producing
            await producer.flush(30.0)

            assert producer._conn.address == second.address
            assert consumer._conn.address == second.address

        metas = [f.result() for f in futures]  # none failed: result() would raise
        assert all(settled.get(i) == 1 for i in range(len(futures)))
        assert all(m.offset >= 0 for m in metas)
        # Records acknowledged by the second node come after its prefill.
        assert any(m.offset >= SECOND_PREFILL for m in metas)
        offsets = [r.offset for r in consumed]
        assert offsets == list(range(len(consumed)))  # no gap, no repeat
        values = [r.value for r in consumed]
        assert values[:FIRST_PREFILL] == [b"first-%d" % i for i in range(FIRST_PREFILL)]
        assert values[-1].startswith(b"second-")  # read from the second node

    asyncio.run(body())


def test_a_dead_first_address_still_connects(broker: BrokerProcess) -> None:
    dead = dead_address()
    for seed in range(3):  # dead first or live first, whichever the seed picks
        bootstrap = f"{dead},{broker.address}"
        with weir.Admin(bootstrap, rng=random.Random(seed)) as admin:
            if seed == 0:
                admin.create_topic("dead-first")
            assert "dead-first" in [t.name for t in admin.list_topics()]
        with weir.Producer(bootstrap, rng=random.Random(seed)) as producer:
            assert producer.send("dead-first", b"%d" % seed).result(30).offset == seed
        with weir.Consumer(
            [dead, broker.address], "dead-first", start="earliest", rng=random.Random(seed)
        ) as consumer:
            record = consumer.poll(30.0)
            assert record is not None and record.value == b"0"


def test_cli_takes_a_bootstrap_list(broker: BrokerProcess) -> None:
    bootstrap = f"{dead_address()},{broker.address}"
    with weir.Admin(broker.address) as admin:
        admin.create_topic("cli-list")
    done = subprocess.run(
        [sys.executable, "-m", "weir.server.cli", "topic", "list", "--bootstrap", bootstrap],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "cli-list" in done.stdout


def test_every_node_down_is_a_typed_retriable_error() -> None:
    bootstrap = [dead_address(), dead_address()]
    with (
        pytest.raises(weir.UnavailableError) as err,
        weir.Admin(bootstrap, reconnect_attempts=2, retry_backoff_ms=10) as admin,
    ):
        admin.list_topics()
    assert err.value.retriable
    with pytest.raises(weir.UnavailableError):
        weir.Consumer(bootstrap, "t", reconnect_attempts=1, retry_backoff_ms=10)
