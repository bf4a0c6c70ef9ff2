"""Three real `weir serve` processes form a cluster: nodes, topics and the controller.

Topic metadata is group 0's replicated state (docs/cluster.md "Controller");
any node accepts admin calls and forwards controller commands to group 0's
leader, and every node reconciles its partition groups from the committed
state.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

import grpc
import pytest

from tests.support.cluster_process import ClusterProcess
from weir.cluster.storage import NodeStorage, StorageConfig
from weir.v1 import admin_pb2, admin_pb2_grpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CALL_TIMEOUT_S = 20.0
# After every node answers TOPIC_NOT_FOUND, each drops the groups' data in
# its reconcile task within milliseconds; this leaves ample room.
DROP_GRACE_S = 3.0


def _admin(
    cluster: ClusterProcess, node: int
) -> tuple[grpc.Channel, admin_pb2_grpc.AdminServiceStub]:
    channel = grpc.insecure_channel(cluster.address(node))
    return channel, admin_pb2_grpc.AdminServiceStub(channel)


def create_topic(cluster: ClusterProcess, node: int, name: str, partitions: int) -> None:
    channel, stub = _admin(cluster, node)
    with channel:
        stub.CreateTopic(
            admin_pb2.CreateTopicRequest(name=name, partition_count=partitions),
            timeout=CALL_TIMEOUT_S,
        )


def describe_topic(
    cluster: ClusterProcess, node: int, name: str
) -> admin_pb2.DescribeTopicResponse:
    channel, stub = _admin(cluster, node)
    with channel:
        return stub.DescribeTopic(admin_pb2.DescribeTopicRequest(name=name), timeout=CALL_TIMEOUT_S)


def topic_names(cluster: ClusterProcess, node: int) -> list[str]:
    channel, stub = _admin(cluster, node)
    with channel:
        response = stub.ListTopics(admin_pb2.ListTopicsRequest(), timeout=CALL_TIMEOUT_S)
        return [t.name for t in response.topics]


def is_not_found(cluster: ClusterProcess, node: int, name: str) -> bool:
    try:
        describe_topic(cluster, node, name)
    except grpc.RpcError as error:
        return error.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined, no-any-return]
    return False


def all_led(cluster: ClusterProcess, node: int, name: str) -> bool:
    return all(p.leader_id != 0 for p in describe_topic(cluster, node, name).partitions)


def stored_groups(cluster: ClusterProcess, node: int, group_ids: range) -> set[int]:
    """Groups with Raft state in a stopped node's storage."""

    async def scan() -> set[int]:
        config = StorageConfig(path=cluster.tmp_path / f"node-{node}")
        async with NodeStorage(config) as storage:
            return {g for g in group_ids if storage.load_hard_state(g) is not None}

    return asyncio.run(scan())


def retry(call: Callable[[], object], timeout_s: float) -> object:
    """Calls until it succeeds, retrying UNAVAILABLE (no controller yet) until the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except grpc.RpcError as error:
            code = error.code()  # type: ignore[attr-defined]
            if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def test_three_nodes_form_a_cluster(cluster: ClusterProcess) -> None:
    cluster.wait_converged()
    expected = {n: cluster.address(n) for n in cluster.node_ids}
    for node in cluster.node_ids:
        cluster.wait_until(
            lambda node=node: (
                {n.node_id: n.address for n in cluster.describe(node).nodes} == expected
            ),
            what=f"node {node} knowing every node's client address",
        )
        described = cluster.describe(node)
        assert described.node_id == node
        assert described.cluster_id == cluster.cluster_id
        assert all(n.alive for n in described.nodes)
    controllers = {cluster.describe(n).controller_id for n in cluster.node_ids}
    assert len(controllers) == 1 and controllers <= set(cluster.node_ids)


def test_a_topic_is_created_and_deleted_everywhere_through_any_node(
    cluster: ClusterProcess,
) -> None:
    cluster.wait_converged()
    create_topic(cluster, 2, "orders", 6)
    for node in (1, 3):
        described = describe_topic(cluster, node, "orders")
        assert described.topic.replication_factor == 3
        assert len(described.partitions) == 6
        for partition in described.partitions:
            assert sorted(partition.replica_ids) == [1, 2, 3]
            assert [r.node_id for r in partition.replicas] == list(partition.replica_ids)
        preferred = collections.Counter(p.replica_ids[0] for p in described.partitions)
        assert preferred == {1: 2, 2: 2, 3: 2}
    for node in cluster.node_ids:
        cluster.wait_until(
            lambda node=node: all_led(cluster, node, "orders"),
            what=f"every partition led, seen from node {node}",
        )
    described = describe_topic(cluster, 1, "orders")
    for partition in described.partitions:
        assert partition.leader_address == cluster.address(partition.leader_id)

    channel, stub = _admin(cluster, 3)
    with channel:
        stub.DeleteTopic(admin_pb2.DeleteTopicRequest(name="orders"), timeout=CALL_TIMEOUT_S)
    for node in cluster.node_ids:
        cluster.wait_until(
            lambda node=node: is_not_found(cluster, node, "orders"),
            what=f"the topic gone on node {node}",
        )
    time.sleep(DROP_GRACE_S)
    cluster.stop()
    # The topic's partitions and the six coordinator groups are groups 1..12
    # (group 0 is the controller); only the coordinator groups are left.
    left = [stored_groups(cluster, node, range(1, 13)) for node in cluster.node_ids]
    assert len(left[0]) == 6 and all(stored == left[0] for stored in left), left


def test_topics_survive_the_loss_of_the_controller_leader_and_a_restart(
    cluster: ClusterProcess,
) -> None:
    cluster.wait_converged()
    create_topic(cluster, 1, "before", 2)
    leader = cluster.describe(1).controller_id
    assert leader in cluster.node_ids
    cluster.kill(leader)
    survivors = [n for n in cluster.node_ids if n != leader]
    retry(lambda: create_topic(cluster, survivors[0], "after", 3), timeout_s=60)
    for node in survivors:
        cluster.wait_until(
            lambda node=node: topic_names(cluster, node) == ["after", "before"],
            what=f"node {node} agreeing on the topics",
        )
        assert len(describe_topic(cluster, node, "after").partitions) == 3
    new_leader = cluster.describe(survivors[0]).controller_id
    assert new_leader in survivors

    cluster.start_node(leader)
    cluster.wait_converged()
    cluster.wait_until(
        lambda: topic_names(cluster, leader) == ["after", "before"],
        what=f"restarted node {leader} seeing the same topics",
    )
    for node in cluster.node_ids:
        cluster.wait_until(
            lambda node=node: all_led(cluster, node, "after"),
            what=f"every partition of 'after' led, seen from node {node}",
        )
    # The restarted node serves admin calls again (forwarded to the controller).
    create_topic(cluster, leader, "later", 1)
    for node in cluster.node_ids:
        cluster.wait_until(
            lambda node=node: "later" in topic_names(cluster, node),
            what=f"node {node} seeing the topic made on the restarted node",
        )


def test_an_explicit_replication_factor_is_accepted_right_after_start(
    cluster: ClusterProcess,
) -> None:
    """Founding members register a second or so after they meet; a create
    naming the full factor must not be refused as larger than the cluster
    in that window."""
    cluster.wait_converged()
    channel, stub = _admin(cluster, 1)
    with channel:
        retry(
            lambda: stub.CreateTopic(
                admin_pb2.CreateTopicRequest(name="early", partition_count=3, replication_factor=3),
                timeout=CALL_TIMEOUT_S,
            ),
            timeout_s=30,
        )
    described = describe_topic(cluster, 2, "early")
    assert described.topic.replication_factor == 3
    assert all(sorted(p.replica_ids) == [1, 2, 3] for p in described.partitions)
