"""A conformance suite every `Storage` implementation must pass.

Use it by subclassing with a factory (pytest collects `Test*` classes only,
so this base is not collected on its own):

    class TestLmdbStorage(StorageConformance):
        @staticmethod
        def make(conf: ConfState) -> Storage:
            return LmdbStorage(tmp_dir, group=1, conf=conf)

`make` returns a fresh, empty storage whose snapshot at index 0 holds `conf`.
"""

from __future__ import annotations

import pytest

from weir.cluster.raft import (
    CompactedError,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Snapshot,
    SnapshotMeta,
    Storage,
    UnavailableError,
    bootstrap,
)

CONF = ConfState(frozenset({1, 2, 3}))


def entries(lo: int, hi: int, term: int = 1, size: int = 10) -> list[Entry]:
    return [Entry(term, i, EntryType.NORMAL, bytes([i % 256]) * size) for i in range(lo, hi)]


class StorageConformance:
    @staticmethod
    def make(conf: ConfState) -> Storage:
        raise NotImplementedError

    def filled(self, last: int = 10) -> Storage:
        storage = self.make(CONF)
        storage.append(entries(1, last + 1))
        return storage

    def test_empty(self) -> None:
        storage = self.make(CONF)
        assert (storage.first_index(), storage.last_index()) == (1, 0)
        assert storage.term(0) == 0
        assert storage.hard_state() == HardState()
        assert storage.snapshot().meta == SnapshotMeta(0, 0, CONF)
        assert storage.entries(1, 1, 100) == []

    def test_hard_state_round_trip(self) -> None:
        storage = self.make(CONF)
        storage.set_hard_state(HardState(3, 2, 0))
        assert storage.hard_state() == HardState(3, 2, 0)

    def test_append_and_read(self) -> None:
        storage = self.filled()
        assert (storage.first_index(), storage.last_index()) == (1, 10)
        assert storage.entries(3, 6, 1 << 20) == entries(3, 6)
        assert storage.term(10) == 1

    def test_bounds_raise_typed_errors(self) -> None:
        storage = self.filled()
        with pytest.raises(UnavailableError):
            storage.term(11)
        with pytest.raises(UnavailableError):
            storage.entries(5, 12, 1 << 20)
        storage.truncate_prefix(Snapshot(SnapshotMeta(4, 1, CONF), b"state"))
        with pytest.raises(CompactedError):
            storage.term(3)
        with pytest.raises(CompactedError):
            storage.entries(4, 6, 1 << 20)

    def test_bytes_max_limits_but_returns_at_least_one(self) -> None:
        storage = self.filled()
        assert storage.entries(1, 11, 25) == entries(1, 3)
        assert storage.entries(1, 11, 1) == entries(1, 2)
        assert storage.entries(1, 11, 30) == entries(1, 4)

    def test_append_overwrites_conflicting_suffix(self) -> None:
        storage = self.filled()
        storage.append(entries(6, 8, term=2))
        assert storage.last_index() == 7
        assert [storage.term(i) for i in range(4, 8)] == [1, 1, 2, 2]

    def test_append_extends(self) -> None:
        storage = self.filled(3)
        storage.append(entries(4, 6, term=2))
        storage.append([])
        assert storage.last_index() == 5

    def test_truncate_prefix_keeps_snapshot(self) -> None:
        storage = self.filled()
        snapshot = Snapshot(SnapshotMeta(6, 1, CONF), b"app state")
        storage.truncate_prefix(snapshot)
        assert (storage.first_index(), storage.last_index()) == (7, 10)
        assert storage.term(6) == 1
        assert storage.snapshot() == snapshot
        assert storage.entries(7, 11, 1 << 20) == entries(7, 11)
        # Truncating at or before the current snapshot changes nothing.
        storage.truncate_prefix(Snapshot(SnapshotMeta(3, 1, CONF), b"old"))
        assert storage.snapshot() == snapshot

    def test_truncate_everything(self) -> None:
        storage = self.filled()
        storage.truncate_prefix(Snapshot(SnapshotMeta(10, 1, CONF), b""))
        assert (storage.first_index(), storage.last_index()) == (11, 10)
        storage.append(entries(11, 12, term=2))
        assert storage.term(11) == 2

    def test_apply_snapshot_replaces_log(self) -> None:
        storage = self.filled()
        conf = ConfState(frozenset({1, 2}), frozenset({4}))
        snapshot = Snapshot(SnapshotMeta(20, 3, conf), b"leader state")
        storage.apply_snapshot(snapshot)
        assert (storage.first_index(), storage.last_index()) == (21, 20)
        assert storage.term(20) == 3
        assert storage.snapshot().meta.conf == conf
        storage.append(entries(21, 23, term=3))
        assert storage.last_index() == 22

    def test_bootstrap_writes_committed_config(self) -> None:
        storage = self.make(ConfState(frozenset()))
        bootstrap(storage, [1, 2, 3])
        assert storage.last_index() == 3
        assert storage.hard_state() == HardState(1, 0, 3)
        assert all(e.type is EntryType.CONFIG for e in storage.entries(1, 4, 1 << 20))
