"""The data folder lock: one storage per folder, released on close and on death."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from weir.cluster.storage import DataDirLockedError, StorageError

from .helpers import run, storage

# A child that takes the lock, says so, and waits to be killed.
_HOLDER = """
import asyncio, pathlib, sys
from weir.cluster.storage import NodeStorage, StorageConfig

async def main():
    async with NodeStorage(StorageConfig(path=pathlib.Path(sys.argv[1]))):
        print("locked", flush=True)
        sys.stdin.read()

asyncio.run(main())
"""


def test_second_open_of_the_same_folder_is_refused(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as first:
            with pytest.raises(DataDirLockedError) as refused:
                async with storage(tmp_path):
                    pass
            message = str(refused.value)
            assert str(tmp_path) in message
            assert f"pid {os.getpid()}" in message
            # The refused opener changed nothing: the first one still writes.
            await first.meta.write([("ns", b"k", b"v")])
            assert first.meta.get("ns", b"k") == b"v"
        assert (tmp_path / "LOCK").read_text().strip() == str(os.getpid())

    run(main)


def test_lock_is_released_on_close(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            await s.meta.write([("ns", b"k", b"v")])
        async with storage(tmp_path) as s:
            assert s.meta.get("ns", b"k") == b"v"

    run(main)


def test_lock_is_released_when_the_holder_is_killed(tmp_path: pathlib.Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"

        async def refused() -> None:
            with pytest.raises(DataDirLockedError, match=f"pid {holder.pid}"):
                async with storage(tmp_path):
                    pass

        run(refused)
    finally:
        holder.kill()
        holder.wait(10)
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.stdout.close()

    async def reopened() -> None:
        async with storage(tmp_path) as s:
            await s.meta.write([("ns", b"k", b"v")])

    run(reopened)


def test_failed_env_open_releases_the_lock(tmp_path: pathlib.Path) -> None:
    # A folder where LMDB expects its data file makes the open fail after the lock.
    (tmp_path / "data.mdb").mkdir()

    async def main() -> None:
        with pytest.raises(StorageError):
            async with storage(tmp_path):
                pass
        (tmp_path / "data.mdb").rmdir()
        async with storage(tmp_path):
            pass

    run(main)
