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
2. `MemoryBudget`, one per node (`inflight_bytes_max`): the produce path
   takes a request's bytes from it once the request is read and gives them
   back when its appends are durable or failed; the consume path takes a
   response's bytes above a per-call floor (`RESPONSE_FLOOR_BYTES`) while
   it builds and writes it. So the request and response bytes the broker
   holds, over all calls together, stay under `inflight_bytes_max` plus
   `calls_max` floors, rather than `calls_max` times a per-call figure.
3. What neither can bound, counted per call: while a handler has a read
   pending, C-core widens that stream's window until the message it has
   started to receive is complete, so a client that sends most of a large
   request and stops holds up to `request_bytes_max` on the node for as
   long as the call lives, outside any budget (the bytes are C-core's
   until the message is complete). A produce handler holds at most one
   such request, or instead one parsed request waiting for the budget
   (its reader is then not reading), so `calls_max` times the largest
   request bounds both.

`rss_bound` adds these up; it is the bound docs/operations.md states and
tests/integration/test_resources.py enforces.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from types import TracebackType

from weir.server.config import PARSED_RECORD_BYTES, KiB, MiB, NodeConfig
from weir.server.consume_cursor import CURSOR_NODE_BYTES_MAX

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
# A byte of the budget may be held twice as well: a response as above; a
# request as its parsed message and the stored encoding made from it.
BUDGET_COPIES = 2
# Every consume call may send a response of this many bytes without taking
# any budget, so a consumer is never stopped by others that stopped reading
# (their responses hold budget until their calls end).
RESPONSE_FLOOR_BYTES = 64 * KiB
# The fields of a ConsumeResponse around its records: the topic name (at
# most 249 bytes), partition, offsets and their tags and lengths.
RESPONSE_HEADER_BYTES_MAX = 1 * KiB


def consume_share_bytes(config: NodeConfig) -> int:
    """What consume responses above the floor may take of the budget: half of it.

    Stalled consumers keep their responses' bytes for as long as their
    calls live, so without a cap they could hold the whole budget and stop
    every producer; NodeConfig keeps the largest request under the other
    half.
    """
    return config.inflight_bytes_max // 2


def request_held_bytes_max(config: NodeConfig) -> int:
    """What the largest produce request holds once parsed, as charged to the budget."""
    return config.request_bytes_max + config.produce_request_records_max * PARSED_RECORD_BYTES


log = logging.getLogger("weir.server.limits")


def grpc_options(config: NodeConfig) -> list[tuple[str, int]]:
    """The grpc.aio.server options that bound connections, streams and windows."""
    return [
        ("grpc.max_allowed_incoming_connections", config.connections_max),
        ("grpc.max_concurrent_streams", config.streams_per_connection_max),
        # A fixed per-stream receive window: no BDP-driven growth.
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", config.stream_window_bytes),
        *keepalive_options(config),
    ]


def keepalive_options(config: NodeConfig) -> list[tuple[str, int]]:
    """The node's HTTP/2 keepalive policy: which client pings it accepts, and its own pings.

    gRPC's server defaults accept a client ping at most every 5 minutes
    while a call is open (every 2 hours without one) and close the
    connection on the third ping sooner than that: a client pinging every
    5 s saw its idle consume stream die after 25 s (UNAVAILABLE "Too many
    pings" in C-core clients, RESOURCE_EXHAUSTED "Bandwidth exhausted" in
    grpc-js). Clients need keepalive to keep idle streams through NATs and
    load balancers and to notice a dead connection, so the policy here
    accepts pings as often as every `keepalive_client_ping_interval_ms_min`,
    calls open or not; what a client sees beyond that is in docs/errors.md.
    """
    return [
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            config.keepalive_client_ping_interval_ms_min,
        ),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", config.keepalive_client_ping_strikes_max),
        ("grpc.keepalive_time_ms", config.keepalive_ping_interval_ms),
        ("grpc.keepalive_timeout_ms", config.keepalive_ping_timeout_ms),
        # Without this, gRPC sends at most two pings while no data goes out,
        # so on an idle stream its keepalive stops after the second ping.
        ("grpc.http2.max_pings_without_data", 0),
    ]


@dataclasses.dataclass(frozen=True, slots=True)
class RssBound:
    """The parts of a node's stated RSS bound, in bytes; `total_bytes` is their sum."""

    base_bytes: int
    storage_bytes: int
    cursors_bytes: int
    budget_bytes: int
    connections_bytes: int
    calls_bytes: int

    @property
    def total_bytes(self) -> int:
        return (
            self.base_bytes
            + self.storage_bytes
            + self.cursors_bytes
            + self.budget_bytes
            + self.connections_bytes
            + self.calls_bytes
        )


def call_bytes_max(config: NodeConfig) -> int:
    """The most one call can make the node hold outside the budget, whatever its client does."""
    produce_pending = config.produce_inflight_requests_max * PENDING_REQUEST_BYTES
    return (
        CALL_BASE_BYTES
        # Unread bytes in the stream's receive window, plus one request
        # that is partly received, or parsed and waiting for the budget.
        + config.stream_window_bytes
        + request_held_bytes_max(config)
        # The response every call may send without the budget.
        + RESPONSE_COPIES_PER_CALL * (RESPONSE_FLOOR_BYTES + RESPONSE_HEADER_BYTES_MAX)
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
        # Stored batches kept by cursors, plus those one response is being
        # built from (one at a time: building does not await).
        cursors_bytes=CURSOR_NODE_BYTES_MAX + config.request_bytes_max,
        budget_bytes=BUDGET_COPIES * config.inflight_bytes_max,
        connections_bytes=config.connections_max * connection_bytes,
        calls_bytes=config.calls_max * call_bytes_max(config),
    )


def rss_bound_bytes(config: NodeConfig) -> int:
    return rss_bound(config).total_bytes


class BudgetExceededError(Exception):
    """A request for more bytes than the whole budget: it could never be granted."""


@dataclasses.dataclass(frozen=True, slots=True)
class BudgetStats:
    """A budget's figures, for tests, logs and metrics."""

    bytes_max: int
    used_bytes: int
    peak_bytes: int  # the most ever granted at once
    waits: int  # acquires that had to wait
    waiting: int  # acquires waiting now
    short_grants: int  # try_acquire* calls that got less than they asked for


class MemoryBudget:
    """A count of bytes in flight, granted first come, first served.

    `acquire(n)` waits until `n` bytes are free and returns a `Lease`;
    closing the lease (or leaving its `async with`) gives them back. Waiters
    are served in arrival order, so a stream asking for a large amount is
    not overtaken forever by streams asking for small ones; for the same
    reason `try_acquire` grants nothing while anyone waits. A caller that
    must not wait without end wraps `acquire` in `asyncio.timeout()` or
    cancels it.

    A budget made with `share()` is a share of its parent: every byte it
    grants is granted by the parent too, and the parent's own waiters go
    first. A share caps what one kind of user (consume responses, whose
    clients may stop reading and so hold a lease for as long as their call
    lives) can take of the node's budget.
    """

    def __init__(self, bytes_max: int) -> None:
        if bytes_max <= 0:
            raise ValueError(f"bytes_max must be positive, not {bytes_max}")
        self.bytes_max = bytes_max
        self._parent: MemoryBudget | None = None
        self._shares: list[MemoryBudget] = []
        self._used = 0
        self._peak = 0
        self._waits = 0
        self._short_grants = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def share(self, bytes_max: int) -> MemoryBudget:
        """A budget of at most `bytes_max` that also takes every byte from this one."""
        if bytes_max > self.bytes_max:
            raise ValueError(f"a share of {bytes_max} exceeds its budget of {self.bytes_max}")
        child = MemoryBudget(bytes_max)
        child._parent = self
        self._shares.append(child)
        return child

    @property
    def used_bytes(self) -> int:
        return self._used

    @property
    def free_bytes(self) -> int:
        return self.bytes_max - self._used

    def stats(self) -> BudgetStats:
        return BudgetStats(
            bytes_max=self.bytes_max,
            used_bytes=self._used,
            peak_bytes=self._peak,
            waits=self._waits,
            waiting=sum(not granted.done() for _, granted in self._waiters),
            short_grants=self._short_grants,
        )

    def try_acquire(self, nbytes: int) -> Lease | None:
        """A lease if `nbytes` are free now and nobody waits before us, else None."""
        self._check(nbytes)
        if nbytes > self._grantable_bytes():
            self._short_grants += 1
            return None
        self._take(nbytes)
        return Lease(self, nbytes)

    def try_acquire_most(self, nbytes: int) -> Lease | None:
        """A lease of as many of `nbytes` as can be granted now; None if none can."""
        assert nbytes > 0, nbytes
        granted = min(nbytes, self._grantable_bytes())
        if granted < nbytes:
            self._short_grants += 1
        if granted <= 0:
            return None
        self._take(granted)
        return Lease(self, granted)

    async def acquire(self, nbytes: int) -> Lease:
        """Wait until `nbytes` are free; cancellation leaves the budget unchanged."""
        self._check(nbytes)
        if nbytes <= self._grantable_bytes():
            self._take(nbytes)
            return Lease(self, nbytes)
        self._waits += 1
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

    def _grantable_bytes(self) -> int:
        """What could be granted now without overtaking a waiter (0 while any waits)."""
        if self._waiters:
            return 0
        if self._parent is None:
            return self.free_bytes
        return min(self.free_bytes, self._parent._grantable_bytes())

    def _take(self, nbytes: int) -> None:
        self._used += nbytes
        assert self._used <= self.bytes_max, (self._used, self.bytes_max)
        self._peak = max(self._peak, self._used)
        if self._parent is not None:
            self._parent._take(nbytes)

    def _release(self, nbytes: int) -> None:
        assert 0 <= nbytes <= self._used, (nbytes, self._used)
        self._used -= nbytes
        self._wake()
        if self._parent is not None:
            self._parent._release(nbytes)

    def _wake(self) -> None:
        while self._waiters:
            nbytes, granted = self._waiters[0]
            if granted.done():
                self._waiters.popleft()
                continue
            parent_free = self._parent._grantable_bytes() if self._parent is not None else nbytes
            if nbytes > self.free_bytes or nbytes > parent_free:
                return
            self._waiters.popleft()
            self._take(nbytes)
            granted.set_result(None)
        # Bytes this budget's own waiters could not use may serve a share's.
        for share in self._shares:
            if self._waiters or not self.free_bytes:
                return
            share._wake()


def log_budget(budget: MemoryBudget) -> None:
    """Logs a budget's figures (and its shares'), at a node's stop.

    WARNING when the budget ever ran short (a producer waited, a response
    was made smaller or waited): clients were slowed by the node's memory
    limit, which an operator may want to raise. Otherwise INFO.
    """
    figures = [("node", budget.stats())] + [("responses", s.stats()) for s in budget._shares]
    short = any(stats.waits or stats.short_grants for _, stats in figures)
    log.log(
        logging.WARNING if short else logging.INFO,
        "memory budget at stop: %s",
        "; ".join(
            f"{name} peak_bytes={stats.peak_bytes} bytes_max={stats.bytes_max} "
            f"waits={stats.waits} short_grants={stats.short_grants}"
            for name, stats in figures
        ),
    )


class Lease:
    """Bytes held from a `MemoryBudget`; `shrink` returns part, `close` returns the rest.

    Closing twice is harmless: a lease holds nothing after its first close.
    """

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
