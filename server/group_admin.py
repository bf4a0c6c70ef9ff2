"""Consumer groups for AdminService: list, describe and reset offsets (docs/groups.md).

The group state is the coordinators' (a cluster's coordinator groups, or
the single node's own); they answer through a `GroupDirectory` in terms of
partition group ids. This module turns that into what an operator reads:
topics and partition numbers (only live topics: offsets of a deleted topic
are never shown), the end offset this node knows for each partition, and
the lag. A reset resolves its position against the logs here and asks the
coordinator to store the offsets, which it refuses while members are
online (GROUP_HAS_MEMBERS), as Kafka does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from weir.cluster.host import HostError
from weir.cluster.storage import StorageError
from weir.server.consume_start import out_of_range
from weir.server.errors import BrokerError, invalid, replica_not_available
from weir.server.naming import check_group_name
from weir.server.registry import Topics
from weir.server.replicator import NotHostedError, Replicator
from weir.server.topics import Topic
from weir.v1 import admin_pb2, broker_pb2


@dataclass(frozen=True, slots=True)
class MemberView:
    member_id: str
    generation: int
    topics: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GroupView:
    """One consumer group as its coordinator holds it."""

    name: str
    generation: int = 0
    members: tuple[MemberView, ...] = ()
    # (topic, partition) -> the member that owns it now.
    owners: Mapping[tuple[str, int], str] = field(default_factory=dict)
    # Partition group id -> committed offset.
    offsets: Mapping[int, int] = field(default_factory=dict)
    # The node leading the group's coordinator (0: unknown).
    coordinator_id: int = 0


class GroupDirectory(Protocol):
    async def list_groups(self, after: str, limit: int) -> list[GroupView]:
        """The first `limit` groups (offsets or members) whose names sort after `after`, by name."""
        ...

    async def describe(self, name: str) -> GroupView | None:
        """The group, or None when it has neither offsets nor members."""
        ...

    async def reset_offsets(self, name: str, offsets: Mapping[int, int]) -> dict[int, int]:
        """Stores offsets (group id -> offset), backwards too; the stored offsets after.

        Raises FAILED_PRECONDITION `GROUP_HAS_MEMBERS` while members are
        online, and then stores nothing.
        """
        ...


LIST_PAGE_SIZE_DEFAULT = 1_000
LIST_PAGE_SIZE_MAX = 10_000


def _check_name(name: str) -> None:
    """Admin calls name one group: the empty name (no group) is refused like a bad one."""
    if not name:
        raise invalid("INVALID_GROUP_NAME", "a consumer group name is needed")
    check_group_name(name)


def group_not_found(name: str) -> BrokerError:
    return BrokerError(
        grpc.StatusCode.NOT_FOUND,
        "GROUP_NOT_FOUND",
        f"consumer group {name!r} has no committed offsets and no members",
        {"group": name},
    )


class GroupAdmin:
    """The AdminService group methods, over a `GroupDirectory` and this node's logs."""

    def __init__(self, directory: GroupDirectory, topics: Topics, replicator: Replicator) -> None:
        self._directory = directory
        self._topics = topics
        self._replicator = replicator

    def _live_partitions(self) -> dict[int, tuple[Topic, int]]:
        """Partition group id -> (topic, partition number), for every live topic."""
        return {
            group_id: (topic, number)
            for topic in self._topics.all()
            for number, group_id in enumerate(topic.group_ids)
        }

    def _topics_of(self, view: GroupView, live: Mapping[int, tuple[Topic, int]]) -> list[str]:
        names = {live[g][0].name for g in view.offsets if g in live}
        names.update(t for m in view.members for t in m.topics)
        return sorted(names)

    async def list_groups(
        self, request: admin_pb2.ListGroupsRequest
    ) -> admin_pb2.ListGroupsResponse:
        size = request.page_size or LIST_PAGE_SIZE_DEFAULT
        if not 1 <= size <= LIST_PAGE_SIZE_MAX:
            raise invalid(
                "INVALID_PAGE_SIZE",
                f"page_size must be 0 (the default, {LIST_PAGE_SIZE_DEFAULT}) or"
                f" 1..{LIST_PAGE_SIZE_MAX}",
                page_size=request.page_size,
            )
        views = await self._directory.list_groups(request.page_token, size)
        live = self._live_partitions()
        groups = []
        for view in views:
            topics = self._topics_of(view, live)
            if not view.members and not topics:
                continue  # only offsets of deleted topics, not yet forgotten
            groups.append(
                admin_pb2.GroupSummary(
                    name=view.name,
                    member_count=len(view.members),
                    generation=view.generation,
                    topics=topics,
                )
            )
        # A full page may have more after it; the token is the last name read.
        token = views[-1].name if len(views) == size else ""
        return admin_pb2.ListGroupsResponse(groups=groups, next_page_token=token)

    async def describe(self, name: str) -> admin_pb2.DescribeGroupResponse:
        _check_name(name)
        view = await self._directory.describe(name)
        live = self._live_partitions()
        if view is None:
            raise group_not_found(name)
        topic_names = self._topics_of(view, live)
        if not view.members and not topic_names:
            raise group_not_found(name)
        partitions = []
        for topic_name in topic_names:
            try:
                topic = self._topics.get(topic_name)
            except BrokerError:
                continue  # a member subscribed to a topic that does not exist (yet)
            for number, group_id in enumerate(topic.group_ids):
                partitions.append(self._partition(view, topic, number, group_id))
        return admin_pb2.DescribeGroupResponse(
            name=view.name,
            generation=view.generation,
            members=[
                admin_pb2.GroupMember(
                    member_id=m.member_id, generation=m.generation, topics=sorted(m.topics)
                )
                for m in sorted(view.members, key=lambda m: m.member_id)
            ],
            partitions=partitions,
            coordinator_id=view.coordinator_id,
        )

    def _partition(
        self, view: GroupView, topic: Topic, number: int, group_id: int
    ) -> admin_pb2.GroupPartition:
        info = admin_pb2.GroupPartition(
            topic=topic.name,
            partition=number,
            member_id=view.owners.get((topic.name, number), ""),
        )
        committed = view.offsets.get(group_id)
        if committed is not None:
            info.committed_offset = committed
        try:
            log = self._replicator.log(group_id)
            start, end = log.start_offset, log.end_offset
        except (HostError, NotHostedError, StorageError):
            return info  # no replica here: end offset and lag unknown (0)
        info.end_offset = end
        info.lag = max(0, end - (committed if committed is not None else start))
        return info

    async def reset_offsets(
        self, request: admin_pb2.ResetGroupOffsetsRequest
    ) -> admin_pb2.ResetGroupOffsetsResponse:
        _check_name(request.name)
        topic = self._topics.get(request.topic)
        numbers = self._partition_numbers(topic, request.partitions)
        targets = {topic.group_id(n): self._target(topic, n, request.position) for n in numbers}
        stored = await self._directory.reset_offsets(request.name, targets)
        return admin_pb2.ResetGroupOffsetsResponse(
            offsets=[
                broker_pb2.PartitionOffset(partition=n, offset=stored[topic.group_id(n)])
                for n in numbers
            ]
        )

    @staticmethod
    def _partition_numbers(topic: Topic, asked: Sequence[int]) -> list[int]:
        if not asked:
            return list(range(topic.partition_count))
        for n in asked:
            topic.group_id(n)  # PARTITION_NOT_FOUND outside the topic
        if len(set(asked)) != len(asked):
            raise invalid("DUPLICATE_PARTITION", "a partition is named twice")
        return sorted(asked)

    def _target(self, topic: Topic, number: int, position: broker_pb2.StartPosition) -> int:
        try:
            log = self._replicator.log(topic.group_id(number))
        except (HostError, NotHostedError):
            raise replica_not_available(topic.name, number) from None
        start, end = log.start_offset, log.end_offset
        kind = position.kind
        if kind == broker_pb2.START_KIND_EARLIEST:
            return start
        if kind == broker_pb2.START_KIND_LATEST:
            return end
        if kind == broker_pb2.START_KIND_OFFSET:
            if not start <= position.offset <= end:
                raise out_of_range(number, position.offset, start, end)
            return position.offset
        if kind == broker_pb2.START_KIND_TIMESTAMP:
            if position.timestamp_ms < 0:
                raise invalid("INVALID_START", "the timestamp is negative")
            return max(start, min(end, log.offset_for_timestamp(position.timestamp_ms)))
        raise invalid(
            "INVALID_START",
            "a reset needs a position: earliest, latest, an offset or a timestamp",
            kind=kind,
        )


__all__ = ["GroupAdmin", "GroupDirectory", "GroupView", "MemberView", "group_not_found"]
