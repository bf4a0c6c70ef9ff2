"""One coordinator group's replicated state, as its Raft group applies it.

A `CoordinatorStore` is what a coordinator group's `on_apply` and
`on_snapshot` feed on every replica: it decodes each committed entry (a
`weir.cluster.v1.CoordinatorCommand`), applies it to the offsets state
machine (offsets.py) or to the `StreamGroup` of the consumer group it names
(stream.py), and encodes and restores the whole state as the group's
snapshot (`CoordinatorSnapshot`, canonical order, deterministic bytes).

Stream commands answer `StreamApplied` (the group's instructions: the
leader acts on them, followers drop them). A commit is checked against the
group's members before it reaches the offsets: a member's commit
(`MemberCommit`) must pass `StreamGroup.validate_commit`, and a commit from
outside the group is refused while the group has members
(`GROUP_HAS_MEMBERS`, as Kafka refuses a non-member's commit to an active
group). A `Reset` (an operator's `weir group reset-offsets`, which may move
offsets backwards) is refused the same way while the group has members;
deciding it here, from the replicated `StreamGroup`, makes the refusal the
same on every replica however a join and the reset raced to the log. A
refused commit or reset changes nothing. A consumer group with neither
members nor offsets is dropped; one coordinator group holds at most
`CONSUMER_GROUPS_MAX` consumer groups, counting those with members and
those with offsets together.

It also tracks what the host needs to serve reads and to compact:

- `applied_term`: the term of the last applied entry. A leader serves
  reads only once it applied an entry of its own term (its first, empty
  one), so it never answers from a state that misses commits of the
  previous leader.
- `entries_since_snapshot` / `should_compact()`: the log is compacted
  (`RaftHost.compact` with `snapshot()`) once `COMPACT_ENTRIES_MIN`
  entries were applied since the last snapshot, so a coordinator group's
  log stays bounded however many commits it takes.

A committed entry that does not decode was written by a Weir node of this
release or not at all: that is a broken invariant (an assertion).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

from weir.cluster.coordinator import messages as m
from weir.cluster.coordinator.offsets import (
    CONSUMER_GROUPS_MAX,
    Commit,
    Forget,
    OffsetsError,
    OffsetsState,
    Reset,
    TooManyConsumerGroups,
)
from weir.cluster.coordinator.offsets import Result as OffsetsResult
from weir.cluster.coordinator.stream import StreamGroup
from weir.cluster.v1 import coordinator_pb2 as pb

# Entries applied after which the log is compacted to a snapshot. A commit
# entry is a few hundred bytes, so the log stays under a few MB; the
# snapshot costs O(offsets), paid once per this many commits.
COMPACT_ENTRIES_MIN = 10_000


@dataclass(frozen=True, slots=True)
class MemberCommit:
    """A stream-mode member's commit: checked against its generation and partitions.

    `partitions` maps each offset's partition group id to its partition
    number in `topic` (validation speaks topic partitions).
    """

    commit: Commit
    member_id: str
    generation: int
    topic: str
    partitions: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class StreamCommand:
    """A command of one consumer group's `StreamGroup`."""

    consumer_group: str
    command: m.Command


Command = Commit | Forget | MemberCommit | Reset | StreamCommand


@dataclass(frozen=True, slots=True)
class StreamApplied:
    """What a stream command did: the instructions for the leader to act on."""

    consumer_group: str
    instructions: tuple[m.Instruction, ...]


@dataclass(frozen=True, slots=True)
class CommitRefused(OffsetsError):
    """A commit the group's membership does not allow (nothing stored)."""

    code: ClassVar[str] = "FAILED_PRECONDITION"


@dataclass(frozen=True, slots=True)
class StaleGeneration(CommitRefused):
    reason: ClassVar[str] = m.Reason.STALE_GENERATION.value


@dataclass(frozen=True, slots=True)
class PartitionNotAssigned(CommitRefused):
    reason: ClassVar[str] = m.Reason.PARTITION_NOT_ASSIGNED.value


@dataclass(frozen=True, slots=True)
class UnknownMember(CommitRefused):
    reason: ClassVar[str] = m.Reason.UNKNOWN_MEMBER.value


@dataclass(frozen=True, slots=True)
class GroupHasMembers(CommitRefused):
    reason: ClassVar[str] = "GROUP_HAS_MEMBERS"


_REFUSALS: dict[m.Reason, type[CommitRefused]] = {
    m.Reason.STALE_GENERATION: StaleGeneration,
    m.Reason.PARTITION_NOT_ASSIGNED: PartitionNotAssigned,
    m.Reason.UNKNOWN_MEMBER: UnknownMember,
}

Result = OffsetsResult | StreamApplied


# -- encoding ------------------------------------------------------------------


def _counts(entries: tuple[tuple[str, int], ...]) -> list[pb.PartitionCountEntry]:
    return [pb.PartitionCountEntry(topic=t, partition_count=c) for t, c in entries]


def _stream_proto(consumer_group: str, command: m.Command) -> pb.StreamCommand:
    msg = pb.StreamCommand(consumer_group=consumer_group, now_ms=command.now_ms)
    match command:
        case m.Join():
            msg.member_id = command.member_id
            msg.join.CopyFrom(
                pb.StreamJoin(
                    topics=list(command.topics),
                    partition_counts=_counts(command.partition_counts),
                    session_timeout_ms=command.session_timeout_ms,
                    rebalance_timeout_ms=command.rebalance_timeout_ms,
                )
            )
        case m.Leave():
            msg.member_id = command.member_id
            msg.leave.SetInParent()
        case m.Expire():
            msg.member_id = command.member_id
            msg.expire.SetInParent()
        case m.AssignmentAck():
            msg.member_id = command.member_id
            msg.assignment_ack.generation = command.generation
        case m.PartitionCount():
            msg.partition_count.CopyFrom(
                pb.PartitionCountEntry(
                    topic=command.topic, partition_count=max(0, command.partition_count)
                )
            )
        case m.Tick():
            msg.tick.SetInParent()
    return msg


def _stream_of(msg: pb.StreamCommand) -> StreamCommand:
    now_ms, member_id = msg.now_ms, msg.member_id
    kind = msg.WhichOneof("command")
    command: m.Command
    match kind:
        case "join":
            j = msg.join
            command = m.Join(
                now_ms,
                member_id,
                tuple(j.topics),
                tuple((c.topic, c.partition_count) for c in j.partition_counts),
                j.session_timeout_ms,
                j.rebalance_timeout_ms,
            )
        case "leave":
            command = m.Leave(now_ms, member_id)
        case "expire":
            command = m.Expire(now_ms, member_id)
        case "assignment_ack":
            command = m.AssignmentAck(now_ms, member_id, msg.assignment_ack.generation)
        case "partition_count":
            c = msg.partition_count
            command = m.PartitionCount(now_ms, c.topic, c.partition_count)
        case "tick":
            command = m.Tick(now_ms)
        case _:
            raise AssertionError(f"stream command without a known kind ({kind!r})")
    return StreamCommand(msg.consumer_group, command)


def _commit_proto(commit: Commit) -> pb.CommitOffsetsCommand:
    return pb.CommitOffsetsCommand(
        consumer_group=commit.consumer_group,
        offsets=[pb.GroupPartitionOffset(group_id=g, offset=o) for g, o in sorted(commit.offsets)],
    )


def command_proto(command: Command) -> pb.CoordinatorCommand:
    match command:
        case Commit():
            return pb.CoordinatorCommand(commit_offsets=_commit_proto(command))
        case MemberCommit(commit, member_id, generation, topic, partitions):
            numbers = dict(partitions)
            msg = _commit_proto(commit)
            msg.member_id = member_id
            msg.generation = generation
            msg.topic = topic
            for offset in msg.offsets:
                offset.partition = numbers[offset.group_id]
            return pb.CoordinatorCommand(commit_offsets=msg)
        case Forget(group_ids):
            return pb.CoordinatorCommand(
                forget_partitions=pb.ForgetPartitionsCommand(group_ids=sorted(set(group_ids)))
            )
        case StreamCommand(consumer_group, stream_command):
            return pb.CoordinatorCommand(stream=_stream_proto(consumer_group, stream_command))
        case Reset():
            return pb.CoordinatorCommand(reset_offsets=reset_proto(command))
    raise AssertionError(f"unknown coordinator command {command!r}")


def reset_proto(reset: Reset) -> pb.ResetOffsetsCommand:
    return pb.ResetOffsetsCommand(
        consumer_group=reset.consumer_group,
        offsets=[pb.GroupPartitionOffset(group_id=g, offset=o) for g, o in sorted(reset.offsets)],
    )


def reset_of(msg: pb.ResetOffsetsCommand) -> Reset:
    return Reset(msg.consumer_group, tuple((o.group_id, o.offset) for o in msg.offsets))


def commit_of(msg: pb.CommitOffsetsCommand) -> Commit | MemberCommit:
    commit = Commit(msg.consumer_group, tuple((o.group_id, o.offset) for o in msg.offsets))
    if not msg.member_id:
        return commit
    return MemberCommit(
        commit,
        msg.member_id,
        msg.generation,
        msg.topic,
        tuple((o.group_id, o.partition) for o in msg.offsets),
    )


def command_of(msg: pb.CoordinatorCommand) -> Command:
    kind = msg.WhichOneof("command")
    match kind:
        case "commit_offsets":
            return commit_of(msg.commit_offsets)
        case "forget_partitions":
            return Forget(tuple(msg.forget_partitions.group_ids))
        case "stream":
            return _stream_of(msg.stream)
        case "reset_offsets":
            return reset_of(msg.reset_offsets)
    raise AssertionError(f"coordinator entry without a known command ({kind!r})")


def encode_command(command: Command) -> bytes:
    """The bytes to propose to a coordinator group."""
    return command_proto(command).SerializeToString(deterministic=True)


def decode_command(data: bytes) -> Command:
    msg = pb.CoordinatorCommand()
    msg.ParseFromString(data)
    return command_of(msg)


def _json(data: object) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def encode_state(state: OffsetsState, streams: dict[str, StreamGroup]) -> bytes:
    msg = pb.CoordinatorSnapshot(
        groups=[
            pb.GroupCommittedOffsets(
                consumer_group=name,
                offsets=[pb.GroupPartitionOffset(group_id=g, offset=o) for g, o in offsets],
            )
            for name, offsets in state.items()
        ],
        stream_groups=[
            pb.StreamGroupState(consumer_group=name, state=_json(streams[name].to_snapshot()))
            for name in sorted(streams)
        ],
    )
    return msg.SerializeToString(deterministic=True)


def encode_offsets(state: OffsetsState) -> bytes:
    return encode_state(state, {})


def decode_state(data: bytes) -> tuple[OffsetsState, dict[str, StreamGroup]]:
    msg = pb.CoordinatorSnapshot()
    msg.ParseFromString(data)
    offsets = OffsetsState.restore(
        [(g.consumer_group, [(o.group_id, o.offset) for o in g.offsets]) for g in msg.groups]
    )
    streams = {
        s.consumer_group: StreamGroup.from_snapshot(json.loads(s.state)) for s in msg.stream_groups
    }
    return offsets, streams


def decode_offsets(data: bytes) -> OffsetsState:
    return decode_state(data)[0]


class CoordinatorStore:
    """A coordinator group's state machine on one replica; see the module docstring."""

    def __init__(self, group_id: int, consumer_groups_max: int = CONSUMER_GROUPS_MAX) -> None:
        self.group_id = group_id
        self.consumer_groups_max = consumer_groups_max
        self.offsets = OffsetsState(consumer_groups_max)
        # Stream groups by consumer group name; one without members stays
        # only while the group has offsets (it keeps its generation).
        self.streams: dict[str, StreamGroup] = {}
        self.applied_index = 0
        self.applied_term = 0
        self.entries_since_snapshot = 0

    def apply(self, index: int, term: int, data: bytes) -> Result | None:
        """Applies one committed entry (empty ones too: they carry the term)."""
        # The host hands each index once, in order (a snapshot's index is not
        # passed to `restore`, so only the order is known here).
        self.applied_index = index
        self.applied_term = term
        self.entries_since_snapshot += 1
        if not data:
            return None
        return self.apply_command(decode_command(data))

    def apply_command(self, command: Command) -> Result:
        """Applies one decoded command (the single node calls this directly)."""
        match command:
            case StreamCommand():
                return self._apply_stream(command)
            case MemberCommit():
                return self._member_commit(command)
            case Commit():
                if self.has_members(command.consumer_group):
                    return GroupHasMembers(
                        f"consumer group {command.consumer_group!r} has members online: "
                        "only they commit its offsets"
                    )
                return self._commit(command)
            case Reset():
                if self.has_members(command.consumer_group):
                    return GroupHasMembers(
                        f"consumer group {command.consumer_group!r} has members online: "
                        "stop them before resetting its offsets"
                    )
                return self._commit(command)
            case Forget():
                result = self.offsets.apply(command)
                for name in [n for n, g in self.streams.items() if not g.members()]:
                    self._drop_if_empty(name)
                return result
        raise AssertionError(f"unknown coordinator command {command!r}")

    def has_members(self, name: str) -> bool:
        group = self.streams.get(name)
        return group is not None and bool(group.members())

    def consumer_group_names(self) -> list[str]:
        """Every consumer group with offsets or a stream group, ascending."""
        return sorted(set(self.offsets.consumer_groups()) | self.streams.keys())

    def consumer_group_count(self) -> int:
        names = set(self.offsets.consumer_groups())
        return len(names | self.streams.keys())

    def _full_for(self, name: str) -> bool:
        known = name in self.streams or self.offsets.group(name)
        return not known and self.consumer_group_count() >= self.consumer_groups_max

    def _commit(self, command: Commit | Reset) -> OffsetsResult:
        if command.offsets and self._full_for(command.consumer_group):
            return TooManyConsumerGroups(
                f"a coordinator holds at most {self.consumer_groups_max} consumer groups"
            )
        return self.offsets.apply(command)

    def _member_commit(self, command: MemberCommit) -> OffsetsResult:
        name = command.commit.consumer_group
        group = self.streams.get(name)
        if group is None:
            return UnknownMember(f"consumer group {name!r} has no member {command.member_id!r}")
        numbers = dict(command.partitions)
        if set(numbers) != {g for g, _ in command.commit.offsets}:
            return PartitionNotAssigned("a member commit names its partitions' numbers")
        partitions = [m.TopicPartition(command.topic, p) for p in numbers.values()]
        reason = group.validate_commit(command.member_id, command.generation, partitions)
        if reason is not None:
            return _REFUSALS[reason](
                f"member {command.member_id!r} of {name!r} may not commit at generation "
                f"{command.generation} for partitions {sorted(numbers.values())} ({reason.value})"
            )
        return self._commit(command.commit)

    def _apply_stream(self, command: StreamCommand) -> StreamApplied:
        name = command.consumer_group
        group = self.streams.get(name)
        if group is None:
            if not isinstance(command.command, m.Join):
                # About a group that has no members: nothing to do.
                return StreamApplied(name, ())
            if self._full_for(name):
                refused = m.JoinRefused(
                    command.command.member_id,
                    m.Reason.TOO_MANY_CONSUMER_GROUPS,
                    f"a coordinator holds at most {self.consumer_groups_max} consumer groups",
                )
                return StreamApplied(name, (refused,))
            group = self.streams[name] = StreamGroup()
        instructions = group.apply(command.command)
        self._drop_if_empty(name)
        return StreamApplied(name, instructions)

    def _drop_if_empty(self, name: str) -> None:
        group = self.streams.get(name)
        if group is not None and not group.members() and not self.offsets.group(name):
            del self.streams[name]

    def snapshot(self) -> bytes:
        return encode_state(self.offsets, self.streams)

    def restore(self, data: bytes) -> None:
        """Replaces the state with a snapshot's (at start, or one sent by the leader)."""
        self.offsets, self.streams = decode_state(data)
        self.entries_since_snapshot = 0

    def should_compact(self) -> bool:
        return self.entries_since_snapshot >= COMPACT_ENTRIES_MIN

    def compacted(self) -> None:
        self.entries_since_snapshot = 0


__all__ = [
    "COMPACT_ENTRIES_MIN",
    "Command",
    "CommitRefused",
    "CoordinatorStore",
    "GroupHasMembers",
    "MemberCommit",
    "PartitionNotAssigned",
    "Result",
    "StaleGeneration",
    "StreamApplied",
    "StreamCommand",
    "UnknownMember",
    "command_of",
    "command_proto",
    "commit_of",
    "decode_command",
    "decode_offsets",
    "decode_state",
    "encode_command",
    "encode_offsets",
    "encode_state",
    "reset_of",
    "reset_proto",
]
