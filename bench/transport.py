"""Peer transport benchmark: Raft messages between two transports over loopback.

Cases (JSON lines on stdout):

- append: APPEND messages each carrying one entry whose data is a record
  batch of 100 records of 100 B (10,000 B), for 100 groups in turn;
- append_resp: small APPEND_RESP messages (the other direction of the same
  traffic), to show the per-message cost.

Each case runs with both transports in one process (one event loop, one
core does both ends) and with the receiver in a child process (two cores, as
two nodes would be). The sender keeps its queue at most half full, so
nothing is dropped; figures are counted where messages are delivered.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import multiprocessing.connection
import random
import time
from collections.abc import Sequence

import grpc.aio

from weir.cluster.raft.types import Entry, Message, MessageType
from weir.cluster.transport import PeerTransport, TransportConfig, add_peer_service, server_options

WARMUP_S = 0.5
DURATION_S = 3.0
GROUPS = 100
CLUSTER = "bench"


def _message(case: str, index: int) -> Message:
    if case == "append":
        data = b"r" * (100 * 100)
        return Message(
            MessageType.APPEND,
            to=2,
            frm=1,
            term=3,
            index=index,
            log_term=3,
            entries=(Entry(3, index + 1, data=data),),
            commit=index,
        )
    return Message(MessageType.APPEND_RESP, to=2, frm=1, term=3, index=index)


class Counter:
    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0

    async def receive(self, from_node: int, messages: Sequence[tuple[int, Message]]) -> None:
        self.messages += len(messages)
        for _, m in messages:
            for e in m.entries:
                self.bytes += len(e.data)


async def _serve(node_id: int, counter: Counter) -> tuple[PeerTransport, grpc.aio.Server, int]:
    config = TransportConfig(node_id=node_id, cluster_id=CLUSTER)
    transport = PeerTransport(config, counter.receive, rng=random.Random(node_id))
    server = grpc.aio.server(options=server_options(config))
    add_peer_service(server, transport)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return transport, server, port


async def _send_until(sender: PeerTransport, case: str, stop: asyncio.Event) -> None:
    """Sends as fast as the queue allows, never filling it past half."""
    bytes_half = sender.config.queue_bytes_max // 2
    messages_half = sender.config.queue_messages_max // 2
    messages = [_message(case, i) for i in range(GROUPS)]
    i = 0
    while not stop.is_set():
        if sender.buffered_bytes(2) > bytes_half or sender.buffered_messages(2) > messages_half:
            await asyncio.sleep(0.0005)
            continue
        for _ in range(50):
            sender.send(2, i % GROUPS, messages[i % GROUPS])
            i += 1
        await asyncio.sleep(0)


async def _wait_connected(sender: PeerTransport) -> None:
    async with asyncio.timeout(10):
        while not sender.connected(2):  # noqa: ASYNC110 (a counter, not an event)
            await asyncio.sleep(0.01)


async def _one_process(case: str) -> dict[str, object]:
    counter = Counter()
    receiver, server2, port2 = await _serve(2, counter)
    sender, server1, _ = await _serve(1, Counter())
    sender.set_peer(2, f"127.0.0.1:{port2}")
    stop = asyncio.Event()
    async with receiver, sender:
        await _wait_connected(sender)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_send_until(sender, case, stop))
            await asyncio.sleep(WARMUP_S)
            m0, b0, t0 = counter.messages, counter.bytes, time.perf_counter()
            await asyncio.sleep(DURATION_S)
            m1, b1, t1 = counter.messages, counter.bytes, time.perf_counter()
            stop.set()
        drops = sender.stats().peers[2].drops
    await server1.stop(None)
    await server2.stop(None)
    return _figures(case, "one_process", m1 - m0, b1 - b0, t1 - t0, drops)


def _receiver_process(conn: multiprocessing.connection.Connection) -> None:
    async def main() -> None:
        counter = Counter()
        transport, server, port = await _serve(2, counter)
        conn.send(port)
        async with transport:
            while True:
                if conn.poll():
                    if conn.recv() == "stop":
                        break
                    conn.send((counter.messages, counter.bytes, time.perf_counter()))
                await asyncio.sleep(0.005)
        await server.stop(None)

    asyncio.run(main())


async def _two_processes(case: str) -> dict[str, object]:
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(target=_receiver_process, args=(child,))
    process.start()
    try:
        port = await asyncio.to_thread(parent.recv)
        sender, server, _ = await _serve(1, Counter())
        sender.set_peer(2, f"127.0.0.1:{port}")
        stop = asyncio.Event()
        async with sender:
            await _wait_connected(sender)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_send_until(sender, case, stop))
                await asyncio.sleep(WARMUP_S)
                parent.send("mark")
                m0, b0, t0 = await asyncio.to_thread(parent.recv)
                await asyncio.sleep(DURATION_S)
                parent.send("mark")
                m1, b1, t1 = await asyncio.to_thread(parent.recv)
                stop.set()
            drops = sender.stats().peers[2].drops
        await server.stop(None)
        parent.send("stop")
    finally:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
    return _figures(case, "two_processes", m1 - m0, b1 - b0, t1 - t0, drops)


def _figures(
    case: str, mode: str, messages: int, data_bytes: int, elapsed_s: float, drops: int
) -> dict[str, object]:
    return {
        "bench": "transport",
        "case": case,
        "mode": mode,
        "messages_per_s": round(messages / elapsed_s),
        "entry_data_mb_per_s": round(data_bytes / elapsed_s / 1e6, 1),
        "records_per_s": round(messages * 100 / elapsed_s) if case == "append" else None,
        "drops": drops,
    }


def main() -> None:
    for case in ("append", "append_resp"):
        for run in (_one_process, _two_processes):
            print(json.dumps(asyncio.run(run(case))), flush=True)


if __name__ == "__main__":
    main()
