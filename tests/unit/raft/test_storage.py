"""The Storage conformance suite, run against MemoryStorage."""

from __future__ import annotations

from weir.cluster.raft import ConfState, MemoryStorage, Storage

from .storage_conformance import StorageConformance


class TestMemoryStorage(StorageConformance):
    @staticmethod
    def make(conf: ConfState) -> Storage:
        return MemoryStorage(conf)
