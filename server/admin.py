"""AdminService: topics, their configs, and the cluster as this node sees it."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from weir.cluster.host import HostError
from weir.cluster.storage import LogClosedError, StorageError
from weir.server.config import NodeConfig
from weir.server.errors import BrokerError, abort, internal_error, storage_error, topic_not_found
from weir.server.group_admin import GroupAdmin
from weir.server.peer_calls import from_peer
from weir.server.queue_stats import QueueStats, is_forwarded
from weir.server.registry import Topics
from weir.server.replicator import NotHostedError, Replicator
from weir.server.topics import ConfigPatch, Topic
from weir.v1 import admin_pb2, admin_pb2_grpc

if TYPE_CHECKING:
    from weir.server.cluster_node import ClusterView, PartitionView

# One source of truth for the version: the installed distribution (pyproject.toml).
VERSION = importlib.metadata.version("weir")

Resp = TypeVar("Resp")
Context = grpc.aio.ServicerContext[Any, Any]

log = logging.getLogger("weir.server.admin")

# A DescribeTopic one node asks of another for partitions it has no replica
# of carries this key; the node asked answers from its own replicas only, so
# asks never chain.
DESCRIBE_FORWARDED_KEY = "weir-describe-forwarded"
DESCRIBE_FORWARDED = ((DESCRIBE_FORWARDED_KEY, "1"),)
# A replica that does not answer within this is passed over (the next
# replica is asked); below the SDK's 30 s request timeout even with three.
REPLICA_DESCRIBE_TIMEOUT_S = 2.0


def describe_forwarded(context: Any) -> bool:
    """Whether this DescribeTopic was asked by another node (answered from local replicas)."""
    return from_peer(context, DESCRIBE_FORWARDED_KEY)


def _patch(config: admin_pb2.TopicConfig) -> ConfigPatch:
    """The fields the request set; checking them is the registry's job (INVALID_CONFIG)."""
    has = config.HasField
    return ConfigPatch(
        retention_bytes=config.retention_bytes if has("retention_bytes") else None,
        retention_ms=config.retention_ms if has("retention_ms") else None,
        record_bytes_max=config.record_bytes_max if has("record_bytes_max") else None,
        max_deliveries=config.max_deliveries if has("max_deliveries") else None,
        retry_backoff_ms_min=config.retry_backoff_ms_min if has("retry_backoff_ms_min") else None,
        retry_backoff_ms_max=config.retry_backoff_ms_max if has("retry_backoff_ms_max") else None,
        dead_letter_topic=config.dead_letter_topic if has("dead_letter_topic") else None,
    )


def topic_proto(topic: Topic) -> admin_pb2.Topic:
    """The topic as the API answers it: every config field set."""
    config = topic.config
    return admin_pb2.Topic(
        name=topic.name,
        partition_count=topic.partition_count,
        replication_factor=topic.replication_factor,
        config=admin_pb2.TopicConfig(
            retention_bytes=config.retention_bytes,
            retention_ms=config.retention_ms,
            record_bytes_max=config.record_bytes_max,
            max_deliveries=config.max_deliveries,
            retry_backoff_ms_min=config.retry_backoff_ms_min,
            retry_backoff_ms_max=config.retry_backoff_ms_max,
            dead_letter_topic=config.dead_letter_topic,
        ),
    )


async def _guard(context: Context, method: str, call: Awaitable[Resp], topic: str = "") -> Resp:
    """The boundary of every admin method: each failure leaves as a rich gRPC status.

    Operating errors carry their own status; storage failures go through the
    one translation every method shares (`storage_error`), so a full disk is
    STORAGE_FULL here as on the produce path. Anything else is a bug: it is
    logged with its traceback and answered INTERNAL with a reason, never the
    bare UNKNOWN that gRPC would make of an escaped exception.
    """
    try:
        return await call
    except grpc.aio.AbortError:
        raise
    except BrokerError as error:
        await abort(context, error)
    except LogClosedError:
        # The topic's logs were closed by its deletion while this call ran.
        await abort(context, topic_not_found(topic))
    except StorageError as exc:
        await abort(context, storage_error(exc, method))
    except Exception as exc:
        log.exception("%s failed unexpectedly", method)
        await abort(context, internal_error(method, exc))


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        topics: Topics,
        replicator: Replicator,
        config: NodeConfig,
        cluster_id: Callable[[], str],
        address: Callable[[], str],
        cluster: ClusterView | None = None,
        groups: GroupAdmin | None = None,
        queue_stats: QueueStats | None = None,
    ) -> None:
        self._queue_stats = queue_stats
        self._cluster = cluster
        self._groups = groups
        self._topics = topics
        self._replicator = replicator
        self._config = config
        self._cluster_id = cluster_id
        self._address = address

    async def CreateTopic(
        self, request: admin_pb2.CreateTopicRequest, context: Context
    ) -> admin_pb2.CreateTopicResponse:
        async def run() -> admin_pb2.CreateTopicResponse:
            topic = await self._topics.create(
                request.name,
                request.partition_count,
                request.replication_factor,
                _patch(request.config),
            )
            return admin_pb2.CreateTopicResponse(topic=topic_proto(topic))

        return await _guard(context, "CreateTopic", run(), request.name)

    async def DeleteTopic(
        self, request: admin_pb2.DeleteTopicRequest, context: Context
    ) -> admin_pb2.DeleteTopicResponse:
        async def run() -> admin_pb2.DeleteTopicResponse:
            await self._topics.delete(request.name)
            return admin_pb2.DeleteTopicResponse()

        return await _guard(context, "DeleteTopic", run(), request.name)

    async def ListTopics(
        self, request: admin_pb2.ListTopicsRequest, context: Context
    ) -> admin_pb2.ListTopicsResponse:
        async def run() -> admin_pb2.ListTopicsResponse:
            return admin_pb2.ListTopicsResponse(topics=[topic_proto(t) for t in self._topics.all()])

        return await _guard(context, "ListTopics", run())

    async def DescribeTopic(
        self, request: admin_pb2.DescribeTopicRequest, context: Context
    ) -> admin_pb2.DescribeTopicResponse:
        async def run() -> admin_pb2.DescribeTopicResponse:
            topic = self._topics.get(request.name)
            if self._cluster is not None:
                return await self._describe_clustered(topic, describe_forwarded(context))
            partitions = []
            for number, group_id in enumerate(topic.group_ids):
                log = self._replicator.log(group_id)
                partitions.append(
                    admin_pb2.PartitionInfo(
                        partition=number,
                        start_offset=log.start_offset,
                        end_offset=log.end_offset,
                        size_bytes=log.size_bytes,
                        leader_id=self._config.node_id,
                        replica_ids=[self._config.node_id],
                    )
                )
            return admin_pb2.DescribeTopicResponse(topic=topic_proto(topic), partitions=partitions)

        return await _guard(context, "DescribeTopic", run(), request.name)

    async def _describe_clustered(
        self, topic: Topic, forwarded: bool
    ) -> admin_pb2.DescribeTopicResponse:
        """Each partition from this node's replica, or else from a node that holds one.

        The controller's metadata names every partition's replicas; only a
        replica knows its leader, offsets and size. With more nodes than
        the replication factor, partitions placed elsewhere only are asked
        of their replicas (preferred leader first). One that no replica
        answers keeps what the metadata says: its replicas, leader 0 (not
        known) and offsets 0. A node asked by another (`forwarded`) answers
        from its own replicas only.
        """
        assert self._cluster is not None
        partitions = []
        elsewhere: dict[int, PartitionView] = {}
        views = self._cluster.partitions(topic.name)
        for number, (group_id, view) in enumerate(zip(topic.group_ids, views, strict=True)):
            info = admin_pb2.PartitionInfo(
                partition=number,
                leader_id=view.leader_id,
                leader_address=view.leader_address,
                replica_ids=[r.node_id for r in view.replicas],
                replicas=[
                    admin_pb2.ReplicaInfo(
                        node_id=r.node_id,
                        address=r.address,
                        alive=r.alive,
                        lag_entries=r.lag_entries,
                    )
                    for r in view.replicas
                ],
            )
            try:
                # This node's replica, if it holds one: committed records it applied.
                log = self._replicator.log(group_id)
                info.start_offset = log.start_offset
                info.end_offset = log.end_offset
                info.size_bytes = log.size_bytes
            except NotHostedError:
                elsewhere[number] = view
            except (HostError, StorageError, BrokerError):
                pass
            partitions.append(info)
        if elsewhere and not forwarded:
            await self._from_replicas(topic.name, elsewhere, partitions)
        return admin_pb2.DescribeTopicResponse(topic=topic_proto(topic), partitions=partitions)

    async def _from_replicas(
        self,
        name: str,
        elsewhere: dict[int, PartitionView],
        partitions: list[admin_pb2.PartitionInfo],
    ) -> None:
        """Fill in `elsewhere`'s partitions from their replicas, in rounds of one ask per node.

        Round n asks each partition's n-th live replica, one call per node
        for all the partitions it is asked about; a partition is settled by
        the first answer that names its leader.
        """
        candidates = {
            number: [
                r.address
                for r in view.replicas
                if r.alive and r.address and r.node_id != self._config.node_id
            ]
            for number, view in elsewhere.items()
        }
        for round_ in range(max(map(len, candidates.values()), default=0)):
            asks: dict[str, list[int]] = {}
            for number, addresses in candidates.items():
                if round_ < len(addresses):
                    asks.setdefault(addresses[round_], []).append(number)
            answers = await asyncio.gather(*(self._describe_at(a, name) for a in asks))
            for numbers, answer in zip(asks.values(), answers, strict=True):
                for number in numbers:
                    if answer is None or number >= len(answer.partitions):
                        continue
                    theirs = answer.partitions[number]
                    if theirs.leader_id:
                        partitions[number] = theirs
                        del candidates[number]
            if not candidates:
                return

    async def _describe_at(self, address: str, name: str) -> admin_pb2.DescribeTopicResponse | None:
        """The topic as the node at `address` describes it from its replicas; None if it fails."""
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = admin_pb2_grpc.AdminServiceStub(channel)  # type: ignore[no-untyped-call]
                answer: admin_pb2.DescribeTopicResponse = await stub.DescribeTopic(
                    admin_pb2.DescribeTopicRequest(name=name),
                    metadata=DESCRIBE_FORWARDED,
                    timeout=REPLICA_DESCRIBE_TIMEOUT_S,
                )
                return answer
        except grpc.aio.AioRpcError as error:
            log.info("describing %r at %s failed: %s", name, address, error.details())
            return None

    async def UpdateTopicConfig(
        self, request: admin_pb2.UpdateTopicConfigRequest, context: Context
    ) -> admin_pb2.UpdateTopicConfigResponse:
        async def run() -> admin_pb2.UpdateTopicConfigResponse:
            topic = await self._topics.update_config(request.name, _patch(request.config))
            return admin_pb2.UpdateTopicConfigResponse(topic=topic_proto(topic))

        return await _guard(context, "UpdateTopicConfig", run(), request.name)

    async def DescribeCluster(
        self, request: admin_pb2.DescribeClusterRequest, context: Context
    ) -> admin_pb2.DescribeClusterResponse:
        async def run() -> admin_pb2.DescribeClusterResponse:
            if self._cluster is None:
                nodes = [
                    admin_pb2.Node(
                        node_id=self._config.node_id, address=self._address(), alive=True
                    )
                ]
                controller_id = self._config.node_id
            else:
                nodes = [
                    admin_pb2.Node(
                        node_id=n.node_id,
                        address=n.address,
                        alive=n.alive,
                        leader_count=n.leader_count,
                    )
                    for n in self._cluster.nodes()
                ]
                controller_id = self._cluster.controller_id()
            return admin_pb2.DescribeClusterResponse(
                cluster_id=self._cluster_id(),
                nodes=nodes,
                controller_id=controller_id,
                node_id=self._config.node_id,
                version=VERSION,
                durability=str(self._config.durability),
                request_bytes_max=self._config.request_bytes_max,
                record_bytes_max_limit=self._config.record_bytes_max_limit,
            )

        return await _guard(context, "DescribeCluster", run())

    def _group_admin(self) -> GroupAdmin:
        if self._groups is None:
            raise BrokerError(
                grpc.StatusCode.UNAVAILABLE,
                "GROUPS_NOT_READY",
                "this node cannot reach consumer group state yet; retry",
            )
        return self._groups

    async def ListGroups(
        self, request: admin_pb2.ListGroupsRequest, context: Context
    ) -> admin_pb2.ListGroupsResponse:
        async def run() -> admin_pb2.ListGroupsResponse:
            return await self._group_admin().list_groups(request)

        return await _guard(context, "ListGroups", run())

    async def DescribeGroup(
        self, request: admin_pb2.DescribeGroupRequest, context: Context
    ) -> admin_pb2.DescribeGroupResponse:
        async def run() -> admin_pb2.DescribeGroupResponse:
            return await self._group_admin().describe(request.name)

        return await _guard(context, "DescribeGroup", run())

    async def ResetGroupOffsets(
        self, request: admin_pb2.ResetGroupOffsetsRequest, context: Context
    ) -> admin_pb2.ResetGroupOffsetsResponse:
        async def run() -> admin_pb2.ResetGroupOffsetsResponse:
            return await self._group_admin().reset_offsets(request)

        return await _guard(context, "ResetGroupOffsets", run(), request.topic)

    async def QueueStats(
        self, request: admin_pb2.QueueStatsRequest, context: Context
    ) -> admin_pb2.QueueStatsResponse:
        async def run() -> admin_pb2.QueueStatsResponse:
            if self._queue_stats is None:
                raise BrokerError(
                    grpc.StatusCode.UNAVAILABLE,
                    "QUEUES_NOT_READY",
                    "this node does not serve queue groups yet; retry",
                )
            return await self._queue_stats.answer(request, forwarded=is_forwarded(context))

        return await _guard(context, "QueueStats", run(), request.topic)
