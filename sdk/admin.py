"""The blocking admin client: `weir.aio.Admin` driven from a background loop thread.

with weir.Admin("127.0.0.1:7070") as admin:
    admin.create_topic("orders", partitions=6)
"""

from __future__ import annotations

import random
from types import TracebackType

from weir._nodes import Bootstrap
from weir._sync import LoopThread
from weir.aio.admin import Admin as AsyncAdmin
from weir.group_types import GroupInfo, GroupSummary
from weir.queue_types import QueueStats
from weir.types import ClusterInfo, StartSpec, TopicInfo

__all__ = ["Admin"]


class Admin:
    """Blocking twin of `weir.aio.Admin`; takes the same arguments."""

    def __init__(
        self,
        bootstrap: Bootstrap,
        *,
        request_timeout_ms: float = 30_000,
        reconnect_attempts: int = 3,
        retry_backoff_ms: int = 100,
        coordinator_wait_timeout_ms: float = 60_000,
        rng: random.Random | None = None,
    ) -> None:
        self._admin = AsyncAdmin(
            bootstrap,
            request_timeout_ms=request_timeout_ms,
            reconnect_attempts=reconnect_attempts,
            retry_backoff_ms=retry_backoff_ms,
            coordinator_wait_timeout_ms=coordinator_wait_timeout_ms,
            rng=rng,
        )
        self._thread = LoopThread("weir-admin")
        try:
            self._thread.run(self._admin.start())
        except BaseException:
            self._thread.close()
            raise

    def __enter__(self) -> Admin:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        replication_factor: int = 0,
        *,
        retention_bytes: int | None = None,
        retention_ms: int | None = None,
        record_bytes_max: int | None = None,
        max_deliveries: int | None = None,
        retry_backoff_ms_min: int | None = None,
        retry_backoff_ms_max: int | None = None,
        dead_letter_topic: str | None = None,
    ) -> TopicInfo:
        """Create a topic; `TopicExistsError` if it exists (options: `aio.Admin.create_topic`)."""
        return self._thread.run(
            self._admin.create_topic(
                name,
                partitions,
                replication_factor,
                retention_bytes=retention_bytes,
                retention_ms=retention_ms,
                record_bytes_max=record_bytes_max,
                max_deliveries=max_deliveries,
                retry_backoff_ms_min=retry_backoff_ms_min,
                retry_backoff_ms_max=retry_backoff_ms_max,
                dead_letter_topic=dead_letter_topic,
            )
        )

    def delete_topic(self, name: str) -> None:
        """Delete a topic; `TopicNotFoundError` if it does not exist."""
        self._thread.run(self._admin.delete_topic(name))

    def list_topics(self) -> list[TopicInfo]:
        """Every topic, sorted by name."""
        return self._thread.run(self._admin.list_topics())

    def describe_topic(self, name: str) -> TopicInfo:
        """A topic with its partitions' state."""
        return self._thread.run(self._admin.describe_topic(name))

    def update_topic_config(
        self,
        name: str,
        *,
        retention_bytes: int | None = None,
        retention_ms: int | None = None,
        record_bytes_max: int | None = None,
        max_deliveries: int | None = None,
        retry_backoff_ms_min: int | None = None,
        retry_backoff_ms_max: int | None = None,
        dead_letter_topic: str | None = None,
    ) -> TopicInfo:
        """Change the given config fields (see `aio.Admin.update_topic_config`)."""
        return self._thread.run(
            self._admin.update_topic_config(
                name,
                retention_bytes=retention_bytes,
                retention_ms=retention_ms,
                record_bytes_max=record_bytes_max,
                max_deliveries=max_deliveries,
                retry_backoff_ms_min=retry_backoff_ms_min,
                retry_backoff_ms_max=retry_backoff_ms_max,
                dead_letter_topic=dead_letter_topic,
            )
        )

    def describe_cluster(self) -> ClusterInfo:
        """The cluster's nodes and limits."""
        return self._thread.run(self._admin.describe_cluster())

    def list_groups(self) -> list[GroupSummary]:
        return self._thread.run(self._admin.list_groups())

    def describe_group(self, name: str) -> GroupInfo:
        return self._thread.run(self._admin.describe_group(name))

    def reset_group_offsets(
        self, name: str, topic: str, to: StartSpec, partitions: list[int] | None = None
    ) -> dict[int, int]:
        return self._thread.run(self._admin.reset_group_offsets(name, topic, to, partitions))

    def queue_stats(self, topic: str, group: str | None = None) -> QueueStats:
        return self._thread.run(self._admin.queue_stats(topic, group))

    def close(self) -> None:
        """Close the channel and stop the thread."""
        try:
            self._thread.run(self._admin.close())
        finally:
            self._thread.close()
