"""The cluster's consumer groups for AdminService, over fake hosts: both ends of the peer calls.

Node 2 leads every coordinator group (a host that applies each proposal at
once); node 1 leads none, so its directory reaches node 2's through the
peer calls, which the test hands straight to node 2's handlers. Both sides
are then the code a cluster runs: routing, the leader's read barrier, the
list's pages and their bound, the reset refused while members are online.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import pytest

from tests.support.aio import run
from weir.cluster import controller as ctl
from weir.cluster.coordinator import messages as m
from weir.cluster.coordinator.offsets import Commit
from weir.cluster.coordinator.store import StreamCommand, encode_command
from weir.cluster.host import ProposalTicket
from weir.cluster.raft.types import Entry, EntryType
from weir.cluster.v1 import coordinator_pb2 as pb
from weir.server import cluster_coordinator
from weir.server.cluster_coordinator import ClusterCoordinators
from weir.server.cluster_meta import ClusterMetadata
from weir.server.errors import BrokerError
from weir.server.group_directory_cluster import ClusterGroupDirectory, list_page

pytestmark = pytest.mark.timeout(30)

LEADER = 2


class FakeHost:
    """A node that leads every group (node 2) or none (node 1); proposals apply at once."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.term_now = 3
        self.index: dict[int, int] = {}
        self.apply: dict[int, Callable[[Entry], object]] = {}
        self.proposed: list[bytes] = []
        # The leader this node knows of (0: none, an election is going on).
        self.leader_id = LEADER

    def start_group(self, group_id: int, voters: Sequence[int], **kwargs: Any) -> None:
        self.apply[group_id] = kwargs["on_apply"]
        self.index[group_id] = 0

    def is_leader(self, group_id: int) -> bool:
        return self.node_id == LEADER

    def leader(self, group_id: int) -> int:
        return self.leader_id

    def term(self, group_id: int) -> int:
        return self.term_now

    def submit(self, group_id: int, data: bytes) -> ProposalTicket:
        assert self.node_id == LEADER
        self.proposed.append(data)
        self.index[group_id] += 1
        index = self.index[group_id]
        result = self.apply[group_id](Entry(self.term_now, index, EntryType.NORMAL, data))
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        future.set_result(result)
        return ProposalTicket(group_id, index, self.term_now, future)


class Context:
    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        raise AssertionError(f"aborted: {code} {message}")


class Node:
    def __init__(self, node_id: int, metadata: ClusterMetadata, page_bytes_max: int) -> None:
        self.host = FakeHost(node_id)
        self.coordinators = ClusterCoordinators(
            self.host,  # type: ignore[arg-type]
            metadata,
            None,  # type: ignore[arg-type]
            cluster_id="c",
            peers={},
            founders=3,
            count=3,
            rng=random.Random(node_id),
        )
        self.directory = ClusterGroupDirectory(self.coordinators, page_bytes_max)
        for partition in metadata.state.coordinator_groups():
            self.coordinators.start(partition.group_id, partition.replicas, campaign=False)


class Cluster:
    def __init__(self, page_bytes_max: int = 1 << 20) -> None:
        self.metadata = ClusterMetadata()
        for node in (1, 2, 3):
            self.metadata.state.apply(ctl.RegisterNode(ctl.NodeInfo(node, f"h{node}:1")))
        self.metadata.state.apply(ctl.CreateCoordinatorGroups(3))
        topic = self.metadata.state.apply(ctl.CreateTopic("t", 2, 0, ctl.TopicConfig()))
        assert isinstance(topic, ctl.Topic)
        self.group_ids = topic.group_ids
        self.follower = Node(1, self.metadata, page_bytes_max)
        self.leader = Node(LEADER, self.metadata, page_bytes_max)
        self.calls: list[str] = []
        self.follower.coordinators.call = self._call  # type: ignore[method-assign]

    async def _call(self, node: int, method: str, request: Any, response_type: Any) -> Any:
        assert node == LEADER
        self.calls.append(method)
        serve = {
            "ListConsumerGroups": self.leader.directory.serve_list,
            "DescribeConsumerGroup": self.leader.directory.serve_describe,
            "ResetGroupOffsets": self.leader.directory.serve_reset,
        }[method]
        response = await serve(request, Context())
        # Through the wire format, as a real call.
        return response_type.FromString(response.SerializeToString())

    async def commit(self, group: str, offsets: dict[int, int]) -> None:
        await self.leader.coordinators.commit(Commit(group, tuple(sorted(offsets.items()))))

    def propose(self, group: str, command: m.Command) -> None:
        coordinator = self.leader.coordinators.coordinator_of(group)
        self.leader.host.submit(coordinator.group_id, encode_command(StreamCommand(group, command)))


def join(member_id: str) -> m.Join:
    return m.Join(1_000, member_id, ("t",), (("t", 2),), 10_000, 5_000)


def test_describe_answers_from_the_leader_with_members_owners_and_offsets() -> None:
    async def body() -> None:
        c = Cluster()
        first, second = c.group_ids
        await c.commit("g", {first: 4})
        c.propose("g", join("a"))
        for directory in (c.leader.directory, c.follower.directory):
            view = await directory.describe("g")
            assert view is not None and view.coordinator_id == LEADER
            assert view.generation == 1
            assert [(v.member_id, v.generation, v.topics) for v in view.members] == [
                ("a", 1, ("t",))
            ]
            assert view.owners == {("t", 0): "a", ("t", 1): "a"}
            assert view.offsets == {first: 4}
        assert c.calls == ["DescribeConsumerGroup"]
        assert await c.follower.directory.describe("nobody") is None
        # The leader leaves; the group keeps its offsets and generation.
        c.propose("g", m.Leave(2_000, "a"))
        view = await c.follower.directory.describe("g")
        assert view is not None and view.members == () and view.owners == {}
        assert view.generation == 1 and view.offsets == {first: 4}
        assert second not in view.offsets

    run(body)


def test_a_new_leader_applies_a_command_of_its_term_before_it_answers() -> None:
    async def body() -> None:
        c = Cluster()
        await c.commit("g", {c.group_ids[0]: 1})
        c.leader.host.term_now += 1
        proposed = len(c.leader.host.proposed)
        assert await c.follower.directory.describe("g") is not None
        assert len(c.leader.host.proposed) == proposed + 1

    run(body)


def test_list_merges_every_coordinator_page_by_page_within_the_bound() -> None:
    async def body() -> None:
        # A small page bound: a few groups per page, one at least.
        c = Cluster(page_bytes_max=120)
        names = [f"group-{i:03}" for i in range(60)]
        for name in names:
            await c.commit(name, {c.group_ids[0]: len(name)})
        c.propose("group-007", join("member-with-a-long-id-" + "x" * 100))
        for directory in (c.leader.directory, c.follower.directory):
            views = await directory.list_groups("", 1000)
            assert sorted(v.name for v in views) == names
            assert all(v.coordinator_id == LEADER for v in views)
            assert {v.name for v in views if v.members} == {"group-007"}
        pages = c.calls.count("ListConsumerGroups")
        assert pages > 3 + 60 // 20
        for coordinator in c.metadata.state.coordinator_groups():
            store = c.leader.coordinators.stores[coordinator.group_id]
            after, seen = "", []
            while True:
                page, more = list_page(store, after, 120)
                assert page, "a page holds one group at least"
                size = sum(len(g.SerializeToString()) + 6 for g in page)
                assert size <= 120 or len(page) == 1
                seen += [g.consumer_group for g in page]
                if not more:
                    break
                after = seen[-1]
            assert seen == store.consumer_group_names()

    run(body)


def test_a_reset_is_refused_while_members_are_online_and_works_without() -> None:
    async def body() -> None:
        c = Cluster()
        first, second = c.group_ids
        await c.commit("g", {first: 10, second: 3})
        c.propose("g", join("a"))
        with pytest.raises(BrokerError) as refused:
            await c.follower.directory.reset_offsets("g", {first: 0})
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.value.reason == "GROUP_HAS_MEMBERS"
        view = await c.leader.directory.describe("g")
        assert view is not None and view.offsets == {first: 10, second: 3}
        c.propose("g", m.Leave(2_000, "a"))
        assert await c.follower.directory.reset_offsets("g", {first: 0, second: 5}) == {
            first: 0,
            second: 5,
        }
        assert await c.leader.directory.reset_offsets("g", {first: 2}) == {first: 2}
        view = await c.follower.directory.describe("g")
        assert view is not None and view.offsets == {first: 2, second: 5}

    run(body)


def test_a_non_leader_answers_not_leader_with_its_hint() -> None:
    async def body() -> None:
        c = Cluster()
        coordinator = c.metadata.state.coordinator_groups()[0].group_id
        directory = c.follower.directory
        listed = await directory.serve_list(
            pb.ListConsumerGroupsRequest(cluster_id="c", coordinator_group_id=coordinator),
            Context(),
        )
        assert listed.not_leader and listed.leader_id == LEADER
        described = await directory.serve_describe(
            pb.DescribeConsumerGroupRequest(
                cluster_id="c", coordinator_group_id=coordinator, consumer_group="g"
            ),
            Context(),
        )
        assert described.not_leader and described.leader_id == LEADER
        reset = await directory.serve_reset(
            pb.ResetGroupOffsetsRequest(
                cluster_id="c",
                coordinator_group_id=coordinator,
                reset=pb.ResetOffsetsCommand(consumer_group="g"),
            ),
            Context(),
        )
        assert reset.not_leader and reset.leader_id == LEADER

    run(body)


def test_a_coordinator_without_a_leader_fails_the_list_with_not_coordinator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cluster_coordinator, "ROUTE_TIMEOUT_S", 0.2)

    async def body() -> None:
        c = Cluster()
        c.follower.host.leader_id = 0
        with pytest.raises(BrokerError) as refused:
            await c.follower.directory.list_groups("", 1000)
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        assert refused.value.reason == "NOT_COORDINATOR"
        assert "cannot be listed" in refused.value.message
        assert c.calls == []

    run(body)
