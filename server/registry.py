"""What the data path and the admin service need of topics and committed offsets.

A single node keeps them in its meta-store (`TopicRegistry`, `GroupOffsets`);
a clustered node reads them from the controller's replicated state and
changes them by proposals (`ClusterTopics`; offsets through the coordinator
groups, `ClusterOffsets`). Both satisfy
these protocols, so produce, consume and admin do not know which mode they
run in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from weir.server.topics import ConfigPatch, Topic


class TopicSource(Protocol):
    """Looking a topic up (produce and consume)."""

    def get(self, name: str) -> Topic: ...


class Topics(TopicSource, Protocol):
    """A topic registry (the admin service)."""

    def all(self) -> list[Topic]: ...

    async def create(
        self, name: str, partition_count: int, replication_factor: int, patch: ConfigPatch
    ) -> Topic: ...

    async def delete(self, name: str) -> None: ...

    async def update_config(self, name: str, patch: ConfigPatch) -> Topic: ...


class Offsets(Protocol):
    """Consumer groups' committed offsets (consume)."""

    async def fetch(self, group: str, topic: Topic, partitions: Iterable[int]) -> dict[int, int]:
        """The committed offsets of those partitions that have one."""
        ...

    async def commit(
        self, group: str, topic: Topic, offsets: Mapping[int, int]
    ) -> dict[int, int]: ...

    async def forget_log(self, group_id: int) -> None: ...


__all__ = ["Offsets", "TopicSource", "Topics"]
