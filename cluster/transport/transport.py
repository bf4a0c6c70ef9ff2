"""`PeerTransport`: Raft messages between the nodes of a cluster.

Each node dials every peer and sends on its own outgoing stream (`PeerLink`);
it receives on the streams its peers opened to it (`serve_exchange`, which
`add_peer_service` registers on the node's grpc.aio server). Both
directions are symmetric, so no rule decides which node dials, and one
node's stream to another never waits for the opposite one.

The host's side of the contract:

- `send(node_id, group_id, message)` never blocks and never raises for an
  operating condition: it encodes the message, queues it for that peer and
  returns True, or drops it (counted in `stats()`) and returns False.
- `on_receive(from_node, messages)` is awaited for every received batch, in
  order, one batch at a time per stream. While it waits, that stream is not
  read: HTTP/2 flow control then holds the sender back, whose queue drops.
  So a slow host costs bounded memory on both nodes.
- `peer_alive(node_id)` is True while frames (batches or the per-node
  heartbeat) arrive from that node; liveness listeners hear every change.

The transport is an async context manager that owns every task it starts
(one per peer link, one liveness watcher) in one TaskGroup. The streams
peers open to us run in gRPC's handler tasks, which we do not create; each
one runs under a deadline the transport holds, and closing moves every such
deadline to "now" and waits (at most `close_timeout_ms`) until they have
all ended, so nothing of ours outlives the `async with`. A callback that
raises is a bug in the host: the transport fails, and with it the node.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType

import grpc
import grpc.aio

from weir.cluster.raft.types import Message, NodeId

from . import codec
from .codec import GroupId
from .config import PeerStats, TransportConfig
from .errors import PeerMisbehavedError
from .link import PeerLink
from .liveness import Liveness

logger = logging.getLogger(__name__)

ReceiveCallback = Callable[[NodeId, Sequence[tuple[GroupId, Message]]], Awaitable[None]]
LivenessListener = Callable[[NodeId, bool], None]


def _monotonic_ms() -> float:
    return time.monotonic() * 1000


@dataclass(frozen=True, slots=True)
class TransportStats:
    """A copy of the counters at one moment."""

    peers: dict[NodeId, PeerStats]
    # Messages for a node the transport has no address for.
    drops_unknown_peer: int = 0
    # Incoming streams refused at the handshake (another cluster, wrong node).
    streams_refused: int = 0
    # Incoming streams ended because a frame did not decode.
    streams_misbehaved: int = 0
    # Incoming streams open now.
    streams_open: int = 0
    connected: frozenset[NodeId] = field(default_factory=frozenset)


class PeerTransport:
    def __init__(
        self,
        config: TransportConfig,
        on_receive: ReceiveCallback,
        *,
        peers: Mapping[NodeId, str] | None = None,
        rng: random.Random | None = None,
        clock_ms: Callable[[], float] = _monotonic_ms,
    ) -> None:
        self.config = config
        self._on_receive = on_receive
        # Seeded by the caller for reproducible backoff; each link draws its
        # own generator from it so one peer's failures do not shift another's.
        self._rng = rng if rng is not None else random.Random(config.node_id)
        self._clock_ms = clock_ms
        self._addresses: dict[NodeId, str] = {}
        self._links: dict[NodeId, PeerLink] = {}
        self._link_tasks: dict[NodeId, asyncio.Task[None]] = {}
        self._stats: dict[NodeId, PeerStats] = {}
        self._liveness = Liveness(
            config.peer_dead_after_ms, stalled_after_ms=2 * config.heartbeat_interval_ms
        )
        self._listeners: list[LivenessListener] = []
        self._drops_unknown_peer = 0
        self._streams_refused = 0
        self._streams_misbehaved = 0
        # One deadline per incoming stream; closing moves them all to "now",
        # which ends each handler at whatever it is waiting for.
        self._incoming: set[asyncio.Timeout] = set()
        self._incoming_done = asyncio.Event()
        self._incoming_done.set()
        self._failure: BaseException | None = None
        self._failed = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        for node_id, address in (peers or {}).items():
            self.set_peer(node_id, address)

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> PeerTransport:
        assert self._group is None, "a PeerTransport runs once"
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self._running = True
        for node_id in self._links:
            self._start_link(node_id)
        self._tasks.append(self._group.create_task(self._watch_liveness(), name="peer-liveness"))
        self._tasks.append(self._group.create_task(self._supervise(), name="peer-supervisor"))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._group is not None
        self._running = False
        for task in [*self._link_tasks.values(), *self._tasks]:
            task.cancel()
        self._link_tasks.clear()
        now = asyncio.get_running_loop().time()
        for deadline in self._incoming:
            deadline.reschedule(now)
        try:
            async with asyncio.timeout(self.config.close_timeout_ms / 1000):
                await self._incoming_done.wait()
        except TimeoutError:
            logger.warning("%d incoming peer streams did not end in time", len(self._incoming))
        await self._group.__aexit__(exc_type, exc, tb)

    def _fail(self, exc: BaseException) -> None:
        """A host callback raised: record it so the supervisor fails the TaskGroup."""
        if self._failure is None:
            self._failure = exc
            self._failed.set()

    async def _supervise(self) -> None:
        await self._failed.wait()
        assert self._failure is not None
        raise self._failure

    # -- peers -------------------------------------------------------------

    def set_peer(self, node_id: NodeId, address: str) -> None:
        """Adds a peer, or moves it to a new address (its stream is redialled)."""
        assert node_id != self.config.node_id, "a node is not its own peer"
        if self._addresses.get(node_id) == address:
            return
        self.remove_peer(node_id)
        self._addresses[node_id] = address
        stats = self._stats.setdefault(node_id, PeerStats())
        seed = self._rng.getrandbits(64)
        self._links[node_id] = PeerLink(self.config, node_id, address, stats, random.Random(seed))
        if self._running:
            self._start_link(node_id)

    def remove_peer(self, node_id: NodeId) -> None:
        """Stops sending to a node; its counters stay in `stats()`."""
        self._addresses.pop(node_id, None)
        self._links.pop(node_id, None)
        task = self._link_tasks.pop(node_id, None)
        if task is not None:
            task.cancel()
        if self._liveness.forget(node_id):
            self._notify(node_id, False)

    def _start_link(self, node_id: NodeId) -> None:
        assert self._group is not None
        link = self._links[node_id]
        self._link_tasks[node_id] = self._group.create_task(link.run(), name=f"peer-link-{node_id}")

    # -- sending -----------------------------------------------------------

    def send(self, node_id: NodeId, group_id: GroupId, message: Message) -> bool:
        """Queues `message` of `group_id` for node `node_id`; False when dropped.

        Never blocks. Drops when the peer is unknown, not connected, or its
        queue is full, and when the encoded message exceeds
        `message_bytes_max`; every drop is counted in `stats()`.
        """
        assert node_id != self.config.node_id, "messages to self never reach the transport"
        assert group_id >= 0
        link = self._links.get(node_id)
        if link is None:
            self._drops_unknown_peer += 1
            return False
        if not link.connected:
            # Counted without encoding: a dead peer costs no CPU either.
            link.stats.drops_disconnected += 1
            return False
        part = codec.encode_part(group_id, message)
        if len(part) > self.config.message_bytes_max:
            link.stats.drops_oversize += 1
            link.stats.dropped_bytes += len(part)
            logger.warning(
                "dropped a %s of group %d for node %d: %d bytes encoded, over %d",
                message.type.value,
                group_id,
                node_id,
                len(part),
                self.config.message_bytes_max,
            )
            return False
        return link.offer(part)

    def buffered_bytes(self, node_id: NodeId) -> int:
        """Bytes held for `node_id`: its queue plus the frame being written."""
        link = self._links.get(node_id)
        return 0 if link is None else link.queue.bytes + link.inflight_bytes

    def buffered_messages(self, node_id: NodeId) -> int:
        """Messages queued for `node_id` and not yet in a frame."""
        link = self._links.get(node_id)
        return 0 if link is None else len(link.queue)

    def connected(self, node_id: NodeId) -> bool:
        """True while our stream to `node_id` is up (handshake done)."""
        link = self._links.get(node_id)
        return link is not None and link.connected

    # -- liveness ----------------------------------------------------------

    def peer_alive(self, node_id: NodeId) -> bool:
        """True while `node_id` has been heard from within `peer_dead_after_ms`
        (checked every `heartbeat_interval_ms`)."""
        return self._liveness.alive(node_id)

    def add_liveness_listener(self, listener: LivenessListener) -> Callable[[], None]:
        """`listener(node_id, alive)` hears every change; returns a function that removes it.

        Called on the event loop; it must not block. A listener that raises
        fails the transport.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _notify(self, node_id: NodeId, alive: bool) -> None:
        logger.info("peer %d is %s", node_id, "alive" if alive else "dead")
        for listener in list(self._listeners):
            try:
                listener(node_id, alive)
            except Exception as exc:
                self._fail(exc)

    def _heard(self, node_id: NodeId) -> None:
        if self._liveness.heard(node_id, self._clock_ms()):
            self._notify(node_id, True)

    async def _watch_liveness(self) -> None:
        interval_s = self.config.heartbeat_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            for node_id in self._liveness.expire(self._clock_ms()):
                self._notify(node_id, False)

    # -- stats -------------------------------------------------------------

    def stats(self) -> TransportStats:
        return TransportStats(
            peers={node: replace(s) for node, s in self._stats.items()},
            drops_unknown_peer=self._drops_unknown_peer,
            streams_refused=self._streams_refused,
            streams_misbehaved=self._streams_misbehaved,
            streams_open=len(self._incoming),
            connected=frozenset(n for n, link in self._links.items() if link.connected),
        )

    # -- receiving (the PeerService.Exchange handler) ----------------------

    async def serve_exchange(
        self,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext[bytes, bytes],
    ) -> None:
        """One stream a peer opened to us: its Hello, then batches and heartbeats."""
        del requests  # read through the context, one frame at a time
        if not self._running:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "peer transport not running")
        node_id: NodeId | None = None
        try:
            async with asyncio.timeout(None) as deadline:
                self._incoming.add(deadline)
                self._incoming_done.clear()
                try:
                    node_id = await self._accept(context)
                    if node_id is not None:
                        await self._receive(node_id, context)
                except PeerMisbehavedError as exc:
                    self._streams_misbehaved += 1
                    if node_id is not None:
                        self._stats.setdefault(node_id, PeerStats()).misbehaved += 1
                    logger.warning("closing the stream from node %s: %s", node_id, exc)
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                finally:
                    self._incoming.discard(deadline)
                    if not self._incoming:
                        self._incoming_done.set()
        except TimeoutError:
            # Only closing moves this deadline: tell the peer to redial later.
            await context.abort(grpc.StatusCode.UNAVAILABLE, "peer transport closing")

    async def _accept(self, context: grpc.aio.ServicerContext[bytes, bytes]) -> NodeId | None:
        """Reads and checks the peer's Hello; answers with ours, or refuses."""
        config = self.config
        try:
            async with asyncio.timeout(config.handshake_timeout_ms / 1000):
                data = await _read(context)
        except TimeoutError:
            raise PeerMisbehavedError("no hello in time") from None
        if data is None:
            return None
        hello = codec.decode_request(data)
        if not isinstance(hello, codec.Hello):
            raise PeerMisbehavedError("the first frame is not a hello")
        refusal = self._refusal(hello)
        if refusal is not None:
            self._streams_refused += 1
            logger.warning("refused a peer stream from node %d: %s", hello.node_id, refusal)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, refusal)
        await context.write(codec.hello_response(config.cluster_id, config.node_id))
        return hello.node_id

    def _refusal(self, hello: codec.Hello) -> str | None:
        config = self.config
        if hello.cluster_id != config.cluster_id:
            return f"node {hello.node_id} belongs to cluster {hello.cluster_id!r}, this node to {config.cluster_id!r}"
        if hello.peer_node_id != config.node_id:
            return f"this is node {config.node_id}, not node {hello.peer_node_id}"
        if hello.node_id in (0, config.node_id):
            return f"node id {hello.node_id} cannot be a peer of node {config.node_id}"
        return None

    async def _receive(
        self, node_id: NodeId, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> None:
        stats = self._stats.setdefault(node_id, PeerStats())
        self._heard(node_id)
        while True:
            data = await _read(context)
            if data is None:
                return
            frame = codec.decode_request(data)
            stats.frames_received += 1
            stats.bytes_received += len(data)
            self._heard(node_id)
            if isinstance(frame, codec.Batch):
                stats.messages_received += len(frame.messages)
                if frame.messages:
                    await self._deliver(node_id, frame.messages)
            elif isinstance(frame, codec.Heartbeat):
                stats.heartbeats_received += 1
            else:
                raise PeerMisbehavedError("a second hello on one stream")

    async def _deliver(self, node_id: NodeId, messages: Sequence[tuple[GroupId, Message]]) -> None:
        try:
            await self._on_receive(node_id, messages)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(exc)
            raise


async def _read(context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes | None:
    """The next frame, or None at the end of the stream."""
    data: object = await context.read()
    if data is grpc.aio.EOF:
        return None
    assert isinstance(data, bytes)
    return data
