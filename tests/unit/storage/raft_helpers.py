"""Helpers for tests of the LMDB Raft storage: a node storage on a loop that is
not running, so that the synchronous Storage calls run as the host makes them
and the writer's commit callbacks run only when a test waits (`settle`)."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

from weir.cluster.raft import Entry, EntryType
from weir.cluster.storage import BatchKind, NodeStorage, encode_batch

from .helpers import STEP_TIMEOUT_S, storage

T = TypeVar("T")


class LoopStorage:
    """A NodeStorage opened on a private event loop; `wait()` runs it until done."""

    def __init__(self, path: pathlib.Path, **overrides: Any) -> None:
        self.path = path
        self.overrides = overrides
        self.loop = asyncio.new_event_loop()
        self.node: NodeStorage = storage(path, **overrides)
        self.wait(self.node.open())

    def wait(self, awaitable: Awaitable[T]) -> T:
        async def bounded() -> T:
            async with asyncio.timeout(STEP_TIMEOUT_S):
                return await awaitable

        return self.loop.run_until_complete(bounded())

    def settle(self) -> None:
        """Lets the loop run the writer's pending callbacks."""
        self.wait(asyncio.sleep(0.01))

    def close(self) -> None:
        try:
            self.wait(self.node.close())
        finally:
            self.loop.close()

    def reopen(self) -> None:
        self.wait(self.node.close())
        self.node = storage(self.path, **self.overrides)
        self.wait(self.node.open())


def batch_entry(index: int, term: int, base_offset: int, size: int = 10, records: int = 1) -> Entry:
    """A NORMAL entry holding a RECORDS batch of `records` records at `base_offset`."""
    data = encode_batch(
        BatchKind.RECORDS, base_offset, records, 1000 + index, 0, bytes([index % 256]) * size
    )
    return Entry(term, index, EntryType.NORMAL, data)


def batch_entries(lo: int, hi: int, term: int = 1, size: int = 10) -> list[Entry]:
    """Entries [lo, hi), one record each: entry i holds offset i - 1."""
    return [batch_entry(i, term, i - 1, size) for i in range(lo, hi)]


def iter_groups(start: int = 1) -> Iterator[int]:
    group = start
    while True:
        yield group
        group += 1
