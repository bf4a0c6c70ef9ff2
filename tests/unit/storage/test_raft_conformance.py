"""The Raft core's Storage conformance suite, run against LmdbRaftStorage with
asynchronous writes: once for an opaque group (the controller's kind) and once
for a partition group, whose NORMAL entries are record batches."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import cast

import pytest

from tests.unit.raft.storage_conformance import StorageConformance
from weir.cluster.raft import ConfState, Storage
from weir.cluster.storage import LmdbRaftStorage, encode_partition_snapshot

from .raft_helpers import LoopStorage, batch_entry, iter_groups

pytestmark = pytest.mark.timeout(60)


class _LmdbConformance(StorageConformance):
    partition = False

    @pytest.fixture(autouse=True)
    def _storage(self, tmp_path: pathlib.Path) -> Iterator[None]:
        self.env = LoopStorage(tmp_path)
        self.groups = iter_groups()
        yield
        self.env.close()

    def make(self, conf: ConfState) -> Storage:
        return self.env.node.raft_storage(next(self.groups), conf=conf, partition=self.partition)

    def sync(self, storage: Storage) -> None:
        self.env.wait(cast(LmdbRaftStorage, storage).sync())

    def apply_to(self, storage: Storage, index: int) -> None:
        lmdb = cast(LmdbRaftStorage, storage)
        lo = lmdb.applied_index + 1
        self.env.wait(lmdb.apply_entries(lmdb.entries(lo, index + 1, 1 << 30)))


class TestLmdbRaftStorage(_LmdbConformance):
    pass


class TestLmdbPartitionRaftStorage(_LmdbConformance):
    partition = True

    def data(self, index: int, size: int) -> bytes:
        return batch_entry(index, 1, index - 1, size).data

    def snapshot_data(self, index: int, app: bytes) -> bytes:
        return encode_partition_snapshot(index, app)
