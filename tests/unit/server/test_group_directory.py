"""The single node's consumer groups for AdminService: list, describe, reset.

A real `GroupOffsets` over a real meta store and a real `LocalMembership`
(its runtime in memory, clock and randomness injected), with `GroupAdmin`
on top as AdminService runs it, so what the directory returns is what the
admin layer turns into answers.
"""

from __future__ import annotations

import pathlib
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
import pytest

from tests.support.aio import run
from weir.cluster.storage import NodeStorage, StorageConfig
from weir.server.config import NodeConfig
from weir.server.errors import BrokerError
from weir.server.group_admin import GroupAdmin
from weir.server.group_directory import LocalGroupDirectory
from weir.server.local_membership import LocalMembership
from weir.server.membership import AssignmentChange, JoinSpec, MemberSession
from weir.server.offsets import GroupOffsets
from weir.server.replicator import LocalReplicator
from weir.server.topics import ConfigPatch, Topic, TopicRegistry
from weir.v1 import admin_pb2, broker_pb2

pytestmark = pytest.mark.timeout(30)

NODE_ID = 1


@dataclass
class World:
    topics: TopicRegistry
    topic: Topic
    offsets: GroupOffsets
    membership: LocalMembership
    directory: LocalGroupDirectory
    admin: GroupAdmin

    async def join(self, group: str = "g") -> MemberSession:
        session = await self.membership.join(
            JoinSpec(group, self.topic.name, "", 10_000, 5_000), self.topic
        )
        event = await session.next_event()
        assert isinstance(event, AssignmentChange), event
        return session


@asynccontextmanager
async def world(path: pathlib.Path) -> AsyncIterator[World]:
    async with NodeStorage(StorageConfig(path=path)) as storage:
        topics = TopicRegistry(storage, NodeConfig(data_dir=path))
        await topics.load()
        topic = topics.get("t") if topics.all() else await topics.create("t", 2, 0, ConfigPatch())
        offsets = GroupOffsets(storage.meta, topics)
        await offsets.load()
        membership = LocalMembership(
            offsets, lambda name: 2 if name == "t" else 0, lambda: 1_000_000, random.Random(3)
        )
        offsets.refuse_outsiders_while(membership.has_members)
        directory = LocalGroupDirectory(offsets, membership, NODE_ID)
        admin = GroupAdmin(directory, topics, LocalReplicator(storage))
        yield World(topics, topic, offsets, membership, directory, admin)


def reset_request(group: str, offset: int) -> admin_pb2.ResetGroupOffsetsRequest:
    return admin_pb2.ResetGroupOffsetsRequest(
        name=group,
        topic="t",
        position=broker_pb2.StartPosition(kind=broker_pb2.START_KIND_OFFSET, offset=offset),
    )


def test_groups_with_offsets_or_members_are_listed_and_described(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with world(tmp_path) as w:
            assert await w.directory.list_groups("", 1000) == []
            assert await w.directory.describe("g") is None
            first, second = w.topic.group_ids
            await w.offsets.commit("idle", w.topic, {1: 0})
            member = await w.join("g")
            views = await w.directory.list_groups("", 1000)
            assert [v.name for v in views] == ["g", "idle"]
            g = await w.directory.describe("g")
            assert g is not None and g.coordinator_id == NODE_ID and g.generation >= 1
            assert [(m.member_id, m.topics) for m in g.members] == [(member.member_id, ("t",))]
            assert g.members[0].generation == member.generation
            assert g.owners == {("t", 0): member.member_id, ("t", 1): member.member_id}
            assert g.offsets == {}
            idle = await w.directory.describe("idle")
            assert idle is not None and idle.members == () and idle.offsets == {second: 0}
            assert first not in idle.offsets
            # The admin layer's answers over these views.
            described = await w.admin.describe("g")
            assert [(p.partition, p.member_id) for p in described.partitions] == [
                (0, member.member_id),
                (1, member.member_id),
            ]
            listed = await w.admin.list_groups(admin_pb2.ListGroupsRequest())
            assert [(s.name, s.member_count, s.topics) for s in listed.groups] == [
                ("g", 1, ["t"]),
                ("idle", 0, ["t"]),
            ]
            # One group per page: the token walks the names in order.
            first = await w.admin.list_groups(admin_pb2.ListGroupsRequest(page_size=1))
            assert [g.name for g in first.groups] == ["g"] and first.next_page_token == "g"
            second = await w.admin.list_groups(
                admin_pb2.ListGroupsRequest(page_size=1, page_token=first.next_page_token)
            )
            assert [g.name for g in second.groups] == ["idle"]
            last = await w.admin.list_groups(
                admin_pb2.ListGroupsRequest(page_size=1, page_token=second.next_page_token)
            )
            assert last.groups == [] and last.next_page_token == ""
            for bad in (admin_pb2.ListGroupsRequest(page_size=10_001),):
                with pytest.raises(BrokerError) as refused:
                    await w.admin.list_groups(bad)
                assert refused.value.reason == "INVALID_PAGE_SIZE"
            with pytest.raises(BrokerError) as unnamed:
                await w.admin.describe("")
            assert unnamed.value.reason == "INVALID_GROUP_NAME"
            await member.close()
            # A single node keeps nothing of a group whose members all left.
            assert await w.directory.describe("g") is None

    run(body)


def test_a_reset_is_refused_while_members_are_online_and_changes_nothing(
    tmp_path: pathlib.Path,
) -> None:
    async def body() -> None:
        async with world(tmp_path) as w:
            first, second = w.topic.group_ids
            await w.offsets.commit("g", w.topic, {0: 5, 1: 7})
            member = await w.join("g")
            with pytest.raises(BrokerError) as refused:
                await w.directory.reset_offsets("g", {first: 0, second: 0})
            assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert refused.value.reason == "GROUP_HAS_MEMBERS"
            assert w.offsets.group("g") == {first: 5, second: 7}
            await member.close()
            # Backwards, exactly, once nobody is online.
            assert await w.directory.reset_offsets("g", {first: 1, second: 0}) == {
                first: 1,
                second: 0,
            }
            view = await w.directory.describe("g")
            assert view is not None and view.offsets == {first: 1, second: 0}

    run(body)


def test_a_reset_is_durable_and_commits_move_on_from_it(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with world(tmp_path) as w:
            first, _ = w.topic.group_ids
            await w.offsets.commit("g", w.topic, {0: 9})
            assert await w.directory.reset_offsets("g", {first: 2}) == {first: 2}
        async with world(tmp_path) as w:
            assert w.offsets.group("g") == {first: 2}
            assert await w.offsets.commit("g", w.topic, {0: 1}) == {0: 2}
            assert await w.offsets.commit("g", w.topic, {0: 3}) == {0: 3}

    run(body)


def test_a_reset_through_the_admin_layer_answers_partition_numbers(
    tmp_path: pathlib.Path,
) -> None:
    async def body() -> None:
        async with world(tmp_path) as w:
            answer = await w.admin.reset_offsets(reset_request("new", 0))
            assert [(o.partition, o.offset) for o in answer.offsets] == [(0, 0), (1, 0)]
            member = await w.join("new")
            with pytest.raises(BrokerError) as refused:
                await w.admin.reset_offsets(reset_request("new", 0))
            assert refused.value.reason == "GROUP_HAS_MEMBERS"
            await member.close()

    run(body)


def test_a_reset_of_a_deleted_topics_partitions_is_refused(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with world(tmp_path) as w:
            first, second = w.topic.group_ids
            await w.topics.delete("t")
            with pytest.raises(BrokerError) as refused:
                await w.directory.reset_offsets("g", {first: 0, second: 0})
            assert refused.value.code == grpc.StatusCode.NOT_FOUND
            assert refused.value.reason == "TOPIC_NOT_FOUND"
            assert w.offsets.consumer_groups() == []

    run(body)
