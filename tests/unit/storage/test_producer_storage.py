"""Producer state in storage: stored with each batch, applied with the index
rows, reloaded at open, carried by snapshots, and checked by the single-node
append (retries answer the original offsets, bad sequences change nothing)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from weir.cluster.raft import ConfState, Entry, EntryType, Snapshot, SnapshotMeta
from weir.cluster.storage import (
    BatchKind,
    OutOfOrderSequenceError,
    ProducerFencedError,
    ProducerFields,
    encode_batch,
    encode_partition_snapshot,
)
from weir.cluster.storage.codec import decode_batch_header, decode_partition_snapshot
from weir.cluster.storage.producers import encode_table

from .helpers import run, storage
from .raft_helpers import LoopStorage

pytestmark = pytest.mark.timeout(60)

GROUP = 4
CONF = ConfState(frozenset({1, 2, 3}))


@pytest.fixture
def env(tmp_path: pathlib.Path) -> Iterator[LoopStorage]:
    loop_storage = LoopStorage(tmp_path)
    yield loop_storage
    loop_storage.close()


def producer_entry(
    index: int, base_offset: int, f: ProducerFields | None, records: int = 1
) -> Entry:
    data = encode_batch(BatchKind.RECORDS, base_offset, records, 5, 1000 + index, b"p" * 8, f)
    return Entry(1, index, EntryType.NORMAL, data)


def test_the_batch_header_carries_the_producer_and_the_payload_is_unchanged() -> None:
    f = ProducerFields(3, 2, 40, expiry_ms=9, producers_max=4)
    data = encode_batch(BatchKind.RECORDS, 10, 2, 5, 6, b"payload", f)
    header = decode_batch_header(data)
    assert header.producer == f
    assert data[header.header_bytes :] == b"payload"
    plain = decode_batch_header(encode_batch(BatchKind.RECORDS, 10, 2, 5, 6, b"payload"))
    assert plain.producer is None


def test_snapshots_carry_the_table_and_old_ones_still_decode() -> None:
    data = encode_partition_snapshot(12, b"app", producers=b"table")
    assert decode_partition_snapshot(data) == (12, b"app")
    old = bytes([1]) + (12).to_bytes(8, "big") + b"app"
    assert decode_partition_snapshot(old) == (12, b"app")


def test_applied_producers_survive_a_reopen_and_serve_reads(env: LoopStorage) -> None:
    raft = env.node.raft_storage(GROUP, conf=CONF)
    raft.append(
        [
            producer_entry(1, 0, ProducerFields(9, 0, 0), records=2),
            producer_entry(2, 2, None),
            producer_entry(3, 3, ProducerFields(9, 0, 2)),
            producer_entry(4, 4, ProducerFields(11, 1, 0)),
        ]
    )
    env.wait(raft.apply_entries(raft.entries(1, 5, 1 << 20)))
    env.wait(raft.sync())
    before = raft.producers.items()
    assert [pid for pid, _ in before] == [9, 11]
    log = raft.partition_log
    assert log is not None
    assert [b.payload for b in log.read(0, 1 << 20)] == [b"p" * 8] * 4
    env.reopen()
    again = env.node.raft_storage(GROUP)
    assert again.producers.items() == before
    assert again.producers.applied_next_offset == 5


def test_an_installed_snapshot_replaces_the_table_durably(env: LoopStorage) -> None:
    leader = LoopStorage(env.path.parent / "leader")
    try:
        raft = leader.node.raft_storage(GROUP, conf=CONF)
        raft.append([producer_entry(i, i - 1, ProducerFields(5, 0, i - 1)) for i in range(1, 6)])
        leader.wait(raft.apply_entries(raft.entries(1, 6, 1 << 20)))
        # Compacted at 3, but the table already holds all five batches.
        table = encode_table(raft.producers)
        expected = raft.producers.items()
    finally:
        leader.close()
    follower = env.node.raft_storage(GROUP, conf=CONF)
    follower.apply_snapshot(
        Snapshot(SnapshotMeta(3, 1, CONF), encode_partition_snapshot(3, producers=table))
    )
    env.wait(follower.sync())
    assert follower.producers.items() == expected
    # The entries after the snapshot are replayed and change nothing.
    follower.append([producer_entry(i, i - 1, ProducerFields(5, 0, i - 1)) for i in (4, 5)])
    env.wait(follower.apply_entries(follower.entries(4, 6, 1 << 20)))
    env.wait(follower.sync())
    assert follower.producers.items() == expected
    env.reopen()
    assert env.node.raft_storage(GROUP).producers.items() == expected


def test_a_single_node_retry_gets_the_original_offsets(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as node:
            log = node.partition_log(GROUP)
            first = await log.append(b"a", 1, 1, ProducerFields(3, 0, 0))
            retry = await log.append(b"a", 1, 1, ProducerFields(3, 0, 0))
            await retry.durable
            assert retry.base_offset == first.base_offset == 0
            second = await log.append(b"b", 2, 1, ProducerFields(3, 0, 1))
            assert second.base_offset == 1
            with pytest.raises(OutOfOrderSequenceError):
                await log.append(b"c", 1, 1, ProducerFields(3, 0, 9))
            await log.append(b"d", 1, 1, ProducerFields(3, 1, 0))
            with pytest.raises(ProducerFencedError):
                await log.append(b"e", 1, 1, ProducerFields(3, 0, 3))
            await second.durable
            assert log.next_offset == 4
        async with storage(tmp_path) as node:
            log = node.partition_log(GROUP)
            again = await log.append(b"d", 1, 1, ProducerFields(3, 1, 0))
            assert again.base_offset == 3

    run(main)
