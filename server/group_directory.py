"""The consumer groups for AdminService, as the coordinators hold them: the single node's.

`GroupAdmin` (server/group_admin.py) reads and resets consumer groups
through a `GroupDirectory`. This module has what both modes share (a
`GroupView` from a stream group and committed offsets, and its peer-port
encoding) and the single node's directory: its offsets are `GroupOffsets`
rows, its stream groups live in `LocalMembership` while they have members
(a single node keeps nothing of a group whose members all left, so such a
group shows generation 0). The cluster's directory is in
server/group_directory_cluster.py.

A reset is refused with FAILED_PRECONDITION `GROUP_HAS_MEMBERS` while the
group has members online, as Kafka does: resetting under a running
member would move its position without telling it.
"""

from __future__ import annotations

from collections.abc import Mapping

from weir.cluster.coordinator.stream import StreamGroup
from weir.cluster.v1 import coordinator_pb2 as pb
from weir.server.group_admin import GroupView, MemberView
from weir.server.local_membership import LocalMembership
from weir.server.offsets import GroupOffsets


def group_view(
    name: str, stream: StreamGroup | None, offsets: Mapping[int, int], coordinator_id: int
) -> GroupView | None:
    """The group's view; None when it has neither offsets nor members."""
    members = () if stream is None else stream.members()
    if not members and not offsets:
        return None
    return GroupView(
        name=name,
        generation=0 if stream is None else stream.generation,
        members=tuple(
            MemberView(m.member_id, m.generation, tuple(sorted(m.topics))) for m in members
        ),
        owners={(p.topic, p.partition): m.member_id for m in members for p in m.owned},
        offsets=dict(offsets),
        coordinator_id=coordinator_id,
    )


def view_proto(view: GroupView) -> pb.ConsumerGroupView:
    """The view on the peer port (without coordinator_id: the answering node is the leader)."""
    owned: dict[str, list[pb.OwnedPartition]] = {}
    for (topic, partition), member_id in sorted(view.owners.items()):
        owned.setdefault(member_id, []).append(pb.OwnedPartition(topic=topic, partition=partition))
    return pb.ConsumerGroupView(
        consumer_group=view.name,
        generation=view.generation,
        members=[
            pb.ConsumerGroupMember(
                member_id=m.member_id,
                generation=m.generation,
                topics=list(m.topics),
                owned=owned.get(m.member_id, []),
            )
            for m in view.members
        ],
        offsets=[
            pb.GroupPartitionOffset(group_id=g, offset=o) for g, o in sorted(view.offsets.items())
        ],
    )


def view_of_proto(msg: pb.ConsumerGroupView, coordinator_id: int) -> GroupView:
    return GroupView(
        name=msg.consumer_group,
        generation=msg.generation,
        members=tuple(MemberView(m.member_id, m.generation, tuple(m.topics)) for m in msg.members),
        owners={(p.topic, p.partition): m.member_id for m in msg.members for p in m.owned},
        offsets={o.group_id: o.offset for o in msg.offsets},
        coordinator_id=coordinator_id,
    )


class LocalGroupDirectory:
    """The single node's `GroupDirectory`; see the module docstring."""

    def __init__(self, offsets: GroupOffsets, membership: LocalMembership, node_id: int) -> None:
        self._offsets = offsets
        self._membership = membership
        self._node_id = node_id

    def _view(self, name: str) -> GroupView | None:
        return group_view(
            name,
            self._membership.stream_group(name),
            self._offsets.group(name),
            self._node_id,
        )

    async def list_groups(self, after: str, limit: int) -> list[GroupView]:
        names = set(self._offsets.consumer_groups()) | set(self._membership.stream_groups())
        views = []
        for name in sorted(n for n in names if n > after):
            view = self._view(name)
            if view is not None:
                views.append(view)
                if len(views) == limit:
                    break
        return views

    async def describe(self, name: str) -> GroupView | None:
        return self._view(name)

    async def reset_offsets(self, name: str, offsets: Mapping[int, int]) -> dict[int, int]:
        return await self._membership.reset_offsets(name, offsets)


__all__ = ["LocalGroupDirectory", "group_view", "view_of_proto", "view_proto"]
