"""Retention: trim every partition whose topic has a limit, every retention interval.

One loop serves both modes. A single node trims its partition logs in
storage; in cluster mode each replica trims its own copy through the Raft
host (Raft nodes compact their logs independently: every replica holds
the same entries with the same append times, so each cuts at the same
entry boundaries once it has applied them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from weir.cluster.storage import LogClosedError, NodeStorage, StorageError, StorageFullError
from weir.server.services import writer_died

log = logging.getLogger("weir.server")


class SkipPartition(Exception):
    """A trim found the partition gone (stopped or deleted while the round ran)."""


# (topic name, partition number, group id, retention_bytes or None, retention_ms or None)
Target = tuple[str, int, int, int | None, int | None]
Trim = Callable[[int, int | None, int | None], Awaitable[object]]


def retention_limits(
    retention_bytes: int, retention_ms: int
) -> tuple[int | None, int | None] | None:
    """A topic's limits with -1 (unlimited) as None; None if it has none at all."""
    if retention_bytes < 0 and retention_ms < 0:
        return None
    return (
        None if retention_bytes < 0 else retention_bytes,
        None if retention_ms < 0 else retention_ms,
    )


async def retention_loop(
    storage: NodeStorage,
    targets: Callable[[], Iterable[Target]],
    trim: Trim,
    interval_s: float,
) -> None:
    """Trims every target, every `interval_s`.

    One damaged partition must not stop retention for the others: it is
    logged at WARNING and skipped until the node restarts (reading it
    again would only fail again). A full storage is logged and retried
    next round. A dead storage writer or a bug ends this task and so
    stops the node.
    """
    damaged: set[int] = set()
    while True:
        await asyncio.sleep(interval_s)
        for name, partition, group_id, retention_bytes, retention_ms in targets():
            if group_id in damaged:
                continue
            try:
                await trim(group_id, retention_bytes, retention_ms)
            except (SkipPartition, LogClosedError):
                continue  # stopped or deleted while this round ran
            except StorageFullError as exc:
                log.warning(
                    "retention of partition %d of topic %r failed, storage is full: %s",
                    partition,
                    name,
                    exc,
                )
            except StorageError as exc:
                if writer_died(storage):
                    raise
                # A failed checksum (CorruptEntryError) or a damaged LMDB
                # page met while reading this partition.
                damaged.add(group_id)
                log.warning(
                    "retention skips partition %d of topic %r until restart: damaged data: %s",
                    partition,
                    name,
                    exc,
                )
            # Many partitions: let the loop serve others between them.
            await asyncio.sleep(0)
