"""The asyncio admin client: topics and the cluster, as SDK dataclasses.

async with weir.aio.Admin("127.0.0.1:7070") as admin:
    await admin.create_topic("orders", partitions=6)
    info = await admin.describe_topic("orders")
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from weir._conn import admin_stub, open_channel, translated
from weir.errors import ClosedError
from weir.types import ClusterInfo, PartitionInfo, TopicInfo
from weir.v1 import admin_pb2

__all__ = ["Admin"]


def _config(
    retention_bytes: int | None, retention_ms: int | None, record_bytes_max: int | None
) -> admin_pb2.TopicConfig:
    config = admin_pb2.TopicConfig()
    if retention_bytes is not None:
        config.retention_bytes = retention_bytes
    if retention_ms is not None:
        config.retention_ms = retention_ms
    if record_bytes_max is not None:
        config.record_bytes_max = record_bytes_max
    return config


class Admin:
    """Manages topics and describes the cluster.

    Args:
        bootstrap: "host:port" of any broker node.
        request_timeout_ms: Deadline of each call.
    """

    def __init__(self, bootstrap: str, *, request_timeout_ms: float = 30_000) -> None:
        self._bootstrap = bootstrap
        self._timeout_s = request_timeout_ms / 1000.0
        self._stub: Any = None
        self._closed = False

    async def __aenter__(self) -> Admin:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the channel (`async with` does this)."""
        if self._stub is None:
            self._channel = open_channel(self._bootstrap)
            self._stub = admin_stub(self._channel)

    async def close(self) -> None:
        """Close the channel."""
        if self._stub is not None and not self._closed:
            await self._channel.close()
        self._closed = True

    def _admin(self) -> Any:
        if self._stub is None or self._closed:
            raise ClosedError("the admin client is not open")
        return self._stub

    async def create_topic(
        self,
        name: str,
        partitions: int = 1,
        replication_factor: int = 0,
        *,
        retention_bytes: int | None = None,
        retention_ms: int | None = None,
        record_bytes_max: int | None = None,
    ) -> TopicInfo:
        """Create a topic; `TopicExistsError` if it exists.

        `replication_factor=0` takes the cluster's default; unset config
        fields take their defaults.
        """
        request = admin_pb2.CreateTopicRequest(
            name=name,
            partition_count=partitions,
            replication_factor=replication_factor,
            config=_config(retention_bytes, retention_ms, record_bytes_max),
        )
        async with translated():
            response: admin_pb2.CreateTopicResponse = await self._admin().CreateTopic(
                request, timeout=self._timeout_s
            )
        return TopicInfo.from_proto(response.topic)

    async def delete_topic(self, name: str) -> None:
        """Delete a topic and its records; `TopicNotFoundError` if it does not exist."""
        async with translated():
            await self._admin().DeleteTopic(
                admin_pb2.DeleteTopicRequest(name=name), timeout=self._timeout_s
            )

    async def list_topics(self) -> list[TopicInfo]:
        """Every topic, sorted by name (without partition state)."""
        async with translated():
            response: admin_pb2.ListTopicsResponse = await self._admin().ListTopics(
                admin_pb2.ListTopicsRequest(), timeout=self._timeout_s
            )
        return [TopicInfo.from_proto(t) for t in response.topics]

    async def describe_topic(self, name: str) -> TopicInfo:
        """A topic with its partitions' offsets, sizes and leaders."""
        async with translated():
            response: admin_pb2.DescribeTopicResponse = await self._admin().DescribeTopic(
                admin_pb2.DescribeTopicRequest(name=name), timeout=self._timeout_s
            )
        partitions = tuple(PartitionInfo.from_proto(p) for p in response.partitions)
        return TopicInfo.from_proto(response.topic, partitions)

    async def update_topic_config(
        self,
        name: str,
        *,
        retention_bytes: int | None = None,
        retention_ms: int | None = None,
        record_bytes_max: int | None = None,
    ) -> TopicInfo:
        """Change the given config fields; the others keep their value."""
        request = admin_pb2.UpdateTopicConfigRequest(
            name=name, config=_config(retention_bytes, retention_ms, record_bytes_max)
        )
        async with translated():
            response: admin_pb2.UpdateTopicConfigResponse = await self._admin().UpdateTopicConfig(
                request, timeout=self._timeout_s
            )
        return TopicInfo.from_proto(response.topic)

    async def describe_cluster(self) -> ClusterInfo:
        """The cluster's nodes and the answering node's limits."""
        async with translated():
            response: admin_pb2.DescribeClusterResponse = await self._admin().DescribeCluster(
                admin_pb2.DescribeClusterRequest(), timeout=self._timeout_s
            )
        return ClusterInfo.from_proto(response)
