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
    "KEEPALIVE_TIME_MS_DEFAULT",
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


# HTTP/2 keepalive. An idle consume stream sends nothing for as long as no
# record arrives, so without pings a NAT or load balancer on the way may drop
# the connection silently, and a dead one is only found when the next write
# fails. Weir's nodes accept a ping every 5 s or less often
# (docs/operations.md, Keepalive); gRPC's own server default (5 minutes)
# would cut this client off, so a non-Weir server behind the same address
# needs `keepalive_time_ms=None`.
KEEPALIVE_TIME_MS_DEFAULT = 30_000
# An unanswered ping closes the connection after this: its streams fail with
# UNAVAILABLE and the clients move to another node.
KEEPALIVE_TIMEOUT_MS = 20_000


def open_channel(
    bootstrap: str, *, keepalive_time_ms: int | None = KEEPALIVE_TIME_MS_DEFAULT
) -> grpc.aio.Channel:
    """Open an insecure grpc.aio channel to `bootstrap` ("host:port").

    `keepalive_time_ms` is the interval of HTTP/2 keepalive pings while a
    call is open (None: no pings). Must be called with a running event loop;
    the caller owns the channel and must `await channel.close()`.
    """
    if not bootstrap or ":" not in bootstrap:
        raise ValueError(f"bootstrap must be 'host:port', got {bootstrap!r}")
    options: list[tuple[str, int]] = [
        ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
        ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS_MIN),
        ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MS_MIN),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS_MAX),
    ]
    if keepalive_time_ms is not None:
        options += [
            ("grpc.keepalive_time_ms", keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            # Only while calls are open: an idle channel may as well reconnect.
            ("grpc.keepalive_permit_without_calls", 0),
            # gRPC sends at most two pings while no data goes out unless told
            # otherwise, so on an idle stream its keepalive stops after the
            # second ping (measured, grpc 1.85).
            ("grpc.http2.max_pings_without_data", 0),
        ]
    return grpc.aio.insecure_channel(bootstrap, options=options)


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Turn any gRPC error raised inside the block into a `WeirError`."""
    try:
        yield
    except WeirError:
        raise
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from None
