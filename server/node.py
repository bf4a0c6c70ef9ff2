"""One broker node: assembles storage, the topic registry and the gRPC services, then stops them.

`Node.run` owns every component as an async context and returns only after
a clean stop: on a stop signal the node reports NOT_SERVING, refuses new
produce requests with UNAVAILABLE/SHUTTING_DOWN, lets in-flight calls
finish within the grace period, drains the storage writer and closes LMDB.
A single node keeps topics, offsets and data in its own storage; a
clustered one takes them from `ClusterRuntime`. The service handlers are
wired in `services`, single-node retention runs from `retention`.

Background work (retention, dropping deleted topics' data, following
storage health) runs in one `asyncio.TaskGroup` owned by `Node.run`. A
background task that fails (a bug, or a storage writer that died) is logged
with its name and stops the node the same graceful way, then `run` raises
`NodeFailedError`: a node never goes on silently without one of them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any

import grpc

from weir.cluster.storage import NodeStorage, StorageConfig
from weir.server import limits
from weir.server.admin import AdminServicer
from weir.server.cluster_node import ClusterRuntime, ClusterView
from weir.server.config import NodeConfig
from weir.server.consume import ConsumePath
from weir.server.group_admin import GroupAdmin, GroupDirectory
from weir.server.group_directory import LocalGroupDirectory
from weir.server.local_membership import LocalMembership
from weir.server.membership import Membership
from weir.server.offsets import GroupOffsets
from weir.server.produce import ProducePath
from weir.server.produce_forward import Forwarder
from weir.server.produce_route import Router
from weir.server.producer_ids import ClusterProducerIds, LocalProducerIds, ProducerIds
from weir.server.queue_deadletter import RouterDeadLetters
from weir.server.queue_dispatch import QueueDispatcher
from weir.server.queue_hosts import LocalQueueHost, QueueHost, RaftQueueHost
from weir.server.queue_stats import QueueStats
from weir.server.registry import Offsets, Topics
from weir.server.replicator import LocalReplicator, Replicator
from weir.server.retention import Target, retention_limits, retention_loop
from weir.server.services import (
    BROKER_SERVICE,
    HEALTH_SERVICE,
    MALFORMED,
    NodeHealth,
    add_services,
    writer_died,
)
from weir.server.topics import Topic, TopicRegistry

# Names that lived here before the service wiring moved to `services`.
__all__ = [
    "BROKER_SERVICE",
    "CLUSTER_NS",
    "HEALTH_SERVICE",
    "MALFORMED",
    "Node",
    "NodeFailedError",
    "NodeHealth",
    "StartError",
    "wall_clock_ms",
    "writer_died",
]

log = logging.getLogger("weir.server")

CLUSTER_NS = "cluster"
_CLUSTER_ID_KEY = b"id"


class StartError(Exception):
    """The node cannot start (address in use, unusable data folder)."""


class NodeFailedError(StartError):
    """A background task of a running node failed; the node stopped.

    A StartError so that `weir serve` reports it the same way: one `error:`
    line and a non-zero exit, after the node's own log line naming the task.
    """


async def _owned(name: str, work: Coroutine[Any, Any, None]) -> None:
    """Runs one background task of the node; its failure is logged, then stops the node."""
    try:
        await work
    except Exception:
        log.critical("background task %r failed; stopping the node", name, exc_info=True)
        raise


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclasses.dataclass(slots=True)
class _Parts:
    """What differs between a single node and a clustered one."""

    topics: Topics
    offsets: Offsets
    replicator: Replicator
    background: list[tuple[str, Coroutine[Any, Any, None]]]
    producer_ids: ProducerIds
    membership: Membership
    groups: GroupDirectory


def _grpc_server(config: NodeConfig) -> grpc.aio.Server:
    """A gRPC server with the node's message, connection and keepalive limits."""
    return grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", config.request_bytes_max),
            ("grpc.max_send_message_length", config.request_bytes_max),
            ("grpc.so_reuseport", 0),
            # Connections, streams per connection, fixed windows.
            *limits.grpc_options(config),
            # Ping idle clients so that a vanished consumer's stream
            # is noticed and closed; accept clients' own keepalive
            # pings down to a 10 s interval instead of answering them
            # with GOAWAY.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ],
        maximum_concurrent_rpcs=config.calls_max,
    )


class Node:
    def __init__(self, config: NodeConfig, clock_ms: Callable[[], int] = wall_clock_ms) -> None:
        self.config = config
        self._clock_ms = clock_ms
        self._stopping = asyncio.Event()
        self._cluster_id = ""
        self._cluster: ClusterRuntime | None = None
        self.port = 0
        self._produce: ProducePath

    def address(self) -> str:
        """Where clients reach this node: the advertised address, else the bound one."""
        if self.config.advertised_address:
            return self.config.advertised_address
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def run(
        self, stop: asyncio.Event, on_ready: Callable[[Node], None] | None = None
    ) -> None:
        storage_config = StorageConfig(
            path=self.config.data_dir,
            durability=self.config.durability,
            map_size_bytes=self.config.storage_map_size_bytes,
            write_queue_bytes_max=self.config.storage_write_queue_bytes_max,
            txn_bytes_max=self.config.storage_txn_bytes_max,
            clock_ms=self._clock_ms,
        )
        async with NodeStorage(storage_config) as storage:
            await self._load_cluster_id(storage)
            if not self.config.clustered:
                topics = TopicRegistry(storage, self.config)
                await topics.load()
                offsets = GroupOffsets(storage.meta, topics)
                await offsets.load()
                membership = LocalMembership(
                    offsets, lambda name: _partition_count(topics, name), self._clock_ms
                )
                offsets.refuse_outsiders_while(membership.has_members)
                parts = _Parts(
                    topics,
                    offsets,
                    LocalReplicator(storage),
                    [
                        (
                            "retention",
                            retention_loop(
                                storage,
                                lambda: _retention_targets(topics.all()),
                                storage.enforce_retention,
                                self.config.retention_check_interval_ms / 1000,
                            ),
                        ),
                        ("topic data drops", topics.drop_deleted_data(offsets.forget_log)),
                        ("stream groups", membership.run()),
                    ],
                    LocalProducerIds(storage.meta),
                    membership,
                    LocalGroupDirectory(offsets, membership, self.config.node_id),
                )
                await self._run_parts(stop, on_ready, storage, parts)
                return
            # Cluster mode: topics, offsets and data live in Raft groups.
            self._cluster_id = self.config.cluster_id
            # The forwarder hands produce work for partitions this node does
            # not lead to their leaders, so any node accepts any call.
            async with (
                ClusterRuntime(self.config, storage, self.address) as cluster,
                Forwarder(dial_address=cluster.forward_address) as forwarder,
            ):
                self._cluster = cluster
                parts = _Parts(
                    cluster.topics,
                    cluster.offsets,
                    cluster.replicator,
                    cluster.background(),
                    ClusterProducerIds(cluster.proposer),
                    cluster.membership,
                    cluster.groups,
                )
                await self._run_parts(stop, on_ready, storage, parts, cluster.view, forwarder)

    async def _run_parts(
        self,
        stop: asyncio.Event,
        on_ready: Callable[[Node], None] | None,
        storage: NodeStorage,
        parts: _Parts,
        cluster: ClusterView | None = None,
        forwarder: Forwarder | None = None,
    ) -> None:
        # One budget for the request and response bytes of every call.
        budget = limits.MemoryBudget(self.config.inflight_bytes_max)
        produce = ProducePath(
            parts.topics,
            parts.replicator,
            self.config.produce_inflight_requests_max,
            self._clock_ms,
            self._stopping,
            budget,
            forwarder,
            producer_id_expiry_ms=self.config.producer_id_expiry_ms,
            producers_per_partition_max=self.config.producers_per_partition_max,
        )
        if self._cluster is not None:
            # Other nodes forward produce work here over the peer port.
            self._cluster.serve_forwarded_produce(produce.serve)
        # Queue mode: dispatch at the partition leaders of this node; dead
        # letters go through a produce router of their own (explicit partitions).
        queue_host: QueueHost = (
            RaftQueueHost(self._cluster.host, parts.replicator.node_address)
            if self._cluster is not None
            else LocalQueueHost(storage)
        )
        dead_letters = RouterDeadLetters(
            parts.topics,
            Router(parts.topics, parts.replicator, self._clock_ms, self._stopping, forwarder),
        )
        queues = QueueDispatcher(queue_host, dead_letters, self._clock_ms)
        await queues.__aenter__()
        consume = ConsumePath(
            parts.topics,
            parts.replicator,
            parts.offsets,
            self.config,
            self._stopping,
            budget,
            membership=parts.membership,
            queues=queues,
        )
        server = _grpc_server(self.config)
        health = NodeHealth()
        self._produce = produce
        admin = AdminServicer(
            parts.topics,
            parts.replicator,
            self.config,
            lambda: self._cluster_id,
            self.address,
            cluster,
            GroupAdmin(parts.groups, parts.topics, parts.replicator),
            queue_stats=QueueStats(parts.topics, queues, self.config.node_id),
        )
        add_services(
            server,
            produce,
            self.config.produce_request_records_max,
            consume,
            admin,
            health,
            parts.producer_ids,
        )
        try:
            try:
                self.port = server.add_insecure_port(self.config.listen)
            except RuntimeError as exc:
                raise StartError(f"cannot listen on {self.config.listen}: {exc}") from None
            await server.start()
            await health.set_serving(True)
            if on_ready is not None:
                on_ready(self)
            try:
                await self._serve(stop, server, health, storage, parts.background)
            finally:
                limits.log_budget(budget)
        finally:
            # After the server stopped: no stream uses the dispatcher any more.
            await queues.__aexit__(None, None, None)

    async def _serve(
        self,
        stop: asyncio.Event,
        server: grpc.aio.Server,
        health: NodeHealth,
        storage: NodeStorage,
        work: list[tuple[str, Coroutine[Any, Any, None]]],
    ) -> None:
        """Runs the background tasks until `stop` is set or one of them fails, then stops."""
        failure: Exception | None = None
        try:
            async with asyncio.TaskGroup() as tasks:
                background = [
                    tasks.create_task(_owned(name, work), name=name)
                    for name, work in (*work, ("storage health", health.follow(storage)))
                ]
                # A failing task cancels this wait through the task group.
                await stop.wait()
                for task in background:
                    task.cancel()
        except ExceptionGroup as group:
            failure = group.exceptions[0]
        finally:
            await self._stop(server, health)
        if failure is not None:
            raise NodeFailedError(f"the node stopped because a task failed: {failure}") from failure

    async def _load_cluster_id(self, storage: NodeStorage) -> None:
        raw = storage.meta.get(CLUSTER_NS, _CLUSTER_ID_KEY)
        if raw is None:
            raw = uuid.uuid4().hex.encode()
            await storage.meta.write(puts=[(CLUSTER_NS, _CLUSTER_ID_KEY, raw)])
        self._cluster_id = raw.decode()

    async def _stop(self, server: grpc.aio.Server, health: NodeHealth) -> None:
        log.info("stopping: refusing new work, finishing in-flight calls")
        self._stopping.set()
        self._produce.stop()
        await health.shutdown()
        await server.stop(self.config.shutdown_grace_ms / 1000)


def _partition_count(topics: TopicRegistry, name: str) -> int:
    """A topic's partition count on a single node; 0 once it is gone."""
    return next((t.partition_count for t in topics.all() if t.name == name), 0)


def _retention_targets(topics: Iterable[Topic]) -> Iterator[Target]:
    for topic in topics:
        config = topic.config
        bounds = retention_limits(config.retention_bytes, config.retention_ms)
        if bounds is not None:
            for partition, group_id in enumerate(topic.group_ids):
                yield (topic.name, partition, group_id, *bounds)
