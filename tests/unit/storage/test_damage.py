"""A damaged data file is refused at open with a clear StorageError, never served."""

from __future__ import annotations

import pathlib

import pytest

from weir.cluster.storage import CorruptEntryError, StorageError, keys

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
