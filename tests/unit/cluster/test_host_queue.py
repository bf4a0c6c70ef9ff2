"""Queue control entries through the Raft host (issue 8).

The partition leader proposes a queue group's control records as one
QUEUE_CONTROL entry (`RaftHost.propose_queue_control`); once committed,
every replica applies it to its queue table, stores it, and agrees with the
others; consumers never see it; a compaction's snapshot carries the table
to a replica that needs it. One node with a one-voter group, then three
hosts in one process over real gRPC on loopback with real LMDB.
"""

from __future__ import annotations

import contextlib
import functools
import pathlib
import random
from typing import Any

import grpc.aio
import pytest

from tests.support import aio
from weir.cluster.host import HostConfig, NotLeaderError, RaftHost
from weir.cluster.queue import Acked, Delivered, DeliveredRecord, Nacked, encode_control
from weir.cluster.storage import NodeStorage, StorageConfig
from weir.cluster.storage.codec import partition_snapshot_queues
from weir.cluster.storage.queues import decode_table
from weir.cluster.transport import TransportConfig, server_options

run = functools.partial(aio.run, timeout_s=50)
eventually = functools.partial(aio.eventually, timeout_s=15, interval_s=0.005)

pytestmark = pytest.mark.timeout(60)

CLUSTER = "queue-host"


def delivered(cursor: int, *offsets: int, attempt: int = 1) -> Delivered:
    return Delivered.of(cursor, tuple(DeliveredRecord(o, attempt) for o in offsets))


TURNS = [
    encode_control("jobs", [delivered(4, 0, 1, 2, 3)]),
    encode_control("mail", [delivered(1, 0)]),
    encode_control("jobs", [Acked(((0, 2),)), Nacked(3, 1, 70_000, "retry later")]),
    encode_control("jobs", [delivered(5, 4), Acked(((2, 3),))]),
]


def one_node_config() -> HostConfig:
    return HostConfig(
        node_id=1,
        cluster_id="unit",
        tick_ms=10,
        election_ticks=5,
        heartbeat_ticks=1,
        quiesce_after_ticks=3,
    )


def test_a_leader_proposes_queue_control_that_applies_and_compacts(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        config = StorageConfig(path=tmp_path, queue_groups_per_partition_max=2)
        async with (
            NodeStorage(config) as storage,
            RaftHost(one_node_config(), storage, random.Random(1)) as host,
        ):
            host.start_group(1, [1], partition=True)
            await eventually(lambda: host.is_leader(1))
            assert await host.append_batch(1, b"records", 5, 0).committed == 0
            for payload in TURNS:
                ticket = host.propose_queue_control(1, payload)
                assert await ticket.committed is None
            log = host.partition_log(1)
            await eventually(lambda: (s := log.queue_state("jobs")) is not None and s.cursor == 5)
            jobs = log.queue_state("jobs")
            assert jobs is not None and jobs.acked.low_watermark == 3
            assert sorted(jobs.pending) == [3, 4] and jobs.pending[3].due_ms == 70_000
            assert log.queue_groups() == ["jobs", "mail"]
            # Records around the control entries read as before.
            assert await host.append_batch(1, b"more", 2, 0).committed == 5
            assert [(b.base_offset, b.payload) for b in log.read(0, 1 << 20)] == [
                (0, b"records"),
                (5, b"more"),
            ]
            # Misuse changes nothing: a payload that does not decode, a third group.
            proposals = host.stats().proposals
            with pytest.raises(ValueError, match="not a queue control payload"):
                host.propose_queue_control(1, b"\x01")
            with pytest.raises(ValueError, match="queue_groups_per_partition_max"):
                host.propose_queue_control(1, encode_control("third", [delivered(1, 0)]))
            assert host.stats().proposals == proposals
            # Retention compacts through Raft: the snapshot carries the table.
            expected = log.queues.snapshot()
            plan = host.compact_partition(1, retention_bytes=1, retention_ms=None)
            assert plan is not None
            await eventually(lambda: storage.raft_storage(1).snapshot().meta.index > 0)
            carried = partition_snapshot_queues(storage.raft_storage(1).snapshot().data)
            assert decode_table(carried).snapshot() == expected
        # A restart loads the stored state: the same as applied.
        async with NodeStorage(config) as storage:
            assert storage.partition_log(1).queues.snapshot() == expected

    run(main)


class Node:
    """One host with its storage and its gRPC server on a fixed loopback port."""

    def __init__(self, node_id: int, root: pathlib.Path, ports: dict[int, int]) -> None:
        self.node_id = node_id
        self.path = root / f"node-{node_id}"
        self.ports = ports
        self._stack: contextlib.AsyncExitStack | None = None
        self.host: Any = None

    async def start(self) -> None:
        stack = contextlib.AsyncExitStack()
        storage = await stack.enter_async_context(NodeStorage(StorageConfig(path=self.path)))
        transport = TransportConfig(
            node_id=self.node_id,
            cluster_id=CLUSTER,
            heartbeat_interval_ms=20,
            peer_dead_after_ms=300,
            reconnect_initial_ms=20,
            reconnect_max_ms=200,
        )
        peers = {n: f"127.0.0.1:{p}" for n, p in self.ports.items() if n != self.node_id}
        config = HostConfig(
            node_id=self.node_id,
            cluster_id=CLUSTER,
            peers=peers,
            transport=transport,
            tick_ms=20,
            election_ticks=10,
            heartbeat_ticks=2,
            quiesce_after_ticks=5,
        )
        host = RaftHost(config, storage, random.Random(self.node_id))
        server = grpc.aio.server(options=server_options(transport))
        host.add_peer_service(server)
        server.add_insecure_port(f"127.0.0.1:{self.ports[self.node_id]}")
        await server.start()
        stack.push_async_callback(server.stop, None)
        await stack.enter_async_context(host)
        self._stack, self.host = stack, host

    async def stop(self) -> None:
        stack, self._stack, self.host = self._stack, None, None
        if stack is not None:
            await stack.aclose()


def test_a_committed_proposal_is_applied_by_every_replica_alike(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        ports = {n: aio.free_port() for n in (1, 2, 3)}
        nodes = [Node(n, tmp_path, ports) for n in ports]
        try:
            for node in nodes:
                await node.start()
                node.host.start_group(1, [1, 2, 3], partition=True)

            def leader() -> Node | None:
                leaders = [n for n in nodes if n.host.is_leader(1)]
                return leaders[0] if len(leaders) == 1 else None

            await eventually(lambda: leader() is not None)
            lead = leader()
            assert lead is not None
            follower = next(n for n in nodes if n is not lead)
            with pytest.raises(NotLeaderError):
                follower.host.propose_queue_control(1, TURNS[0])
            assert await lead.host.append_batch(1, b"records", 5, 0).committed == 0
            for payload in TURNS:
                assert await lead.host.propose_queue_control(1, payload).committed is None
            tail = await lead.host.append_batch(1, b"tail", 1, 0).committed
            assert tail == 5

            def tables() -> list[dict[str, object]]:
                return [n.host.partition_log(1).queues.snapshot() for n in nodes]

            await eventually(
                lambda: (
                    all(n.host.partition_log(1).end_offset == 6 for n in nodes)
                    and len({repr(t) for t in tables()}) == 1
                    and sorted(tables()[0]) == ["jobs", "mail"]
                )  # type: ignore[call-overload]
            )
            expected = lead.host.partition_log(1).queues.snapshot()
            jobs = lead.host.partition_log(1).queue_state("jobs")
            assert jobs is not None and jobs.cursor == 5 and sorted(jobs.pending) == [3, 4]
            for node in nodes:
                log = node.host.partition_log(1)
                assert [(b.base_offset, b.payload) for b in log.read(0, 1 << 20)] == [
                    (0, b"records"),
                    (5, b"tail"),
                ]
            # A follower restarted from its own disk has the same state at once.
            await follower.stop()
            await follower.start()
            assert follower.host is not None
            follower.host.start_group(1, [1, 2, 3], partition=True)
            assert follower.host.partition_log(1).queues.snapshot() == expected
            # While it is down the leader moves on and compacts past it, so it
            # comes back through a snapshot, which brings the queue table.
            await follower.stop()
            more = [
                encode_control("jobs", [Acked(((3, 5),))]),
                encode_control("new", [delivered(6, 5)]),
            ]
            for payload in more:
                assert await lead.host.propose_queue_control(1, payload).committed is None
            assert await lead.host.append_batch(1, b"last", 1, 0).committed == 6
            await eventually(lambda: lead.host.applied_index(1) == lead.host.last_index(1))
            assert lead.host.compact_partition(1, retention_bytes=1, retention_ms=None)
            expected = lead.host.partition_log(1).queues.snapshot()
            await follower.start()
            follower.host.start_group(1, [1, 2, 3], partition=True)
            log = follower.host.partition_log(1)
            await eventually(lambda: log.end_offset == 7 and log.queues.snapshot() == expected)
            # Retention took every record (retention_bytes=1): nothing but the
            # snapshot can have brought the follower to offset 7.
            assert log.start_offset == 7 and log.read(7, 1 << 20) == []
        finally:
            for node in nodes:
                await node.stop()

    run(main)
