"""Votes and meta writes are durable before they resolve, in every durability mode."""

from __future__ import annotations

import pathlib

import pytest

from weir.cluster.storage import CorruptEntryError, Durability, HardState, NodeStorage, keys

from .helpers import flip_byte, run, storage

GROUP = 51
# The background syncer must not run during the test, so that every sync
# counted is one the writer made for a sync-required op.
SYNCER_IDLE_MS = 600_000


def _syncs(s: NodeStorage) -> int:
    return s.stats()["writer_syncs"]


def test_async_durability_fsyncs_hard_state_and_meta_before_resolving(
    tmp_path: pathlib.Path,
) -> None:
    async def main() -> None:
        async with storage(
            tmp_path, durability=Durability.ASYNC, async_sync_interval_ms=SYNCER_IDLE_MS
        ) as s:
            log = s.partition_log(GROUP)
            before = _syncs(s)
            await (await log.append(b"data", 1, 1)).durable
            # Data entries may wait for the background sync.
            assert _syncs(s) == before

            await s.save_hard_state(GROUP, HardState(term=3, vote=2, commit=1))
            assert _syncs(s) == before + 1
            assert s.load_hard_state(GROUP) == HardState(3, 2, 1)

            await s.meta.write([("topics", b"t", b"v")])
            assert _syncs(s) == before + 2

    run(main)


def test_sync_durability_needs_no_extra_fsync(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            before = _syncs(s)
            await s.save_hard_state(GROUP, HardState(1, 1, 0))
            # The commit itself fsyncs in sync durability.
            assert _syncs(s) == before

    run(main)


def test_hard_state_survives_reopen_and_damage_is_detected(tmp_path: pathlib.Path) -> None:
    async def write() -> None:
        async with storage(tmp_path, durability=Durability.ASYNC) as s:
            assert s.load_hard_state(GROUP) is None
            await s.save_hard_state(GROUP, HardState(7, 0, 4))

    run(write)

    async def read() -> HardState | None:
        async with storage(tmp_path) as s:
            return s.load_hard_state(GROUP)

    assert run(read) == HardState(7, 0, 4)
    flip_byte(tmp_path, b"hardstate", keys.group_key(GROUP), 3)
    with pytest.raises(CorruptEntryError):
        run(read)


def test_drop_removes_hard_state(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            await s.save_hard_state(GROUP, HardState(2, 1, 1))
            await s.drop_partition_log(GROUP)
            assert s.load_hard_state(GROUP) is None

    run(main)
