"""PeerTransport over real gRPC on loopback: several transports in one process.

Each node is a real `PeerTransport` behind its own grpc.aio server on a free
port. Misbehaving peers are raw gRPC clients that write bytes of our
choosing, so the server side sees exactly what a broken node would send.
Waits have deadlines (`eventually`); nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import grpc.aio
import pytest

from tests.support import aio
from tests.support.aio import free_port
from weir.cluster.raft.types import Entry, Message, MessageType
from weir.cluster.transport import (
    PeerTransport,
    TransportConfig,
    add_peer_service,
    codec,
    server_options,
)
from weir.cluster.v1 import peer_pb2 as pb

# This module's deadlines.
run = functools.partial(aio.run, timeout_s=45)
eventually = functools.partial(aio.eventually, timeout_s=15)

pytestmark = pytest.mark.timeout(60)

# Short intervals so that liveness and reconnects happen within a test.
FAST: dict[str, Any] = {
    "heartbeat_interval_ms": 20,
    "peer_dead_after_ms": 300,
    "reconnect_initial_ms": 20,
    "reconnect_max_ms": 200,
    "handshake_timeout_ms": 1000,
    "close_timeout_ms": 1000,
}
EXCHANGE = "/weir.cluster.v1.PeerService/Exchange"


class Node:
    """One transport, its gRPC server, and what it received."""

    def __init__(
        self, node_id: int, cluster_id: str = "test-cluster", port: int = 0, **config: Any
    ) -> None:
        self.config = TransportConfig(node_id=node_id, cluster_id=cluster_id, **(FAST | config))
        self.received: list[tuple[int, int, Message]] = []
        # Cleared to make this node a slow host that stops reading.
        self.reading = asyncio.Event()
        self.reading.set()
        self.liveness: list[tuple[int, bool]] = []
        self.transport = PeerTransport(self.config, self._receive, rng=random.Random(node_id))
        self.transport.add_liveness_listener(lambda n, alive: self.liveness.append((n, alive)))
        self.server = grpc.aio.server(options=server_options(self.config))
        add_peer_service(self.server, self.transport)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.address = f"127.0.0.1:{self.port}"

    async def _receive(self, from_node: int, messages: Sequence[tuple[int, Message]]) -> None:
        await self.reading.wait()
        self.received.extend((from_node, group, m) for group, m in messages)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Node]:
        await self.server.start()
        try:
            async with self.transport:
                yield self
        finally:
            await self.server.stop(None)


@contextlib.asynccontextmanager
async def mesh(*nodes: Node) -> AsyncIterator[None]:
    """Every node knows every other; all are running and connected both ways."""
    for a in nodes:
        for b in nodes:
            if a is not b:
                a.transport.set_peer(b.config.node_id, b.address)
    async with contextlib.AsyncExitStack() as stack:
        for n in nodes:
            await stack.enter_async_context(n.running())
        await eventually(
            lambda: all(
                a.transport.connected(b.config.node_id) for a in nodes for b in nodes if a is not b
            )
        )
        yield


def append(frm: int, to: int, index: int, data: bytes = b"r" * 100) -> Message:
    return Message(
        MessageType.APPEND,
        to=to,
        frm=frm,
        term=2,
        index=index,
        log_term=2,
        entries=(Entry(2, index + 1, data=data),),
        commit=index,
    )


def test_two_transports_exchange_batches_for_many_groups() -> None:
    async def main() -> None:
        a, b = Node(1), Node(2)
        async with mesh(a, b):
            sent: dict[int, list[tuple[int, int, Message]]] = {1: [], 2: []}
            for i in range(3000):
                group = i % 500
                for src, dst in ((a, b), (b, a)):
                    frm, to = src.config.node_id, dst.config.node_id
                    m = append(frm, to, i)
                    assert src.transport.send(to, group, m)
                    sent[to].append((frm, group, m))
                if i % 100 == 0:
                    await asyncio.sleep(0)
            await eventually(lambda: len(a.received) == 3000 and len(b.received) == 3000)
            # One stream per direction keeps the order in which the host sent.
            assert b.received == sent[2]
            assert a.received == sent[1]
            stats = a.transport.stats().peers[2]
            assert stats.messages_sent == 3000 and stats.drops == 0
            assert stats.frames_sent < stats.messages_sent  # batched
            assert b.transport.stats().peers[1].messages_received == 3000
            assert a.transport.peer_alive(2) and b.transport.peer_alive(1)

    run(main)


def test_three_transports_full_mesh() -> None:
    async def main() -> None:
        nodes = [Node(1), Node(2), Node(3)]
        async with mesh(*nodes):
            for i in range(600):
                for src in nodes:
                    for dst in nodes:
                        if src is not dst:
                            frm, to = src.config.node_id, dst.config.node_id
                            assert src.transport.send(to, 1000 + i % 50, append(frm, to, i))
                await asyncio.sleep(0)
            await eventually(lambda: all(len(n.received) == 1200 for n in nodes))
            for n in nodes:
                me = n.config.node_id
                for other in (1, 2, 3):
                    if other == me:
                        continue
                    got = [m for frm, _, m in n.received if frm == other]
                    assert got == [append(other, me, i) for i in range(600)]
                    assert n.transport.peer_alive(other)

    run(main)


def test_large_messages_go_alone_and_oversized_ones_drop() -> None:
    async def main() -> None:
        limits = {
            "frame_bytes_max": 64 << 10,
            "message_bytes_max": 4 << 20,
            "queue_bytes_max": 8 << 20,
        }
        a, b = Node(1, **limits), Node(2, **limits)
        async with mesh(a, b):
            big = append(1, 2, 1, data=b"B" * (3 << 20))
            small = append(1, 2, 2)
            assert a.transport.send(2, 7, small)
            assert a.transport.send(2, 7, big)
            assert a.transport.send(2, 7, small)
            assert not a.transport.send(2, 7, append(1, 2, 3, data=b"X" * (5 << 20)))
            await eventually(lambda: len(b.received) == 3)
            assert [m for _, _, m in b.received] == [small, big, small]
            stats = a.transport.stats().peers[2]
            assert stats.drops_oversize == 1 and stats.frames_sent >= 2

    run(main)


def test_a_peer_that_is_down_drops_then_reconnects_and_liveness_follows() -> None:
    async def main() -> None:
        port = free_port()
        a = Node(1)
        a.transport.set_peer(2, f"127.0.0.1:{port}")
        async with a.running():
            await eventually(lambda: a.transport.stats().peers[2].connect_failures >= 3)
            # Down: every send drops, is counted, and holds no memory.
            for i in range(1000):
                assert not a.transport.send(2, i, append(1, 2, i))
            stats = a.transport.stats().peers[2]
            assert stats.drops_disconnected == 1000
            assert a.transport.buffered_bytes(2) == 0
            assert not a.transport.peer_alive(2)

            for attempt in (1, 2):
                b = Node(2, port=port)
                b.transport.set_peer(1, a.address)
                async with b.running():
                    await eventually(lambda: a.transport.connected(2) and a.transport.peer_alive(2))
                    await eventually(lambda b=b: b.transport.peer_alive(1))  # type: ignore[misc]
                    assert a.transport.send(2, 5, append(1, 2, attempt))
                    await eventually(lambda b=b: len(b.received) == 1)  # type: ignore[misc]
                # b is gone: a hears nothing more, marks it dead, and drops again.
                await eventually(lambda: not a.transport.peer_alive(2))
                await eventually(lambda: not a.transport.connected(2))
                assert not a.transport.send(2, 5, append(1, 2, 9))
            assert a.liveness == [(2, True), (2, False), (2, True), (2, False)]
            assert a.transport.stats().peers[2].connects == 2
            assert a.transport.stats().peers[2].reconnects == 1

    run(main)


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_peer_that_stops_reading_never_grows_the_senders_memory_past_its_bound() -> None:
    async def main() -> None:
        limits = {
            "frame_bytes_max": 256 << 10,
            "message_bytes_max": 1 << 20,
            "queue_bytes_max": 2 << 20,
            "write_timeout_ms": 1000,
        }
        a, b = Node(1, **limits), Node(2, **limits)
        async with mesh(a, b):
            b.reading.clear()  # b's host stops taking messages: b stops reading its streams
            bound = a.config.queue_bytes_max + a.config.frame_bytes_max
            payload = append(1, 2, 1, data=b"p" * 10_000)
            rss_before = _rss_bytes()
            offered = 0
            accepted = 0
            # Offer 400 MB, 200 times the queue bound.
            for i in range(40_000):
                accepted += a.transport.send(2, i % 100, payload)
                offered += 10_000
                assert a.transport.buffered_bytes(2) <= bound
                if i % 200 == 0:
                    await asyncio.sleep(0.001)
            growth = _rss_bytes() - rss_before
            stats = a.transport.stats().peers[2]
            assert stats.drops > 0 and stats.drops_queue_full > 0
            assert stats.queue_bytes <= a.config.queue_bytes_max
            # Queue + frame + gRPC's flow-control windows, far below what was offered.
            assert growth < 64 << 20, f"RSS grew by {growth} bytes for {offered} offered"
            assert accepted * 10_000 < offered // 4
            # A write held back past write_timeout_ms ends the stream; the
            # link redials, and the queue kept dropping meanwhile.
            await eventually(lambda: a.transport.stats().peers[2].write_timeouts >= 1)
            assert a.transport.buffered_bytes(2) <= bound
            b.reading.set()
            # Once b reads again, traffic flows (after a reconnect if the write timed out).
            before = len(b.received)
            await eventually(lambda: a.transport.connected(2))
            await eventually(lambda: a.transport.send(2, 1, payload) and len(b.received) > before)

    run(main)


async def _raw_exchange(address: str, frames: Sequence[bytes]) -> grpc.StatusCode:
    """Plays a misbehaving peer: writes `frames`, returns how the server ended the call."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream(EXCHANGE)()
        try:
            for frame in frames:
                await call.write(frame)
            await call.done_writing()
            while await call.read() is not grpc.aio.EOF:
                pass
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass
        code: grpc.StatusCode = await call.code()
        return code


def _batch_with(message: pb.RaftMessage) -> bytes:
    batch = pb.Batch(messages=[pb.GroupMessage(group_id=1, message=message)])
    return pb.ExchangeRequest(batch=batch).SerializeToString()


def test_malformed_frames_close_that_stream_and_the_node_carries_on() -> None:
    async def main() -> None:
        a, b = Node(1), Node(2)
        async with mesh(a, b):
            hello = codec.hello_frame("test-cluster", 9, 2)
            bad = [
                [b"\xff\xfe\xfd"],
                [codec.heartbeat_frame(1)],  # no hello first
                [hello, b"\x12\x05\x0a"],
                [hello, _batch_with(pb.RaftMessage(type=77))],  # type: ignore[arg-type]
                [
                    hello,
                    _batch_with(pb.RaftMessage(type=pb.MESSAGE_TYPE_APPEND, entries=[pb.Entry()])),
                ],
                [hello, codec.heartbeat_frame(1), hello],
            ]
            for frames in bad:
                assert await _raw_exchange(b.address, frames) == grpc.StatusCode.INVALID_ARGUMENT
            stats = b.transport.stats()
            assert stats.streams_misbehaved == len(bad)
            assert stats.peers[9].misbehaved == 4
            # A clean end of stream after a valid hello is not misbehaviour.
            assert await _raw_exchange(b.address, [hello]) == grpc.StatusCode.OK
            # Node 1's stream to node 2 never noticed.
            assert a.transport.send(2, 3, append(1, 2, 1))
            await eventually(lambda: len(b.received) == 1)
            assert a.transport.stats().peers[2].connects == 1

    run(main)


def test_a_peer_of_another_cluster_or_the_wrong_node_is_refused() -> None:
    async def main() -> None:
        b = Node(2)
        stranger = Node(3, cluster_id="other-cluster")
        stranger.transport.set_peer(2, b.address)
        confused = Node(4)
        confused.transport.set_peer(5, b.address)  # thinks b is node 5
        async with b.running(), stranger.running(), confused.running():
            await eventually(lambda: stranger.transport.stats().peers[2].refusals >= 2)
            await eventually(lambda: confused.transport.stats().peers[5].refusals >= 2)
            assert b.transport.stats().streams_refused >= 4
            assert not stranger.transport.connected(2) and not confused.transport.connected(5)
            assert not b.transport.peer_alive(3) and not b.transport.peer_alive(4)
            assert not stranger.transport.send(2, 1, append(3, 2, 1))
            assert b.received == []
            code = await _raw_exchange(b.address, [codec.hello_frame("test-cluster", 2, 2)])
            assert code == grpc.StatusCode.FAILED_PRECONDITION  # our own node id

    run(main)


def test_a_failing_host_callback_fails_the_transport() -> None:
    async def main() -> None:
        a, b = Node(1), Node(2)

        async def broken(from_node: int, messages: Sequence[tuple[int, Message]]) -> None:
            raise RuntimeError("host bug")

        b.transport._on_receive = broken
        with pytest.raises(ExceptionGroup) as failure:
            async with mesh(a, b):
                a.transport.send(2, 1, append(1, 2, 1))
                await asyncio.sleep(30)
        assert failure.group_contains(RuntimeError, match="host bug")

    run(main)


def test_shutdown_ends_every_task_even_with_streams_open() -> None:
    async def main() -> None:
        a, b, c = Node(1), Node(2), Node(3)
        async with mesh(a, b, c):
            b.reading.clear()  # a handler is parked inside the host callback
            a.transport.send(2, 1, append(1, 2, 1))
            await eventually(lambda: b.transport.stats().peers[1].frames_received > 0)
            assert b.transport.stats().streams_open == 2
        await asyncio.sleep(0)
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert leftover == []

    run(main)
