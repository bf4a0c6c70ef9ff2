"""One broker node: storage, topic registry, the gRPC services, graceful shutdown.

`Node.run` owns every component as an async context and returns only after
a clean stop: on a stop signal the node reports NOT_SERVING, refuses new
produce requests with UNAVAILABLE/SHUTTING_DOWN, lets in-flight calls
finish within the grace period, drains the storage writer and closes LMDB.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from weir.cluster.storage import NodeStorage, StorageConfig
from weir.server.admin import AdminServicer
from weir.server.config import NodeConfig
from weir.server.consume import ConsumePath
from weir.server.errors import abort, malformed
from weir.server.offsets import GroupOffsets
from weir.server.produce import ProducePath
from weir.server.replicator import LocalReplicator
from weir.server.topics import TopicRegistry
from weir.v1 import admin_pb2, broker_pb2

log = logging.getLogger("weir.server")

BROKER_SERVICE = "weir.v1.BrokerService"
CLUSTER_NS = "cluster"
_CLUSTER_ID_KEY = b"id"


class StartError(Exception):
    """The node cannot start (address in use, unusable data folder)."""


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


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Node:
    def __init__(self, config: NodeConfig, clock_ms: Callable[[], int] = wall_clock_ms) -> None:
        self.config = config
        self._clock_ms = clock_ms
        self._stopping = asyncio.Event()
        self._cluster_id = ""
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
            topics = TopicRegistry(storage, self.config)
            await topics.load()
            await self._load_cluster_id(storage)
            replicator = LocalReplicator(storage)
            produce = ProducePath(
                topics,
                replicator,
                self.config.produce_inflight_requests_max,
                self._clock_ms,
                self._stopping,
            )
            consume = ConsumePath(
                topics, replicator, GroupOffsets(storage.meta), self.config, self._stopping
            )
            server = grpc.aio.server(
                options=[
                    ("grpc.max_receive_message_length", self.config.request_bytes_max),
                    ("grpc.max_send_message_length", self.config.request_bytes_max),
                    ("grpc.so_reuseport", 0),
                    ("grpc.max_concurrent_streams", self.config.streams_per_connection_max),
                    # Ping idle clients so that a vanished consumer's stream
                    # is noticed and closed; accept clients' own keepalive
                    # pings down to a 10 s interval instead of answering them
                    # with GOAWAY.
                    ("grpc.keepalive_time_ms", 30_000),
                    ("grpc.keepalive_timeout_ms", 10_000),
                    ("grpc.keepalive_permit_without_calls", 1),
                    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ]
            )
            health = HealthServicer()
            self._produce = produce
            self._add_services(server, produce, consume, topics, replicator, health)
            try:
                self.port = server.add_insecure_port(self.config.listen)
            except RuntimeError as exc:
                raise StartError(f"cannot listen on {self.config.listen}: {exc}") from None
            await server.start()
            await health.set("", health_pb2.HealthCheckResponse.SERVING)
            await health.set(BROKER_SERVICE, health_pb2.HealthCheckResponse.SERVING)
            if on_ready is not None:
                on_ready(self)
            retention = asyncio.ensure_future(self._retention_loop(storage, topics))
            try:
                await stop.wait()
            finally:
                await self._stop(server, health, retention)

    def _add_services(
        self,
        server: grpc.aio.Server,
        produce: ProducePath,
        consume: ConsumePath,
        topics: TopicRegistry,
        replicator: LocalReplicator,
        health: HealthServicer,
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
                    request_deserializer=_parser(broker_pb2.ProduceRequest),
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
            topics, replicator, self.config, lambda: self._cluster_id, self.address
        )
        server.add_generic_rpc_handlers(
            (_unary_handlers(admin_pb2.DESCRIPTOR, "AdminService", admin),)
        )
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection(
            (
                BROKER_SERVICE,
                admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )

    async def _load_cluster_id(self, storage: NodeStorage) -> None:
        raw = storage.meta.get(CLUSTER_NS, _CLUSTER_ID_KEY)
        if raw is None:
            raw = uuid.uuid4().hex.encode()
            await storage.meta.write(puts=[(CLUSTER_NS, _CLUSTER_ID_KEY, raw)])
        self._cluster_id = raw.decode()

    async def _retention_loop(self, storage: NodeStorage, topics: TopicRegistry) -> None:
        interval_s = self.config.retention_check_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            for topic in topics.all():
                config = topic.config
                if config.retention_bytes < 0 and config.retention_ms < 0:
                    continue
                for group_id in topic.group_ids:
                    await storage.enforce_retention(
                        group_id,
                        None if config.retention_bytes < 0 else config.retention_bytes,
                        None if config.retention_ms < 0 else config.retention_ms,
                    )

    async def _stop(
        self, server: grpc.aio.Server, health: HealthServicer, retention: asyncio.Future[None]
    ) -> None:
        log.info("stopping: refusing new work, finishing in-flight calls")
        self._stopping.set()
        self._produce.stop()
        await health.enter_graceful_shutdown()
        retention.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await retention
        await server.stop(self.config.shutdown_grace_ms / 1000)
