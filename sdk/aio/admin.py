"""The asyncio admin client: topics and the cluster, as SDK dataclasses.

async with weir.aio.Admin("127.0.0.1:7070,127.0.0.1:7071") as admin:
    await admin.create_topic("orders", partitions=6)
    info = await admin.describe_topic("orders")

Every call goes to the node in use; a retriable failure there (a failed
connect, UNAVAILABLE, NOT_LEADER) moves to the next node and the call is
made again (`weir._failover.call_unary`).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import grpc.aio

from weir._conn import admin_stub
from weir._failover import Connection, ElectionWait, call_unary
from weir._nodes import Bootstrap
from weir.errors import ClosedError
from weir.group_types import GroupInfo, GroupSummary
from weir.queue_types import QueueStats
from weir.types import ClusterInfo, PartitionInfo, StartSpec, TopicInfo, start_position
from weir.v1 import admin_pb2

__all__ = ["Admin"]


def _config(
    retention_bytes: int | None = None,
    retention_ms: int | None = None,
    record_bytes_max: int | None = None,
    max_deliveries: int | None = None,
    retry_backoff_ms_min: int | None = None,
    retry_backoff_ms_max: int | None = None,
    dead_letter_topic: str | None = None,
) -> admin_pb2.TopicConfig:
    """The wire config with exactly the fields given (None: not sent, so unchanged/default)."""
    config = admin_pb2.TopicConfig()
    if retention_bytes is not None:
        config.retention_bytes = retention_bytes
    if retention_ms is not None:
        config.retention_ms = retention_ms
    if record_bytes_max is not None:
        config.record_bytes_max = record_bytes_max
    if max_deliveries is not None:
        config.max_deliveries = max_deliveries
    if retry_backoff_ms_min is not None:
        config.retry_backoff_ms_min = retry_backoff_ms_min
    if retry_backoff_ms_max is not None:
        config.retry_backoff_ms_max = retry_backoff_ms_max
    if dead_letter_topic is not None:
        config.dead_letter_topic = dead_letter_topic
    return config


class Admin:
    """Manages topics and describes the cluster.

    Args:
        bootstrap: "host:port" of any broker node, or several: a sequence of
            them or one comma-separated string.
        request_timeout_ms: Deadline of each attempt of a call.
        reconnect_attempts: Attempts of a call per known address after
            retriable failures (a failed connect, UNAVAILABLE, NOT_LEADER)
            before the error is raised.
        retry_backoff_ms: The wait after a full round of failed nodes; it
            doubles up to 5 s, with +-20% jitter.
        coordinator_wait_timeout_ms: How long a consumer-group call keeps
            trying while the group's coordinator has no leader
            (NOT_COORDINATOR: right after a cluster starts, or while the
            coordinator moves) before that error is raised; such answers
            use no `reconnect_attempts`.
        rng: Randomness for the start node and the jitter.
    """

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
        if reconnect_attempts < 1:
            raise ValueError("reconnect_attempts must be at least 1")
        if coordinator_wait_timeout_ms < 0:
            raise ValueError("coordinator_wait_timeout_ms must not be negative")
        self._timeout_s = request_timeout_ms / 1000.0
        self._attempts = reconnect_attempts
        self._coordinator_wait_s = coordinator_wait_timeout_ms / 1000.0
        self._conn = Connection(
            bootstrap,
            rng=rng,
            backoff_ms=retry_backoff_ms,
            connect_timeout_s=self._timeout_s,
        )
        self._started = False
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
        """Make the client usable (`async with` does this); it connects on the first call."""
        self._started = True

    async def close(self) -> None:
        """Close the channels."""
        if not self._closed:
            await self._conn.close()
        self._closed = True

    async def _call(self, method: str, request: Any) -> Any:
        """`AdminService.<method>(request)` on the node in use, with failover."""
        if not self._started or self._closed:
            raise ClosedError("the admin client is not open")

        def attempt(channel: grpc.aio.Channel) -> Awaitable[Any]:
            rpc: Callable[..., Awaitable[Any]] = getattr(admin_stub(channel), method)
            return rpc(request, timeout=self._timeout_s)

        return await call_unary(
            self._conn,
            attempt,
            attempts_per_address=self._attempts,
            coordinator_wait=ElectionWait(self._coordinator_wait_s),
        )

    async def create_topic(
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
        """Create a topic; `TopicExistsError` if it exists.

        If an attempt's outcome is unknown (the connection died after the
        request left) the call is made again on the next node, and may then
        answer `TopicExistsError` for the topic the first attempt created;
        such an error has metadata `after_unknown_outcome="true"`.

        `replication_factor=0` takes the cluster's default; unset config
        fields take their defaults. The queue-mode settings: `max_deliveries`
        (default 5, 0 never dead-letters, at most 1000), the redelivery
        backoff `retry_backoff_ms_min`/`_max` (1000/60000; 0 <= min <= max <=
        86400000) and `dead_letter_topic` ("" means `<name>.dlq`; a name of
        246 to 249 characters has no such default, and queue mode then
        needs `dead_letter_topic`, or `max_deliveries=0`). A bad value raises
        `InvalidArgumentError` (reason INVALID_CONFIG).
        """
        request = admin_pb2.CreateTopicRequest(
            name=name,
            partition_count=partitions,
            replication_factor=replication_factor,
            config=_config(
                retention_bytes=retention_bytes,
                retention_ms=retention_ms,
                record_bytes_max=record_bytes_max,
                max_deliveries=max_deliveries,
                retry_backoff_ms_min=retry_backoff_ms_min,
                retry_backoff_ms_max=retry_backoff_ms_max,
                dead_letter_topic=dead_letter_topic,
            ),
        )
        response: admin_pb2.CreateTopicResponse = await self._call("CreateTopic", request)
        return TopicInfo.from_proto(response.topic)

    async def delete_topic(self, name: str) -> None:
        """Delete a topic and its records; `TopicNotFoundError` if it does not exist."""
        await self._call("DeleteTopic", admin_pb2.DeleteTopicRequest(name=name))

    async def list_topics(self) -> list[TopicInfo]:
        """Every topic, sorted by name (without partition state)."""
        response: admin_pb2.ListTopicsResponse = await self._call(
            "ListTopics", admin_pb2.ListTopicsRequest()
        )
        return [TopicInfo.from_proto(t) for t in response.topics]

    async def describe_topic(self, name: str) -> TopicInfo:
        """A topic with its partitions' offsets, sizes and leaders."""
        response: admin_pb2.DescribeTopicResponse = await self._call(
            "DescribeTopic", admin_pb2.DescribeTopicRequest(name=name)
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
        max_deliveries: int | None = None,
        retry_backoff_ms_min: int | None = None,
        retry_backoff_ms_max: int | None = None,
        dead_letter_topic: str | None = None,
    ) -> TopicInfo:
        """Change the given config fields; the others keep their value.

        The merged config is checked as a whole (so raise both backoff
        bounds in one call); `dead_letter_topic=""` goes back to the default
        (`<name>.dlq`, or none for a name of 246 to 249 characters).
        """
        request = admin_pb2.UpdateTopicConfigRequest(
            name=name,
            config=_config(
                retention_bytes=retention_bytes,
                retention_ms=retention_ms,
                record_bytes_max=record_bytes_max,
                max_deliveries=max_deliveries,
                retry_backoff_ms_min=retry_backoff_ms_min,
                retry_backoff_ms_max=retry_backoff_ms_max,
                dead_letter_topic=dead_letter_topic,
            ),
        )
        response: admin_pb2.UpdateTopicConfigResponse = await self._call(
            "UpdateTopicConfig", request
        )
        return TopicInfo.from_proto(response.topic)

    async def describe_cluster(self) -> ClusterInfo:
        """The cluster's nodes and the answering node's limits."""
        response: admin_pb2.DescribeClusterResponse = await self._call(
            "DescribeCluster", admin_pb2.DescribeClusterRequest()
        )
        return ClusterInfo.from_proto(response)

    async def list_groups(self) -> list[GroupSummary]:
        """Every consumer group with committed offsets or members online, by name.

        Reads every page (`ListGroups` answers at most 1000 groups a call).
        """
        groups: list[GroupSummary] = []
        token = ""
        while True:
            response: admin_pb2.ListGroupsResponse = await self._call(
                "ListGroups", admin_pb2.ListGroupsRequest(page_token=token)
            )
            groups.extend(GroupSummary.from_proto(g) for g in response.groups)
            token = response.next_page_token
            if not token:
                return groups

    async def describe_group(self, name: str) -> GroupInfo:
        """A group's members, owners, committed and end offsets and lag per partition.

        `GroupNotFoundError` (a `NotFoundError`) for a group with neither
        offsets nor members.
        """
        response: admin_pb2.DescribeGroupResponse = await self._call(
            "DescribeGroup", admin_pb2.DescribeGroupRequest(name=name)
        )
        return GroupInfo.from_proto(response)

    async def reset_group_offsets(
        self, name: str, topic: str, to: StartSpec, partitions: list[int] | None = None
    ) -> dict[int, int]:
        """Set the group's committed offsets on `topic`; the offsets stored, by partition.

        `to` is "earliest", "latest", an offset (every partition named gets
        it) or a timezone-aware datetime (the first record at or after it).
        `partitions=None` resets all of the topic's. Only while the group
        has no member online, else FAILED_PRECONDITION `GROUP_HAS_MEMBERS`.
        """
        request = admin_pb2.ResetGroupOffsetsRequest(
            name=name, topic=topic, partitions=partitions or [], position=start_position(to)
        )
        response: admin_pb2.ResetGroupOffsetsResponse = await self._call(
            "ResetGroupOffsets", request
        )
        return {o.partition: o.offset for o in response.offsets}

    async def queue_stats(self, topic: str, group: str | None = None) -> QueueStats:
        """Queue groups' ready, in-flight, delayed and dead-lettered counts per partition.

        `group=None` answers every queue group with state on the topic; a
        group without queue state there gives no rows (not an error).
        `TopicNotFoundError` for an unknown topic, INVALID_ARGUMENT
        `INVALID_GROUP_NAME` for a bad group name.
        """
        response: admin_pb2.QueueStatsResponse = await self._call(
            "QueueStats", admin_pb2.QueueStatsRequest(topic=topic, group=group or "")
        )
        return QueueStats.from_proto(response)
