"""A leader's small appends merged into one entry per driver turn (cluster/host/coalesce.py).

One node, a one-voter partition group, real LMDB in tmp_path: appends made
in one loop iteration become one stored batch whose records keep each
append's offsets; the merged entry is bounded in bytes; idempotent batches
are never merged and take their offsets after what was pending; appends
whose group lost leadership or stopped before the proposal fail, all of
them, with an error that says whether anything was written.
"""

from __future__ import annotations

import pathlib

import pytest

from weir.cluster.host import NotLeaderError, OutcomeUnknownError
from weir.cluster.storage import ProducerFields
from weir.v1 import records_pb2

from .host_fixtures import config, eventually, leading_host, run

pytestmark = pytest.mark.timeout(30)


def one_record(value: bytes) -> bytes:
    return records_pb2.RecordBatch(records=[records_pb2.Record(value=value)]).SerializeToString()


def test_appends_in_one_iteration_share_one_entry_and_keep_their_offsets(
    tmp_path: pathlib.Path,
) -> None:
    async def main() -> None:
        async with leading_host(tmp_path) as (_, host):
            proposals = host.stats().proposals
            payloads = [one_record(b"v%d" % i) for i in range(10)]
            # Different record counts: each base offset follows the previous.
            tickets = [host.append_batch(1, p, 1 + i % 2, 100 + i) for i, p in enumerate(payloads)]
            assert [t.base_offset for t in tickets] == [0, 1, 3, 4, 6, 7, 9, 10, 12, 13]
            assert [await t.committed for t in tickets] == [t.base_offset for t in tickets]
            assert [await t.leader_durable for t in tickets] == [t.base_offset for t in tickets]
            assert len({t.index for t in tickets}) == 1 and tickets[0].index > 0
            stats = host.stats()
            assert stats.proposals == proposals + 1
            assert stats.appends_merged == 9
            batches = host.partition_log(1).read(0, 1 << 20)
            assert len(batches) == 1
            (batch,) = batches
            assert (batch.base_offset, batch.record_count) == (0, 15)
            assert batch.max_timestamp_ms == 109
            # The concatenated payloads are one valid RecordBatch.
            stored = records_pb2.RecordBatch.FromString(bytes(batch.payload))
            assert [r.value for r in stored.records] == [b"v%d" % i for i in range(10)]
            # A later append starts a new entry after them.
            later = host.append_batch(1, one_record(b"later"), 1, 0)
            assert await later.committed == 15
            assert later.index == tickets[0].index + 1

    run(main)


def test_a_merged_entry_stays_within_append_bytes_max(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with leading_host(tmp_path, config(append_bytes_max=1000)) as (_, host):
            tickets = [host.append_batch(1, b"x" * 300, 1, 0) for _ in range(7)]
            # Three of 300 bytes fit in 1,000; the fourth starts a new entry.
            assert [await t.committed for t in tickets] == list(range(7))
            indexes = [t.index for t in tickets]
            assert indexes[0] == indexes[1] == indexes[2] < indexes[3]
            assert indexes[3] == indexes[5] < indexes[6]
            batches = host.partition_log(1).read(0, 1 << 20)
            assert [(b.base_offset, b.record_count) for b in batches] == [(0, 3), (3, 3), (6, 1)]
            # One append over the bound is an entry of its own.
            big = host.append_batch(1, b"y" * 1500, 1, 0)
            small = host.append_batch(1, b"z", 1, 0)
            assert await big.committed == 7 and await small.committed == 8
            assert big.index < small.index

    run(main)


def test_idempotent_batches_are_not_merged_and_follow_what_was_pending(
    tmp_path: pathlib.Path,
) -> None:
    async def main() -> None:
        async with leading_host(tmp_path) as (_, host):
            plain = [host.append_batch(1, b"p", 1, 0) for _ in range(3)]
            first = host.append_batch(1, b"i0", 2, 0, ProducerFields(7, 0, 0))
            second = host.append_batch(1, b"i1", 2, 0, ProducerFields(7, 0, 2))
            after = host.append_batch(1, b"q", 1, 0)
            assert [await t.committed for t in plain] == [0, 1, 2]
            assert await first.committed == 3
            assert await second.committed == 5
            assert await after.committed == 7
            assert plain[0].index < first.index < second.index < after.index
            batches = host.partition_log(1).read(0, 1 << 20)
            assert [(b.base_offset, b.record_count) for b in batches] == [
                (0, 3),
                (3, 2),
                (5, 2),
                (7, 1),
            ]
            # A retry of either idempotent batch gets its own offsets back.
            retry = host.append_batch(1, b"i1", 2, 0, ProducerFields(7, 0, 2))
            assert await retry.committed == 5

    run(main)


def test_pending_appends_fail_together_when_leadership_goes_before_the_proposal(
    tmp_path: pathlib.Path,
) -> None:
    async def main() -> None:
        async with leading_host(tmp_path) as (_, host):
            tickets = [host.append_batch(1, b"r", 1, 0) for _ in range(3)]
            # Leadership goes in the same iteration, before the driver's turn.
            host._driver.groups[1].raw.step_down()
            for ticket in tickets:
                with pytest.raises(NotLeaderError):
                    await ticket.committed
                with pytest.raises(NotLeaderError):
                    await ticket.leader_durable
            await eventually(lambda: host.is_leader(1))
            # Nothing was written: the next append takes offset 0.
            assert await host.append_batch(1, b"s", 1, 0).committed == 0

    run(main)


def test_pending_appends_of_a_stopped_group_resolve_unknown(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with leading_host(tmp_path) as (_, host):
            tickets = [host.append_batch(1, b"r", 1, 0) for _ in range(2)]
            host.stop_group(1)
            for ticket in tickets:
                with pytest.raises(OutcomeUnknownError):
                    await ticket.committed

    run(main)
