"""TCP proxies that inject network faults between Weir nodes, in the test process.

Each node dials every peer and sends on its own outgoing stream
(docs/cluster.md, "Peer transport"), so one proxy per *directed* pair of
nodes carries exactly one direction of Raft traffic: proxy (i, j) is where
node i finds node j. Cutting proxy (i, j) alone is therefore a one-way
partition at the message level (i's messages no longer reach j while j's
still reach i), and cutting both is a full partition.

A `FaultProxy` can:

- `cut()`: a partition. With `Cut.RESET` (the default) every open
  connection is reset and new ones are accepted and reset at once, so the
  dialer sees its peer vanish; with `Cut.BLACKHOLE` open connections stay
  open but nothing moves in either direction, and new ones are accepted and
  held, which is what a real network partition looks like to TCP (only
  timeouts and heartbeats notice). `heal()` lets held bytes and held
  connections go on, as TCP retransmission would after a partition.
- `block(Direction.FORWARD)` (or `BACKWARD`): hold the bytes of one direction
  of every connection while the other direction flows.
- `delay(ms)`: deliver every chunk `ms` milliseconds after it was read.
- `reset_connections()`: reset every open connection on both sides at once
  (RST, as a crashed middlebox or a dropped NAT entry does) and go on
  accepting new ones.
- `stall()`: stop forwarding in both directions, on open connections and
  new ones (held, not refused) until `heal()`: a peer that went silent.

Between a client and a node's client port the same proxy works as is: start
the node with `--advertised-address` set to the proxy's address, so the
leader addresses the cluster hands out lead through the proxy too.

Everything runs on one asyncio loop in one background thread
(`ProxyLoop`), owned by the test; every control call returns only once the
loop has applied it, so a test that calls `cut()` knows the cut is in place.
Everything is bounded: connections per proxy, bytes read per chunk, chunks
queued per direction of a connection. Listeners and upstream connections are
on loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
import threading
import time
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

HOST = "127.0.0.1"
CONTROL_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0
CONNECTIONS_MAX = 64
CHUNK_BYTES_MAX = 64 * 1024
# Per direction of a connection, so a connection buffers at most
# 2 * QUEUED_CHUNKS_MAX * CHUNK_BYTES_MAX bytes in this process.
QUEUED_CHUNKS_MAX = 16


class Cut(enum.Enum):
    RESET = "reset"
    BLACKHOLE = "blackhole"


class Direction(enum.Enum):
    FORWARD = "forward"  # from the dialer to the target
    BACKWARD = "backward"  # from the target back to the dialer


@dataclass(frozen=True, slots=True)
class ProxyStats:
    bytes_forward: int
    bytes_backward: int
    connections_accepted: int
    connections_refused: int
    connections_open: int


class ProxyLoop:
    """One event loop in one thread that runs every proxy of a test.

    A context manager: leaving it closes every proxy still open, stops the
    loop and joins the thread.
    """

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fault-proxy-loop", daemon=True)
        self._proxies: list[FaultProxy] = []
        self._started = False

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def start(self) -> ProxyLoop:
        assert not self._started
        self._started = True
        self._thread.start()
        return self

    def __enter__(self) -> ProxyLoop:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = CONTROL_TIMEOUT_S) -> T:
        """Run `coro` on the proxy loop and wait for its result."""
        assert self._started and not self._loop.is_closed()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def proxy(self, target: str, name: str = "", **limits: int) -> FaultProxy:
        """A started proxy on a free loopback port that forwards to `target` (host:port)."""
        proxy = FaultProxy(self, target, name, **limits)
        self.run(proxy._start())
        self._proxies.append(proxy)
        return proxy

    def close(self) -> None:
        if not self._started or self._loop.is_closed():
            return
        for proxy in self._proxies:
            proxy.close()
        self._proxies.clear()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CONTROL_TIMEOUT_S)
        assert not self._thread.is_alive(), "the proxy loop did not stop"
        self._loop.close()

    def tasks(self) -> int:
        """Tasks alive on the proxy loop (0 once every proxy is closed)."""

        async def count() -> int:
            current = asyncio.current_task()
            return sum(1 for t in asyncio.all_tasks() if t is not current)

        return self.run(count())


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN, as a vanished peer would look."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Gate:
    """Whether bytes may move in one direction; waiters wake when it opens."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()

    def set(self, is_open: bool) -> None:
        if is_open:
            self._open.set()
        else:
            self._open.clear()

    async def wait(self) -> None:
        await self._open.wait()


class FaultProxy:
    """Forwards connections from a loopback port to one target, with faults on demand.

    Made by `ProxyLoop.proxy()`. Its control methods may be called from any
    thread except the proxy loop's own.
    """

    def __init__(
        self,
        loop: ProxyLoop,
        target: str,
        name: str = "",
        connections_max: int = CONNECTIONS_MAX,
        chunk_bytes_max: int = CHUNK_BYTES_MAX,
        queued_chunks_max: int = QUEUED_CHUNKS_MAX,
    ) -> None:
        host, port = target.rsplit(":", 1)
        assert host in (HOST, "localhost"), "loopback only"
        self.name = name or target
        self.target = target
        self._target = (HOST, int(port))
        self._loop = loop
        self.connections_max = connections_max
        self.chunk_bytes_max = chunk_bytes_max
        self.queued_chunks_max = queued_chunks_max
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._writers: dict[asyncio.Task[None], list[asyncio.StreamWriter]] = {}
        self._cut: Cut | None = None
        self._delay_s = 0.0
        self._gates: dict[Direction, _Gate] = {}
        self._bytes = {Direction.FORWARD: 0, Direction.BACKWARD: 0}
        self._accepted = 0
        self._refused = 0

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def __repr__(self) -> str:
        return f"FaultProxy({self.name}: {self.address} -> {self.target})"

    # Controls, called from the test's thread.

    def cut(self, mode: Cut = Cut.RESET) -> None:
        self._loop.run(self._set_cut(mode))

    def heal(self) -> None:
        """Undo cut(), block() and delay()."""
        self._loop.run(self._heal())

    def block(self, direction: Direction) -> None:
        self._loop.run(self._set_gate(direction, False))

    def delay(self, ms: float) -> None:
        self._loop.run(self._set_delay(ms / 1000.0))

    def reset_connections(self) -> int:
        """Reset every open connection (both sides); new ones are accepted. Returns how many."""
        return self._loop.run(self._reset_open())

    def stall(self) -> None:
        """Forward nothing, either way, on any connection until `heal()`."""
        self._loop.run(self._set_cut(Cut.BLACKHOLE))

    def stats(self) -> ProxyStats:
        return self._loop.run(self._stats())

    def close(self) -> None:
        self._loop.run(self._close())

    # The same, on the proxy loop.

    async def _start(self) -> None:
        self._gates = {d: _Gate() for d in Direction}
        self._server = await asyncio.start_server(self._accept, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set_cut(self, mode: Cut) -> None:
        self._cut = mode
        for gate in self._gates.values():
            gate.set(False)
        if mode is Cut.RESET:
            await self._reset_all()

    async def _heal(self) -> None:
        self._cut = None
        self._delay_s = 0.0
        for gate in self._gates.values():
            gate.set(True)

    async def _set_gate(self, direction: Direction, is_open: bool) -> None:
        self._gates[direction].set(is_open)

    async def _set_delay(self, delay_s: float) -> None:
        assert delay_s >= 0
        self._delay_s = delay_s

    async def _stats(self) -> ProxyStats:
        return ProxyStats(
            bytes_forward=self._bytes[Direction.FORWARD],
            bytes_backward=self._bytes[Direction.BACKWARD],
            connections_accepted=self._accepted,
            connections_refused=self._refused,
            connections_open=len(self._connections),
        )

    async def _reset_open(self) -> int:
        count = len(self._connections)
        await self._reset_all()
        return count

    async def _reset_all(self) -> None:
        for writers in self._writers.values():
            for writer in writers:
                _reset(writer)
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        # Connections first: newer Pythons' wait_closed() waits for them.
        await self._reset_all()
        if server is not None:
            await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut is Cut.RESET or len(self._connections) >= self.connections_max:
            self._refused += 1
            _reset(writer)
            return
        self._accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._writers[task] = [writer]
        try:
            await self._serve(task, reader, writer)
        except* (OSError, EOFError):
            pass  # either side went away (or the target refused): close the other side
        finally:
            for w in self._writers.pop(task):
                if self._cut is Cut.RESET:
                    _reset(w)
                else:
                    w.close()
            self._connections.discard(task)

    async def _serve(
        self, task: asyncio.Task[None], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # A blackholed connection waits here, as a SYN would wait on a real
        # partition, and dials the target only once healed.
        await asyncio.gather(*(gate.wait() for gate in self._gates.values()))
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers[task].append(up_writer)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._pipe(Direction.FORWARD, reader, up_writer))
            group.create_task(self._pipe(Direction.BACKWARD, up_reader, writer))

    async def _pipe(
        self, direction: Direction, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One direction of one connection: a reader and a writer joined by a bounded queue.

        The queue lets a delay act as latency rather than as a throughput cap;
        a closed gate stops the reader and the writer, so held bytes wait in
        the queue and in the kernel's buffers, and TCP flow control holds the
        sender back.
        """
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=self.queued_chunks_max)
        gate = self._gates[direction]

        async def read() -> None:
            while True:
                await gate.wait()
                chunk = await reader.read(self.chunk_bytes_max)
                await queue.put((time.monotonic(), chunk))
                if not chunk:
                    return

        async def write() -> None:
            while True:
                read_at, chunk = await queue.get()
                if self._delay_s:
                    await asyncio.sleep(max(0.0, read_at + self._delay_s - time.monotonic()))
                await gate.wait()
                if not chunk:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(chunk)
                await writer.drain()
                self._bytes[direction] += len(chunk)

        async with asyncio.TaskGroup() as group:
            group.create_task(read())
            group.create_task(write())


class Topology:
    """One proxy per directed pair of nodes, so faults between nodes are one call.

    `peer_addresses` maps node id to that node's real peer listen address.
    Node i's `--peers` (from `peers_arg(i)`) names itself by its real address
    and every other node j by the address of proxy (i, j).
    """

    def __init__(self, loop: ProxyLoop, peer_addresses: Mapping[int, str]) -> None:
        self.loop = loop
        self.peer_addresses = dict(peer_addresses)
        self.proxies: dict[tuple[int, int], FaultProxy] = {}
        for i in self.peer_addresses:
            for j, address in self.peer_addresses.items():
                if i != j:
                    self.proxies[(i, j)] = loop.proxy(address, name=f"{i}->{j}")

    @property
    def nodes(self) -> list[int]:
        return sorted(self.peer_addresses)

    def proxy(self, frm: int, to: int) -> FaultProxy:
        return self.proxies[(frm, to)]

    def peers_arg(self, node: int) -> str:
        """The `--peers` value for `node`: its own real address, the others through proxies."""
        return ",".join(
            f"{j}={self.peer_addresses[j] if j == node else self.proxies[(node, j)].address}"
            for j in self.nodes
        )

    def cut_one_way(self, frm: int, to: int, mode: Cut = Cut.RESET) -> None:
        """`frm`'s messages no longer reach `to`; `to`'s still reach `frm`."""
        self.proxies[(frm, to)].cut(mode)

    def cut_between(self, a: int, b: int, mode: Cut = Cut.RESET) -> None:
        self.cut_one_way(a, b, mode)
        self.cut_one_way(b, a, mode)

    def isolate(self, node: int, mode: Cut = Cut.RESET) -> None:
        """Cut `node` off from every other node, both ways."""
        for other in self.nodes:
            if other != node:
                self.cut_between(node, other, mode)

    def partition(self, *sides: Iterable[int], mode: Cut = Cut.RESET) -> None:
        """Cut every link between nodes on different sides; every node is on exactly one side."""
        side_of: dict[int, int] = {}
        for index, side in enumerate(sides):
            for node in side:
                assert node not in side_of, f"node {node} is on two sides"
                side_of[node] = index
        assert sorted(side_of) == self.nodes, f"every node on one side: {sides}"
        for (frm, to), proxy in self.proxies.items():
            if side_of[frm] != side_of[to]:
                proxy.cut(mode)

    def delay(self, ms: float, frm: int | None = None, to: int | None = None) -> None:
        """Delay every link (or those from `frm` and/or to `to`) by `ms`."""
        for (i, j), proxy in self.proxies.items():
            if frm in (None, i) and to in (None, j):
                proxy.delay(ms)

    def heal_all(self) -> None:
        for proxy in self.proxies.values():
            proxy.heal()

    def stats(self) -> dict[tuple[int, int], ProxyStats]:
        return {pair: proxy.stats() for pair, proxy in self.proxies.items()}

    def close(self) -> None:
        for proxy in self.proxies.values():
            proxy.close()
