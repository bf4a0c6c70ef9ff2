"""The leader's producer check against its log tail (cluster/host/producers.py).

A retry of an idempotent batch that is still in flight (proposed, not yet
applied) appends nothing: its ticket waits on the original entry and gets
that entry's outcome, the original offsets when it commits and NOT_WRITTEN
when another term's entry took its index. A retry of an applied batch is
answered at once from the producer table.
"""

from __future__ import annotations

import asyncio
import pathlib

import pytest

from weir.cluster.host import NotWrittenError
from weir.cluster.host.tickets import Waiters
from weir.cluster.raft.types import Entry
from weir.cluster.storage import ProducerFields

from .host_fixtures import leading_host, run

pytestmark = pytest.mark.timeout(30)


def test_a_retry_of_a_batch_in_flight_waits_for_that_entry_and_appends_nothing(
    tmp_path: pathlib.Path,
) -> None:
    async def main() -> None:
        async with leading_host(tmp_path) as (_, host):
            assert await host.append_batch(1, b"before", 2, 0).committed == 0
            proposals = host.stats().proposals
            original = host.append_batch(1, b"batch", 3, 0, ProducerFields(9, 0, 0))
            # The same batch again before the original is even persisted.
            retry = host.append_batch(1, b"batch", 3, 0, ProducerFields(9, 0, 0))
            assert (retry.index, retry.term, retry.base_offset) == (
                original.index,
                original.term,
                original.base_offset,
            )
            assert original.base_offset == 2
            assert not retry.committed.done()
            assert await retry.committed == 2
            assert await retry.leader_durable == 2
            assert original.committed.result() == 2
            assert host.stats().proposals == proposals + 1
            batches = host.partition_log(1).read(0, 1 << 20)
            assert [(b.base_offset, b.record_count) for b in batches] == [(0, 2), (2, 3)]
            # Applied now: a retry is answered from the producer table at once.
            late = host.append_batch(1, b"batch", 3, 0, ProducerFields(9, 0, 0))
            assert late.committed.done() and late.committed.result() == 2
            # The producer's next batch follows it.
            following = host.append_batch(1, b"next", 1, 0, ProducerFields(9, 0, 3))
            assert await following.committed == 5

    run(main)


def test_a_retry_of_an_in_flight_batch_shares_its_not_written_outcome() -> None:
    # What the host does for a retry found in its tail: a second waiter at
    # the original entry's (index, term). Another term's entry at that index
    # decides both.
    async def main() -> None:
        waiters = Waiters(1, asyncio.get_running_loop())
        original = waiters.add_append(12, 4, base_offset=30, record_count=3, deadline_ms=1e9)
        retry = waiters.add_append(12, 4, base_offset=30, record_count=3, deadline_ms=1e9)
        waiters.on_applied(Entry(5, 12), None)
        for ticket in (original, retry):
            error = ticket.committed.exception()
            assert isinstance(error, NotWrittenError) and error.retriable
        assert waiters.not_written == 2

    asyncio.run(main())
