"""A client's connection to its cluster: one node at a time, and the move to another.

`Connection` holds the node addresses (`weir._nodes.Nodes`) and one gRPC
channel per address used so far, opened lazily and closed with the client.
Channels to nodes the client left are kept: gRPC reconnects them in the
background, so coming back to a restarted node costs no new handshake.

Every client asks `connect()` before it opens a stream or makes a call, so
that a node that cannot be reached is a *failed connect* (nothing was sent,
no outcome is unknown) rather than a failed request. When a node fails, the
client calls `leave(address, error)`: NOT_LEADER with a named leader moves to
that leader, anything else to the next address; the answer is how long to
wait first (0 within a round of the addresses, a backoff after a full one).

`call_unary()` is the retry loop of the unary calls (admin methods and the
producer's metadata): retriable failures move to the next node and try
again, up to `attempts_per_address` times the number of addresses.

An election under way elsewhere is a wait, not a failed node: a consumer
group's coordinator without a leader (`NOT_COORDINATOR`: the cluster just
started and has not created or elected its coordinator groups yet, or the
coordinator's node failed), or a partition leader that the answering node's
relay cannot reach (`RELAY_FAILED`, `RELAY_ENDED`: its node died and no
successor is elected yet). Such an answer says nothing about the node that
gave it, and every node gives it, at once, for a second or more. Clients
that take an `ElectionWait` retry those answers (with the same moves and
backoff) without using attempts, for as long as the wait allows, counted
from the first of them since the last success, and then raise the last one.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import grpc.aio

from weir import _conn
from weir._nodes import Bootstrap, Nodes, parse_bootstrap
from weir._retry import Backoff
from weir.errors import NotLeaderError, UnavailableError, WeirError

__all__ = [
    "CONNECT_TIMEOUT_S_MAX",
    "ELECTION_WAIT_REASONS",
    "Connection",
    "ElectionWait",
    "call_unary",
    "connection_lost",
    "moves_node",
    "wait_ready",
]

_log = logging.getLogger("weir.failover")

T = TypeVar("T")

# A connect that takes longer than this counts as failed, so a node that
# does not answer at all (a blackholed host) costs at most this per visit.
CONNECT_TIMEOUT_S_MAX = 10.0


# Codes gRPC's core uses when a connection dies under a call ("Internal error
# from Core" after a peer's kill -9, for one). The broker never sends them
# without an ErrorInfo reason (INTERNAL_ERROR), so reason-less they are the
# transport's.
_TRANSPORT_CODES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})


# Reasons that mean "an election is under way elsewhere" (module doc):
# retried until the wait runs out, without using attempts.
ELECTION_WAIT_REASONS = frozenset({"NOT_COORDINATOR", "RELAY_FAILED", "RELAY_ENDED"})


class ElectionWait:
    """The time left to wait for an election elsewhere, from the first answer that said so."""

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self._clock = clock
        # When the first coordinator wait since the last success began (None: none).
        self.since: float | None = None

    def reset(self) -> None:
        """A call succeeded: a later wait is a new one."""
        self.since = None

    def remaining_s(self) -> float:
        """Seconds left (<= 0: give up); the first call since `reset` starts the wait."""
        now = self._clock()
        if self.since is None:
            self.since = now
        return self.since + self.timeout_s - now


def connection_lost(error: WeirError) -> WeirError:
    """`error`, or an `UnavailableError` if it is the transport's report of a lost connection."""
    if not error.reason and error.code in _TRANSPORT_CODES:
        return UnavailableError(f"the connection was lost ({error.code.name}: {error.message})")
    return error


def moves_node(error: WeirError) -> bool:
    """Whether `error` means "try another node": UNAVAILABLE of any reason, or NOT_LEADER."""
    return isinstance(error, NotLeaderError) or error.code is grpc.StatusCode.UNAVAILABLE


async def wait_ready(channel: grpc.aio.Channel, timeout_s: float) -> bool:
    """True once `channel` is READY; False if its connect fails or takes over `timeout_s`.

    A channel in TRANSIENT_FAILURE answers False at once: its last connect
    failed. gRPC keeps reconnecting it in the background (within
    `RECONNECT_BACKOFF_MS_MAX`), so a later visit finds a restarted node.
    """
    ready = grpc.ChannelConnectivity.READY
    failed = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)
    try:
        async with asyncio.timeout(timeout_s):
            state = channel.get_state(try_to_connect=True)
            while state is not ready:
                if state in failed:
                    return False
                await channel.wait_for_state_change(state)
                state = channel.get_state(try_to_connect=True)
    except TimeoutError:
        return False
    return True


class Connection:
    """The node a client uses now, a channel per address, and the moves between nodes.

    Args:
        bootstrap: One "host:port", a comma-separated string of them, or a
            sequence of them.
        rng: Randomness for the start address and the backoff jitter.
        backoff_ms / backoff_max_ms: The wait after the first full round of
            failed nodes, doubling up to the cap (with +-20% jitter).
        connect_timeout_s: The longest wait for one node's connect.
        keepalive_time_ms: HTTP/2 keepalive interval of the channels (None: none).
    """

    def __init__(
        self,
        bootstrap: Bootstrap,
        *,
        rng: random.Random | None = None,
        backoff_ms: int = 100,
        backoff_max_ms: int = 5_000,
        connect_timeout_s: float = CONNECT_TIMEOUT_S_MAX,
        keepalive_time_ms: int | None = _conn.KEEPALIVE_TIME_MS_DEFAULT,
    ) -> None:
        rng = rng if rng is not None else random.Random()
        self.nodes = Nodes(
            parse_bootstrap(bootstrap),
            backoff=Backoff(backoff_ms, max(backoff_ms, backoff_max_ms), rng=rng),
            rng=rng,
        )
        self._connect_timeout_s = min(connect_timeout_s, CONNECT_TIMEOUT_S_MAX)
        self._keepalive_time_ms = keepalive_time_ms
        self._channels: dict[str, grpc.aio.Channel] = {}
        # Channels of learned addresses that `Nodes` forgot; closed at the
        # next await, so they are bounded by ADDRESSES_MAX as well.
        self._forgotten: list[grpc.aio.Channel] = []

    @property
    def address(self) -> str:
        """The address of the node in use."""
        return self.nodes.current

    @property
    def connect_timeout_s(self) -> float:
        """The longest wait for one node's connect."""
        return self._connect_timeout_s

    @property
    def address_count(self) -> int:
        """How many addresses the client knows."""
        return len(self.nodes.addresses)

    def channel(self, address: str | None = None) -> grpc.aio.Channel:
        """The channel to `address` (default: the current node), opened on first use.

        Needs a running event loop.
        """
        address = address if address is not None else self.nodes.current
        channel = self._channels.get(address)
        if channel is None:
            # Looked up at call time so unit tests can script the channels.
            channel = self._channels[address] = _conn.open_channel(
                address, keepalive_time_ms=self._keepalive_time_ms
            )
        return channel

    async def connect(self) -> bool:
        """Whether the current node can be reached (within the connect timeout)."""
        while self._forgotten:
            await self._forgotten.pop().close()
        return await _wait_ready(self.channel(), self._connect_timeout_s)

    def leave(self, address: str, error: WeirError) -> float:
        """The node at `address` failed with `error`: move on; returns the seconds to wait.

        NOT_LEADER with a leader address goes to that leader; anything else
        to the next address (a no-op if another call already left `address`).
        """
        if address != self.nodes.current:
            return 0.0
        leader = error.leader_address if isinstance(error, NotLeaderError) else None
        delay = self.nodes.redirect(leader) if leader else self.nodes.failed(address)
        self._drop_forgotten()
        _log.info(
            "leaving %s (%s); next %s in %.3fs",
            address,
            error,
            self.nodes.current,
            delay,
        )
        return delay

    def succeeded(self, address: str) -> None:
        """The node at `address` served a request."""
        self.nodes.succeeded(address)

    async def close(self) -> None:
        """Close every channel; calls still open on them end."""
        channels = list(self._channels.values()) + self._forgotten
        self._channels.clear()
        self._forgotten.clear()
        for channel in channels:
            await channel.close()

    def _drop_forgotten(self) -> None:
        known = set(self.nodes.addresses)
        for address in [a for a in self._channels if a not in known]:
            self._forgotten.append(self._channels.pop(address))


async def _wait_ready(channel: grpc.aio.Channel, timeout_s: float) -> bool:
    # Indirection so unit tests can script connects per fake channel.
    return await wait_ready(channel, timeout_s)


async def call_unary(
    connection: Connection,
    call: Callable[[grpc.aio.Channel], Awaitable[T]],
    *,
    attempts_per_address: int,
    coordinator_wait: ElectionWait | None = None,
) -> T:
    """Run a unary call on the current node, moving on after retriable failures.

    Gives up, raising the last error, after `attempts_per_address` times the
    number of known addresses. With a `coordinator_wait`, answers of
    `ELECTION_WAIT_REASONS` use no attempt and are retried until that wait
    runs out. An error that follows a failed attempt whose
    outcome is unknown (the call was sent, the connection died) carries
    metadata `after_unknown_outcome="true"`: a CreateTopic retried this way
    may answer TOPIC_EXISTS for the topic its own first attempt created.
    """
    failures = 0
    unknown_outcome = False
    while True:
        address = connection.address
        error: WeirError
        if not await connection.connect():
            error = UnavailableError(f"cannot connect to {address}")
        else:
            try:
                async with _conn.translated():
                    result = await call(connection.channel(address))
            except WeirError as raised:
                exc = connection_lost(raised)
                if not (exc.retriable and moves_node(exc)):
                    if not moves_node(exc):
                        connection.succeeded(address)  # the node answered
                    if unknown_outcome:
                        exc.metadata.setdefault("after_unknown_outcome", "true")
                    raise exc from None
                error = exc
                # A broker that answers with a reason (NOT_LEADER,
                # SHUTTING_DOWN, STORAGE_ERROR) did nothing; UNAVAILABLE
                # without one is a connection that may have died after the
                # request left.
                unknown_outcome = unknown_outcome or not exc.reason
            else:
                connection.succeeded(address)
                if coordinator_wait is not None:
                    coordinator_wait.reset()
                return result
        if coordinator_wait is not None and error.reason in ELECTION_WAIT_REASONS:
            remaining_s = coordinator_wait.remaining_s()
            if remaining_s <= 0:
                raise error
            delay = min(connection.leave(address, error), remaining_s)
        else:
            failures += 1
            delay = connection.leave(address, error)
            if failures >= attempts_per_address * connection.address_count:
                raise error
        await asyncio.sleep(delay)
