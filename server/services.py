"""The node's gRPC service wiring: every handler behind Weir's own request parsers.

gRPC answers an exception in a request deserializer with INTERNAL; the
parsers here return a `MALFORMED` marker instead, and the handler wrappers
answer it with INVALID_ARGUMENT/MALFORMED_REQUEST, as for any bad input.
That holds for the broker, admin, health and reflection services alike:
health and reflection are the standard servicers behind these parsers.
`NodeHealth` also follows storage: NOT_SERVING while storage cannot write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer

from weir.cluster.storage import NodeStorage, StorageError, StorageFullError
from weir.server.admin import AdminServicer
from weir.server.consume import ConsumePath
from weir.server.errors import abort, malformed
from weir.server.produce import ProducePath
from weir.server.producer_ids import ProducerIds, serve_init_producer
from weir.server.wire import identity
from weir.v1 import admin_pb2, broker_pb2

log = logging.getLogger("weir.server")

BROKER_SERVICE = "weir.v1.BrokerService"
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# The services whose health the node reports: "" is the whole server.
_HEALTH_SERVICES = ("", BROKER_SERVICE)
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


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


def produce_method(
    serve: Callable[[Any], Awaitable[None]], records_max: int
) -> grpc.RpcMethodHandler[Any, bytes]:
    """The Produce method: our own request parser in front of `serve(context)`.

    Served on the client port, and in a cluster on the peer port too (work
    other nodes forward here).
    """

    async def handler(_requests: object, context: Any) -> None:
        await serve(context)

    return grpc.stream_stream_rpc_method_handler(
        handler,
        request_deserializer=ProducePath.request_parser(records_max),
        response_serializer=identity,
    )


def add_services(
    server: grpc.aio.Server,
    produce: ProducePath,
    produce_request_records_max: int,
    consume: ConsumePath,
    admin: AdminServicer,
    health: NodeHealth,
    producer_ids: ProducerIds,
) -> None:
    """Add the broker, admin, health and reflection services to `server`."""

    async def init_producer(request: Any, context: Any) -> broker_pb2.InitProducerResponse:
        return await serve_init_producer(producer_ids, request, context)

    async def consume_handler(_requests: object, context: Any) -> None:
        await consume.serve(context)

    broker = grpc.method_handlers_generic_handler(
        BROKER_SERVICE,
        {
            "Produce": produce_method(produce.serve, produce_request_records_max),
            "Consume": grpc.stream_stream_rpc_method_handler(
                consume_handler,
                request_deserializer=_parser(broker_pb2.ConsumeRequest),
                response_serializer=identity,
            ),
            "InitProducer": grpc.unary_unary_rpc_method_handler(
                _reject_malformed(init_producer, "InitProducerRequest"),
                request_deserializer=_parser(broker_pb2.InitProducerRequest),
                response_serializer=_serialize,
            ),
        },
    )
    server.add_generic_rpc_handlers((broker,))
    server.add_generic_rpc_handlers((_unary_handlers(admin_pb2.DESCRIPTOR, "AdminService", admin),))
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
