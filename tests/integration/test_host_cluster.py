"""RaftHost: three hosts in one process over real gRPC on loopback, real LMDB in tmp dirs.

Each node is a real `RaftHost` with its own `NodeStorage` and its own
grpc.aio server on a free loopback port. Waits have deadlines
(`eventually`); nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import random
from collections.abc import Iterable
from typing import Any

import grpc.aio
import pytest

from tests.support.aio import eventually, free_port, run
from weir.cluster.host import (
    HostConfig,
    NotLeaderError,
    OutcomeUnknownError,
    RaftHost,
)
from weir.cluster.raft.types import Entry
from weir.cluster.storage import NodeStorage, StorageConfig
from weir.cluster.transport import TransportConfig, server_options

pytestmark = pytest.mark.timeout(90)

CLUSTER = "host-test"
FAST_TRANSPORT: dict[str, Any] = {
    "heartbeat_interval_ms": 20,
    "peer_dead_after_ms": 300,
    "reconnect_initial_ms": 20,
    "reconnect_max_ms": 200,
    "handshake_timeout_ms": 1000,
    "close_timeout_ms": 1000,
}
FAST_HOST: dict[str, Any] = {
    "tick_ms": 20,
    "election_ticks": 10,
    "heartbeat_ticks": 2,
    "quiesce_after_ticks": 5,
}


class Node:
    """One host, its storage and its gRPC server; can stop and start again on its port."""

    def __init__(self, node_id: int, root: pathlib.Path, ports: dict[int, int], **host: Any):
        self.node_id = node_id
        self.path = root / f"node-{node_id}"
        self.ports = ports
        self.host_options = FAST_HOST | host
        self.applied: dict[int, list[tuple[int, bytes]]] = {}
        self._stack: contextlib.AsyncExitStack | None = None
        self._host: RaftHost | None = None

    @property
    def host(self) -> RaftHost:
        assert self._host is not None, f"node {self.node_id} is stopped"
        return self._host

    @property
    def running(self) -> bool:
        return self._host is not None

    async def start(self) -> None:
        stack = contextlib.AsyncExitStack()
        storage = await stack.enter_async_context(NodeStorage(StorageConfig(path=self.path)))
        transport = TransportConfig(node_id=self.node_id, cluster_id=CLUSTER, **FAST_TRANSPORT)
        peers = {n: f"127.0.0.1:{p}" for n, p in self.ports.items() if n != self.node_id}
        config = HostConfig(
            node_id=self.node_id,
            cluster_id=CLUSTER,
            peers=peers,
            transport=transport,
            **self.host_options,
        )
        host = RaftHost(config, storage, random.Random(self.node_id))
        server = grpc.aio.server(options=server_options(transport))
        host.add_peer_service(server)
        server.add_insecure_port(f"127.0.0.1:{self.ports[self.node_id]}")
        await server.start()
        stack.push_async_callback(server.stop, None)
        await stack.enter_async_context(host)
        self._stack, self._host = stack, host

    async def stop(self) -> None:
        stack, self._stack, self._host = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    def start_opaque(self, group_id: int, voters: list[int]) -> None:
        applied = self.applied.setdefault(group_id, [])
        applied.clear()

        def on_apply(entry: Entry) -> object:
            applied.append((entry.index, entry.data))
            return len(applied)

        self.host.start_group(group_id, voters, partition=False, on_apply=on_apply)


class Cluster:
    def __init__(self, root: pathlib.Path, size: int = 3, **host: Any) -> None:
        ports = {n: free_port() for n in range(1, size + 1)}
        self.nodes = {n: Node(n, root, ports, **host) for n in ports}
        self.voters = sorted(ports)

    async def __aenter__(self) -> Cluster:
        for node in self.nodes.values():
            await node.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for node in self.nodes.values():
            await node.stop()

    def running(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.running]

    def start_groups(self, group_ids: Iterable[int], nodes: Iterable[Node] | None = None) -> None:
        for node in self.running() if nodes is None else nodes:
            for group_id in group_ids:
                node.host.start_group(group_id, self.voters, partition=True)

    def leader_of(self, group_id: int) -> int:
        """The leader every running node agrees on, or 0."""
        seen = {n.host.leader(group_id) for n in self.running()}
        if len(seen) != 1:
            return 0
        leader = seen.pop()
        if leader == 0 or not self.nodes[leader].running:
            return 0
        return leader if self.nodes[leader].host.is_leader(group_id) else 0

    async def leader(self, group_id: int) -> Node:
        await eventually(lambda: self.leader_of(group_id) != 0)
        return self.nodes[self.leader_of(group_id)]


def records(node: Node, group_id: int) -> list[tuple[int, int, bytes]]:
    log = node.host.partition_log(group_id)
    out: list[tuple[int, int, bytes]] = []
    offset = log.start_offset
    while offset < log.end_offset:
        for batch in log.read(offset, 1 << 20):
            out.append((batch.base_offset, batch.record_count, batch.payload))
            offset = batch.base_offset + batch.record_count
    return out


async def append_all(node: Node, group_id: int, payloads: list[bytes]) -> list[int]:
    tickets = [node.host.append_batch(group_id, p, 3, 1000 + i) for i, p in enumerate(payloads)]
    return [await t.committed for t in tickets]


def test_a_group_elects_commits_dense_offsets_and_replicas_agree(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with Cluster(tmp_path) as cluster:
            cluster.start_groups([1])
            leader = await cluster.leader(1)
            payloads = [b"batch-%d" % i for i in range(20)]
            offsets = await append_all(leader, 1, payloads)
            assert offsets == [3 * i for i in range(20)]
            await eventually(
                lambda: all(n.host.partition_log(1).end_offset == 60 for n in cluster.running())
            )
            # Appended in one loop iteration, the batches were proposed as one
            # entry (cluster/host/coalesce.py), each keeping its own offsets.
            expected = [(0, 60, b"".join(payloads))]
            for node in cluster.running():
                assert records(node, 1) == expected
            assert leader.host.stats().appends_merged == 19
            # The leader's view of its followers.
            progress = leader.host.progress(1)
            assert set(progress) == {1, 2, 3}

    run(main)


def test_a_follower_refuses_appends_naming_the_leader(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with Cluster(tmp_path) as cluster:
            cluster.start_groups([1])
            leader = await cluster.leader(1)
            follower = next(n for n in cluster.running() if n is not leader)
            with pytest.raises(NotLeaderError) as caught:
                follower.host.append_batch(1, b"x", 1, 0)
            assert caught.value.leader_id == leader.node_id
            assert caught.value.retriable

    run(main)


def test_acks_leader_resolves_no_later_than_commit(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with Cluster(tmp_path) as cluster:
            cluster.start_groups([1])
            leader = await cluster.leader(1)
            tickets = [leader.host.append_batch(1, b"r%d" % i, 1, 0) for i in range(50)]
            for ticket in tickets:
                offset = await ticket.committed
                assert ticket.leader_durable.done()
                assert ticket.leader_durable.result() == offset == ticket.base_offset

    run(main)


def test_commits_learned_between_turns_are_revealed_at_once(
    tmp_path: pathlib.Path,
) -> None:
    # A steady trickle of proposals: acknowledgements arrive while the
    # leader's next turn waits for its fsync, and followers learn commit
    # indexes while theirs do. Those commits are revealed at once
    # (early_applies) rather than by the next turn; the records are the
    # same everywhere, at the same offsets.
    async def main() -> None:
        async with Cluster(tmp_path) as cluster:
            cluster.start_groups([1])
            leader = await cluster.leader(1)
            before = {n.node_id: n.host.stats() for n in cluster.running()}
            tickets = []
            for i in range(200):
                tickets.append(leader.host.append_batch(1, b"t%d" % i, 1, 0))
                await asyncio.sleep(0)
            offsets = [await t.committed for t in tickets]
            assert offsets == list(range(200))
            await eventually(
                lambda: all(n.host.partition_log(1).end_offset == 200 for n in cluster.running())
            )
            expected = records(leader, 1)
            for node in cluster.running():
                assert records(node, 1) == expected
            after = {n.node_id: n.host.stats() for n in cluster.running()}
            assert sum(after[n].early_applies - before[n].early_applies for n in after) > 0

    run(main)


def test_leader_failure_then_restart_catches_up(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with Cluster(tmp_path) as cluster:
            cluster.start_groups([1])
            first = await cluster.leader(1)
            await append_all(first, 1, [b"before-%d" % i for i in range(10)])
            await first.stop()
            second = await cluster.leader(1)
            assert second is not first
            offsets = await append_all(second, 1, [b"after-%d" % i for i in range(10)])
            assert offsets == [30 + 3 * i for i in range(10)]
            await first.start()
            cluster.start_groups([1], [first])
            await eventually(lambda: first.host.partition_log(1).end_offset == 60)
            assert records(first, 1) == records(second, 1)

    run(main)


def test_many_groups_share_turns_and_one_fsync_per_turn(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        groups = list(range(1, 51))
        async with Cluster(tmp_path) as cluster:
            cluster.start_groups(groups)
            leaders = {g: await cluster.leader(g) for g in groups}
            before = {n.node_id: n.host.stats() for n in cluster.running()}
            tickets = [
                leaders[g].host.append_batch(g, b"group-%d-%d" % (g, i), 2, 0)
                for i in range(5)
                for g in groups
            ]
            for ticket in tickets:
                await ticket.committed
            for node in cluster.running():
                start, end = before[node.node_id], node.host.stats()
                turns = end.turns - start.turns
                assert turns > 0
                assert end.turn_groups - start.turn_groups > turns, "groups share turns"
                assert end.turns_multi_commit == start.turns_multi_commit, "one commit per turn"

    run(main)


def test_idle_groups_quiesce_and_wake_when_the_leader_node_dies(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        groups = list(range(1, 21))
        async with Cluster(tmp_path) as cluster:
            cluster.start_groups(groups)
            leaders = {g: await cluster.leader(g) for g in groups}
            for g in groups:
                await append_all(leaders[g], g, [b"one"])
            await eventually(
                lambda: all(n.host.quiesced(g) for n in cluster.running() for g in groups)
            )
            ticks = {n.node_id: n.host.stats().ticks for n in cluster.running()}
            rounds = {n.node_id: n.host.stats().tick_rounds for n in cluster.running()}
            # Let the timer run a good many rounds: no group is ticked.
            await eventually(
                lambda: all(
                    n.host.stats().tick_rounds > rounds[n.node_id] + 20 for n in cluster.running()
                )
            )
            for node in cluster.running():
                assert node.host.stats().ticks == ticks[node.node_id]
            victim = leaders[1]
            led = [g for g in groups if leaders[g] is victim]
            await victim.stop()
            for g in led:
                survivor = await cluster.leader(g)
                assert survivor is not victim
                await append_all(survivor, g, [b"two"])

    run(main)


def test_every_waiter_resolves_when_the_host_stops(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with Cluster(tmp_path) as cluster:
            cluster.start_groups([1])
            leader = await cluster.leader(1)
            for node in cluster.running():
                if node is not leader:
                    await node.stop()
            # Without followers nothing commits; the leader still accepts until
            # CheckQuorum makes it step down.
            tickets = []
            with contextlib.suppress(NotLeaderError):
                for i in range(20):
                    tickets.append(leader.host.append_batch(1, b"p%d" % i, 1, 0))
            assert tickets
            await leader.stop()
            for ticket in tickets:
                with pytest.raises(OutcomeUnknownError):
                    await ticket.committed

    run(main)


def test_transfer_leadership_moves_the_leader(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with Cluster(tmp_path) as cluster:
            cluster.start_groups([1])
            leader = await cluster.leader(1)
            await append_all(leader, 1, [b"a"])
            target = next(n for n in cluster.running() if n is not leader)
            seen: list[tuple[int, int]] = []
            target.host.add_leader_listener(lambda g, node: seen.append((g, node)))
            leader.host.transfer_leadership(1, target.node_id)
            await eventually(lambda: cluster.leader_of(1) == target.node_id)
            assert (1, target.node_id) in seen
            await append_all(target, 1, [b"b"])

    run(main)


def test_opaque_group_applies_identically_everywhere(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with Cluster(tmp_path) as cluster:
            for node in cluster.running():
                node.start_opaque(0, cluster.voters)
            leader = await cluster.leader(0)
            commands = [b"command-%d" % i for i in range(20)]
            indexes = [await leader.host.propose(0, c) for c in commands]
            assert indexes == sorted(indexes)
            ticket = leader.host.submit(0, b"last")
            assert await ticket.committed == len(leader.applied[0])
            await eventually(lambda: all(len(n.applied[0]) == 21 for n in cluster.running()))
            logs = [n.applied[0] for n in cluster.running()]
            assert all(log == logs[0] for log in logs)
            assert [data for _, data in logs[0]] == [*commands, b"last"]
            # A restarted node replays its log into a fresh state machine.
            follower = next(n for n in cluster.running() if n is not leader)
            await follower.stop()
            await follower.start()
            follower.start_opaque(0, cluster.voters)
            await eventually(lambda: len(follower.applied[0]) == 21)
            assert follower.applied[0] == logs[0]

    run(main)


def test_delete_group_drops_its_data(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with Cluster(tmp_path) as cluster:
            cluster.start_groups([7])
            leader = await cluster.leader(7)
            await append_all(leader, 7, [b"x"])
            for node in cluster.running():
                await node.host.delete_group(7)
                assert 7 not in node.host.groups()
            # Started again, the group is brand new: bootstrapped, empty.
            cluster.start_groups([7])
            leader = await cluster.leader(7)
            assert await append_all(leader, 7, [b"y"]) == [0]

    run(main)


def test_a_quiet_group_recovers_when_its_leader_restarts_quickly(tmp_path: pathlib.Path) -> None:
    """The restart may be faster than the liveness timeout: the followers never
    see the leader's node dead, yet the restarted node's campaign wakes them."""

    async def main() -> None:
        async with Cluster(tmp_path) as cluster:
            cluster.start_groups([1])
            leader = await cluster.leader(1)
            await append_all(leader, 1, [b"a"])
            await eventually(lambda: all(n.host.quiesced(1) for n in cluster.running()))
            await leader.stop()
            await leader.start()
            cluster.start_groups([1], [leader])
            again = await cluster.leader(1)
            offsets = await append_all(again, 1, [b"b"])
            assert offsets == [3]
            await eventually(
                lambda: all(n.host.partition_log(1).end_offset == 6 for n in cluster.running())
            )

    run(main)
