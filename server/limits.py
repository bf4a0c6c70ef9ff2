"""Node-wide memory bounds: what gRPC is told, the stated RSS bound, and a byte budget.

A node's memory must have a bound in bytes whatever its clients do (DESIGN
§7, invariant 5), measured on the whole node, not per stream. Three things
give it:

1. gRPC's own limits, passed to `grpc.aio.server` by `grpc_options` and
   `calls_max`: at most `connections_max` connections and `calls_max`
   concurrent calls per node (more are refused: connections closed at
   accept, calls answered RESOURCE_EXHAUSTED), at most
   `streams_per_connection_max` streams per connection, and a fixed HTTP/2
   receive window per stream. gRPC C-core otherwise grows each stream's
   window with its bandwidth-delay estimate to at least 4 MiB (measured:
   16-32 MiB per stream), and buffers that much of every stream whose
   handler is not reading; with the BDP probe off the window stays at
   `stream_window_bytes`.
2. What gRPC cannot bound by itself, counted per call: while a handler has
   a read pending, C-core widens that stream's window until the message it
   has started to receive is complete, so a client that sends most of a
   large request and stops holds up to `request_bytes_max` on the node for
   as long as the call lives; a handler holds at most one parsed request
   and one response being written. `rss_bound_bytes` adds these up; it is
   the bound docs/operations.md states and tests/integration/
   test_resources.py enforces.
3. `MemoryBudget`: a node-wide budget in bytes that the produce and consume
   paths take before they hold request or response bytes, so that the
   bytes in flight across all streams together stay under one figure
   rather than `calls_max` times a per-call figure.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from types import TracebackType

from weir.server.config import KiB, MiB, NodeConfig

# What an idle node takes before any client connects (interpreter, grpc,
# protobuf, LMDB bookkeeping): measured at 48-75 MiB, with room for the
# allocator's fragmentation under load.
NODE_BASE_BYTES = 128 * MiB
# One open HTTP/2 connection in C-core with nothing in flight (transport,
# HPACK tables, read buffers): measured at about 20 KiB.
CONNECTION_BASE_BYTES = 64 * KiB
# One open call with nothing in flight (C-core call, Python context and
# handler task): measured at about 25 KiB.
CALL_BASE_BYTES = 64 * KiB
# A produce request accepted but not yet answered, without its records
# (they are in the storage queue, bounded separately): a few hundred bytes.
PENDING_REQUEST_BYTES = 512
# A response that gRPC is sending is held twice (the Python bytes and
# C-core's framed copy), and a connection whose peer stopped reading the
# socket keeps one more in its output buffer (measured: ~3 responses per
# stalled connection).
RESPONSE_COPIES_PER_CALL = 2
RESPONSE_COPIES_PER_CONNECTION = 1


def grpc_options(config: NodeConfig) -> list[tuple[str, int]]:
    """The grpc.aio.server options that bound connections, streams and windows."""
    return [
        ("grpc.max_allowed_incoming_connections", config.connections_max),
        ("grpc.max_concurrent_streams", config.streams_per_connection_max),
        # A fixed per-stream receive window: no BDP-driven growth.
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", config.stream_window_bytes),
    ]


@dataclasses.dataclass(frozen=True, slots=True)
class RssBound:
    """The parts of a node's stated RSS bound, in bytes; `total_bytes` is their sum."""

    base_bytes: int
    storage_bytes: int
    connections_bytes: int
    calls_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.base_bytes + self.storage_bytes + self.connections_bytes + self.calls_bytes


def call_bytes_max(config: NodeConfig) -> int:
    """The most one call can make the node hold, whatever its client does."""
    produce_pending = config.produce_inflight_requests_max * PENDING_REQUEST_BYTES
    return (
        CALL_BASE_BYTES
        # Unread bytes in the stream's receive window, plus one request
        # that is partly received (or parsed and held by the handler).
        + config.stream_window_bytes
        + config.request_bytes_max
        + RESPONSE_COPIES_PER_CALL * max(config.consume_response_bytes_max, 64 * KiB)
        + produce_pending
    )


def rss_bound(config: NodeConfig) -> RssBound:
    """The resident memory a node with this configuration stays under (docs/operations.md)."""
    connection_bytes = (
        CONNECTION_BASE_BYTES
        + RESPONSE_COPIES_PER_CONNECTION * config.consume_response_bytes_max
        + config.stream_window_bytes
    )
    return RssBound(
        base_bytes=NODE_BASE_BYTES,
        storage_bytes=config.storage_write_queue_bytes_max + config.storage_txn_bytes_max,
        connections_bytes=config.connections_max * connection_bytes,
        calls_bytes=config.calls_max * call_bytes_max(config),
    )


def rss_bound_bytes(config: NodeConfig) -> int:
    return rss_bound(config).total_bytes


class BudgetExceededError(Exception):
    """A request for more bytes than the whole budget: it could never be granted."""


class MemoryBudget:
    """A node-wide count of bytes in flight, granted first come, first served.

    `acquire(n)` waits until `n` bytes are free and returns a `Lease`;
    closing the lease (or leaving its `async with`) gives them back. Waiters
    are served in arrival order, so a stream asking for a large amount is
    not overtaken forever by streams asking for small ones. A caller that
    must not wait without end wraps `acquire` in `asyncio.timeout()`.
    """

    def __init__(self, bytes_max: int) -> None:
        if bytes_max <= 0:
            raise ValueError(f"bytes_max must be positive, not {bytes_max}")
        self.bytes_max = bytes_max
        self._used = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @property
    def used_bytes(self) -> int:
        return self._used

    @property
    def free_bytes(self) -> int:
        return self.bytes_max - self._used

    def try_acquire(self, nbytes: int) -> Lease | None:
        """A lease if `nbytes` are free now and nobody waits before us, else None."""
        self._check(nbytes)
        if self._waiters or nbytes > self.free_bytes:
            return None
        self._used += nbytes
        return Lease(self, nbytes)

    async def acquire(self, nbytes: int) -> Lease:
        """Wait until `nbytes` are free; cancellation leaves the budget unchanged."""
        lease = self.try_acquire(nbytes)
        if lease is not None:
            return lease
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (nbytes, granted)
        self._waiters.append(entry)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                # Granted in the same turn we were cancelled: give it back.
                self._release(nbytes)
            else:
                self._waiters.remove(entry)
                self._wake()
            raise
        return Lease(self, nbytes)

    def _check(self, nbytes: int) -> None:
        assert nbytes >= 0, nbytes
        if nbytes > self.bytes_max:
            raise BudgetExceededError(f"{nbytes} bytes exceed the whole budget of {self.bytes_max}")

    def _release(self, nbytes: int) -> None:
        assert 0 <= nbytes <= self._used, (nbytes, self._used)
        self._used -= nbytes
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            nbytes, granted = self._waiters[0]
            if granted.done():
                self._waiters.popleft()
                continue
            if nbytes > self.free_bytes:
                return
            self._waiters.popleft()
            self._used += nbytes
            granted.set_result(None)


class Lease:
    """Bytes held from a `MemoryBudget`; `shrink` returns part, `close` returns the rest."""

    __slots__ = ("_budget", "nbytes")

    def __init__(self, budget: MemoryBudget, nbytes: int) -> None:
        self._budget = budget
        self.nbytes = nbytes

    def shrink(self, nbytes: int) -> None:
        """Keep only `nbytes` (e.g. reserve the most, then keep what was used)."""
        assert 0 <= nbytes <= self.nbytes, (nbytes, self.nbytes)
        returned, self.nbytes = self.nbytes - nbytes, nbytes
        if returned:
            self._budget._release(returned)

    def close(self) -> None:
        self.shrink(0)

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
