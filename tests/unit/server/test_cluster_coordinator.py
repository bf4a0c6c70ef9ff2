"""ClusterCoordinators on one node, over a fake host: routing here, compaction, forgetting.

The real groups run in tests/integration/test_cluster_coordinators.py; here
a host that applies each proposal at once shows what the node does with
its coordinator groups' stores: the coordinator function, commits and reads
served by the leader (after a command of its own term), compaction of a
long log into a snapshot of the state, and `Forget` for deleted topics.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from tests.support.aio import run
from weir.cluster import controller as ctl
from weir.cluster.coordinator.offsets import Commit, Stored
from weir.cluster.coordinator.store import COMPACT_ENTRIES_MIN, decode_offsets
from weir.cluster.host import ProposalTicket
from weir.cluster.raft.types import Entry, EntryType
from weir.partitioner import murmur2
from weir.server.cluster_coordinator import ClusterCoordinators, coordinator_index
from weir.server.cluster_meta import ClusterMetadata

pytestmark = pytest.mark.timeout(30)


class FakeHost:
    """Node 1, leader of every group, applying each proposal at once in term `term`."""

    node_id = 1

    def __init__(self) -> None:
        self.term_now = 3
        self.index: dict[int, int] = {}
        self.apply: dict[int, Callable[[Entry], object]] = {}
        self.compacted: list[tuple[int, int, bytes]] = []
        self.proposed: list[tuple[int, bytes]] = []

    def start_group(self, group_id: int, voters: Sequence[int], **kwargs: Any) -> None:
        assert kwargs["partition"] is False
        self.apply[group_id] = kwargs["on_apply"]
        self.index[group_id] = 0

    def is_leader(self, group_id: int) -> bool:
        return True

    def leader(self, group_id: int) -> int:
        return 1

    def term(self, group_id: int) -> int:
        return self.term_now

    def applied_index(self, group_id: int) -> int:
        return self.index[group_id]

    def submit(self, group_id: int, data: bytes) -> ProposalTicket:
        self.proposed.append((group_id, data))
        self.index[group_id] += 1
        index = self.index[group_id]
        result = self.apply[group_id](Entry(self.term_now, index, EntryType.NORMAL, data))
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        future.set_result(result)
        return ProposalTicket(group_id, index, self.term_now, future)

    def compact(self, group_id: int, index: int, data: bytes) -> None:
        self.compacted.append((group_id, index, data))


def _setup() -> tuple[FakeHost, ClusterMetadata, ClusterCoordinators, ctl.Topic]:
    host = FakeHost()
    metadata = ClusterMetadata()
    for node in (1, 2, 3):
        metadata.state.apply(ctl.RegisterNode(ctl.NodeInfo(node, f"h{node}:1")))
    groups = metadata.state.apply(ctl.CreateCoordinatorGroups(2))
    assert isinstance(groups, ctl.CoordinatorGroups)
    topic = metadata.state.apply(ctl.CreateTopic("t", 2, 0, ctl.TopicConfig()))
    assert isinstance(topic, ctl.Topic)
    coordinators = ClusterCoordinators(
        host,  # type: ignore[arg-type]
        metadata,
        None,  # type: ignore[arg-type]
        cluster_id="c",
        peers={},
        founders=3,
        count=2,
        rng=random.Random(1),
    )
    for partition in groups.groups:
        coordinators.start(partition.group_id, partition.replicas, campaign=False)
    return host, metadata, coordinators, topic


def test_the_coordinator_is_positive_murmur2_of_the_name_modulo_the_count() -> None:
    for name in ("g", "orders-workers", "é", "x" * 255):
        expected = (murmur2(name.encode()) & 0x7FFFFFFF) % 6
        assert coordinator_index(name, 6) == expected
    spread = {coordinator_index(f"group-{i}", 6) for i in range(100)}
    assert spread == set(range(6))


def test_a_leader_serves_commits_and_reads_after_a_command_of_its_term() -> None:
    async def body() -> None:
        host, _, coordinators, topic = _setup()
        first, second = topic.group_ids
        stored = await coordinators.commit(Commit("g", ((first, 5), (second, 2))))
        assert stored == Stored(((first, 5), (second, 2)))
        assert await coordinators.fetch("g", [first, second, 99]) == {first: 5, second: 2}
        # A new term: the first read commits an empty command before it answers.
        host.term_now += 1
        proposed = len(host.proposed)
        assert await coordinators.fetch("g", [first]) == {first: 5}
        assert len(host.proposed) == proposed + 1
        assert await coordinators.fetch("g", [first]) == {first: 5}
        assert len(host.proposed) == proposed + 1

    run(body)


def test_a_long_log_is_compacted_into_a_snapshot_of_the_state() -> None:
    async def body() -> None:
        host, _, coordinators, topic = _setup()
        await coordinators.commit(Commit("g", ((topic.group_ids[0], 9),)))
        coordinators._compact()
        assert host.compacted == []
        group_id = coordinators.coordinator_of("g").group_id
        store = coordinators.stores[group_id]
        store.entries_since_snapshot = COMPACT_ENTRIES_MIN
        coordinators._compact()
        ((compacted_group, index, data),) = host.compacted
        assert (compacted_group, index) == (group_id, store.applied_index)
        assert decode_offsets(data) == store.offsets
        assert not store.should_compact()

    run(body)


def test_leaders_forget_the_offsets_of_deleted_topics() -> None:
    async def body() -> None:
        host, metadata, coordinators, topic = _setup()
        for name in ("a", "b", "c", "d"):
            await coordinators.commit(Commit(name, tuple((g, 1) for g in topic.group_ids)))
        await coordinators._prune()
        assert all(
            s.offsets.partitions() for s in coordinators.stores.values() if s.offsets.items()
        )
        metadata.state.apply(ctl.DeleteTopic("t"))
        await coordinators._prune()
        assert all(s.offsets.items() == [] for s in coordinators.stores.values())
        # Nothing left to forget: no more proposals.
        proposed = len(host.proposed)
        await coordinators._prune()
        assert len(host.proposed) == proposed

    run(body)
