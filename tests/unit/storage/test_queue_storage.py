"""Queue state in storage (issue 8): QUEUE_CONTROL entries are read past,
applied to the partition's queue table, stored with the apply and reloaded
at open (equal to replaying the log), replaced by an installed snapshot,
dropped with the partition, bounded in groups, and a malformed payload
changes nothing."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Iterator

import pytest

from weir.cluster.queue import Acked, Delivered, DeliveredRecord, Nacked, QueueGroupsFull
from weir.cluster.queue.codec import encode_control
from weir.cluster.raft import ConfState, Entry, EntryType, Snapshot, SnapshotMeta
from weir.cluster.storage import (
    BatchKind,
    StorageFullError,
    encode_batch,
    encode_partition_snapshot,
)
from weir.cluster.storage.codec import (
    BATCH_HEADER_BYTES,
    decode_batch_header,
    decode_row,
    partition_snapshot_queues,
    split_partition_snapshot,
)
from weir.cluster.storage.keys import parse_log_key
from weir.cluster.storage.queues import (
    QUEUE_KEY_BYTES,
    QueueTable,
    decode_table,
    encode_row,
    encode_table,
)
from weir.cluster.storage.queues import decode_row as decode_queue_row

from .helpers import STEP_TIMEOUT_S, raw_rows, run, storage
from .raft_helpers import LoopStorage, batch_entry
from .test_full import FullOp
from .test_writer import BlockingOp, _writer

pytestmark = pytest.mark.timeout(60)

GROUP = 6
CONF = ConfState(frozenset({1, 2, 3}))


@pytest.fixture
def env(tmp_path: pathlib.Path) -> Iterator[LoopStorage]:
    loop_storage = LoopStorage(tmp_path)
    yield loop_storage
    loop_storage.close()


def delivered(cursor: int, *offsets: int, attempt: int = 1) -> Delivered:
    return Delivered.of(cursor, tuple(DeliveredRecord(o, attempt, o % 3 or None) for o in offsets))


def turn_payloads() -> list[bytes]:
    """A few leader turns of two queue groups."""
    return [
        encode_control("jobs", [delivered(3, 0, 1, 2)]),
        encode_control("mail", [delivered(2, 0, 1)]),
        encode_control("jobs", [Acked(((0, 2),)), Nacked(2, 1, 5_000, "timeout")]),
        encode_control("jobs", [delivered(4, 3), delivered(4, 2, attempt=2)]),
        encode_control("mail", [Acked(((1, 2),))]),
    ]


def queue_entry(index: int, payload: bytes, term: int = 1) -> Entry:
    return Entry(
        term, index, EntryType.NORMAL, encode_batch(BatchKind.QUEUE_CONTROL, 0, 0, 0, 0, payload)
    )


def replayed(path: pathlib.Path, group_id: int) -> QueueTable:
    """The queue table rebuilt by applying the stored log from its start."""
    entries = []
    for key, value in raw_rows(path, b"log"):
        group, index = parse_log_key(key)
        if group == group_id:
            entries.append(decode_row(value, index))
    return replayed_entries(entries)


def replayed_entries(entries: list[Entry]) -> QueueTable:
    table = QueueTable()
    for entry in entries:
        index = entry.index
        if (
            entry.type is EntryType.NORMAL
            and decode_batch_header(entry.data).kind is BatchKind.QUEUE_CONTROL
        ):
            table.apply(index, entry.data[BATCH_HEADER_BYTES:])
    return table


def test_reads_skip_queue_control_entries_and_offsets_stay_dense(tmp_path: pathlib.Path) -> None:
    payloads = turn_payloads()

    async def main() -> None:
        async with storage(tmp_path) as node:
            log = node.partition_log(GROUP)
            tickets = []
            for i in range(6):
                tickets.append(await log.append(f"r{i}".encode(), 2, 1))
                if i < len(payloads):
                    tickets.append(await log.append_queue_control(payloads[i]))
                if i == 2:
                    tickets.append(await log.append_control(payload=b"offset commit"))
            for ticket in tickets:
                await ticket.durable
            batches = log.read(0, 1 << 20)
            assert [(b.base_offset, b.record_count) for b in batches] == [
                (2 * i, 2) for i in range(6)
            ]
            assert [b.payload for b in batches] == [f"r{i}".encode() for i in range(6)]
            run_ = log.read_run(3, 1 << 20, 100)
            assert run_ is not None and run_.base_offset == 2 and run_.record_count == 10
            assert log.queue_groups() == ["jobs", "mail"]
        async with storage(tmp_path) as node:
            log = node.partition_log(GROUP)
            assert [b.base_offset for b in log.read(4, 1 << 20)] == [4, 6, 8, 10]
            before = log.queues.snapshot()
            # Retention deletes records (and the control entries between
            # them); the queue state stays as applied.
            deleted = await log.truncate_prefix(retention_bytes=5, retention_ms=None)
            assert deleted > 0 and log.start_offset > 0
            assert [b.base_offset for b in log.read(log.start_offset, 1 << 20)][-1] == 10
            assert log.queues.snapshot() == before
            after = await log.append(b"late", 1, 1)
            assert after.base_offset == 12
            await after.durable
        async with storage(tmp_path) as node:
            log = node.partition_log(GROUP)
            assert log.queues.snapshot() == before
            assert log.read(12, 1 << 20)[0].payload == b"late"

    run(main)


def test_single_node_state_survives_a_restart_and_equals_the_replayed_log(
    tmp_path: pathlib.Path,
) -> None:
    async def main() -> dict[str, object]:
        async with storage(tmp_path) as node:
            log = node.partition_log(GROUP)
            await log.append(b"r", 5, 1)
            for payload in turn_payloads():
                ticket = await log.append_queue_control(payload)
                assert ticket.base_offset == 5
            await ticket.durable
            jobs = log.queue_state("jobs")
            assert jobs is not None and jobs.cursor == 4 and 2 in jobs.pending
            assert jobs.pending[2].attempt == 2 and jobs.acked.low_watermark == 2
            snapshot = log.queues.snapshot()
        async with storage(tmp_path) as node:
            log = node.partition_log(GROUP)
            assert log.queues.snapshot() == snapshot
            assert log.queue_state("nobody") is None
            return snapshot

    snapshot = run(main)
    assert replayed(tmp_path, GROUP).snapshot() == snapshot


def test_raft_apply_stores_the_state_and_a_reopen_equals_the_replayed_log(
    env: LoopStorage,
) -> None:
    raft = env.node.raft_storage(GROUP, conf=CONF)
    entries = [batch_entry(1, 1, 0)]
    for payload in turn_payloads():
        entries.append(queue_entry(len(entries) + 1, payload))
        entries.append(batch_entry(len(entries) + 1, 1, len(entries) // 2))
    raft.append(entries)
    # Applied in two Readies, as a host would.
    env.wait(raft.apply_entries(entries[:4]))
    env.wait(raft.apply_entries(entries[4:]))
    env.wait(raft.sync())
    expected = raft.queues.snapshot()
    assert sorted(expected) == ["jobs", "mail"]
    log = raft.partition_log
    assert log is not None
    assert [b.base_offset for b in log.read(0, 1 << 20)] == list(range(6))
    env.reopen()
    again = env.node.raft_storage(GROUP)
    assert again.queues.snapshot() == expected
    stored = again.entries(1, again.last_index() + 1, 1 << 20)
    assert replayed_entries(stored).snapshot() == expected


def test_a_malformed_payload_is_counted_and_changes_nothing(env: LoopStorage) -> None:
    raft = env.node.raft_storage(GROUP, conf=CONF)
    good = turn_payloads()[0]
    raft.append(
        [
            queue_entry(1, good),
            queue_entry(2, b"\x09garbage"),
            queue_entry(3, good[:-3]),
            batch_entry(4, 1, 0),
        ]
    )
    env.wait(raft.apply_entries(raft.entries(1, 2, 1 << 20)))
    before = raft.queues.snapshot()
    env.wait(raft.apply_entries(raft.entries(2, 5, 1 << 20)))
    env.wait(raft.sync())
    assert raft.queues.malformed_entries == 2
    assert raft.queues.snapshot() == before
    log = raft.partition_log
    assert log is not None and [b.base_offset for b in log.read(0, 1 << 20)] == [0]
    env.reopen()
    assert env.node.raft_storage(GROUP).queues.snapshot() == before


def test_the_single_node_append_refuses_a_bad_payload_and_writes_nothing(
    tmp_path: pathlib.Path,
) -> None:
    async def main() -> None:
        async with storage(tmp_path) as node:
            log = node.partition_log(GROUP)
            with pytest.raises(ValueError, match="not a queue control payload"):
                await log.append_queue_control(b"\x01\x00")
            assert log.next_raft_index == 1 and log.queue_groups() == []

    run(main)


def test_queue_groups_per_partition_are_bounded_at_the_leader(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path, queue_groups_per_partition_max=2) as node:
            log = node.partition_log(GROUP)
            await log.append(b"r", 3, 1)
            for name in ("a", "b"):
                assert log.check_queue_group(name) is None
                await log.append_queue_control(encode_control(name, [delivered(1, 0)]))
            refused = log.check_queue_group("c")
            assert isinstance(refused, QueueGroupsFull)
            assert refused.code == "RESOURCE_EXHAUSTED" and refused.reason == "QUEUE_GROUPS_FULL"
            with pytest.raises(ValueError, match="queue_groups_per_partition_max"):
                await log.append_queue_control(encode_control("c", [delivered(1, 0)]))
            # Known groups go on; proposed-but-unapplied new ones count.
            assert log.check_queue_group("a") is None
            ticket = await log.append_queue_control(encode_control("a", [Acked(((0, 1),))]))
            await ticket.durable
            assert log.queue_groups() == ["a", "b"]
        async with storage(tmp_path, queue_groups_per_partition_max=3) as node:
            log = node.partition_log(GROUP)
            assert log.check_queue_group("c") is None
            assert isinstance(log.check_queue_group("c", proposed=["d"]), QueueGroupsFull)

    run(main)


def test_an_installed_snapshot_replaces_the_queue_state_durably(env: LoopStorage) -> None:
    payloads = turn_payloads()
    leader = LoopStorage(env.path.parent / "leader")
    try:
        raft = leader.node.raft_storage(GROUP, conf=CONF)
        entries = [queue_entry(i + 1, p) for i, p in enumerate(payloads)]
        raft.append(entries)
        leader.wait(raft.apply_entries(entries))
        # Compacted at 2, but the table already holds all five entries.
        table = encode_table(raft.queues, raft.applied_submitted)
        expected = raft.queues.snapshot()
    finally:
        leader.close()
    follower = env.node.raft_storage(GROUP, conf=CONF)
    # The follower had state of its own (a group the leader's log no longer has).
    follower.append([queue_entry(1, encode_control("stale", [delivered(9, 8)]))])
    env.wait(follower.apply_entries(follower.entries(1, 2, 1 << 20)))
    env.wait(follower.sync())
    assert follower.queues.names() == ["stale"]
    data = encode_partition_snapshot(0, queues=table)
    assert decode_table(partition_snapshot_queues(data)).snapshot() == expected
    follower.apply_snapshot(Snapshot(SnapshotMeta(2, 1, CONF), data))
    env.wait(follower.sync())
    assert follower.queues.snapshot() == expected
    # The entries after the snapshot's index are replayed and change nothing.
    follower.append(entries[2:])
    env.wait(follower.apply_entries(entries[2:]))
    env.wait(follower.sync())
    assert follower.queues.snapshot() == expected
    env.reopen()
    again = env.node.raft_storage(GROUP)
    assert again.queues.snapshot() == expected
    # An entry past what the snapshot covered applies as usual.
    later = queue_entry(6, encode_control("mail", [Acked(((0, 1),))]))
    again.append([later])
    env.wait(again.apply_entries([later]))
    mail = again.queues.get("mail")
    assert mail is not None and mail.acked.low_watermark == 2 and not mail.pending


def test_old_snapshots_without_queues_still_decode() -> None:
    parts = split_partition_snapshot(encode_partition_snapshot(7, b"app", producers=b"p"))
    assert (parts.next_offset, parts.producers, parts.queues, parts.app_state) == (
        7,
        b"p",
        b"",
        b"app",
    )
    version_2 = bytes([2]) + (7).to_bytes(8, "big") + (1).to_bytes(4, "big") + b"p" + b"app"
    parts = split_partition_snapshot(version_2)
    assert (parts.producers, parts.queues, parts.app_state) == (b"p", b"", b"app")


def test_dropping_the_partition_deletes_its_queue_rows(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as node:
            for group_id in (GROUP, GROUP + 1):
                log = node.partition_log(group_id)
                ticket = await log.append_queue_control(turn_payloads()[0])
                await ticket.durable
            await node.drop_partition_log(GROUP)

    run(main)
    rows = raw_rows(tmp_path, b"queue_state")
    assert rows and all(key[:4] == (GROUP + 1).to_bytes(4, "big") for key, _ in rows)

    async def reopened() -> None:
        async with storage(tmp_path) as node:
            assert node.partition_log(GROUP).queue_groups() == []
            assert node.partition_log(GROUP + 1).queue_groups() == ["jobs"]

    run(reopened)


def test_the_apply_bound_covers_the_rows_written() -> None:
    table = QueueTable()
    for index, payload in enumerate(turn_payloads() * 3, start=1):
        decoded = table.decode(index, payload)
        assert decoded is not None
        bound = table.apply_bytes_max([decoded])
        name = table.apply(index, payload)
        assert name is not None
        state = table.get(name)
        assert state is not None
        assert QUEUE_KEY_BYTES + len(encode_row(name, state)) <= bound


def test_a_failed_single_node_append_undoes_the_applied_state(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path, write_probe_interval_ms=10) as node:
            writer = _writer(node)
            log = node.partition_log(GROUP)
            first = await log.append_queue_control(turn_payloads()[0])
            await first.durable
            committed = log.queues.snapshot()
            blocker = BlockingOp()
            blocked = asyncio.create_task(writer.run(blocker))
            await asyncio.to_thread(blocker.entered.wait, STEP_TIMEOUT_S)
            # Queued behind a turn that fails: a changed group and a new one.
            full = asyncio.create_task(writer.run(FullOp()))
            await asyncio.sleep(0)
            failing = [
                await log.append_queue_control(turn_payloads()[2]),
                await log.append_queue_control(turn_payloads()[1]),
            ]
            assert log.queue_groups() == ["jobs", "mail"]
            blocker.release.set()
            await blocked
            for ticket in failing:
                with pytest.raises(StorageFullError):
                    await ticket.durable
            with pytest.raises(StorageFullError):
                await full
            assert log.queues.snapshot() == committed
            assert log.next_raft_index == 2 and log.applied_index == 1
            again = await log.append_queue_control(turn_payloads()[2])
            await again.durable
        async with storage(tmp_path) as node:
            jobs = node.partition_log(GROUP).queue_state("jobs")
            assert jobs is not None and jobs.acked.low_watermark == 2
            assert node.partition_log(GROUP).queue_groups() == ["jobs"]

    run(main)


def test_a_row_encoded_with_remembered_pending_bytes_is_the_row_encoded_afresh() -> None:
    # QueueTable.row remembers each pending record's bytes between turns; a
    # record nacked, redelivered or acked since must be encoded anew.
    table = QueueTable()
    steps = [
        delivered(10, *range(10)),
        Nacked(3, 1, 5_000, "boom"),
        Acked(((0, 2),)),
        delivered(12, 3, 10, 11, attempt=2),
        Nacked(11, 2, 9_000, "x" * 40),
        Acked(((4, 9),)),
    ]
    for index, record in enumerate(steps, start=1):
        table.apply(index, encode_control("g", [record]))
        state = table.get("g")
        assert state is not None
        assert table.row("g") == encode_row("g", state)
        assert decode_queue_row(table.row("g"))[1].snapshot() == state.snapshot()
