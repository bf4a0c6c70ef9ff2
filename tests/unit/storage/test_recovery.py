"""Reopen, corruption detection and crash safety."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from weir.cluster.storage import CorruptEntryError, keys

from .helpers import flip_byte, payload_for, raw_rows, run, storage

GROUP = 5
REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
# Acknowledged appends to collect before the kill, and how long to wait for them.
CRASH_ACKS_MIN = 300
CRASH_WAIT_S = 20.0


def test_reopen_recovers_state(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            for group in (GROUP, GROUP + 1):
                log = s.partition_log(group)
                for ts in (300, 100, 500):
                    await (await log.append(payload_for(log.next_offset), 4, ts)).durable
            await s.enforce_retention(GROUP, 600, None)
            before = (log.start_offset, log.end_offset, log.next_offset, log.size_bytes)
        async with storage(tmp_path) as s:
            first = s.partition_log(GROUP)
            assert (first.start_offset, first.end_offset, first.size_bytes) == (4, 12, 600)
            assert first.next_raft_index == 4
            log = s.partition_log(GROUP + 1)
            assert (log.start_offset, log.end_offset, log.next_offset, log.size_bytes) == before
            assert log.read(5, 1)[0].payload == payload_for(4)
            # The running max timestamp came back too: a batch below it is not
            # a new time index row, one above it is.
            await (await log.append(b"low", 1, 400)).durable
            await (await log.append(b"high", 1, 600)).durable
            assert log.offset_for_timestamp(450) == 8
            assert log.offset_for_timestamp(550) == 13
            assert log.next_raft_index == 6

    run(main)


def test_corrupt_payload_is_detected_not_served(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            for _ in range(3):
                await (await log.append(payload_for(log.next_offset), 2, 1)).durable
        flip_byte(tmp_path, b"log", keys.log_key(GROUP, 2), -7)
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            assert log.read(0, 1)[0].base_offset == 0  # undamaged neighbour still serves
            with pytest.raises(CorruptEntryError):
                log.read(2, 1)
            # A read spanning the damaged batch fails rather than skipping it.
            with pytest.raises(CorruptEntryError):
                log.read(0, 10_000)

    run(main)


def test_corrupt_header_and_last_entry_detected_on_open(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            for _ in range(2):
                await (await log.append(payload_for(log.next_offset), 2, 1)).durable
        # Byte 10 lies inside base_offset: recovery reads the last entry.
        flip_byte(tmp_path, b"log", keys.log_key(GROUP, 2), 10)
        async with storage(tmp_path) as s:
            with pytest.raises(CorruptEntryError):
                s.partition_log(GROUP)

    run(main)


def test_crash_after_ack_loses_nothing(tmp_path: pathlib.Path) -> None:
    data = tmp_path / "node"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.unit.storage.crash_writer", str(data)],
        stdout=subprocess.PIPE,
        cwd=REPO_ROOT,
        env=env,
        text=True,
    )
    acked: list[int] = []
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + CRASH_WAIT_S
        while len(acked) < CRASH_ACKS_MIN and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            acked.append(int(line.split()[1]))
        # Killed mid-stream: appends are in flight and more acks may be buffered.
        os.kill(child.pid, signal.SIGKILL)
        rest, _ = child.communicate(timeout=10)
        acked.extend(int(line.split()[1]) for line in rest.splitlines() if line.strip())
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
    assert child.returncode == -signal.SIGKILL
    assert len(acked) >= CRASH_ACKS_MIN, f"child acknowledged only {len(acked)} appends"

    async def main() -> None:
        async with storage(data) as s:
            log = s.partition_log(42)
            assert log.end_offset > max(acked)
            for offset in acked:
                [batch, *_] = log.read(offset, 1)
                assert batch.base_offset == offset
                assert batch.payload == payload_for(offset, 700)
            # Whatever survived beyond the acks is intact and dense too.
            offset = 0
            while offset < log.end_offset:
                for batch in log.read(offset, 2**20):
                    assert batch.base_offset == offset
                    assert batch.payload == payload_for(offset, 700)
                    offset += batch.record_count

    run(main)
    assert len(raw_rows(data, b"log")) >= len(acked)
