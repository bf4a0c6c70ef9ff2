"""The Raft host carries the DELAYED flag into the entries it proposes (issue 8):
merged appends are flagged when any of them is, idempotent producers' batches
too, and applying them fills the delay index with the offsets they got."""

from __future__ import annotations

import pathlib

import pytest

from weir.cluster.storage import ProducerFields
from weir.cluster.storage.delays import DelayedRecord
from weir.v1 import records_pb2

from .host_fixtures import eventually, leading_host, run

pytestmark = pytest.mark.timeout(30)


def records(*deliver_at_ms: int) -> bytes:
    batch = records_pb2.RecordBatch(
        records=[records_pb2.Record(value=b"v", deliver_at_ms=d) for d in deliver_at_ms]
    )
    return batch.SerializeToString()


def test_merged_and_idempotent_appends_index_their_delays(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with leading_host(tmp_path) as (_, host):
            log = host.partition_log(1)
            # Three appends in one iteration become one entry: the middle one
            # has delays, so the entry is flagged and its records indexed.
            tickets = [
                host.append_batch(1, records(0, 0), 2, 1),
                host.append_batch(1, records(900, 0, 800), 3, 1, delayed=True),
                host.append_batch(1, records(0), 1, 1),
            ]
            assert len({t.index for t in tickets}) == 1
            assert [await t.committed for t in tickets] == [0, 2, 5]
            await eventually(lambda: log.delayed_count() == 2)
            assert log.due_delayed(1000, None, 10) == [
                DelayedRecord(800, 4),
                DelayedRecord(900, 2),
            ]
            producer = ProducerFields(7, 0, 0, 60_000, 5)
            ticket = host.append_batch(1, records(50), 1, 1, producer, delayed=True)
            assert await ticket.committed == 6
            await eventually(lambda: log.delayed_count() == 3)
            assert log.due_delayed(100, None, 10) == [DelayedRecord(50, 6)]
            # Flagged batches are served like any other.
            served = log.read(0, 1 << 20)
            assert [(b.base_offset, b.record_count) for b in served] == [(0, 6), (6, 1)]

    run(main)
