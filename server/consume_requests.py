"""The requests of a Consume stream after its Subscribe: one reader for every mode.

`read_requests` reads a stream's requests until the client half-closes and
hands each to the stream's `RequestHandler`, by kind. What is the same in
every mode is decided here: bytes that are no ConsumeRequest
(MALFORMED_REQUEST), a second `subscribe` (ALREADY_SUBSCRIBED), a request
with no field set (EMPTY_REQUEST). What a kind does, and which kinds a mode
refuses, is the handler's: consume.py (plain subscriptions and stream-mode
members) and consume_queue.py (queue mode). A handler raises BrokerError to
end the stream; like the refusals made here, it reaches the handler's
`on_refused`, and the end of the requests its `on_half_close`.

A handler may wait (`on_commit`, `on_seek`, `on_settle`): while it does,
nothing more is read, which is how a stream bounds the requests waiting for
an answer (HTTP/2 then pushes back on the client).
"""

from __future__ import annotations

from typing import Any, Protocol

import grpc

from weir.server.errors import BrokerError, invalid
from weir.v1 import broker_pb2

# Requests may be MALFORMED (see services.py), hence Any.
Context = grpc.aio.ServicerContext[Any, bytes]

# The kinds that settle queue-mode deliveries by ack id.
SETTLE_KINDS = ("ack", "nack", "extend_deadline")
Settlement = broker_pb2.Ack | broker_pb2.Nack | broker_pb2.ExtendDeadline


class RequestHandler(Protocol):
    """What a stream does with each kind of request (a kind its mode refuses: raise)."""

    def on_half_close(self) -> None:
        """The client sent its last request."""

    def on_refused(self, error: BrokerError) -> None:
        """A request was refused with `error`, which ends the stream; nothing more is read."""

    def on_request(self) -> None:
        """Any well-formed request arrived, before its kind is handled."""

    def on_credit(self, grant: broker_pb2.Credit) -> None: ...

    async def on_commit(self, commit: broker_pb2.Commit) -> None: ...

    async def on_seek(self, seek: broker_pb2.Seek) -> None: ...

    def on_assignment_ack(self, ack: broker_pb2.AssignmentAck) -> None: ...

    def on_heartbeat(self) -> None: ...

    async def on_settle(self, kind: str, body: Settlement) -> None:
        """An `ack`, `nack` or `extend_deadline` (`kind`, one of SETTLE_KINDS)."""


async def read_requests(context: Context, handler: RequestHandler) -> None:
    """Hand each request to `handler` until the client half-closes or one is refused."""
    try:
        await _dispatch(context, handler)
    except BrokerError as error:
        handler.on_refused(error)
        return
    handler.on_half_close()


async def _dispatch(context: Context, handler: RequestHandler) -> None:
    """Raises BrokerError for a request no mode accepts, and lets the handler's through."""
    while True:
        request = await context.read()
        if request is grpc.aio.EOF:
            return
        if not isinstance(request, broker_pb2.ConsumeRequest):
            raise invalid("MALFORMED_REQUEST", "a ConsumeRequest could not be parsed")
        handler.on_request()
        kind = request.WhichOneof("kind")
        if kind == "credit":
            handler.on_credit(request.credit)
        elif kind == "commit":
            await handler.on_commit(request.commit)
        elif kind == "seek":
            await handler.on_seek(request.seek)
        elif kind == "assignment_ack":
            handler.on_assignment_ack(request.assignment_ack)
        elif kind == "heartbeat":
            handler.on_heartbeat()
        elif kind in SETTLE_KINDS:
            await handler.on_settle(kind, getattr(request, kind))
        elif kind == "subscribe":
            raise invalid("ALREADY_SUBSCRIBED", "subscribe is only valid as the first request")
        else:
            raise invalid("EMPTY_REQUEST", "a ConsumeRequest must set one of its fields")


__all__ = ["SETTLE_KINDS", "Context", "RequestHandler", "Settlement", "read_requests"]
