"""The Raft log as the core sees it: durable entries in `Storage` plus an unstable tail.

Entries the core appended but the host has not persisted yet live in
`unstable` (and a snapshot received from the leader in `pending_snapshot`);
`ready()` hands them out and `stable_to()` drops them once the host has
written them. Reads consult the unstable part first, then storage.
"""

from __future__ import annotations

from .storage import CompactedError, Storage, UnavailableError
from .types import Entry, Snapshot


class RaftLog:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.unstable: list[Entry] = []
        self.pending_snapshot: Snapshot | None = None
        # Index of unstable[0]; everything below it is read from storage.
        self.unstable_offset = storage.last_index() + 1
        self.committed = storage.hard_state().commit
        # Highest index handed to the host for applying (set by RawNode).
        self.applied = storage.first_index() - 1
        assert self.applied <= self.committed <= storage.last_index() or self.committed == 0

    def first_index(self) -> int:
        if self.pending_snapshot is not None:
            return self.pending_snapshot.meta.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        if self.unstable:
            return self.unstable[-1].index
        if self.pending_snapshot is not None:
            return self.pending_snapshot.meta.index
        return self.storage.last_index()

    def term(self, index: int) -> int:
        """Term at `index`; raises CompactedError/UnavailableError like storage."""
        if index >= self.unstable_offset:
            # With an empty tail unstable_offset is last_index() + 1, so this raises.
            if index > self.last_index():
                raise UnavailableError(index)
            return self.unstable[index - self.unstable_offset].term
        snap = self.pending_snapshot
        if snap is not None:
            if index == snap.meta.index:
                return snap.meta.term
            if index < snap.meta.index:
                raise CompactedError(index)
        return self.storage.term(index)

    def term_or_none(self, index: int) -> int | None:
        try:
            return self.term(index)
        except (CompactedError, UnavailableError):
            return None

    def last_term(self) -> int:
        return self.term(self.last_index())

    def match_term(self, index: int, term: int) -> bool:
        return self.term_or_none(index) == term

    def is_up_to_date(self, index: int, term: int) -> bool:
        """§5.4.1: a candidate's log is at least as up-to-date as ours."""
        last_term = self.last_term()
        return term > last_term or (term == last_term and index >= self.last_index())

    def entries(self, lo: int, hi: int, bytes_max: int) -> list[Entry]:
        """Entries `[lo, hi)` limited to `bytes_max` (at least one when lo < hi)."""
        if lo < self.first_index():
            raise CompactedError(lo)
        if hi > self.last_index() + 1:
            raise UnavailableError(hi)
        out: list[Entry] = []
        if lo < self.unstable_offset:
            out = self.storage.entries(lo, min(hi, self.unstable_offset), bytes_max)
            if hi <= self.unstable_offset or len(out) < self.unstable_offset - lo:
                return out  # all from storage, or the byte limit cut it short
        size = sum(len(e.data) for e in out)
        start = max(lo, self.unstable_offset) - self.unstable_offset
        for entry in self.unstable[start : hi - self.unstable_offset]:
            size += len(entry.data)
            if out and size > bytes_max:
                break
            out.append(entry)
        return out

    def find_conflict(self, entries: tuple[Entry, ...]) -> int:
        """Index of the first entry that is new or disagrees with ours; 0 if none."""
        for entry in entries:
            if not self.match_term(entry.index, entry.term):
                return entry.index
        return 0

    def hint_for(self, index: int, term: int) -> tuple[int, int]:
        """Our latest entry at or before `index` whose term is at most `term`.

        The leader probed `index` with `term` and we disagree. Any entry whose
        term exceeds `term` cannot match the leader there either, so we skip it
        and tell the leader where matching could resume (fast backtracking).
        """
        index = min(index, self.last_index())
        floor = self.first_index() - 1
        while index > floor:
            found = self.term_or_none(index)
            if found is None or found <= term:
                return index, found or 0
            index -= 1
        return index, self.term_or_none(index) or 0

    def append(self, entries: list[Entry] | tuple[Entry, ...]) -> None:
        """Adds entries to the unstable tail, replacing any conflicting suffix."""
        if not entries:
            return
        first = entries[0].index
        assert first > self.committed, "overwriting a committed entry"
        if first >= self.unstable_offset:
            del self.unstable[first - self.unstable_offset :]
            self.unstable.extend(entries)
        else:
            # The replaced suffix is already on disk; storage.append overwrites it.
            self.unstable_offset = first
            self.unstable = list(entries)

    def maybe_append(
        self, index: int, log_term: int, commit: int, entries: tuple[Entry, ...]
    ) -> int | None:
        """Follower side of AppendEntries (§5.3); returns the last matching index."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            self.append(entries[conflict - index - 1 :])
        self.commit_to(min(commit, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        # Commit never moves backwards (the leader may send a stale value).
        if index > self.committed:
            assert index <= self.last_index(), "committing an entry we do not have"
            self.committed = index

    def restore(self, snapshot: Snapshot) -> None:
        """Replaces the log by a snapshot from the leader (made durable via Ready)."""
        self.pending_snapshot = snapshot
        self.unstable = []
        self.unstable_offset = snapshot.meta.index + 1
        self.committed = snapshot.meta.index

    def stable_to(self, index: int, term: int) -> None:
        """The host persisted entries up to (index, term)."""
        if not self.unstable or index < self.unstable_offset:
            return
        position = index - self.unstable_offset
        if position < len(self.unstable) and self.unstable[position].term == term:
            del self.unstable[: position + 1]
            self.unstable_offset = index + 1

    def stable_snapshot_to(self, index: int) -> None:
        if self.pending_snapshot is not None and self.pending_snapshot.meta.index == index:
            self.pending_snapshot = None

    def next_committed(self, bytes_max: int) -> list[Entry]:
        """Committed entries not yet handed out for applying."""
        if self.committed <= self.applied:
            return []
        return self.entries(self.applied + 1, self.committed + 1, bytes_max)
