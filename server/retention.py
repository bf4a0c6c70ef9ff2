"""Retention on a single node: trim every topic with a limit, every retention interval.

In cluster mode each replica trims its own copy instead (see cluster_node).
"""

from __future__ import annotations

import asyncio
import logging

from weir.cluster.storage import LogClosedError, NodeStorage, StorageError, StorageFullError
from weir.server.services import writer_died
from weir.server.topics import TopicRegistry

log = logging.getLogger("weir.server")


async def retention_loop(storage: NodeStorage, topics: TopicRegistry, interval_s: float) -> None:
    """Trims every topic with a retention limit, every retention interval.

    One damaged partition must not stop retention for the others: it is
    logged at WARNING and skipped until the node restarts (reading it
    again would only fail again). A full storage is logged and retried
    next round. A dead storage writer or a bug ends this task and so
    stops the node.
    """
    damaged: set[int] = set()
    while True:
        await asyncio.sleep(interval_s)
        for topic in topics.all():
            config = topic.config
            if config.retention_bytes < 0 and config.retention_ms < 0:
                continue
            for partition, group_id in enumerate(topic.group_ids):
                if group_id in damaged:
                    continue
                try:
                    await storage.enforce_retention(
                        group_id,
                        None if config.retention_bytes < 0 else config.retention_bytes,
                        None if config.retention_ms < 0 else config.retention_ms,
                    )
                except StorageFullError as exc:
                    log.warning(
                        "retention of partition %d of topic %r failed, storage is full: %s",
                        partition,
                        topic.name,
                        exc,
                    )
                except LogClosedError:
                    # The topic was deleted while this round ran.
                    continue
                except StorageError as exc:
                    if writer_died(storage):
                        raise
                    # A failed checksum (CorruptEntryError) or a damaged
                    # LMDB page met while reading this partition.
                    damaged.add(group_id)
                    log.warning(
                        "retention skips partition %d of topic %r until restart: damaged data: %s",
                        partition,
                        topic.name,
                        exc,
                    )
