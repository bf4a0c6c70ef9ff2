"""One broker node: storage, topic registry, the gRPC services, graceful shutdown.

`Node.run` owns every component as an async context and returns only after
a clean stop: on a stop signal the node reports NOT_SERVING, refuses new
produce requests with UNAVAILABLE/SHUTTING_DOWN, lets in-flight calls
finish within the grace period, drains the storage writer and closes LMDB.

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
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer

from weir.cluster.storage import (
    LogClosedError,
    NodeStorage,
    StorageConfig,
    StorageError,
    StorageFullError,
)
from weir.server import limits
from weir.server.admin import AdminServicer
from weir.server.cluster_node import ClusterRuntime, ClusterView
from weir.server.config import NodeConfig
from weir.server.consume import ConsumePath
from weir.server.errors import abort, malformed
from weir.server.offsets import GroupOffsets
from weir.server.produce import ProducePath
from weir.server.produce_forward import Forwarder
from weir.server.registry import Offsets, Topics
from weir.server.replicator import LocalReplicator, Replicator
from weir.server.topics import TopicRegistry
from weir.v1 import admin_pb2, broker_pb2

log = logging.getLogger("weir.server")

BROKER_SERVICE = "weir.v1.BrokerService"
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
CLUSTER_NS = "cluster"
_CLUSTER_ID_KEY = b"id"
# The services whose health the node reports: "" is the whole server.
_HEALTH_SERVICES = ("", BROKER_SERVICE)
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class StartError(Exception):
    """The node cannot start (address in use, unusable data folder)."""


class NodeFailedError(StartError):
    """A background task of a running node failed; the node stopped.

    A StartError so that `weir serve` reports it the same way: one `error:`
    line and a non-zero exit, after the node's own log line naming the task.
    """


class _Malformed:
    """What a request deserializer returns for bytes that are not a valid message.

    gRPC would answer a deserializer exception with INTERNAL; a handler that
    sees this marker answers INVALID_ARGUMENT instead, as for any bad input.
    """


MALFORMED = _Malformed()


def _parser(message_type: Any) -> Callable[[bytes], object]:
    def parse(raw: bytes) -> object:
        try:
            return message_type.FromString(raw)
        except DecodeError:
            return MALFORMED

    return parse


def _identity(raw: bytes) -> bytes:
    return raw


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _unary_handlers(
    file: FileDescriptor, service_name: str, servicer: Any
) -> grpc.GenericRpcHandler:
    """Handlers for a unary service whose parser answers garbage with INVALID_ARGUMENT."""
    service = file.services_by_name[service_name]
    handlers = {}
    for method in service.methods:
        request_type = message_factory.GetMessageClass(method.input_type)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _reject_malformed(getattr(servicer, method.name), method.input_type.name),
            request_deserializer=_parser(request_type),
            response_serializer=_serialize,
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _reject_malformed(impl: Callable[[Any, Any], Any], what: str) -> Callable[[Any, Any], Any]:
    async def handle(request: object, context: Any) -> Any:
        if request is MALFORMED:
            await abort(context, malformed(what))
        return await impl(request, context)

    return handle


class NodeHealth:
    """The node's gRPC health, served through our own request parser.

    SERVING while the node can write; NOT_SERVING while storage cannot
    (map or disk full: `follow` flips it back once writes succeed again)
    and, for good, from the moment the node stops. The standard servicer
    answers Check and Watch; List, which it lacks, is answered here.
    """

    def __init__(self) -> None:
        self.servicer = HealthServicer()
        self._status = _NOT_SERVING
        self._stopping = False

    async def set_serving(self, serving: bool) -> None:
        if self._stopping:
            return
        self._status = _SERVING if serving else _NOT_SERVING
        for service in _HEALTH_SERVICES:
            await self.servicer.set(service, self._status)

    async def follow(self, storage: NodeStorage) -> None:
        """Background task: mirrors whether storage can write; fails if its writer died."""
        changed = asyncio.Event()

        def on_change(_error: StorageError | None) -> None:
            changed.set()

        storage.add_health_listener(on_change)
        try:
            while True:
                error = storage.write_error
                if writer_died(storage):
                    raise StorageError(f"the storage writer died: {error}") from error
                if (error is None) != (self._status == _SERVING):
                    if error is None:
                        log.warning("storage accepts writes again: reporting SERVING")
                    else:
                        log.warning("storage cannot write (%s): reporting NOT_SERVING", error)
                    await self.set_serving(error is None)
                await changed.wait()
                changed.clear()
        finally:
            storage.remove_health_listener(on_change)

    async def shutdown(self) -> None:
        self._stopping = True
        self._status = _NOT_SERVING
        await self.servicer.enter_graceful_shutdown()

    async def List(
        self, request: health_pb2.HealthListRequest, context: Any
    ) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(
            statuses={
                service: health_pb2.HealthCheckResponse(status=self._status)
                for service in _HEALTH_SERVICES
            }
        )

    def handlers(self) -> grpc.GenericRpcHandler:
        servicer = self.servicer
        return grpc.method_handlers_generic_handler(
            HEALTH_SERVICE,
            {
                "Check": grpc.unary_unary_rpc_method_handler(
                    _reject_malformed(servicer.Check, "HealthCheckRequest"),
                    request_deserializer=_parser(health_pb2.HealthCheckRequest),
                    response_serializer=_serialize,
                ),
                "Watch": grpc.unary_stream_rpc_method_handler(
                    _reject_malformed(servicer.Watch, "HealthCheckRequest"),
                    request_deserializer=_parser(health_pb2.HealthCheckRequest),
                    response_serializer=_serialize,
                ),
                "List": grpc.unary_unary_rpc_method_handler(
                    _reject_malformed(self.List, "HealthListRequest"),
                    request_deserializer=_parser(health_pb2.HealthListRequest),
                    response_serializer=_serialize,
                ),
            },
        )


def _reflection_handlers(service_names: tuple[str, ...]) -> grpc.GenericRpcHandler:
    """Server reflection through our own request parser, answered by the standard servicer."""
    servicer = ReflectionServicer(service_names)

    async def info(requests: AsyncIterator[object], context: Any) -> AsyncIterator[Message]:
        async def checked() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            async for request in requests:
                if request is MALFORMED:
                    await abort(context, malformed("ServerReflectionRequest"))
                assert isinstance(request, reflection_pb2.ServerReflectionRequest)
                yield request

        async for response in servicer.ServerReflectionInfo(checked(), context):
            yield response

    return grpc.method_handlers_generic_handler(
        reflection.SERVICE_NAME,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                info,
                request_deserializer=_parser(reflection_pb2.ServerReflectionRequest),
                response_serializer=_serialize,
            )
        },
    )


def writer_died(storage: NodeStorage) -> bool:
    """Whether storage can never write again (until a restart).

    Only a full map or disk heals by itself (StorageFullError); any other
    write failure means the writer thread is gone for good.
    """
    error = storage.write_error
    return error is not None and not isinstance(error, StorageFullError)


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
                parts = _Parts(
                    topics,
                    offsets,
                    LocalReplicator(storage),
                    [
                        ("retention", self._retention_loop(storage, topics)),
                        ("topic data drops", topics.drop_deleted_data(offsets.forget_log)),
                    ],
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
                    cluster.topics, cluster.offsets, cluster.replicator, cluster.background()
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
        )
        if self._cluster is not None:
            # Other nodes forward produce work here over the peer port.
            self._cluster.serve_forwarded_produce(produce.serve)
        consume = ConsumePath(
            parts.topics,
            parts.replicator,
            parts.offsets,
            self.config,
            self._stopping,
            budget,
        )
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.config.request_bytes_max),
                ("grpc.max_send_message_length", self.config.request_bytes_max),
                ("grpc.so_reuseport", 0),
                # Connections, streams per connection, fixed windows.
                *limits.grpc_options(self.config),
                # Ping idle clients so that a vanished consumer's stream
                # is noticed and closed; accept clients' own keepalive
                # pings down to a 10 s interval instead of answering them
                # with GOAWAY.
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ],
            maximum_concurrent_rpcs=self.config.calls_max,
        )
        health = NodeHealth()
        self._produce = produce
        self._add_services(server, produce, consume, parts, health, cluster)
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

    def _add_services(
        self,
        server: grpc.aio.Server,
        produce: ProducePath,
        consume: ConsumePath,
        parts: _Parts,
        health: NodeHealth,
        cluster: ClusterView | None,
    ) -> None:
        async def produce_handler(_requests: object, context: Any) -> None:
            await produce.serve(context)

        async def consume_handler(_requests: object, context: Any) -> None:
            await consume.serve(context)

        broker = grpc.method_handlers_generic_handler(
            BROKER_SERVICE,
            {
                "Produce": grpc.stream_stream_rpc_method_handler(
                    produce_handler,
                    request_deserializer=produce.request_parser(
                        self.config.produce_request_records_max
                    ),
                    response_serializer=_identity,
                ),
                "Consume": grpc.stream_stream_rpc_method_handler(
                    consume_handler,
                    request_deserializer=_parser(broker_pb2.ConsumeRequest),
                    response_serializer=_identity,
                ),
            },
        )
        server.add_generic_rpc_handlers((broker,))
        admin = AdminServicer(
            parts.topics,
            parts.replicator,
            self.config,
            lambda: self._cluster_id,
            self.address,
            cluster,
        )
        server.add_generic_rpc_handlers(
            (_unary_handlers(admin_pb2.DESCRIPTOR, "AdminService", admin),)
        )
        # Health and reflection use the standard servicers behind our own
        # request parser, so garbage gets MALFORMED_REQUEST here too.
        server.add_generic_rpc_handlers((health.handlers(),))
        server.add_generic_rpc_handlers(
            (
                _reflection_handlers(
                    (
                        BROKER_SERVICE,
                        admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
                        HEALTH_SERVICE,
                        reflection.SERVICE_NAME,
                    )
                ),
            )
        )

    async def _load_cluster_id(self, storage: NodeStorage) -> None:
        raw = storage.meta.get(CLUSTER_NS, _CLUSTER_ID_KEY)
        if raw is None:
            raw = uuid.uuid4().hex.encode()
            await storage.meta.write(puts=[(CLUSTER_NS, _CLUSTER_ID_KEY, raw)])
        self._cluster_id = raw.decode()

    async def _retention_loop(self, storage: NodeStorage, topics: TopicRegistry) -> None:
        """Trims every topic with a retention limit, every retention interval.

        One damaged partition must not stop retention for the others: it is
        logged at WARNING and skipped until the node restarts (reading it
        again would only fail again). A full storage is logged and retried
        next round. A dead storage writer or a bug ends this task and so
        stops the node.
        """
        interval_s = self.config.retention_check_interval_ms / 1000
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
                            "retention skips partition %d of topic %r until restart: "
                            "damaged data: %s",
                            partition,
                            topic.name,
                            exc,
                        )

    async def _stop(self, server: grpc.aio.Server, health: NodeHealth) -> None:
        log.info("stopping: refusing new work, finishing in-flight calls")
        self._stopping.set()
        self._produce.stop()
        await health.shutdown()
        await server.stop(self.config.shutdown_grace_ms / 1000)
