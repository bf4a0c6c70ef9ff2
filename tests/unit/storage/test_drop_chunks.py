"""Dropping a big group runs in bounded chunks that other writes interleave with."""

from __future__ import annotations

import asyncio
import pathlib

import pytest

from weir.cluster.storage import LogClosedError
from weir.cluster.storage import node as node_module

from .helpers import STEP_TIMEOUT_S, raw_rows, run, storage
from .test_writer import BlockingOp, _writer

DROPPED = 61
OTHER = 62
ENTRIES = 1_000
# Small so that a thousand entries take many chunks; the production bound is
# the same code path with a larger number.
ROWS_PER_TURN_MAX = 100


def test_drop_runs_in_bounded_chunks_and_other_writes_commit_in_between(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_module, "DROP_ROWS_PER_TURN_MAX", ROWS_PER_TURN_MAX)

    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(DROPPED)
            tickets = [await log.append(b"d" * 10, 1, i) for i in range(ENTRIES)]
            await asyncio.gather(*(t.durable for t in tickets))
            other = s.partition_log(OTHER)
            writer = _writer(s)
            commits_before = s.stats()["writer_commits"]

            blocker = BlockingOp()
            blocked = asyncio.create_task(writer.run(blocker))
            await asyncio.to_thread(blocker.entered.wait, STEP_TIMEOUT_S)
            drop = asyncio.create_task(s.drop_partition_log(DROPPED))
            await asyncio.sleep(0)
            # Queued behind the drop's first chunk.
            append = await other.append(b"meanwhile", 1, 1)
            meta = asyncio.create_task(s.meta.write([("ns", b"k", b"v")]))
            await asyncio.sleep(0)
            blocker.release.set()
            await blocked

            await append.durable
            await meta
            assert not drop.done(), "the other writes did not wait for the whole drop"
            with pytest.raises(LogClosedError):
                s.partition_log(DROPPED)  # not while its rows are going
            await drop

            stats = s.stats()
            # A log, an offset index and a time index row per entry, plus group_meta.
            rows = 3 * ENTRIES + 1
            chunks_min = -(-rows // ROWS_PER_TURN_MAX)
            assert stats["drop_chunk_rows_peak"] == ROWS_PER_TURN_MAX
            assert stats["drop_chunks"] == chunks_min
            # The blocker, the appends before it and one turn per chunk at least.
            assert stats["writer_commits"] - commits_before >= 1 + chunks_min
            fresh = s.partition_log(DROPPED)
            assert (fresh.start_offset, fresh.end_offset) == (0, 0)
        prefix = DROPPED.to_bytes(4, "big")
        for db in (b"log", b"offset_index", b"time_index", b"group_meta", b"hardstate"):
            assert not [k for k, _ in raw_rows(tmp_path, db) if k.startswith(prefix)], db
        assert [k for k, _ in raw_rows(tmp_path, b"log") if k.startswith(OTHER.to_bytes(4, "big"))]

    run(main)


def test_a_turn_holds_at_most_one_heavy_op(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_module, "DROP_ROWS_PER_TURN_MAX", ROWS_PER_TURN_MAX)

    async def main() -> None:
        async with storage(tmp_path) as s:
            for group in range(4):
                log = s.partition_log(group)
                tickets = [await log.append(b"x", 1, i) for i in range(ROWS_PER_TURN_MAX // 4)]
                await asyncio.gather(*(t.durable for t in tickets))
            writer = _writer(s)
            blocker = BlockingOp()
            blocked = asyncio.create_task(writer.run(blocker))
            await asyncio.to_thread(blocker.entered.wait, STEP_TIMEOUT_S)
            before = s.stats()["writer_commits"]
            drops = [asyncio.create_task(s.drop_partition_log(g)) for g in range(4)]
            await asyncio.sleep(0)
            blocker.release.set()
            await asyncio.gather(blocked, *drops)
            # Each group fits in one chunk, but four chunks never share a turn.
            assert s.stats()["writer_commits"] - before >= 1 + 4

    run(main)
