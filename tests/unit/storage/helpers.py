"""Shared helpers for storage tests: run a coroutine, open storage, a fake clock."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import lmdb

from weir.cluster.storage import NodeStorage, StorageConfig

T = TypeVar("T")

# Every awaited step in a test finishes far sooner; a hang fails fast instead.
STEP_TIMEOUT_S = 10.0


def run(main: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(STEP_TIMEOUT_S * 3):
            return await main()

    return asyncio.run(bounded())


class FakeClock:
    """Injected wall clock: tests move time explicitly."""

    def __init__(self, now_ms: int = 1_000_000) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


def config(path: pathlib.Path, **overrides: Any) -> StorageConfig:
    return StorageConfig(path=path, **overrides)


def storage(path: pathlib.Path, **overrides: Any) -> NodeStorage:
    return NodeStorage(config(path, **overrides))


def payload_for(offset: int, size: int = 300) -> bytes:
    """Deterministic, offset-specific payload so a read proves which batch it got."""
    seed = f"batch-{offset}:".encode()
    return (seed * (size // len(seed) + 1))[:size]


def raw_rows(path: pathlib.Path, db_name: bytes) -> list[tuple[bytes, bytes]]:
    """Every row of a named database, read with plain py-lmdb (not our wrapper)."""
    env = lmdb.open(str(path), max_dbs=16, readonly=True, lock=False)
    try:
        db = env.open_db(db_name, create=False)
        with env.begin(db=db) as txn:
            return [(bytes(k), bytes(v)) for k, v in txn.cursor()]
    finally:
        env.close()


def flip_byte(path: pathlib.Path, db_name: bytes, key: bytes, position: int) -> None:
    """Corrupts one byte of a stored value through a raw write transaction."""
    env = lmdb.open(str(path), max_dbs=16)
    try:
        db = env.open_db(db_name, create=False)
        with env.begin(write=True, db=db) as txn:
            value = txn.get(key)
            assert value is not None
            damaged = bytearray(value)
            damaged[position] ^= 0xFF
            txn.put(key, bytes(damaged))
    finally:
        env.close()
