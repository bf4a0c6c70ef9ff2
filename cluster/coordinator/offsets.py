"""Committed offsets of consumer groups: the coordinator groups' offsets state machine.

`OffsetsState.apply(command)` is the only way the offsets change. It is
pure and deterministic (no I/O, clock or randomness), validates a command
completely before it changes anything, and answers either the stored
offsets or a typed `OffsetsError` after which nothing changed. Every
replica of a coordinator group applies the same commands in the same
order and holds the same offsets; a single node runs the same code over
its own storage (server/offsets.py).

Offsets are keyed by (consumer group name, partition group id). A
partition's Raft group id is never reused, so offsets of a deleted topic
can never be read as those of a new topic of the same name; `Forget`
drops them so they take no room (the coordinator leader proposes it for
the partitions the controller no longer has, docs/groups.md).

A committed offset never moves backwards (DESIGN invariant 4): a lower
commit leaves the stored offset in place and is answered with it. The one
exception is `Reset` (`weir group reset-offsets`, an operator's replay or
skip), which sets each offset exactly; the coordinator store refuses it
while the group has members online (store.py), so no member's position
moves under it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

GroupId = int

GROUP_NAME_CHARS_MAX = 255
# Bounds of one coordinator group's state; a refused commit changes nothing.
CONSUMER_GROUPS_MAX = 100_000
PARTITIONS_PER_COMMIT_MAX = 100_000
# Partition group ids are a u32 key prefix in storage; offsets are i64.
GROUP_ID_MAX = (1 << 32) - 1
OFFSET_MAX = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class OffsetsError:
    """A refused command; carries the public API's code and reason (docs/errors.md)."""

    message: str
    code: ClassVar[str] = "INVALID_ARGUMENT"
    reason: ClassVar[str] = "INVALID_ARGUMENT"
    retriable: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class InvalidGroupName(OffsetsError):
    reason: ClassVar[str] = "INVALID_GROUP_NAME"


@dataclass(frozen=True, slots=True)
class InvalidOffset(OffsetsError):
    reason: ClassVar[str] = "INVALID_OFFSET"


@dataclass(frozen=True, slots=True)
class InvalidPartition(OffsetsError):
    reason: ClassVar[str] = "PARTITION_OUT_OF_RANGE"


@dataclass(frozen=True, slots=True)
class TooManyConsumerGroups(OffsetsError):
    code: ClassVar[str] = "RESOURCE_EXHAUSTED"
    reason: ClassVar[str] = "TOO_MANY_CONSUMER_GROUPS"


@dataclass(frozen=True, slots=True)
class Commit:
    """A consumer group's offsets, one per partition (by group id)."""

    consumer_group: str
    offsets: tuple[tuple[GroupId, int], ...]


@dataclass(frozen=True, slots=True)
class Forget:
    """Drops every consumer group's offsets on these partitions (of deleted topics)."""

    group_ids: tuple[GroupId, ...]


@dataclass(frozen=True, slots=True)
class Reset:
    """Sets a consumer group's offsets exactly (backwards too), one per partition."""

    consumer_group: str
    offsets: tuple[tuple[GroupId, int], ...]


Command = Commit | Forget | Reset


@dataclass(frozen=True, slots=True)
class Stored:
    """After a Commit: the stored offset of each of its partitions, by group id."""

    offsets: tuple[tuple[GroupId, int], ...]


@dataclass(frozen=True, slots=True)
class Forgotten:
    """After a Forget: how many offsets were dropped."""

    count: int


Result = Stored | Forgotten | OffsetsError


def check_group_name(name: str) -> OffsetsError | None:
    """1..255 printable characters (no NUL: the single node's keys use it as a separator)."""
    if not name or len(name) > GROUP_NAME_CHARS_MAX or not name.isprintable():
        return InvalidGroupName(
            f"invalid group name: use 1 to {GROUP_NAME_CHARS_MAX} printable characters"
        )
    return None


class OffsetsState:
    """Committed offsets per consumer group and partition; see the module docstring."""

    def __init__(self, consumer_groups_max: int = CONSUMER_GROUPS_MAX) -> None:
        assert consumer_groups_max >= 1
        self.consumer_groups_max = consumer_groups_max
        # consumer group -> partition group id -> offset; no empty inner dicts.
        self._groups: dict[str, dict[GroupId, int]] = {}
        # partition group id -> consumer groups with an offset on it (for Forget).
        self._by_partition: dict[GroupId, set[str]] = {}

    # -- reads ---------------------------------------------------------------

    def get(self, consumer_group: str, group_id: GroupId) -> int | None:
        offsets = self._groups.get(consumer_group)
        return None if offsets is None else offsets.get(group_id)

    def group(self, consumer_group: str) -> dict[GroupId, int]:
        """A copy of one consumer group's offsets."""
        return dict(self._groups.get(consumer_group, {}))

    def consumer_groups(self) -> list[str]:
        return sorted(self._groups)

    def partitions(self) -> list[GroupId]:
        """Partition group ids some consumer group has an offset on."""
        return sorted(self._by_partition)

    def offset_count(self) -> int:
        return sum(len(o) for o in self._groups.values())

    def items(self) -> list[tuple[str, list[tuple[GroupId, int]]]]:
        """Every offset, by consumer group, then group id: the snapshot's content."""
        return [(c, sorted(self._groups[c].items())) for c in sorted(self._groups)]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OffsetsState):
            return NotImplemented
        return self._groups == other._groups

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"OffsetsState(groups={len(self._groups)}, offsets={self.offset_count()})"

    # -- the state machine ---------------------------------------------------

    def apply(self, command: Command) -> Result:
        match command:
            case Commit():
                return self._commit(command)
            case Forget():
                return self._forget(command)
            case Reset():
                return self._commit(command, exact=True)
        raise AssertionError(f"unknown offsets command {command!r}")

    def _check(self, command: Commit | Reset) -> OffsetsError | None:
        """Why the command must be refused (then nothing changes), or None."""
        name = command.consumer_group
        if (error := check_group_name(name)) is not None:
            return error
        if len(command.offsets) > PARTITIONS_PER_COMMIT_MAX:
            return InvalidPartition(
                f"a commit names at most {PARTITIONS_PER_COMMIT_MAX} partitions"
            )
        seen: set[GroupId] = set()
        for group_id, offset in command.offsets:
            if not 1 <= group_id <= GROUP_ID_MAX or group_id in seen:
                return InvalidPartition(f"partition group {group_id} is invalid or repeated")
            seen.add(group_id)
            if not 0 <= offset <= OFFSET_MAX:
                return InvalidOffset(f"offset {offset} is out of range")
        new = name not in self._groups and bool(command.offsets)
        if new and len(self._groups) >= self.consumer_groups_max:
            return TooManyConsumerGroups(
                f"a coordinator holds at most {self.consumer_groups_max} consumer groups"
            )
        return None

    def _commit(self, command: Commit | Reset, exact: bool = False) -> Result:
        """Stores a commit (never backwards) or, `exact`, a reset (each offset as given)."""
        if (error := self._check(command)) is not None:
            return error
        name = command.consumer_group
        current = self._groups.get(name)
        if current is None and command.offsets:
            current = self._groups[name] = {}
        stored = []
        for group_id, offset in sorted(command.offsets):
            assert current is not None
            before = current.get(group_id)
            # Invariant 4: a lower commit leaves the stored offset in place
            # (a reset is the operator's explicit exception).
            if before is not None and before >= offset and not exact:
                stored.append((group_id, before))
                continue
            if before is None:
                self._by_partition.setdefault(group_id, set()).add(name)
            current[group_id] = offset
            stored.append((group_id, offset))
        return Stored(tuple(stored))

    def _forget(self, command: Forget) -> Result:
        dropped = 0
        for group_id in sorted(set(command.group_ids)):
            for name in self._by_partition.pop(group_id, set()):
                offsets = self._groups[name]
                del offsets[group_id]
                dropped += 1
                if not offsets:
                    del self._groups[name]
        return Forgotten(dropped)

    # -- snapshots -------------------------------------------------------------

    @classmethod
    def restore(
        cls,
        items: list[tuple[str, list[tuple[GroupId, int]]]],
        consumer_groups_max: int = CONSUMER_GROUPS_MAX,
    ) -> OffsetsState:
        """A state from `items()` of another (a decoded snapshot); asserts its invariants."""
        state = cls(consumer_groups_max)
        for name, offsets in items:
            assert name not in state._groups and offsets, name
            state._groups[name] = dict(offsets)
            for group_id, _ in offsets:
                state._by_partition.setdefault(group_id, set()).add(name)
        state.check_invariants()
        return state

    def check_invariants(self) -> None:
        by_partition: dict[GroupId, set[str]] = {}
        for name, offsets in self._groups.items():
            assert check_group_name(name) is None and offsets, name
            for group_id, offset in offsets.items():
                assert 1 <= group_id <= GROUP_ID_MAX and 0 <= offset <= OFFSET_MAX
                by_partition.setdefault(group_id, set()).add(name)
        assert by_partition == self._by_partition
