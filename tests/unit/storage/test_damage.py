"""A damaged data file is refused at open with a clear StorageError, never served."""

from __future__ import annotations

import pathlib

import lmdb
import pytest

from weir.cluster.storage import CorruptEntryError, EntryType, StorageError, keys

from .helpers import flip_byte, payload_for, run, storage

GROUP = 31
OTHER_GROUP = 32


def _fill(path: pathlib.Path, batches: int) -> None:
    async def main() -> None:
        async with storage(path) as s:
            log = s.partition_log(GROUP)
            tickets = [await log.append(payload_for(i, 4000), 1, i) for i in range(batches)]
            for ticket in tickets:
                await ticket.durable

    run(main)


def _open_fails(path: pathlib.Path) -> StorageError:
    async def main() -> StorageError:
        with pytest.raises(StorageError) as refused:
            async with storage(path) as s:
                # Were the open to succeed, reading would touch the missing pages.
                s.partition_log(GROUP).read(0, 1 << 30)
        return refused.value

    return run(main)


def test_truncated_data_file_is_refused_at_open(tmp_path: pathlib.Path) -> None:
    _fill(tmp_path, 500)
    data_file = tmp_path / "data.mdb"
    with data_file.open("r+b") as f:
        f.truncate(data_file.stat().st_size // 2)

    error = _open_fails(tmp_path)

    assert "truncated" in str(error)
    assert str(data_file) in str(error)


def test_data_file_shorter_than_its_meta_pages_is_refused(tmp_path: pathlib.Path) -> None:
    _fill(tmp_path, 3)
    data_file = tmp_path / "data.mdb"
    with data_file.open("r+b") as f:
        f.truncate(100)

    error = _open_fails(tmp_path)

    assert "damaged" in str(error)
    assert str(data_file) in str(error)
    assert "\n" not in str(error)


def test_garbage_data_file_is_refused(tmp_path: pathlib.Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "data.mdb").write_bytes(b"not lmdb " * 2000)

    error = _open_fails(tmp_path)

    assert "damaged" in str(error)


def test_refused_open_releases_the_folder(tmp_path: pathlib.Path) -> None:
    _fill(tmp_path, 50)
    data_file = tmp_path / "data.mdb"
    original = data_file.read_bytes()
    data_file.write_bytes(original[: len(original) // 2])
    _open_fails(tmp_path)
    data_file.write_bytes(original)

    async def main() -> None:
        async with storage(tmp_path) as s:
            assert s.partition_log(GROUP).end_offset == 50

    run(main)


def test_damaged_entry_fails_reads_of_its_group_only(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            for group in (GROUP, OTHER_GROUP):
                log = s.partition_log(group)
                for i in range(3):
                    await (await log.append(payload_for(i), 1, i)).durable

    run(main)
    # The middle entry: recovery verifies only the last one, so the log opens.
    flip_byte(tmp_path, b"log", keys.log_key(GROUP, 2), -7)

    async def check() -> None:
        async with storage(tmp_path) as s:
            damaged = s.partition_log(GROUP)
            healthy = s.partition_log(OTHER_GROUP)
            assert [b.payload for b in damaged.read(0, 1)] == [payload_for(0)]
            with pytest.raises(CorruptEntryError):
                damaged.read(1, 1 << 20)
            assert [b.payload for b in healthy.read(0, 1 << 20)] == [
                payload_for(i) for i in range(3)
            ]
            # Writes go on for both; the damaged group's later offsets still read.
            await (await damaged.append(b"later", 1, 9)).durable
            await (await healthy.append(b"later", 1, 9)).durable
            assert damaged.read(3, 1 << 20)[0].payload == b"later"
            assert s.write_error is None

    run(check)


def _fill_small(path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(path) as s:
            log = s.partition_log(GROUP)
            tickets = [await log.append(payload_for(i, 50), 1, i) for i in range(6)]
            for ticket in tickets:
                await ticket.durable

    run(main)


@pytest.mark.parametrize("position", [5, 20, 40, -1], ids=["term", "offset", "batch", "payload"])
def test_damage_inside_a_run_fails_the_read(tmp_path: pathlib.Path, position: int) -> None:
    """Every row a run covers is checksum-verified, not only the first."""
    _fill_small(tmp_path)
    flip_byte(tmp_path, b"log", keys.log_key(GROUP, 3), position)

    async def check() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            run_ = log.read_run(0, 1 << 20, 2)  # stops before the damaged row
            assert run_ is not None and run_.record_count == 2
            with pytest.raises(CorruptEntryError):
                log.read_run(0, 1 << 20, 100)
            with pytest.raises(CorruptEntryError):
                log.read(1, 1 << 20)

    run(check)


def _delete_log_row(path: pathlib.Path, group: int, index: int) -> None:
    env = lmdb.open(str(path), max_dbs=16)
    try:
        db = env.open_db(b"log", create=False)
        with env.begin(write=True, db=db) as txn:
            assert txn.delete(keys.log_key(group, index))
    finally:
        env.close()


def test_a_missing_log_row_fails_the_read(tmp_path: pathlib.Path) -> None:
    """Reads walk a count of rows, not keys: a gap in the rows is damage, not a shortcut."""
    _fill_small(tmp_path)
    _delete_log_row(tmp_path, GROUP, 3)  # offset 2

    async def check() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            assert log.read_run(0, 1 << 20, 2) is not None  # before the gap
            with pytest.raises(CorruptEntryError):
                log.read_run(0, 1 << 20, 100)
            with pytest.raises(CorruptEntryError):
                log.read(1, 1 << 20)

    run(check)


def test_a_read_never_walks_into_the_next_group(tmp_path: pathlib.Path) -> None:
    """A missing row (a no-op) would take the walk into the next group's rows:
    the key of the last row visited is checked."""

    async def fill() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            other = s.partition_log(GROUP + 1)
            tickets = [await other.append_control(EntryType.NOOP)]
            tickets += [await log.append(payload_for(i, 50), 1, i) for i in range(6)]
            tickets.append(await log.append_control(EntryType.NOOP))
            tickets.append(await log.append_control(EntryType.NOOP))
            for ticket in tickets:
                await ticket.durable

    run(fill)
    _delete_log_row(tmp_path, GROUP, 7)  # the no-op after offset 5

    async def check() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            with pytest.raises(CorruptEntryError, match="not consecutive"):
                log.read_run(5, 1 << 20, 100)

    run(check)


@pytest.mark.parametrize("index", [999, 1], ids=["past_the_log", "another_batch"])
def test_a_damaged_offset_index_row_fails_the_read(tmp_path: pathlib.Path, index: int) -> None:
    """Index rows have no checksum of their own: where one points is checked."""
    _fill_small(tmp_path)
    env = lmdb.open(str(tmp_path), max_dbs=16)
    try:
        db = env.open_db(b"offset_index", create=False)
        with env.begin(write=True, db=db) as txn:
            assert txn.replace(keys.offset_key(GROUP, 4), index.to_bytes(8, "big")) is not None
    finally:
        env.close()

    async def check() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            with pytest.raises(CorruptEntryError):
                log.read_run(4, 1 << 20, 100)
            with pytest.raises(CorruptEntryError):
                log.read(4, 1 << 20)
            assert [b.base_offset for b in log.read(0, 1 << 20, 4)] == [0, 1, 2, 3]

    run(check)
