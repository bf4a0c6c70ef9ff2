"""Consumer groups as the admin client returns them (`Admin.list_groups`, `describe_group`)."""

from __future__ import annotations

from dataclasses import dataclass

from weir.v1 import admin_pb2

__all__ = ["GroupInfo", "GroupMemberInfo", "GroupPartitionInfo", "GroupSummary"]


@dataclass(frozen=True, slots=True)
class GroupSummary:
    name: str
    # Members online (open stream-mode consumers).
    member_count: int
    generation: int
    topics: tuple[str, ...]

    @classmethod
    def from_proto(cls, g: admin_pb2.GroupSummary) -> GroupSummary:
        return cls(g.name, g.member_count, g.generation, tuple(g.topics))


@dataclass(frozen=True, slots=True)
class GroupMemberInfo:
    member_id: str
    generation: int
    topics: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GroupPartitionInfo:
    topic: str
    partition: int
    # None when the group committed nothing on this partition.
    committed_offset: int | None
    end_offset: int
    lag: int
    # The member that owns the partition now, "" when none does.
    member_id: str


@dataclass(frozen=True, slots=True)
class GroupInfo:
    name: str
    generation: int
    members: tuple[GroupMemberInfo, ...]
    partitions: tuple[GroupPartitionInfo, ...]
    # The node leading the group's coordinator (0: none known).
    coordinator_id: int = 0

    @property
    def lag(self) -> int:
        """Records not yet consumed, over every partition."""
        return sum(p.lag for p in self.partitions)

    @classmethod
    def from_proto(cls, g: admin_pb2.DescribeGroupResponse) -> GroupInfo:
        return cls(
            name=g.name,
            generation=g.generation,
            members=tuple(
                GroupMemberInfo(m.member_id, m.generation, tuple(m.topics)) for m in g.members
            ),
            partitions=tuple(
                GroupPartitionInfo(
                    topic=p.topic,
                    partition=p.partition,
                    committed_offset=(
                        p.committed_offset if p.HasField("committed_offset") else None
                    ),
                    end_offset=p.end_offset,
                    lag=p.lag,
                    member_id=p.member_id,
                )
                for p in g.partitions
            ),
            coordinator_id=g.coordinator_id,
        )
