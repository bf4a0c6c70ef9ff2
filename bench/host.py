"""Multi-Raft host benchmark: three RaftHosts in one process over loopback gRPC.

Cases (JSON lines on stdout):

- produce: 6 partition groups, batches of 1,000 records of 100 B appended on
  each group's leader with a window of batches in flight per partition;
  records/s counted when `committed` resolves (acks=ALL), with the hosts'
  turn figures (groups per turn, writer commits per turn);
- idle: 1,000 partition groups with nothing to do, once they have
  quiesced: process CPU over a few seconds (all three hosts together, one
  process), as a share of one core, and group ticks in that time.

All three nodes share one event loop and one process, so the figures are a
floor for what three processes on three machines would do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import random
import socket
import sys
import tempfile
import time
from typing import Any

import grpc.aio

from weir.cluster.host import HostConfig, RaftHost
from weir.cluster.storage import NodeStorage, StorageConfig
from weir.cluster.transport import TransportConfig, server_options

CLUSTER = "bench"
PRODUCE_S = 5.0
IDLE_S = 5.0
RECORD_BYTES = 100
BATCH_RECORDS = 1000
PARTITIONS = 6
WINDOW = 4
IDLE_GROUPS = 1000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def _cluster(root: pathlib.Path, **host: Any) -> Any:
    ports = {n: _free_port() for n in (1, 2, 3)}
    hosts: dict[int, RaftHost] = {}
    async with contextlib.AsyncExitStack() as stack:
        for node_id, port in ports.items():
            storage = await stack.enter_async_context(
                NodeStorage(StorageConfig(path=root / f"node-{node_id}"))
            )
            transport = TransportConfig(node_id=node_id, cluster_id=CLUSTER)
            peers = {n: f"127.0.0.1:{p}" for n, p in ports.items() if n != node_id}
            config = HostConfig(
                node_id=node_id, cluster_id=CLUSTER, peers=peers, transport=transport, **host
            )
            raft_host = RaftHost(config, storage, random.Random(node_id))
            server = grpc.aio.server(options=server_options(transport))
            raft_host.add_peer_service(server)
            server.add_insecure_port(f"127.0.0.1:{port}")
            await server.start()
            stack.push_async_callback(server.stop, None)
            hosts[node_id] = await stack.enter_async_context(raft_host)
        yield hosts


async def _leaders(hosts: dict[int, RaftHost], groups: range) -> dict[int, RaftHost]:
    leaders: dict[int, RaftHost] = {}
    while len(leaders) < len(groups):
        for g in groups:
            for host in hosts.values():
                if host.is_leader(g):
                    leaders[g] = host
        await asyncio.sleep(0.05)
    return leaders


async def _produce(root: pathlib.Path) -> dict[str, Any]:
    groups = range(1, PARTITIONS + 1)
    async with _cluster(root, tick_ms=50) as hosts:
        for host in hosts.values():
            for g in groups:
                host.start_group(g, [1, 2, 3], partition=True)
        leaders = await _leaders(hosts, groups)
        payload = b"r" * (RECORD_BYTES * BATCH_RECORDS)
        committed = 0
        deadline = time.monotonic() + PRODUCE_S
        before = {n: h.stats() for n, h in hosts.items()}

        async def pump(g: int) -> None:
            nonlocal committed
            pending: list[Any] = []
            while time.monotonic() < deadline:
                while len(pending) < WINDOW:
                    pending.append(leaders[g].append_batch(g, payload, BATCH_RECORDS, 0))
                await pending.pop(0).committed
                committed += BATCH_RECORDS
            for ticket in pending:
                await ticket.committed

        started = time.monotonic()
        async with asyncio.TaskGroup() as tasks:
            for g in groups:
                tasks.create_task(pump(g))
        elapsed = time.monotonic() - started
        turns = {}
        for node_id, host in hosts.items():
            end, start = host.stats(), before[node_id]
            n = max(1, end.turns - start.turns)
            turns[node_id] = {
                "turns": end.turns - start.turns,
                "groups_per_turn": round((end.turn_groups - start.turn_groups) / n, 2),
                "commits_per_turn": round((end.turn_commits - start.turn_commits) / n, 2),
                "turns_multi_commit": end.turns_multi_commit - start.turns_multi_commit,
                "messages_dropped": end.messages_dropped - start.messages_dropped,
            }
        return {
            "case": "produce",
            "partitions": PARTITIONS,
            "batch_records": BATCH_RECORDS,
            "record_bytes": RECORD_BYTES,
            "window": WINDOW,
            "records_per_s": round(committed / elapsed),
            "mb_per_s": round(committed * RECORD_BYTES / elapsed / 1e6, 1),
            "hosts": turns,
        }


async def _idle(root: pathlib.Path) -> dict[str, Any]:
    groups = range(1, IDLE_GROUPS + 1)
    async with _cluster(root) as hosts:
        for host in hosts.values():
            for g in groups:
                host.start_group(g, [1, 2, 3], partition=True)
        await _leaders(hosts, groups)
        settle_started = time.monotonic()
        # Polling is the point: quiescence is state that nothing signals.
        while not all(h.quiesced(g) for h in hosts.values() for g in groups):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        settle_s = time.monotonic() - settle_started
        ticks = sum(h.stats().ticks for h in hosts.values())
        cpu, wall = time.process_time(), time.monotonic()
        await asyncio.sleep(IDLE_S)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        return {
            "case": "idle",
            "groups": IDLE_GROUPS,
            "hosts": len(hosts),
            "quiesce_s": round(settle_s, 1),
            "cpu_percent_of_one_core": round(100 * cpu / wall, 2),
            "group_ticks_while_idle": sum(h.stats().ticks for h in hosts.values()) - ticks,
        }


def main() -> None:
    sys.setswitchinterval(0.0005)
    with tempfile.TemporaryDirectory(prefix="weir-bench-host-") as tmp:
        root = pathlib.Path(tmp)
        print(json.dumps(asyncio.run(_produce(root / "produce"))), flush=True)
        print(json.dumps(asyncio.run(_idle(root / "idle"))), flush=True)


if __name__ == "__main__":
    main()
