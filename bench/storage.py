"""Storage benchmark: append and read throughput of the LMDB partition log.

Prints one JSON object per line. Appends are pipelined the way the broker
issues them (a window of un-acknowledged appends), so the figures include
group commit. Run with `.venv/bin/python -m bench storage`.
"""

from __future__ import annotations

import asyncio
import collections
import json
import pathlib
import sys
import tempfile
import time
from typing import Any

from weir.cluster.storage import Durability, NodeStorage, PartitionLog, StorageConfig

# How long each append case runs; five cases plus reads stay under ~20 s.
APPEND_DURATION_S = 2.0
# The interpreter's default GIL switch interval, and the one docs/storage.md
# recommends for a node process: each py-lmdb call of the writer thread that
# releases the GIL waits up to one interval to get it back from a busy loop.
SWITCH_INTERVAL_DEFAULT_S = 0.005
SWITCH_INTERVAL_TUNED_S = 0.0005
READ_BYTES_MAX = 1 * 2**20
GROUP = 1


def _emit(case: str, **figures: Any) -> None:
    print(json.dumps({"bench": "storage", "case": case, **figures}), flush=True)


async def _append_case(
    log: PartitionLog, storage: NodeStorage, payload: bytes, records: int, window: int
) -> dict[str, float]:
    inflight: collections.deque[asyncio.Future[None]] = collections.deque()
    commits_before = storage.stats()["writer_commits"]
    appends = 0
    started = time.perf_counter()
    deadline = started + APPEND_DURATION_S
    while time.perf_counter() < deadline:
        ticket = await log.append(payload, records, appends)
        inflight.append(ticket.durable)
        appends += 1
        if len(inflight) >= window:
            await inflight.popleft()
    await asyncio.gather(*inflight)
    elapsed = time.perf_counter() - started
    commits = storage.stats()["writer_commits"] - commits_before
    return {
        "appends_per_s": round(appends / elapsed),
        "records_per_s": round(appends * records / elapsed),
        "commits_per_s": round(commits / elapsed),
        "appends_per_commit": round(appends / max(commits, 1), 1),
        "payload_mb_per_s": round(appends * len(payload) / elapsed / 2**20, 1),
        "appends": appends,
    }


def _read_case(log: PartitionLog) -> dict[str, float]:
    records = batches = payload_bytes = 0
    offset = log.start_offset
    started = time.perf_counter()
    while offset < log.end_offset:
        for batch in log.read(offset, READ_BYTES_MAX):
            records += batch.record_count
            batches += 1
            payload_bytes += len(batch.payload)
            offset = batch.base_offset + batch.record_count
    elapsed = time.perf_counter() - started
    return {
        "records_per_s": round(records / elapsed),
        "batches_per_s": round(batches / elapsed),
        "payload_mb_per_s": round(payload_bytes / elapsed / 2**20, 1),
        "records": records,
    }


async def _run(root: pathlib.Path) -> None:
    default, tuned = SWITCH_INTERVAL_DEFAULT_S, SWITCH_INTERVAL_TUNED_S
    cases = [
        # (name, durability, record bytes, records per batch, appends in flight, switch interval)
        ("append_sync_batch_1000x100B", Durability.SYNC, 100, 1000, 16, default),
        ("append_sync_batch_1000x100B", Durability.SYNC, 100, 1000, 16, tuned),
        ("append_sync_record_1KiB", Durability.SYNC, 1024, 1, 256, default),
        ("append_sync_record_1KiB", Durability.SYNC, 1024, 1, 256, tuned),
        ("append_async_record_1KiB", Durability.ASYNC, 1024, 1, 256, tuned),
    ]
    for number, (name, durability, record_bytes, records, window, interval_s) in enumerate(cases):
        sys.setswitchinterval(interval_s)
        config = StorageConfig(path=root / str(number), durability=durability)
        async with NodeStorage(config) as storage:
            log = storage.partition_log(GROUP)
            payload = bytes(record_bytes * records)
            figures = await _append_case(log, storage, payload, records, window)
            context = {"switch_interval_ms": interval_s * 1000}
            _emit(name, durability=str(durability), window=window, **context, **figures)
            _emit(name.replace("append", "read"), **context, **_read_case(log))


def main() -> None:
    previous_interval_s = sys.getswitchinterval()
    try:
        with tempfile.TemporaryDirectory(prefix="weir-bench-storage-") as root:
            asyncio.run(_run(pathlib.Path(root)))
    finally:
        sys.setswitchinterval(previous_interval_s)


if __name__ == "__main__":
    main()
