"""The Raft log's durable home: a `Storage` protocol and an in-memory implementation.

The core reads through `Storage` (entries, terms, bounds, hard state, the
latest snapshot); the host writes through it while handling a `Ready`. An LMDB
implementation lives elsewhere and must pass the same conformance suite
(`tests/unit/raft/storage_conformance.py`). Failures the core is built to
handle are typed: `CompactedError` (asked for something before the first
index) and `UnavailableError` (asked for something not written yet).
"""

from __future__ import annotations

from typing import Protocol

from .types import (
    EMPTY_CONF,
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    NodeId,
    Snapshot,
    SnapshotMeta,
)


class StorageError(Exception):
    """Base of the errors a storage may raise for an expected condition."""


class CompactedError(StorageError):
    """The requested index was truncated away; the caller needs the snapshot."""


class UnavailableError(StorageError):
    """The requested index (or snapshot) does not exist yet."""


class Storage(Protocol):
    """Durable Raft state of one group.

    Indexes: the snapshot covers `[1, first_index() - 1]`; entries are stored
    for `[first_index(), last_index()]` (empty when `last_index() ==
    first_index() - 1`). `term(first_index() - 1)` is the snapshot's term.
    """

    def hard_state(self) -> HardState: ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def term(self, index: int) -> int:
        """Term of the entry at `index`; raises CompactedError or UnavailableError."""
        ...

    def entries(self, lo: int, hi: int, bytes_max: int) -> list[Entry]:
        """Entries `[lo, hi)`, stopping before `bytes_max` of data is exceeded.

        Always returns at least one entry when `lo < hi`, so a single large
        entry still makes progress. Raises CompactedError when `lo <
        first_index()` and UnavailableError when `hi > last_index() + 1`.
        """
        ...

    def snapshot(self) -> Snapshot:
        """The snapshot at `first_index() - 1`, with the application's bytes."""
        ...

    def set_hard_state(self, hard_state: HardState) -> None: ...

    def append(self, entries: list[Entry] | tuple[Entry, ...]) -> None:
        """Writes contiguous entries, first replacing any stored suffix they overlap."""
        ...

    def truncate_prefix(self, snapshot: Snapshot) -> None:
        """Drops entries up to `snapshot.meta.index` and keeps the snapshot (retention)."""
        ...

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replaces the whole log by a snapshot received from the leader."""
        ...


class MemoryStorage:
    """Storage in Python lists; used by tests and the simulator as the 'disk'."""

    def __init__(self, conf: ConfState = EMPTY_CONF) -> None:
        self._hard_state = HardState()
        self._snapshot = Snapshot(SnapshotMeta(0, 0, conf))
        # _entries[i] holds index snapshot.index + 1 + i.
        self._entries: list[Entry] = []

    def hard_state(self) -> HardState:
        return self._hard_state

    def first_index(self) -> int:
        return self._snapshot.meta.index + 1

    def last_index(self) -> int:
        return self._snapshot.meta.index + len(self._entries)

    def term(self, index: int) -> int:
        offset = self._snapshot.meta.index
        if index == offset:
            return self._snapshot.meta.term
        if index < offset:
            raise CompactedError(index)
        if index > offset + len(self._entries):
            raise UnavailableError(index)
        return self._entries[index - offset - 1].term

    def entries(self, lo: int, hi: int, bytes_max: int) -> list[Entry]:
        offset = self._snapshot.meta.index
        if lo <= offset:
            raise CompactedError(lo)
        if hi > offset + len(self._entries) + 1:
            raise UnavailableError(hi)
        out: list[Entry] = []
        size = 0
        for entry in self._entries[lo - offset - 1 : hi - offset - 1]:
            size += len(entry.data)
            if out and size > bytes_max:
                break
            out.append(entry)
        return out

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def set_hard_state(self, hard_state: HardState) -> None:
        self._hard_state = hard_state

    def append(self, entries: list[Entry] | tuple[Entry, ...]) -> None:
        if not entries:
            return
        offset = self._snapshot.meta.index
        first = entries[0].index
        assert offset < first <= offset + len(self._entries) + 1, "append leaves a gap"
        del self._entries[first - offset - 1 :]
        self._entries.extend(entries)

    def truncate_prefix(self, snapshot: Snapshot) -> None:
        offset = self._snapshot.meta.index
        index = snapshot.meta.index
        if index <= offset:
            return
        assert index <= offset + len(self._entries), "truncating past the last index"
        assert self.term(index) == snapshot.meta.term, "snapshot term disagrees with the log"
        del self._entries[: index - offset]
        self._snapshot = snapshot

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        assert snapshot.meta.index >= self._snapshot.meta.index, "snapshot older than ours"
        self._snapshot = snapshot
        self._entries = []


def bootstrap(storage: Storage, voters: list[NodeId]) -> None:
    """Writes a new group's founding configuration as committed log entries.

    Every founding member starts from the same entries (term 1, one CONFIG
    entry per voter). A node that joins later starts from an empty storage and
    learns the configuration the way it learns everything else: from the
    leader's log or snapshot. (Seeding a joiner with a configuration of its
    own would let it believe it can win elections alone.)
    """
    assert storage.last_index() == 0, "bootstrapping a storage that has a log"
    entries = [
        Entry(1, i, EntryType.CONFIG, ConfChange(ConfChangeType.ADD_VOTER, node).encode())
        for i, node in enumerate(voters, start=1)
    ]
    storage.append(entries)
    storage.set_hard_state(HardState(1, NONE, len(entries)))
