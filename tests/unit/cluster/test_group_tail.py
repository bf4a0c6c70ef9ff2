"""A leader's cached log-tail offset (`Group.next_offset`) names its entry by index and term.

The scenario the cut-off integration test once hit: a node leads and its
log ends at index 8 (offsets up to 23); it loses that uncommitted suffix to
another leader, whose index 8 ends at offset 40; it leads again with the
same last index. The cache must not answer 23. The first tests check the
cache alone (the group's Raft log and storage are stand-ins holding only
what `next_offset` reads); the last plays the scenario on three real hosts
over real storage, linked in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import pathlib
import random
import time
from dataclasses import dataclass, field

import pytest

from weir.cluster.host import RaftHost
from weir.cluster.host.group import Group
from weir.cluster.raft.types import Entry, Message
from weir.cluster.storage import NodeStorage, StorageConfig

from .host_fixtures import GROUP, config, eventually, run

pytestmark = pytest.mark.timeout(30)


@dataclass
class _Log:
    last: int
    term: int
    unstable: list[Entry] = field(default_factory=list)

    def last_index(self) -> int:
        return self.last

    def last_term(self) -> int:
        return self.term


@dataclass
class _Raft:
    log: _Log


@dataclass
class _Raw:
    raft: _Raft


@dataclass
class _Storage:
    last: int
    next_offset: int

    def last_index(self) -> int:
        return self.last


def _group(log: _Log, storage: _Storage) -> Group:
    group = object.__new__(Group)
    group.raw = _Raw(_Raft(log))  # type: ignore[assignment]
    group.storage = storage  # type: ignore[assignment]
    group.tail_index, group.tail_term, group.tail_offset = -1, -1, 0
    return group


def test_the_same_last_index_over_other_entries_is_not_the_cached_tail() -> None:
    log = _Log(last=8, term=1)
    storage = _Storage(last=8, next_offset=23)
    group = _group(log, storage)
    assert group.next_offset() == 23
    # Another leader replaced the suffix: index 8 is now its entry (term 2).
    log.term = 2
    storage.next_offset = 40
    assert group.next_offset() == 40


def test_the_same_last_entry_is_served_from_the_cache() -> None:
    log = _Log(last=8, term=1)
    storage = _Storage(last=8, next_offset=23)
    group = _group(log, storage)
    assert group.next_offset() == 23
    storage.next_offset = 99  # not read again while the last entry is the same
    assert group.next_offset() == 23


# ---------------------------------------------------------------------------
# The same scenario end to end: three real hosts over real storage


class _Clock:
    """Monotonic milliseconds that can stand still: a host whose clock stands still does not tick.

    Resumed, it goes on from where it stood (the time it stood still is not
    counted), so the host sees no jump.
    """

    def __init__(self) -> None:
        self._stopped_at_ms: float | None = None
        self._lost_ms = 0.0

    @staticmethod
    def _real_ms() -> float:
        return time.monotonic() * 1000

    def __call__(self) -> float:
        at = self._stopped_at_ms if self._stopped_at_ms is not None else self._real_ms()
        return at - self._lost_ms

    def stand_still(self) -> None:
        self._stopped_at_ms = self._real_ms()

    def go_on(self) -> None:
        assert self._stopped_at_ms is not None
        self._lost_ms += self._real_ms() - self._stopped_at_ms
        self._stopped_at_ms = None


class _Network:
    """In-memory links between in-process hosts, in order; nothing crosses a cut.

    A host builds its own PeerTransport (with no peers here); each host's
    driver is handed an endpoint of this network instead, since the driver
    only calls `send` and `peer_alive`. That makes a cut exact: once
    `isolate(node)` returns, nothing `node` sends arrives and nothing reaches
    it, messages already on their way included. Deliveries in flight are
    bounded (beyond the bound a message is dropped, as a full peer queue
    drops it); each is one task that steps its message into the receiver's
    driver, which does not await, so messages arrive in the order sent.
    """

    deliveries_max = 10_000

    def __init__(self) -> None:
        self.hosts: dict[int, RaftHost] = {}
        self.isolated: set[int] = set()
        self.failures: list[BaseException] = []
        self.closed = False
        self._deliveries: set[asyncio.Task[None]] = set()

    def attach(self, host: RaftHost) -> None:
        self.hosts[host.node_id] = host
        host._driver._transport = _Endpoint(self, host.node_id)  # type: ignore[assignment]

    def linked(self, a: int, b: int) -> bool:
        return not self.closed and a not in self.isolated and b not in self.isolated

    def send(self, frm: int, to: int, group_id: int, message: Message) -> bool:
        if not self.linked(frm, to) or len(self._deliveries) >= self.deliveries_max:
            return False
        task = asyncio.get_running_loop().create_task(self._deliver(frm, to, group_id, message))
        self._deliveries.add(task)
        task.add_done_callback(self._delivered)
        return True

    async def _deliver(self, frm: int, to: int, group_id: int, message: Message) -> None:
        if self.linked(frm, to):
            await self.hosts[to]._driver.receive(frm, [(group_id, message)])

    def _delivered(self, task: asyncio.Task[None]) -> None:
        self._deliveries.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.failures.append(task.exception())  # type: ignore[arg-type]

    def close(self) -> None:
        self.closed = True
        for task in self._deliveries:
            task.cancel()


@dataclass
class _Endpoint:
    network: _Network
    node_id: int

    def send(self, node_id: int, group_id: int, message: Message) -> bool:
        return self.network.send(self.node_id, node_id, group_id, message)

    def peer_alive(self, node_id: int) -> bool:
        return self.network.linked(self.node_id, node_id)


def _stored(host: RaftHost) -> list[tuple[int, int]]:
    """(base offset, record count) of every batch of the partition, as this host serves it."""
    log = host.partition_log(GROUP)
    return [(b.base_offset, b.record_count) for b in log.read(log.start_offset, 1 << 20)]


def test_a_leader_that_lost_its_suffix_and_leads_again_at_the_same_index_continues_the_log(
    tmp_path: pathlib.Path,
) -> None:
    """A's uncommitted tail ends at index N; B's committed log ends at N - 1, so
    A's no-op as leader again is at N: the last index A's cache names, over
    other entries. A's next batch must take the offset after B's records."""

    async def main() -> None:
        network = _Network()
        clocks = {n: _Clock() for n in (1, 2, 3)}
        async with contextlib.AsyncExitStack() as stack:
            hosts: dict[int, RaftHost] = {}
            for n in (1, 2, 3):
                storage = await stack.enter_async_context(
                    NodeStorage(StorageConfig(path=tmp_path / f"node-{n}"))
                )
                # Quiescence off: the network tells no host when a peer goes
                # silent, which is what wakes quiet groups in a node.
                host = RaftHost(
                    config(node_id=n, election_ticks=10, quiesce=False),
                    storage,
                    random.Random(n),
                    clock_ms=clocks[n],
                )
                hosts[n] = await stack.enter_async_context(host)
                network.attach(host)
            stack.callback(network.close)  # first out: no delivery to a stopped host
            for n, host in hosts.items():
                host.start_group(GROUP, [1, 2, 3], partition=True, campaign=n == 1)
            a = hosts[1]
            await eventually(lambda: a.is_leader(GROUP))

            # A commits a batch everywhere: offsets 0 and 1.
            assert await a.append_batch(GROUP, b"committed", 2, 0).committed == 0
            committed_index = a.commit_index(GROUP)
            await eventually(
                lambda: all(h.commit_index(GROUP) == committed_index for h in hosts.values())
            )

            # A, cut off, appends four batches of one record that never
            # commit, each its own entry (awaited one by one). Its clock
            # stands still meanwhile, so that it is still the leader for all
            # four (CheckQuorum would end its leadership within a few ticks).
            clocks[1].stand_still()
            network.isolated.add(1)
            for i in range(4):
                ticket = a.append_batch(GROUP, b"lost-%d" % i, 1, 0)
                assert ticket.base_offset == 2 + i
                assert await ticket.leader_durable == 2 + i
            a_tail_index = a.last_index(GROUP)
            assert a_tail_index == committed_index + 4
            clocks[1].go_on()

            # B (whichever of the other two wins) leads, and commits batches
            # of five records, one entry each, until its log ends one short
            # of A's tail: A's no-op as leader again will be at A's old last
            # index.
            others = [hosts[2], hosts[3]]
            await eventually(lambda: any(h.is_leader(GROUP) for h in others))
            b = next(h for h in others if h.is_leader(GROUP))
            assert b.last_index(GROUP) < a_tail_index - 1, "more than one election on B's side"
            end_offset = 2
            while b.last_index(GROUP) < a_tail_index - 1:
                assert await b.append_batch(GROUP, b"kept", 5, 0).committed == end_offset
                end_offset += 5
            assert b.last_index(GROUP) == a_tail_index - 1
            assert end_offset != 2 + 4  # B's records end elsewhere than A's lost ones

            # A rejoins, takes B's log over its own suffix, and leads again.
            network.isolated.clear()
            # Visible too: a commit index learned from B makes A's copies of
            # B's entries readable only once A's turn has made them durable.
            await eventually(
                lambda: (
                    a.last_index(GROUP) == b.last_index(GROUP)
                    and a.commit_index(GROUP) == b.commit_index(GROUP)
                    and _stored(a) == _stored(b)
                )
            )
            b.transfer_leadership(GROUP, a.node_id)
            await eventually(lambda: a.is_leader(GROUP))
            # The scenario: A leads with the last index its cache names.
            assert a.last_index(GROUP) == a_tail_index

            ticket = a.append_batch(GROUP, b"after", 3, 0)
            assert ticket.base_offset == end_offset, "A proposed offsets from its old tail"
            assert await ticket.committed == end_offset
            await eventually(
                lambda: all(
                    h.partition_log(GROUP).end_offset == end_offset + 3 for h in hosts.values()
                )
            )
            # No gap, no overlap, the same batches on every replica.
            batches = _stored(a)
            assert batches[0][0] == 0 and batches[-1] == (end_offset, 3)
            for (base, count), (next_base, _) in itertools.pairwise(batches):
                assert next_base == base + count, batches
            for host in hosts.values():
                assert _stored(host) == batches
            assert not network.failures, network.failures

    run(main)
