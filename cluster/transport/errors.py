"""Typed errors of the peer transport.

Two kinds, as everywhere in Weir: a peer that sends something we cannot
accept is an expected operating condition (`PeerMisbehavedError`,
`PeerRefusedError`); it ends that one connection and never the node. A host
that misuses the transport (sending to itself, sending after close) trips an
assertion instead. No `grpc.aio.AioRpcError` or protobuf `DecodeError`
leaves this package.
"""

from __future__ import annotations


class TransportError(Exception):
    """Base of every failure the transport reports."""

    # The connection is retried with backoff; Raft retries the messages.
    retriable = True


class PeerMisbehavedError(TransportError):
    """A peer sent a frame that does not decode, or broke the stream's protocol.

    The receiving side ends that stream with INVALID_ARGUMENT; the rest of
    the node carries on.
    """


class PeerRefusedError(TransportError):
    """The handshake failed: the other node belongs to another cluster, or is
    not the node we meant to reach (a stale address after a node moved)."""


class PeerUnreachableError(TransportError):
    """Dialling the peer failed, or its stream broke or stalled (a write held
    back by flow control past `write_timeout_ms`)."""
