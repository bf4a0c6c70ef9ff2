"""Coordinator groups on three real nodes: committed offsets replicated outside group 0.

A consumer group's committed offsets live in its coordinator group
(docs/groups.md, "Coordinator groups"): they are read back on any node,
survive the loss of the node that leads the coordinator group and never
come back lower, disappear with their topic (`weir topic delete`), and the
coordinator groups' leaders are balanced over the live nodes together with
the partitions' (DescribeCluster's `leader_count` counts both).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence

import grpc
import pytest

from tests.support.cluster_process import ClusterProcess
from tests.support.raw_client import RawClient, open_stream, request
from weir.server.cluster_coordinator import coordinator_index
from weir.v1 import broker_pb2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

COORDINATORS = 6
PARTITIONS = 3
RETRY_DEADLINE_S = 30.0
BALANCE_DEADLINE_S = 30.0
# One consumer group per coordinator group, so losing any node loses the
# leader of some groups' coordinators.
GROUPS = sorted({coordinator_index(f"g{i}", COORDINATORS): f"g{i}" for i in range(200)}.values())
assert len(GROUPS) == COORDINATORS


def leader_counts(cluster: ClusterProcess, node: int) -> dict[int, int]:
    return {n.node_id: n.leader_count for n in cluster.describe(node).nodes}


def balanced(cluster: ClusterProcess, live: Sequence[int], groups: int) -> bool:
    """Every live node sees `groups` leaders in all, on live nodes, within one of each other."""
    try:
        seen = [leader_counts(cluster, n) for n in live]
    except grpc.RpcError:
        return False
    for counts in seen:
        per_node = [counts.get(n, 0) for n in live]
        if sum(per_node) != groups or max(per_node) - min(per_node) > 1:
            return False
    return True


def wait_balanced(cluster: ClusterProcess, live: Sequence[int], groups: int) -> None:
    cluster.wait_until(
        lambda: balanced(cluster, live, groups),
        BALANCE_DEADLINE_S,
        f"{groups} leaders balanced over nodes {list(live)}",
    )


def subscribe(topic: str, group: str) -> broker_pb2.Subscribe:
    return broker_pb2.Subscribe(
        topic=topic,
        group=group,
        start=broker_pb2.StartPosition(kind=broker_pb2.START_KIND_EARLIEST),
        credit=broker_pb2.Credit(messages=0, bytes=0),
    )


def _retry_unavailable(action: object) -> object:
    deadline = time.monotonic() + RETRY_DEADLINE_S
    while True:
        try:
            return action()  # type: ignore[operator]
        except grpc.RpcError as error:
            code = error.code()  # type: ignore[attr-defined]
            if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def committed(cluster: ClusterProcess, node: int, topic: str, group: str) -> dict[int, int]:
    """Where the group's stream starts on `node`: its committed offsets (EARLIEST is 0)."""

    def read() -> dict[int, int]:
        with RawClient(cluster.address(node)) as client:
            stream, subscribed = open_stream(client, subscribe(topic, group))
            stream.close()
            return {p.partition: p.offset for p in subscribed.partitions}

    return _retry_unavailable(read)  # type: ignore[return-value]


def commit(
    cluster: ClusterProcess, node: int, topic: str, group: str, offset: int
) -> dict[int, int]:
    """Commits `offset` on every partition through `node`; returns what the group stored."""

    def send() -> dict[int, int]:
        with RawClient(cluster.address(node)) as client:
            stream, _ = open_stream(client, subscribe(topic, group))
            try:
                stream.send(
                    broker_pb2.ConsumeRequest(
                        commit=broker_pb2.Commit(
                            commit_id=1,
                            offsets=[
                                broker_pb2.PartitionOffset(partition=p, offset=offset)
                                for p in range(PARTITIONS)
                            ],
                        )
                    )
                )
                result = stream.next().commit
            finally:
                stream.close()
        if result.HasField("error"):
            assert result.error.reason == "NOT_COORDINATOR", result.error
            raise _Retry()
        return {o.partition: o.offset for o in result.offsets}

    deadline = time.monotonic() + RETRY_DEADLINE_S
    while True:
        try:
            return _retry_unavailable(send)  # type: ignore[return-value]
        except _Retry:
            assert time.monotonic() < deadline, "no coordinator within the deadline"
            time.sleep(0.2)


class _Retry(Exception):
    pass


def create_topic(cluster: ClusterProcess, node: int, name: str, records: int) -> None:
    with RawClient(cluster.address(node)) as client:
        _retry_unavailable(lambda: client.create_topic(name, PARTITIONS))
        for partition in range(PARTITIONS):
            response = client.produce_one(
                request(name, [b"r%d" % i for i in range(records)], partition=partition)
            )
            assert not response.HasField("error"), response.error


def test_offsets_are_read_on_any_node_and_survive_losing_coordinator_leaders(
    cluster: ClusterProcess,
) -> None:
    cluster.wait_converged()
    wait_balanced(cluster, cluster.node_ids, COORDINATORS)
    create_topic(cluster, 1, "orders", 100)
    for i, group in enumerate(GROUPS):
        node = cluster.node_ids[i % len(cluster.node_ids)]
        assert commit(cluster, node, "orders", group, 40) == dict.fromkeys(range(PARTITIONS), 40)
    for node in cluster.node_ids:
        for group in GROUPS:
            assert committed(cluster, node, "orders", group) == dict.fromkeys(range(PARTITIONS), 40)
    wait_balanced(cluster, cluster.node_ids, COORDINATORS + PARTITIONS)
    # Node 1 leads one or two coordinator groups now; kill it.
    victim, survivors = 1, [2, 3]
    cluster.kill(victim)
    for group in GROUPS:
        # Never lower, read through either survivor; a lower commit keeps 40.
        assert committed(cluster, 2, "orders", group) == dict.fromkeys(range(PARTITIONS), 40)
        assert commit(cluster, 3, "orders", group, 10) == dict.fromkeys(range(PARTITIONS), 40)
        assert commit(cluster, 2, "orders", group, 60) == dict.fromkeys(range(PARTITIONS), 60)
    wait_balanced(cluster, survivors, COORDINATORS + PARTITIONS)
    cluster.start_node(victim)
    cluster.wait_converged()
    for node in cluster.node_ids:
        for group in GROUPS:
            assert committed(cluster, node, "orders", group) == dict.fromkeys(range(PARTITIONS), 60)
    wait_balanced(cluster, cluster.node_ids, COORDINATORS + PARTITIONS)


def test_deleting_a_topic_removes_its_offsets(cluster: ClusterProcess) -> None:
    cluster.wait_converged()
    create_topic(cluster, 2, "jobs", 20)
    for group in GROUPS:
        commit(cluster, 2, "jobs", group, 15)
    cmd = [sys.executable, "-m", "weir.server.cli", "--bootstrap", cluster.address(3)]
    result = subprocess.run([*cmd, "topic", "delete", "jobs"], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    # A new topic of the same name starts with no committed offsets (the old
    # ones are keyed by the old partitions' group ids, which the coordinator
    # leaders forget: tests/unit/coordinator/test_offsets.py).
    create_topic(cluster, 1, "jobs", 5)
    for node in cluster.node_ids:
        for group in GROUPS:
            assert committed(cluster, node, "jobs", group) == dict.fromkeys(range(PARTITIONS), 0)
