"""The SDK's one way to reach a broker: channel options and error translation.

Every client (producer, consumer, admin) opens its `grpc.aio` channels here
(through `weir._failover.Connection`, one per node address it uses) so the
limits are the same everywhere, and calls `translated()` around every
RPC so that no `grpc.RpcError` crosses the public API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar, cast

import grpc
import grpc.aio

from weir.errors import WeirError, from_error_proto, from_rpc_error
from weir.v1 import admin_pb2_grpc, broker_pb2

__all__ = [
    "StreamCall",
    "admin_stub",
    "consume_call",
    "from_error_proto",
    "from_rpc_error",
    "open_channel",
    "produce_call",
    "translated",
]

RequestT = TypeVar("RequestT", contravariant=True)
ResponseT = TypeVar("ResponseT", covariant=True)


class StreamCall(Protocol[RequestT, ResponseT]):
    """The typed surface of a grpc.aio bidirectional call that the SDK uses.

    `read()` returns `grpc.aio.EOF` when the server ends the stream cleanly.
    """

    async def write(self, request: RequestT) -> None: ...

    async def read(self) -> ResponseT | object: ...

    async def done_writing(self) -> None: ...

    def cancel(self) -> bool: ...

    def done(self) -> bool: ...


# Produce requests go out as bytes the producer encoded itself (weir/_wire.py).
ProduceCall = StreamCall[bytes, broker_pb2.ProduceResponse]
# Consume responses stay raw bytes: the consumer measures records as sent.
ConsumeCall = StreamCall[broker_pb2.ConsumeRequest, bytes]


def produce_call(channel: grpc.aio.Channel) -> ProduceCall:
    """Open a `BrokerService.Produce` stream."""
    call: Any = channel.stream_stream(
        "/weir.v1.BrokerService/Produce",
        request_serializer=None,
        response_deserializer=broker_pb2.ProduceResponse.FromString,
    )()
    return cast(ProduceCall, call)


def consume_call(channel: grpc.aio.Channel) -> ConsumeCall:
    """Open a `BrokerService.Consume` stream whose responses arrive as raw bytes."""
    call: ConsumeCall = channel.stream_stream(
        "/weir.v1.BrokerService/Consume",
        request_serializer=broker_pb2.ConsumeRequest.SerializeToString,
        response_deserializer=None,
    )()
    return call


def admin_stub(channel: grpc.aio.Channel) -> Any:
    """An `AdminService` stub (generated code is untyped: callers annotate results)."""
    return admin_pb2_grpc.AdminServiceStub(channel)  # type: ignore[no-untyped-call]


# A consumed batch can hold up to the consumer's byte window, and the broker's
# request limit is its own business; 64 MiB bounds what one message may make
# this process allocate while leaving room above every default window.
MESSAGE_BYTES_MAX = 64 * 1024 * 1024
# gRPC's own reconnect backoff after a failed connect (1 s doubling to 120 s
# by default). The SDK keeps channels to nodes it left and comes back to
# them after a round of its bootstrap list (weir/_nodes.py), so a restarted
# node must be found READY within a second, not minutes.
RECONNECT_BACKOFF_MS_MIN = 100
RECONNECT_BACKOFF_MS_MAX = 1_000


def open_channel(bootstrap: str) -> grpc.aio.Channel:
    """Open an insecure grpc.aio channel to `bootstrap` ("host:port").

    Must be called with a running event loop; the caller owns the channel and
    must `await channel.close()`.
    """
    if not bootstrap or ":" not in bootstrap:
        raise ValueError(f"bootstrap must be 'host:port', got {bootstrap!r}")
    return grpc.aio.insecure_channel(
        bootstrap,
        options=[
            ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
            ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
            ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS_MIN),
            ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MS_MIN),
            ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS_MAX),
            # No client keepalive: a gRPC server's default policy answers pings
            # more often than every 5 minutes with GOAWAY "too_many_pings".
        ],
    )


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Turn any gRPC error raised inside the block into a `WeirError`."""
    try:
        yield
    except WeirError:
        raise
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from None
