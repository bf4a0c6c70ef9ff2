"""A conformance suite every `Storage` implementation must pass.

Use it by subclassing with a factory (pytest collects `Test*` classes only,
so this base is not collected on its own):

    class TestLmdbStorage(StorageConformance):
        def make(self, conf: ConfState) -> Storage:
            return node_storage.raft_storage(group, conf=conf)

        def sync(self, storage: Storage) -> None:
            loop.run_until_complete(storage.sync())

`make` returns a fresh, empty storage whose snapshot at index 0 holds `conf`.

Writes may be asynchronous (the LMDB storage queues them to a writer thread):
a write is visible to reads at once, and `sync(storage)` waits until every
write so far is durable (a no-op for MemoryStorage). The tests read both
before and after a sync. Storages that interpret entry data (a partition
group's batches) override `data()` and `snapshot_data()`.
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


class StorageConformance:
    def make(self, conf: ConfState) -> Storage:
        raise NotImplementedError

    def sync(self, storage: Storage) -> None:
        """Waits until every write so far is durable (asynchronous storages)."""

    def data(self, index: int, size: int) -> bytes:
        """The data of the test's NORMAL entry at `index`."""
        return bytes([index % 256]) * size

    def snapshot_data(self, index: int, app: bytes) -> bytes:
        """Snapshot data at `index` (entry i of the tests ends before offset i)."""
        return app

    def apply_to(self, storage: Storage, index: int) -> None:
        """Marks entries up to `index` applied (compaction never goes past it)."""

    def entries(self, lo: int, hi: int, term: int = 1, size: int = 10) -> list[Entry]:
        return [Entry(term, i, EntryType.NORMAL, self.data(i, size)) for i in range(lo, hi)]

    def snap(self, index: int, term: int, conf: ConfState, app: bytes) -> Snapshot:
        return Snapshot(SnapshotMeta(index, term, conf), self.snapshot_data(index, app))

    def filled(self, last: int = 10) -> Storage:
        storage = self.make(CONF)
        storage.append(self.entries(1, last + 1))
        self.sync(storage)
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
        self.sync(storage)
        assert storage.hard_state() == HardState(3, 2, 0)

    def test_append_and_read(self) -> None:
        storage = self.filled()
        assert (storage.first_index(), storage.last_index()) == (1, 10)
        assert storage.entries(3, 6, 1 << 20) == self.entries(3, 6)
        assert storage.term(10) == 1
        # Visible before the write is durable, then the same after.
        storage.append(self.entries(11, 13, term=2))
        assert storage.entries(9, 13, 1 << 20) == self.entries(9, 11) + self.entries(11, 13, 2)
        self.sync(storage)
        assert storage.entries(9, 13, 1 << 20) == self.entries(9, 11) + self.entries(11, 13, 2)
        assert storage.term(12) == 2

    def test_bounds_raise_typed_errors(self) -> None:
        storage = self.filled()
        with pytest.raises(UnavailableError):
            storage.term(11)
        with pytest.raises(UnavailableError):
            storage.entries(5, 12, 1 << 20)
        self.apply_to(storage, 4)
        storage.truncate_prefix(self.snap(4, 1, CONF, b"state"))
        with pytest.raises(CompactedError):
            storage.term(3)
        with pytest.raises(CompactedError):
            storage.entries(4, 6, 1 << 20)

    def test_bytes_max_limits_but_returns_at_least_one(self) -> None:
        storage = self.filled()
        unit = len(self.entries(1, 2)[0].data)
        assert storage.entries(1, 11, unit * 5 // 2) == self.entries(1, 3)
        assert storage.entries(1, 11, 1) == self.entries(1, 2)
        assert storage.entries(1, 11, unit * 3) == self.entries(1, 4)
        # The same across stored and not yet durable entries.
        storage.append(self.entries(11, 14))
        assert storage.entries(9, 14, unit * 3) == self.entries(9, 12)

    def test_append_overwrites_conflicting_suffix(self) -> None:
        storage = self.filled()
        storage.append(self.entries(6, 8, term=2))
        assert storage.last_index() == 7
        assert [storage.term(i) for i in range(4, 8)] == [1, 1, 2, 2]
        # A conflict inside entries that are not durable yet, then after.
        storage.append(self.entries(7, 9, term=3))
        assert [storage.term(i) for i in range(5, 9)] == [1, 2, 3, 3]
        self.sync(storage)
        assert [storage.term(i) for i in range(5, 9)] == [1, 2, 3, 3]
        assert storage.entries(6, 9, 1 << 20) == self.entries(6, 7, 2) + self.entries(7, 9, 3)
        with pytest.raises(UnavailableError):
            storage.term(9)

    def test_append_extends(self) -> None:
        storage = self.filled(3)
        storage.append(self.entries(4, 6, term=2))
        storage.append([])
        assert storage.last_index() == 5
        self.sync(storage)
        assert storage.last_index() == 5

    def test_truncate_prefix_keeps_snapshot(self) -> None:
        storage = self.filled()
        snapshot = self.snap(6, 1, CONF, b"app state")
        self.apply_to(storage, 6)
        storage.truncate_prefix(snapshot)
        assert (storage.first_index(), storage.last_index()) == (7, 10)
        assert storage.term(6) == 1
        assert storage.snapshot() == snapshot
        assert storage.entries(7, 11, 1 << 20) == self.entries(7, 11)
        # Truncating at or before the current snapshot changes nothing.
        storage.truncate_prefix(self.snap(3, 1, CONF, b"old"))
        assert storage.snapshot() == snapshot
        self.sync(storage)
        assert storage.snapshot() == snapshot
        assert storage.entries(7, 11, 1 << 20) == self.entries(7, 11)

    def test_truncate_everything(self) -> None:
        storage = self.filled()
        self.apply_to(storage, 10)
        storage.truncate_prefix(self.snap(10, 1, CONF, b""))
        assert (storage.first_index(), storage.last_index()) == (11, 10)
        storage.append(self.entries(11, 12, term=2))
        assert storage.term(11) == 2
        self.sync(storage)
        assert storage.term(10) == 1 and storage.term(11) == 2

    def test_apply_snapshot_replaces_log(self) -> None:
        storage = self.filled()
        conf = ConfState(frozenset({1, 2}), frozenset({4}))
        snapshot = self.snap(20, 3, conf, b"leader state")
        storage.apply_snapshot(snapshot)
        assert (storage.first_index(), storage.last_index()) == (21, 20)
        assert storage.term(20) == 3
        assert storage.snapshot().meta.conf == conf
        storage.append(self.entries(21, 23, term=3))
        assert storage.last_index() == 22
        self.sync(storage)
        assert storage.snapshot() == snapshot
        assert storage.entries(21, 23, 1 << 20) == self.entries(21, 23, term=3)
        with pytest.raises(CompactedError):
            storage.term(19)

    def test_bootstrap_writes_committed_config(self) -> None:
        storage = self.make(ConfState(frozenset()))
        bootstrap(storage, [1, 2, 3])
        assert storage.last_index() == 3
        assert storage.hard_state() == HardState(1, 0, 3)
        self.sync(storage)
        assert storage.hard_state() == HardState(1, 0, 3)
        assert all(e.type is EntryType.CONFIG for e in storage.entries(1, 4, 1 << 20))
