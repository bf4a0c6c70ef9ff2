"""The gRPC side of the transport: `add_peer_service` and the server options it needs.

The handler is registered with raw bytes in and out (no generated
deserializer), so that a frame that does not decode reaches our own parser
and ends as `PeerMisbehavedError` / INVALID_ARGUMENT on that one stream,
instead of an exception inside gRPC.
"""

from __future__ import annotations

import grpc
import grpc.aio

from .config import TransportConfig
from .transport import PeerTransport

SERVICE_NAME = "weir.cluster.v1.PeerService"


def add_peer_service(server: grpc.aio.Server, transport: PeerTransport) -> None:
    """Serves `PeerService.Exchange` for `transport`; call before `server.start()`."""
    handler = grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {"Exchange": grpc.stream_stream_rpc_method_handler(transport.serve_exchange)},
    )
    server.add_generic_rpc_handlers((handler,))


def server_options(config: TransportConfig) -> list[tuple[str, int]]:
    """Options the grpc.aio server that hosts the peer service must allow at least:
    a node whose `max_receive_message_length` is smaller refuses large frames."""
    return [
        ("grpc.max_receive_message_length", config.grpc_message_bytes_max),
        ("grpc.max_send_message_length", config.grpc_message_bytes_max),
    ]
