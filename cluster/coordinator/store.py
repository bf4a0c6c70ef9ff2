"""One coordinator group's replicated state, as its Raft group applies it.

A `CoordinatorStore` is what a coordinator group's `on_apply` and
`on_snapshot` feed on every replica: it decodes each committed entry (a
`weir.cluster.v1.CoordinatorCommand`), applies it to the offsets state
machine (offsets.py; later also the `StreamGroup`s of the groups this
coordinator serves), and encodes and restores the whole state as the
group's snapshot (`CoordinatorSnapshot`, canonical order, deterministic
bytes).

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

from weir.cluster.coordinator.offsets import (
    Command,
    Commit,
    Forget,
    OffsetsState,
    Result,
)
from weir.cluster.v1 import coordinator_pb2 as pb

# Entries applied after which the log is compacted to a snapshot. A commit
# entry is a few hundred bytes, so the log stays under a few MB; the
# snapshot costs O(offsets), paid once per this many commits.
COMPACT_ENTRIES_MIN = 10_000


def command_proto(command: Command) -> pb.CoordinatorCommand:
    match command:
        case Commit(consumer_group, offsets):
            return pb.CoordinatorCommand(
                commit_offsets=pb.CommitOffsetsCommand(
                    consumer_group=consumer_group,
                    offsets=[
                        pb.GroupPartitionOffset(group_id=g, offset=o) for g, o in sorted(offsets)
                    ],
                )
            )
        case Forget(group_ids):
            return pb.CoordinatorCommand(
                forget_partitions=pb.ForgetPartitionsCommand(group_ids=sorted(set(group_ids)))
            )
    raise AssertionError(f"unknown coordinator command {command!r}")


def commit_of(msg: pb.CommitOffsetsCommand) -> Commit:
    return Commit(msg.consumer_group, tuple((o.group_id, o.offset) for o in msg.offsets))


def command_of(msg: pb.CoordinatorCommand) -> Command:
    kind = msg.WhichOneof("command")
    match kind:
        case "commit_offsets":
            return commit_of(msg.commit_offsets)
        case "forget_partitions":
            return Forget(tuple(msg.forget_partitions.group_ids))
    raise AssertionError(f"coordinator entry without a known command ({kind!r})")


def encode_command(command: Command) -> bytes:
    """The bytes to propose to a coordinator group."""
    return command_proto(command).SerializeToString(deterministic=True)


def decode_command(data: bytes) -> Command:
    msg = pb.CoordinatorCommand()
    msg.ParseFromString(data)
    return command_of(msg)


def encode_offsets(state: OffsetsState) -> bytes:
    msg = pb.CoordinatorSnapshot(
        groups=[
            pb.GroupCommittedOffsets(
                consumer_group=name,
                offsets=[pb.GroupPartitionOffset(group_id=g, offset=o) for g, o in offsets],
            )
            for name, offsets in state.items()
        ]
    )
    return msg.SerializeToString(deterministic=True)


def decode_offsets(data: bytes) -> OffsetsState:
    msg = pb.CoordinatorSnapshot()
    msg.ParseFromString(data)
    return OffsetsState.restore(
        [(g.consumer_group, [(o.group_id, o.offset) for o in g.offsets]) for g in msg.groups]
    )


class CoordinatorStore:
    """A coordinator group's state machine on one replica; see the module docstring."""

    def __init__(self, group_id: int) -> None:
        self.group_id = group_id
        self.offsets = OffsetsState()
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
        return self.offsets.apply(decode_command(data))

    def snapshot(self) -> bytes:
        return encode_offsets(self.offsets)

    def restore(self, data: bytes) -> None:
        """Replaces the state with a snapshot's (at start, or one sent by the leader)."""
        self.offsets = decode_offsets(data)
        self.entries_since_snapshot = 0

    def should_compact(self) -> bool:
        return self.entries_since_snapshot >= COMPACT_ENTRIES_MIN

    def compacted(self) -> None:
        self.entries_since_snapshot = 0
