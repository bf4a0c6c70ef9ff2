"""The idempotent SDK producer against three real nodes under kill -9, resets and stalls.

Issue 7, "What it must show": with idempotence (the SDK's default) and
`max_inflight_requests` 5, a loop of at least 20 leader kills loses,
duplicates and reorders nothing, and every acknowledged offset holds its
record; the same with every client connection going through a fault proxy
that also resets and stalls them.

Every attempt the producer makes is recorded through its public
`on_attempt` hook into a `History` (tests/support/history.py), and the
cluster is read back from every node. Stricter than the non-idempotent loop
in test_cluster_faults.py: no duplicate at all is allowed (not even after an
unknown outcome), and each partition must hold its payloads in the order
they were sent.

Faults are chosen by a seeded `random.Random`: the seed is printed, and
`WEIR_TEST_SEED=<n>` replays the same choices (process timing still varies).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

import weir.aio
from tests.integration.test_cluster_faults import (
    PARTITIONS,
    REELECT_TIMEOUT_S,
    SEED,
    most_leaderships,
    payload_value,
    read_into_history,
)
from tests.integration.test_cluster_replication import create_topic, wait_led_by, wait_ready
from tests.support.cluster_process import ClusterProcess
from tests.support.fault_proxy import FaultProxy, ProxyLoop
from tests.support.history import History
from weir.aio.sender import AttemptOutcome, ProduceAttempt
from weir.errors import WeirError

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KILLS = 20
# The loop itself; each test stays within 3 minutes with setup and checks.
LOOP_DEADLINE_S = 140.0
MAX_INFLIGHT_REQUESTS = 5
# Client-connection faults between kills in the proxied run.
STALL_S_MAX = 3.0
# Short enough that a stalled connection is given up within a stall.
PROXIED_REQUEST_TIMEOUT_MS = 1_500


class HistoryProducer:
    """An idempotent SDK producer, in its own thread and loop, sending unique payloads.

    Payload i goes to partition i % PARTITIONS; its batch is known from its
    future (`RecordFuture.batch.serial`), and every attempt of every batch
    arrives through `on_attempt`.
    """

    def __init__(
        self, bootstrap: Sequence[str], topic: str, seed: int, request_timeout_ms: int
    ) -> None:
        self.bootstrap = list(bootstrap)
        self.topic = topic
        self.seed = seed
        self.request_timeout_ms = request_timeout_ms
        self.next_id = 0
        self.results: dict[int, int | None] = {}
        self.errors: collections.Counter[str] = collections.Counter()
        self.attempts: list[ProduceAttempt] = []
        self.batch_payloads: dict[int, list[int]] = collections.defaultdict(list)
        self.identity: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.failure: BaseException | None = None

    def start(self) -> HistoryProducer:
        self._thread.start()
        return self

    async def _run(self) -> None:
        try:
            await self._produce()
        except BaseException as exc:
            self.failure = exc
            raise

    async def _produce(self) -> None:
        futures = []
        async with weir.aio.Producer(
            self.bootstrap,
            acks="all",
            linger_ms=5,
            retries=1_000,
            retry_backoff_max_ms=500,
            request_timeout_ms=self.request_timeout_ms,
            max_inflight_requests=MAX_INFLIGHT_REQUESTS,
            on_attempt=self.attempts.append,
            rng=random.Random(self.seed),
        ) as producer:
            await producer.partitions_for(self.topic)
            while not self._stop.is_set():
                # About 2,000 records/s in batches of a few records: several
                # requests in flight per partition at every fault.
                for _ in range(20):
                    payload = self.next_id
                    self.next_id += 1
                    future = await producer.send(
                        self.topic, payload_value(payload), partition=payload % PARTITIONS
                    )
                    self.batch_payloads[future.batch.serial].append(payload)
                    futures.append((payload, future))
                await asyncio.sleep(0.01)
            await producer.flush()
            self.identity = producer.producer_identity
        for payload, future in futures:
            try:
                self.results[payload] = (await future).offset
            except WeirError as error:
                self.results[payload] = None
                self.errors[error.reason] += 1

    def stop(self, timeout_s: float = 60.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the producer did not finish"
        if self.failure is not None:
            raise self.failure

    def record(self, history: History) -> collections.Counter[str]:
        """Every attempt into `history`; returns the count of attempts per outcome."""
        counts: collections.Counter[str] = collections.Counter()
        for request_id, attempt in enumerate(self.attempts, start=1):
            payloads = self.batch_payloads[attempt.batch_serial]
            assert len(payloads) == attempt.record_count, attempt
            counts[attempt.outcome.value] += 1
            if attempt.outcome is AttemptOutcome.ACKNOWLEDGED:
                assert attempt.base_offset is not None
                offsets = [self.results[p] for p in payloads]
                assert offsets == list(
                    range(attempt.base_offset, attempt.base_offset + len(payloads))
                )
                history.acknowledged(request_id, attempt.partition, payloads, attempt.base_offset)
            elif attempt.outcome is AttemptOutcome.FAILED:
                history.failed(request_id, attempt.partition, payloads)
            else:
                history.unknown(request_id, attempt.partition, payloads)
        return counts


def check(cluster: ClusterProcess, topic: str, producer: HistoryProducer, label: str) -> str:
    """Read back, check the history; no duplicate and no reordering at all. Returns a summary."""
    history = History()
    counts = producer.record(history)
    logs = read_into_history(cluster, topic, history)
    report = history.check()
    reordered = [
        (partition, ids)
        for partition, ids in enumerate(logs)
        if any(a >= b for a, b in itertools.pairwise(ids))
    ]
    acknowledged = sum(1 for o in producer.results.values() if o is not None)
    stored = sum(len(ids) for ids in logs)
    summary = (
        f"{label}: seed {SEED}; {producer.next_id} records sent, {acknowledged} acknowledged, "
        f"{stored} stored, attempts {dict(counts)}, errors {dict(producer.errors)}, "
        f"producer {producer.identity}\n{report.summary()}"
    )
    print(summary)
    assert report.ok, summary
    assert not report.duplicates, summary
    assert not reordered, f"{summary}\nreordered partitions: {[p for p, _ in reordered]}"
    # Nothing failed for good: every record sent was acknowledged and stored once.
    assert acknowledged == producer.next_id, summary
    assert stored == producer.next_id, summary
    return summary


def kill_leaders(
    cluster: ClusterProcess,
    topic: str,
    producer: HistoryProducer,
    rng: random.Random,
    between: Callable[[random.Random], None] | None = None,
) -> list[int]:
    """KILLS kill -9s, mostly of the node leading most partitions; `between(rng)` after each."""
    kills: list[int] = []
    started = time.monotonic()
    while len(kills) < KILLS:
        assert time.monotonic() - started < LOOP_DEADLINE_S, (
            f"only {len(kills)} kills in {LOOP_DEADLINE_S} s (seed {SEED})"
        )
        assert producer.failure is None, producer.failure
        view = rng.choice(cluster.node_ids)
        victim = most_leaderships(cluster, topic, view, rng)
        kills.append(victim)
        cluster.kill(victim)
        survivors = [n for n in cluster.node_ids if n != victim]
        wait_led_by(cluster, topic, survivors, REELECT_TIMEOUT_S)
        time.sleep(rng.uniform(0.0, 0.3))
        cluster.start_node(victim)
        if between is not None:
            between(rng)
        cluster.wait_converged(timeout_s=REELECT_TIMEOUT_S)
        time.sleep(rng.uniform(0.1, 0.5))
    return kills


@pytest.mark.timeout(180)
def test_idempotent_producer_under_a_kill_minus_nine_loop_loses_duplicates_and_reorders_nothing(
    cluster: ClusterProcess,
) -> None:
    rng = random.Random(SEED)
    print(f"seed {SEED} (WEIR_TEST_SEED={SEED} to replay the fault choices)")
    wait_ready(cluster)
    create_topic(cluster, 1, "idem-kills", PARTITIONS)
    wait_led_by(cluster, "idem-kills", cluster.node_ids)
    producer = HistoryProducer(cluster.addresses, "idem-kills", SEED, 10_000).start()
    started = time.monotonic()
    try:
        kills = kill_leaders(cluster, "idem-kills", producer, rng)
        time.sleep(1.0)  # records sent after the last restart are acknowledged too
    finally:
        producer.stop()
    print(f"{len(kills)} kills in {time.monotonic() - started:.1f} s (victims {kills})")
    assert len(kills) >= 20
    wait_ready(cluster)
    check(cluster, "idem-kills", producer, "kill -9 loop")


# ---------------------------------------------------------------------------
# Every client connection through a fault proxy


class ClientProxiedCluster(ClusterProcess):
    """Three nodes whose client ports are reached through one `FaultProxy` each.

    Every node advertises its proxy's address, so the leader addresses in
    metadata and NOT_LEADER answers lead through the proxies as well; the
    test's own admin calls and reads use the real addresses.
    """

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.client_proxy_loop: ProxyLoop | None = None
        self.client_proxies: dict[int, FaultProxy] = {}

    def _pick_ports(self) -> None:
        super()._pick_ports()
        if self.client_proxy_loop is not None:
            self.client_proxy_loop.close()
        self.client_proxy_loop = ProxyLoop().start()
        self.client_proxies = {
            n: self.client_proxy_loop.proxy(self.address(n), name=f"client->{n}")
            for n in self.node_ids
        }

    def args(self, node: int) -> list[str]:
        return [*super().args(node), "--advertised-address", self.client_proxies[node].address]

    @property
    def proxied_addresses(self) -> list[str]:
        return [self.client_proxies[n].address for n in self.node_ids]

    def stop(self) -> None:
        super().stop()
        if self.client_proxy_loop is not None:
            self.client_proxy_loop.close()
        self.client_proxy_loop = None


def wait_registered_through_proxies(cluster: ClientProxiedCluster) -> None:
    """Every node knows every node's advertised (proxy) address."""
    cluster.wait_converged()
    expected = {n: cluster.client_proxies[n].address for n in cluster.node_ids}
    for node in cluster.node_ids:
        cluster.wait_until(
            lambda node=node: (
                {n.node_id: n.address for n in cluster.describe(node).nodes} == expected
            ),
            REELECT_TIMEOUT_S,
            f"node {node} knowing every advertised address",
        )


@pytest.fixture
def client_proxied_cluster(tmp_path: Path) -> Iterator[ClientProxiedCluster]:
    cluster = ClientProxiedCluster(tmp_path / "proxied")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.timeout(180)
def test_idempotent_producer_through_proxies_that_reset_and_stall_client_connections(
    client_proxied_cluster: ClientProxiedCluster,
) -> None:
    cluster = client_proxied_cluster
    rng = random.Random(SEED)
    print(f"seed {SEED} (WEIR_TEST_SEED={SEED} to replay the fault choices)")
    wait_registered_through_proxies(cluster)
    create_topic(cluster, 1, "idem-proxied", PARTITIONS)
    wait_led_by(cluster, "idem-proxied", cluster.node_ids)
    producer = HistoryProducer(
        cluster.proxied_addresses, "idem-proxied", SEED, PROXIED_REQUEST_TIMEOUT_MS
    ).start()
    faults: collections.Counter[str] = collections.Counter()

    def client_faults(rng: random.Random) -> None:
        """After each restart: reset every client connection of one node, or stall them."""
        node = rng.choice(cluster.node_ids)
        proxy = cluster.client_proxies[node]
        if rng.random() < 0.5:
            faults["reset connections"] += proxy.reset_connections()
            faults["resets"] += 1
        else:
            proxy.stall()
            time.sleep(rng.uniform(0.5, STALL_S_MAX))
            proxy.heal()
            faults["stalls"] += 1

    started = time.monotonic()
    try:
        time.sleep(0.5)
        kills = kill_leaders(cluster, "idem-proxied", producer, rng, client_faults)
        time.sleep(1.0)
    finally:
        producer.stop()
    print(
        f"{len(kills)} kills in {time.monotonic() - started:.1f} s (victims {kills}); "
        f"client faults {dict(faults)}"
    )
    assert len(kills) >= 20
    assert faults["resets"] + faults["stalls"] == len(kills)
    # The producer's traffic, leaders included, went through the proxies.
    forwarded = sum(p.stats().bytes_forward for p in cluster.client_proxies.values())
    print(f"{forwarded} bytes from the producer through the client proxies")
    assert forwarded > producer.next_id * len(payload_value(0))
    wait_registered_through_proxies(cluster)
    check(cluster, "idem-proxied", producer, "kill -9 loop through client proxies")
