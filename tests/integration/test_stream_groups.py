"""Stream-mode consumer groups on three real nodes, driven through the SDK (issue 8).

"What it must show", stream mode:

- three consumers in a group on a 12-partition topic each get a disjoint
  share; a fourth joins and one leaves during consumption: every record is
  processed at least once, none is skipped, each partition's records arrive
  in offset order, and partitions that did not move never paused (the
  longest gap between two of their records while the group rebalanced is
  measured and bounded);
- killing the node that leads the group's coordinator during consumption:
  committed offsets survive, none moves backwards, and consumption resumes
  within seconds.

The consumers are SDK consumers (`mode="stream"`), each bootstrapped on a
different node, so members are served by different nodes and their
coordinator is reached over the peer port. A producer keeps writing to every
partition while the group changes.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import time
from collections.abc import Sequence

import pytest

import weir.aio
from tests.integration.test_cluster_replication import create_topic, wait_ready
from tests.support.cluster_process import ClusterProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TOPIC = "events"
GROUP = "billing"
PARTITIONS = 12
# Records per second over all partitions while the group changes.
PRODUCE_RATE = 600
SESSION_TIMEOUT_MS = 6_000
SETTLE_TIMEOUT_S = 30.0
# A partition that keeps its owner may see no record for this long while
# the group rebalances (it never stops; the bound absorbs this loaded
# 2-core machine's scheduling and the producer's own batching).
UNMOVED_GAP_MAX_S = 2.5
RESUME_DEADLINE_S = 20.0


@dataclasses.dataclass
class Seen:
    """What one consumer processed: (partition, offset, arrival time) in order."""

    name: str
    records: list[tuple[int, int, float]] = dataclasses.field(default_factory=list)
    events: list[tuple[float, str, tuple[int, ...]]] = dataclasses.field(default_factory=list)


class Member:
    """One SDK consumer in stream mode, consuming in its own task until stopped."""

    def __init__(self, name: str, bootstrap: Sequence[str]) -> None:
        self.seen = Seen(name)
        self.consumer = weir.aio.Consumer(
            list(bootstrap),
            TOPIC,
            group=GROUP,
            mode="stream",
            start="earliest",
            session_timeout_ms=SESSION_TIMEOUT_MS,
            auto_commit_interval_ms=500,
            on_assign=self._assigned,
            on_revoke=self._revoked,
            request_timeout_ms=5_000,
        )
        self._stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def _assigned(self, partitions: list[int]) -> None:
        self.seen.events.append((time.monotonic(), "assign", tuple(partitions)))

    def _revoked(self, partitions: list[int]) -> None:
        self.seen.events.append((time.monotonic(), "revoke", tuple(partitions)))

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        await self.consumer.start()
        while not self._stop.is_set():
            record = await self.consumer.poll(0.2)
            if record is not None:
                self.seen.records.append((record.partition, record.offset, time.monotonic()))

    async def stop(self) -> None:
        """Stops consuming and leaves the group (commits what it processed first)."""
        self._stop.set()
        assert self.task is not None
        await self.task
        await self.consumer.close()

    def owned(self) -> frozenset[int]:
        return frozenset(self.consumer.assignment())


class Producer:
    """Writes `PRODUCE_RATE` records/s round-robin over the partitions until stopped."""

    def __init__(self, bootstrap: Sequence[str]) -> None:
        self.producer = weir.aio.Producer(list(bootstrap), linger_ms=5)
        self.sent = 0
        self._stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        await self.producer.start()
        interval = 1.0 / PRODUCE_RATE
        next_at = time.monotonic()
        while not self._stop.is_set():
            await self.producer.send(TOPIC, b"x" * 100, partition=self.sent % PARTITIONS)
            self.sent += 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    async def stop(self) -> None:
        self._stop.set()
        assert self.task is not None
        await self.task
        await self.producer.flush()
        await self.producer.close()


async def coordinator_ready(bootstrap: Sequence[str], timeout_s: float = 30.0) -> None:
    """Waits until the group's coordinator answers (it has no leader for a moment after start)."""
    deadline = time.monotonic() + timeout_s
    async with weir.aio.Admin(list(bootstrap)) as admin:
        while True:
            try:
                await admin.describe_group(GROUP)
                return
            except weir.errors.GroupNotFoundError:
                return
            except weir.errors.UnavailableError:
                assert time.monotonic() < deadline, "the group's coordinator never answered"
                await asyncio.sleep(0.2)


async def settled(members: Sequence[Member], timeout_s: float = SETTLE_TIMEOUT_S) -> None:
    """Waits until the members' assignments are disjoint, cover every partition and differ by ≤ 1."""
    deadline = time.monotonic() + timeout_s
    while True:
        for m in members:
            if m.task is not None and m.task.done():
                m.task.result()  # a member that failed fails the test with its error
        shares = [m.owned() for m in members]
        union = frozenset().union(*shares)
        sizes = [len(s) for s in shares]
        if (
            sum(sizes) == PARTITIONS
            and union == frozenset(range(PARTITIONS))
            and max(sizes) - min(sizes) <= 1
        ):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"assignment never settled: {[sorted(s) for s in shares]}")
        await asyncio.sleep(0.05)


async def end_offsets(bootstrap: Sequence[str]) -> list[int]:
    async with weir.aio.Admin(list(bootstrap)) as admin:
        info = await admin.describe_topic(TOPIC)
    return [p.end_offset for p in info.partitions]


async def drained(members: Sequence[Member], ends: Sequence[int], timeout_s: float) -> None:
    """Waits until every partition's records up to `ends` were processed by someone."""
    deadline = time.monotonic() + timeout_s
    while True:
        top = collections.defaultdict(lambda: -1)
        for m in members:
            for partition, offset, _ in m.seen.records:
                top[partition] = max(top[partition], offset)
        if all(top[p] >= ends[p] - 1 for p in range(PARTITIONS)):
            return
        if time.monotonic() > deadline:
            missing = {p: (top[p], ends[p]) for p in range(PARTITIONS) if top[p] < ends[p] - 1}
            raise AssertionError(f"records never processed (last seen, end): {missing}")
        await asyncio.sleep(0.1)


def check_every_record_in_order(members: Sequence[Member], ends: Sequence[int]) -> None:
    """At least once, none skipped, and each consumer saw each partition in offset order."""
    processed: dict[int, set[int]] = collections.defaultdict(set)
    for m in members:
        last: dict[int, int] = {}
        for partition, offset, _ in m.seen.records:
            # Within one ownership a partition moves forward; a new ownership
            # may start lower (at the committed offset: at least once).
            if partition in last and offset <= last[partition]:
                owned_again = any(
                    kind == "assign" and partition in parts for _, kind, parts in m.seen.events
                )
                assert owned_again, f"{m.seen.name}: partition {partition} went back to {offset}"
            last[partition] = offset
            processed[partition].add(offset)
    for p in range(PARTITIONS):
        missing = set(range(ends[p])) - processed[p]
        assert not missing, f"partition {p}: offsets never processed {sorted(missing)[:10]}"


def longest_gap(seen: Seen, partition: int, start: float, end: float) -> float:
    """The longest time without a record of `partition` within [start, end]."""
    times = [t for p, _, t in seen.records if p == partition and start <= t <= end]
    points = [start, *times, end]
    return max(b - a for a, b in itertools.pairwise(points))


@pytest.mark.slow
def test_a_join_and_a_leave_move_only_some_partitions_and_lose_nothing(
    cluster: ClusterProcess,
) -> None:
    wait_ready(cluster)
    create_topic(cluster, 1, TOPIC, PARTITIONS)
    addresses = cluster.addresses

    def bootstrap_from(node_index: int) -> list[str]:
        # Each member starts at a different node; the rest of the list is failover.
        return addresses[node_index:] + addresses[:node_index]

    async def body() -> None:
        await coordinator_ready(addresses)
        producer = Producer(addresses)
        producer.start()
        a, b, c = (Member(name, bootstrap_from(i)) for i, name in enumerate("abc"))
        for m in (a, b, c):
            m.start()
        await settled([a, b, c])
        first = {m.seen.name: m.owned() for m in (a, b, c)}
        assert all(len(s) == 4 for s in first.values()), first

        # A fourth member joins.
        d = Member("d", bootstrap_from(0))
        join_at = time.monotonic()
        d.start()
        await settled([a, b, c, d])
        joined_at = time.monotonic()
        second = {m.seen.name: m.owned() for m in (a, b, c, d)}
        kept = {name: first[name] & second[name] for name in first}
        # Sticky: each old member gave up exactly one partition, kept the rest.
        assert all(len(k) == 3 for k in kept.values()), (first, second)

        # One member leaves.
        leave_at = time.monotonic()
        await c.stop()
        await settled([a, b, d])
        left_at = time.monotonic()
        third = {m.seen.name: m.owned() for m in (a, b, d)}
        for name in third:
            assert second[name] <= third[name], (second, third)

        await asyncio.sleep(1.0)
        await producer.stop()
        ends = await end_offsets(addresses)
        assert sum(ends) == producer.sent
        await drained([a, b, c, d], ends, timeout_s=30)

        gaps = []
        for m, window, unmoved in (
            *((m, (join_at, joined_at), kept[m.seen.name]) for m in (a, b, c)),
            *((m, (leave_at, left_at), second[m.seen.name]) for m in (a, b, d)),
        ):
            for partition in unmoved:
                gaps.append(longest_gap(m.seen, partition, *window))
        print(
            f"rebalance windows: join {joined_at - join_at:.2f} s, leave {left_at - leave_at:.2f} s;"
            f" longest gap of an unmoved partition {max(gaps):.3f} s over {len(gaps)} partitions"
        )
        assert max(gaps) <= UNMOVED_GAP_MAX_S, gaps

        for m in (a, b, d):
            await m.stop()
        check_every_record_in_order([a, b, c, d], ends)

    asyncio.run(asyncio.wait_for(body(), 200))


@pytest.mark.slow
def test_killing_the_coordinators_node_keeps_offsets_and_consumption_resumes(
    cluster: ClusterProcess,
) -> None:
    wait_ready(cluster)
    create_topic(cluster, 1, TOPIC, PARTITIONS)
    addresses = cluster.addresses

    async def committed(admin: weir.aio.Admin) -> tuple[int, dict[int, int]]:
        info = await admin.describe_group(GROUP)
        return info.coordinator_id, {
            p.partition: p.committed_offset
            for p in info.partitions
            if p.committed_offset is not None
        }

    async def body() -> None:
        await coordinator_ready(addresses)
        producer = Producer(addresses)
        producer.start()
        members = [Member(name, addresses[i:] + addresses[:i]) for i, name in enumerate("abc")]
        for m in members:
            m.start()
        await settled(members)
        async with weir.aio.Admin(addresses) as admin:
            deadline = time.monotonic() + 20
            while True:
                coordinator, before = await committed(admin)
                if coordinator and len(before) == PARTITIONS:
                    break
                assert time.monotonic() < deadline, (coordinator, before)
                await asyncio.sleep(0.2)
            cluster.kill(coordinator)
            killed_at = time.monotonic()
            survivors = [
                a for n, a in zip(cluster.node_ids, addresses, strict=True) if n != coordinator
            ]

            # Every partition gets new records processed again within seconds.
            seen_before = {m.seen.name: len(m.seen.records) for m in members}
            resumed: dict[int, float] = {}
            while len(resumed) < PARTITIONS:
                for m in members:
                    for partition, _, t in m.seen.records[seen_before[m.seen.name] :]:
                        if t > killed_at + 0.5:
                            resumed.setdefault(partition, t - killed_at)
                assert time.monotonic() - killed_at < RESUME_DEADLINE_S, (
                    f"partitions not resumed: {set(range(PARTITIONS)) - set(resumed)}"
                )
                await asyncio.sleep(0.1)
            print(
                f"consumption resumed on every partition {max(resumed.values()):.2f} s after the kill"
            )

            # Offsets survive and never move backwards, read from a survivor.
            async with weir.aio.Admin(survivors) as after_admin:
                previous = before
                for _ in range(10):
                    try:
                        _, now = await committed(after_admin)
                    except weir.errors.WeirError:
                        await asyncio.sleep(0.3)
                        continue
                    for partition, offset in previous.items():
                        assert now.get(partition, -1) >= offset, (partition, previous, now)
                    previous = now
                    await asyncio.sleep(0.3)
        await producer.stop()
        for m in members:
            await m.stop()

    asyncio.run(asyncio.wait_for(body(), 200))
