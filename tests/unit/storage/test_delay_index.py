"""The delay index (delays.py): the DELAYED batch flag, rows written at apply in
both modes, removed with the entries retention deletes and with a dropped
group, untouched by suffix truncation, surviving a restart, and the read
API's order and bounds."""

from __future__ import annotations

import pathlib
import random
from collections.abc import Iterator

import pytest

from weir.cluster.raft import ConfState, Entry, EntryType, Snapshot, SnapshotMeta
from weir.cluster.storage import (
    BatchKind,
    CorruptEntryError,
    encode_batch,
    encode_partition_snapshot,
    keys,
)
from weir.cluster.storage.codec import (
    BATCH_FLAG_DELAYED,
    BATCH_HEADER_BYTES,
    decode_batch_header,
)
from weir.cluster.storage.delays import (
    DELAY_ROWS_PER_RETENTION_MAX,
    DUE_DELAYED_LIMIT_MAX,
    DelayedRecord,
    batch_delays,
)
from weir.cluster.storage.lmdbenv import Db
from weir.cluster.storage.producers import ProducerFields
from weir.v1 import records_pb2

from .helpers import FakeClock, raw_rows, run, storage
from .raft_helpers import LoopStorage, batch_entries

pytestmark = pytest.mark.timeout(60)

GROUP = 5
CONF = ConfState(frozenset({1, 2, 3}))
SEED = 20261201


def payload(*deliver_at_ms: int, value: bytes = b"job") -> bytes:
    """A canonical RecordBatch: one record per argument (0: no delay)."""
    batch = records_pb2.RecordBatch(
        records=[
            records_pb2.Record(
                key=b"k%d" % i, value=value, headers={"h": b"v"}, timestamp_ms=7, deliver_at_ms=d
            )
            for i, d in enumerate(deliver_at_ms)
        ]
    )
    return batch.SerializeToString()


def delayed_entry(index: int, term: int, base_offset: int, *deliver_at_ms: int) -> Entry:
    data = encode_batch(
        BatchKind.RECORDS,
        base_offset,
        len(deliver_at_ms),
        7,
        0,
        payload(*deliver_at_ms),
        delayed=any(deliver_at_ms),
    )
    return Entry(term, index, EntryType.NORMAL, data)


def _open_rows(env: LoopStorage, db: Db) -> list[tuple[bytes, bytes]]:
    """Every row of a database, through the open environment of `env`."""
    node_env = env.node._env
    assert node_env is not None
    with node_env.read() as txn:
        return [(k, bytes(v)) for k, v in txn.iterate(db, b"", None)]


def delay_rows(where: pathlib.Path | LoopStorage) -> list[tuple[int, int]]:
    """(deliver_at_ms, offset) of every delay row of GROUP: plain py-lmdb on a
    closed folder, or the open environment."""

    def read(db: Db) -> list[tuple[bytes, bytes]]:
        if isinstance(where, LoopStorage):
            return _open_rows(where, db)
        return raw_rows(where, db.value)

    rows = []
    for key, _ in read(Db.DELAY_INDEX):
        group_id, deliver_at_ms, offset = keys.parse_delay_key(key)
        if group_id == GROUP and deliver_at_ms:
            rows.append((deliver_at_ms, offset))
    offsets = sorted(
        (keys.parse_offset_key(key)[1], keys.unpack_u64(value))
        for key, value in read(Db.DELAY_OFFSETS)
        if keys.parse_offset_key(key)[0] == GROUP
    )
    # The two databases always hold the same rows.
    assert sorted((o, d) for d, o in rows) == offsets
    return rows


# ---- the flag and the record scan ---------------------------------------------------


def test_the_delayed_flag_round_trips_alone_and_with_a_producer() -> None:
    plain = encode_batch(BatchKind.RECORDS, 4, 2, 9, 10, b"pp")
    assert decode_batch_header(plain).delayed is False
    data = encode_batch(BatchKind.RECORDS, 4, 2, 9, 10, b"pp", delayed=True)
    assert data[1] == BATCH_FLAG_DELAYED
    header = decode_batch_header(data)
    assert (header.delayed, header.producer, header.header_bytes) == (
        True,
        None,
        BATCH_HEADER_BYTES,
    )
    producer = ProducerFields(3, 1, 0, 1000, 5)
    both = decode_batch_header(
        encode_batch(BatchKind.RECORDS, 4, 2, 9, 10, b"pp", producer, delayed=True)
    )
    assert (both.delayed, both.producer) == (True, producer)
    with pytest.raises(ValueError):
        encode_batch(BatchKind.CONTROL, 0, 0, 0, 0, b"c", delayed=True)


def test_unknown_flags_and_flags_on_control_batches_are_damage() -> None:
    data = bytearray(encode_batch(BatchKind.RECORDS, 0, 1, 0, 0, b"x"))
    data[1] = 0x04
    with pytest.raises(CorruptEntryError):
        decode_batch_header(bytes(data))
    control = bytearray(encode_batch(BatchKind.CONTROL, 0, 0, 0, 0, b"c"))
    control[1] = BATCH_FLAG_DELAYED
    with pytest.raises(CorruptEntryError):
        decode_batch_header(bytes(control))


def test_the_record_scan_matches_protobuf_on_random_batches() -> None:
    rng = random.Random(SEED)
    for _ in range(300):
        records = []
        for _ in range(rng.randint(1, 8)):
            record = records_pb2.Record(value=rng.randbytes(rng.choice((0, 1, 200, 300))))
            if rng.random() < 0.5:
                record.key = rng.randbytes(rng.randint(0, 20))
            for h in range(rng.randint(0, 3)):
                record.headers[f"h{h}"] = rng.randbytes(rng.randint(0, 5))
            record.timestamp_ms = rng.choice((0, 1, 2**40, 2**63 - 1))
            record.deliver_at_ms = rng.choice((0, 0, 1, 127, 128, 2**45, 2**63 - 1))
            records.append(record)
        raw = records_pb2.RecordBatch(records=records).SerializeToString()
        expected = [
            DelayedRecord(r.deliver_at_ms, 100 + i)
            for i, r in enumerate(records)
            if r.deliver_at_ms > 0
        ]
        assert batch_delays(raw, 100, len(records)) == expected
        assert batch_delays(memoryview(raw), 100, len(records)) == expected


def test_the_record_scan_refuses_a_wrong_count_and_garbage() -> None:
    raw = payload(5, 0)
    with pytest.raises(CorruptEntryError):
        batch_delays(raw, 0, 3)
    with pytest.raises(CorruptEntryError):
        batch_delays(raw[:-1], 0, 2)
    with pytest.raises(CorruptEntryError):
        batch_delays(b"\x12\x00", 0, 1)


# ---- single node ---------------------------------------------------------------------


def test_single_node_appends_index_delays_and_the_read_api_pages_in_due_order(
    tmp_path: pathlib.Path,
) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            await (await log.append(payload(0, 0), 2, 7)).durable
            await (await log.append(payload(300, 0, 100, 200), 4, 7, delayed=True)).durable
            await (await log.append(payload(100, 50), 2, 7, delayed=True)).durable
            # Flagged but without delays (a split request's part): no rows.
            await (await log.append(payload(0), 1, 7, delayed=True)).durable
            # Another group's rows never show.
            other = s.partition_log(GROUP + 1)
            await (await other.append(payload(1), 1, 7, delayed=True)).durable
            assert log.delayed_count() == 5
            assert other.delayed_count() == 1
            every = [(50, 7), (100, 4), (100, 6), (200, 5), (300, 2)]
            due = log.due_delayed(1000, None, 100)
            assert [(d.deliver_at_ms, d.offset) for d in due] == every
            assert [(d.deliver_at_ms, d.offset) for d in log.due_delayed(100, None, 100)] == (
                every[:3]
            )
            assert log.due_delayed(49, None, 100) == []
            # Paging: `limit` bounds an answer, `after` continues exactly after it.
            pages, after = [], None
            while page := log.due_delayed(1000, after, 2):
                assert len(page) <= 2
                pages.extend(page)
                after = page[-1]
            assert pages == due
            assert log.due_delayed(1000, None, 0) == []
            assert len(log.due_delayed(1000, None, DUE_DELAYED_LIMIT_MAX * 2)) == 5
        assert delay_rows(tmp_path) == every

    run(main)


def test_single_node_rows_survive_a_restart(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            await (await log.append(payload(10, 20), 2, 7, delayed=True)).durable
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            assert log.delayed_count() == 2
            assert log.due_delayed(15, None, 10) == [DelayedRecord(10, 0)]
            await (await log.append(payload(5), 1, 7, delayed=True)).durable
            assert log.delayed_count() == 3
            assert [d.offset for d in log.due_delayed(100, None, 10)] == [2, 0, 1]

    run(main)


def test_retention_removes_the_rows_of_deleted_entries_only(tmp_path: pathlib.Path) -> None:
    clock = FakeClock(10_000)

    async def main() -> None:
        async with storage(tmp_path, clock_ms=clock) as s:
            log = s.partition_log(GROUP)
            for step, delays in enumerate(((900, 0), (0, 0), (800, 50), (700, 0))):
                clock.now_ms = 10_000 + step * 1000
                await (await log.append(payload(*delays), 2, 7, delayed=any(delays))).durable
            assert log.delayed_count() == 4
            clock.now_ms = 15_500
            # Older than 3 s: the entries appended at 10_000, 11_000 and 12_000.
            assert await s.enforce_retention(GROUP, None, 3000) == 3
            assert log.start_offset == 6
            assert log.delayed_count() == 1
            assert log.due_delayed(1000, None, 10) == [DelayedRecord(700, 6)]
        assert delay_rows(tmp_path) == [(700, 6)]

    run(main)


def test_retention_plans_no_more_delay_rows_than_its_bound(tmp_path: pathlib.Path) -> None:
    records = DELAY_ROWS_PER_RETENTION_MAX // 2 + 1

    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            big = payload(*range(1, records + 1), value=b"")
            for _ in range(3):
                await (await log.append(big, records, 7, delayed=True)).durable
            # Three entries are over the size limit, but two would delete
            # more delay rows than one delete may: one goes per call.
            assert await s.enforce_retention(GROUP, 0, None) == 1
            assert log.delayed_count() == 2 * records
            assert await s.enforce_retention(GROUP, 0, None) == 1
            assert await s.enforce_retention(GROUP, 0, None) == 1
            assert log.delayed_count() == 0
            assert log.due_delayed(2**62, None, 10) == []
        assert delay_rows(tmp_path) == []

    run(main)


def test_a_dropped_group_leaves_no_delay_rows(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            await (await log.append(payload(10, 20, 30), 3, 7, delayed=True)).durable
            await s.drop_partition_log(GROUP)
        assert delay_rows(tmp_path) == []
        assert [k for k, _ in raw_rows(tmp_path, Db.DELAY_INDEX.value)] == []

    run(main)


# ---- Raft storage (cluster mode) -------------------------------------------------------


@pytest.fixture
def env(tmp_path: pathlib.Path) -> Iterator[LoopStorage]:
    loop_storage = LoopStorage(tmp_path)
    yield loop_storage
    loop_storage.close()


def test_rows_are_written_at_apply_and_suffix_truncation_never_touches_them(
    env: LoopStorage,
) -> None:
    storage_ = env.node.raft_storage(GROUP, conf=CONF)
    storage_.append(
        [
            delayed_entry(1, 1, 0, 500, 0),
            delayed_entry(2, 1, 2, 400),
            delayed_entry(3, 1, 3, 300),
            delayed_entry(4, 1, 4, 200),
        ]
    )
    env.wait(storage_.sync())
    log = storage_.partition_log
    assert log is not None
    # Written (and even durable) but not applied: no rows.
    assert log.delayed_count() == 0 and delay_rows(env) == []
    env.wait(storage_.apply_entries(storage_.entries(1, 3, 1 << 30)))
    assert log.delayed_count() == 2
    assert delay_rows(env) == [(400, 2), (500, 0)]
    # A new leader replaces the unapplied entries 3 and 4.
    storage_.append([delayed_entry(3, 2, 3, 250), *batch_entries_at(4, 2, 4)])
    env.wait(storage_.sync())
    assert delay_rows(env) == [(400, 2), (500, 0)]
    env.wait(storage_.apply_entries(storage_.entries(3, 5, 1 << 30)))
    assert delay_rows(env) == [(250, 3), (400, 2), (500, 0)]
    assert [d.offset for d in log.due_delayed(450, None, 10)] == [3, 2]
    env.reopen()
    again = env.node.raft_storage(GROUP, conf=CONF)
    assert again.partition_log is not None
    assert again.partition_log.delayed_count() == 3


def batch_entries_at(index: int, term: int, base_offset: int) -> list[Entry]:
    """One undelayed single-record entry at `index` holding `base_offset`."""
    (entry,) = batch_entries(index, index + 1, term)
    data = encode_batch(BatchKind.RECORDS, base_offset, 1, 1, 0, b"\x0a\x00")
    return [Entry(entry.term, entry.index, entry.type, data)]


def test_compaction_and_snapshot_install_remove_the_rows_they_cover(env: LoopStorage) -> None:
    storage_ = env.node.raft_storage(GROUP, conf=CONF)
    storage_.append(
        [delayed_entry(i, 1, i - 1, 1000 - i) for i in range(1, 7)],
    )
    env.wait(storage_.apply_entries(storage_.entries(1, 7, 1 << 30)))
    log = storage_.partition_log
    assert log is not None
    assert log.delayed_count() == 6
    # Retention through the Raft core: entries 1..3 (offsets 0..2) go.
    storage_.truncate_prefix(Snapshot(SnapshotMeta(3, 1, CONF), encode_partition_snapshot(3, b"")))
    env.wait(storage_.sync())
    assert log.delayed_count() == 3
    assert delay_rows(env) == [(994, 5), (995, 4), (996, 3)]
    # A snapshot from the leader replaces the whole log, rows included; the
    # entries after it bring their rows when they are applied.
    storage_.apply_snapshot(Snapshot(SnapshotMeta(10, 2, CONF), encode_partition_snapshot(12, b"")))
    env.wait(storage_.sync())
    assert delay_rows(env) == []
    assert log.delayed_count() == 0
    storage_.append([delayed_entry(11, 2, 12, 42)])
    env.wait(storage_.apply_entries(storage_.entries(11, 12, 1 << 30)))
    assert log.due_delayed(100, None, 10) == [DelayedRecord(42, 12)]
    assert log.delayed_count() == 1
