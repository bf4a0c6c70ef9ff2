"""RaftReplicator and the produce path through Raft: three hosts in one process.

Each node is a real `RaftHost` with its own LMDB `NodeStorage` and one
grpc.aio server on loopback that carries both the peer transport and the
public Produce method (a real `ProducePath` over a `RaftReplicator`, with a
`Forwarder`), so a client can produce through any node. Topics come from a
fixed registry: one topic, partitions 0..2 on groups 1..3. Waits have
deadlines; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import random
from typing import Any

import grpc
import grpc.aio
import pytest

from tests.integration.test_host_cluster import (
    CLUSTER,
    FAST_HOST,
    FAST_TRANSPORT,
    eventually,
    free_port,
)
from tests.support.aio import run
from weir.cluster.host import HostConfig, NotLeaderError, RaftHost
from weir.cluster.storage import NodeStorage, StorageConfig
from weir.cluster.transport import TransportConfig, server_options
from weir.server.cluster_replicator import RaftReplicator
from weir.server.errors import replication_error, topic_not_found
from weir.server.limits import MemoryBudget
from weir.server.produce import ProducePath
from weir.server.produce_forward import PRODUCE_METHOD, Forwarder
from weir.server.replicator import NotHostedError
from weir.server.topics import Topic, TopicConfig
from weir.v1 import broker_pb2, records_pb2

pytestmark = pytest.mark.timeout(90)

TOPIC = "events"
GROUPS = (1, 2, 3)


class FixedTopics:
    """The one lookup the produce path makes of a TopicRegistry."""

    topic = Topic(TOPIC, GROUPS, 3, TopicConfig())

    def get(self, name: str) -> Topic:
        if name != TOPIC:
            raise topic_not_found(name)
        return self.topic


class Node:
    def __init__(self, node_id: int, root: pathlib.Path, ports: dict[int, int]) -> None:
        self.node_id = node_id
        self.path = root / f"node-{node_id}"
        self.ports = ports
        self._stack: contextlib.AsyncExitStack | None = None
        self._host: RaftHost | None = None
        self.replicator: RaftReplicator | None = None
        self.forwarder: Forwarder | None = None

    @property
    def host(self) -> RaftHost:
        assert self._host is not None, f"node {self.node_id} is stopped"
        return self._host

    @property
    def running(self) -> bool:
        return self._host is not None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports[self.node_id]}"

    def address_of(self, node_id: int) -> str | None:
        port = self.ports.get(node_id)
        return None if port is None else f"127.0.0.1:{port}"

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
            proposal_timeout_ms=3000,
            **FAST_HOST,
        )
        host = RaftHost(config, storage, random.Random(self.node_id))
        replicator = RaftReplicator(host, self.address_of)
        forwarder = Forwarder()
        stopping = asyncio.Event()
        produce = ProducePath(
            FixedTopics(),  # type: ignore[arg-type]
            replicator,
            64,
            lambda: 1_700_000_000_000,
            stopping,
            MemoryBudget(64 << 20),
            forwarder,
        )

        async def produce_handler(_requests: object, context: Any) -> None:
            await produce.serve(context)

        server = grpc.aio.server(options=server_options(transport))
        host.add_peer_service(server)
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "weir.v1.BrokerService",
                    {
                        "Produce": grpc.stream_stream_rpc_method_handler(
                            produce_handler,
                            request_deserializer=ProducePath.request_parser(100_000),
                            response_serializer=lambda raw: raw,
                        )
                    },
                ),
            )
        )
        server.add_insecure_port(self.address)
        await server.start()
        stack.push_async_callback(server.stop, None)
        await stack.enter_async_context(host)
        await stack.enter_async_context(forwarder)
        stack.callback(produce.stop)
        stack.callback(stopping.set)
        for group_id in GROUPS:
            host.start_group(group_id, sorted(self.ports), partition=True)
        self._stack, self._host = stack, host
        self.replicator, self.forwarder = replicator, forwarder

    async def stop(self) -> None:
        stack, self._stack, self._host = self._stack, None, None
        if stack is not None:
            await stack.aclose()


class Cluster:
    def __init__(self, root: pathlib.Path) -> None:
        ports = {n: free_port() for n in (1, 2, 3)}
        self.nodes = {n: Node(n, root, ports) for n in ports}

    async def __aenter__(self) -> Cluster:
        for node in self.nodes.values():
            await node.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for node in self.nodes.values():
            await node.stop()

    def running(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.running]

    async def leader(self, group_id: int) -> Node:
        def agreed() -> int:
            seen = {n.host.leader(group_id) for n in self.running()}
            leader = seen.pop() if len(seen) == 1 else 0
            if (
                leader
                and self.nodes[leader].running
                and self.nodes[leader].host.is_leader(group_id)
            ):
                return leader
            return 0

        await eventually(lambda: agreed() != 0)
        return self.nodes[agreed()]

    async def followers(self, group_id: int) -> list[Node]:
        leader = await self.leader(group_id)
        return [n for n in self.running() if n is not leader]


def replicator(node: Node) -> RaftReplicator:
    assert node.replicator is not None
    return node.replicator


def batch(values: list[bytes]) -> bytes:
    records = [records_pb2.Record(value=v, timestamp_ms=1000) for v in values]
    return records_pb2.RecordBatch(records=records).SerializeToString()


def values_in(node: Node, group_id: int) -> list[tuple[int, bytes]]:
    """(offset, value) of every record this node serves for the group."""
    log = replicator(node).log(group_id)
    out: list[tuple[int, bytes]] = []
    offset = log.start_offset
    while offset < log.end_offset:
        for stored in log.read(offset, 1 << 20):
            parsed = records_pb2.RecordBatch.FromString(stored.payload)
            out.extend((stored.base_offset + i, r.value) for i, r in enumerate(parsed.records))
            offset = stored.base_offset + stored.record_count
    return out


# -- the replicator alone -------------------------------------------------------------


def test_appends_on_the_leader_resolve_per_acks_level(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with Cluster(tmp_path) as cluster:
            leader = await cluster.leader(1)
            rep = replicator(leader)
            offsets = []
            for acks in (broker_pb2.ACKS_ALL, broker_pb2.ACKS_LEADER, broker_pb2.ACKS_NONE):
                appended = await rep.append(1, batch([b"a", b"b"]), 2, 1000)
                offsets.append(appended.base_offset)
                assert await appended.acknowledged(acks) == appended.base_offset
            assert offsets == [0, 2, 4]
            # acks=LEADER resolves no later than the commit, which follows.
            appended = await rep.append(1, batch([b"c"]), 1, 1000)
            await appended.leader_durable
            assert await appended.committed == 6
            for node in cluster.running():
                await eventually(lambda n=node: replicator(n).log(1).end_offset == 7)
                assert [v for _, v in values_in(node, 1)] == [b"a", b"b"] * 3 + [b"c"]

    run(main)


def test_a_follower_refuses_with_the_leaders_id_and_address(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with Cluster(tmp_path) as cluster:
            leader = await cluster.leader(2)
            follower = (await cluster.followers(2))[0]
            rep = replicator(follower)
            with pytest.raises(NotLeaderError) as caught:
                await rep.append(2, batch([b"x"]), 1, 1000)
            assert caught.value.leader_id == leader.node_id
            error = replication_error(caught.value, TOPIC, 1, rep.node_address)
            assert error.code is grpc.StatusCode.UNAVAILABLE and error.retriable
            assert error.reason == "NOT_LEADER"
            assert error.metadata == {
                "topic": TOPIC,
                "partition": "1",
                "leader_id": str(leader.node_id),
                "leader_address": leader.address,
            }
            with pytest.raises(NotHostedError):
                rep.log(99)

    run(main)


def test_a_follower_serves_exactly_what_it_applied(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with Cluster(tmp_path) as cluster:
            leader = await cluster.leader(1)
            follower = (await cluster.followers(1))[0]
            rep = replicator(leader)
            # A consumer on the follower is woken by its applies (log listeners).
            woken = asyncio.Event()
            replicator(follower).log(1).add_listener(woken.set)
            pending = [await rep.append(1, batch([b"%d" % i]), 1, 1000) for i in range(50)]
            async with asyncio.timeout(10):
                await woken.wait()
            # While the batches travel, the follower's high watermark is what it
            # applied, and a read there returns nothing past it.
            log = replicator(follower).log(1)
            seen = 0
            while seen < 50:
                end = log.end_offset
                assert end >= seen
                served = values_in(follower, 1)
                assert len(served) >= end  # read after end was taken: may only grow
                assert [o for o, _ in served] == list(range(len(served)))
                seen = end
                await asyncio.sleep(0)
            assert [await a.committed for a in pending] == list(range(50))

    run(main)


def test_an_isolated_leaders_uncommitted_entry_is_never_served(tmp_path: pathlib.Path) -> None:
    """DESIGN §4 "Committed-only reads": the leader's own log does not expose
    an entry it appended alone, and the survivors never serve it."""

    async def main() -> None:
        async with Cluster(tmp_path) as cluster:
            leader = await cluster.leader(1)
            rep = replicator(leader)
            assert await (await rep.append(1, batch([b"kept"]), 1, 1000)).committed == 0
            for node in cluster.running():
                await eventually(lambda n=node: replicator(n).log(1).end_offset == 1)
            followers = await cluster.followers(1)
            for node in followers:
                await node.stop()
            lonely = await rep.append(1, batch([b"lonely"]), 1, 1000)
            assert lonely.base_offset == 1
            assert await lonely.leader_durable == 1
            await asyncio.sleep(0.3)  # several ticks and turns
            assert not lonely.committed.done()
            assert rep.log(1).end_offset == 1
            assert values_in(leader, 1) == [(0, b"kept")]
            # The survivors without it elect a leader and reuse the offset.
            await leader.stop()
            for node in followers:
                await node.start()
            new_leader = await cluster.leader(1)
            for node in cluster.running():
                # A restarted node serves nothing until it learns the commit
                # index again (the new leader once an entry of its term commits).
                await eventually(lambda n=node: replicator(n).log(1).end_offset >= 1)
                assert values_in(node, 1) == [(0, b"kept")]
            again = await replicator(new_leader).append(1, batch([b"later"]), 1, 1000)
            assert await again.committed == 1
            await leader.start()
            for node in cluster.running():
                await eventually(lambda n=node: replicator(n).log(1).end_offset == 2)
                assert values_in(node, 1) == [(0, b"kept"), (1, b"later")]

    run(main)


# -- the produce path through any node -------------------------------------------------


async def produce(
    address: str, requests: list[broker_pb2.ProduceRequest]
) -> list[broker_pb2.ProduceResponse]:
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream(
            PRODUCE_METHOD,
            request_serializer=broker_pb2.ProduceRequest.SerializeToString,
            response_deserializer=broker_pb2.ProduceResponse.FromString,
        )()
        for request in requests:
            await call.write(request)
        await call.done_writing()
        return [r async for r in call]  # type: ignore[attr-defined]


def request(
    request_id: int, partition: int | None, values: list[bytes], acks: int
) -> broker_pb2.ProduceRequest:
    records = [records_pb2.Record(value=v) for v in values]
    return broker_pb2.ProduceRequest(
        request_id=request_id,
        topic=TOPIC,
        partition=partition,
        batch=records_pb2.RecordBatch(records=records),
        acks=acks,  # type: ignore[arg-type]
    )


def test_any_node_accepts_produce_and_forwards_to_the_leader(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with Cluster(tmp_path) as cluster:
            leaders = {g: await cluster.leader(g) for g in GROUPS}
            # Through a node that does not lead partition 0 (group 1).
            entry = next(n for n in cluster.running() if n is not leaders[1])
            acks_levels = [broker_pb2.ACKS_ALL, broker_pb2.ACKS_LEADER, broker_pb2.ACKS_NONE]
            requests = [
                request(i, i % 3, [b"r%d-%d" % (i, j) for j in range(5)], acks_levels[i % 3])
                for i in range(60)
            ]
            answers = await produce(entry.address, requests)
            # acks=NONE answers only errors; the others in order within each
            # partition (not across partitions), every one OK.
            assert sorted(a.request_id for a in answers) == [i for i in range(60) if i % 3 != 2]
            for partition in (0, 1):
                assert [a.request_id for a in answers if a.request_id % 3 == partition] == list(
                    range(partition, 60, 3)
                )
            for answer in answers:
                assert not answer.HasField("error"), answer.error
                (append,) = answer.appends
                assert append.partition == answer.request_id % 3
                assert append.record_count == 5
            # Offsets within a partition follow the stream's order, densely.
            by_partition: dict[int, list[int]] = {}
            for answer in answers:
                by_partition.setdefault(answer.appends[0].partition, []).append(
                    answer.appends[0].base_offset
                )
            assert by_partition[0] == [5 * i for i in range(20)]
            assert by_partition[1] == [5 * i for i in range(20)]
            forwarder = entry.forwarder
            assert forwarder is not None and forwarder.stats()
            for partition, group_id in enumerate(GROUPS):
                expected = [
                    v
                    for i, r in enumerate(requests)
                    if i % 3 == partition
                    for v in (rec.value for rec in r.batch.records)
                ]
                for node in cluster.running():
                    await eventually(
                        lambda n=node, g=group_id: replicator(n).log(g).end_offset == 100
                    )
                    assert [v for _, v in values_in(node, group_id)] == expected

    run(main)


def test_a_routed_request_splits_across_leaders(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with Cluster(tmp_path) as cluster:
            for g in GROUPS:
                await cluster.leader(g)
            entry = cluster.nodes[2]
            records = [records_pb2.Record(key=b"k%d" % i, value=b"v%d" % i) for i in range(30)]
            req = broker_pb2.ProduceRequest(
                request_id=7, topic=TOPIC, batch=records_pb2.RecordBatch(records=records)
            )
            (answer,) = await produce(entry.address, [req])
            assert not answer.HasField("error"), answer.error
            assert sum(a.record_count for a in answer.appends) == 30
            indexes = sorted(i for a in answer.appends for i in a.record_indexes)
            assert indexes == list(range(30))

    run(main)


def test_forwarding_to_a_dead_leader_answers_not_leader(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with Cluster(tmp_path) as cluster:
            leader = await cluster.leader(1)
            entry = next(n for n in cluster.running() if n is not leader)
            # The leader's host keeps running but its client port is gone: the
            # entry node knows it leads and has an address that refuses.
            entry.ports = dict(entry.ports)
            entry.ports[leader.node_id] = free_port()
            answers = await produce(entry.address, [request(1, 0, [b"x"], broker_pb2.ACKS_ALL)])
            (answer,) = answers
            # Nothing reached the leader, so the answer promises nothing was written.
            assert answer.error.reason == "NOT_LEADER", answer.error
            assert answer.error.retriable
            assert answer.error.metadata["leader_id"] == str(leader.node_id)
            assert answer.error.metadata["leader_address"] == entry.address_of(leader.node_id)

    run(main)
