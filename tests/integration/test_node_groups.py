"""Node.js consumers in a consumer group (stream mode) and a work queue (queue mode).

Both run against three real nodes, with the client loaded from proto/ at
run time (clients/node), as a user of another language would write it:

- `scenarios/group.js`: two members on different nodes share a 6-partition
  topic disjointly and commit; a third joins while records are produced,
  the group rebalances (revoke, commit, AssignmentAck, start), and nothing
  is skipped. The group's committed offsets, as DescribeGroup reports them,
  reach every partition's end.
- `scenarios/queue.js`: a queue consumer acks, nacks (the nacked records
  come back with attempt 2 after the topic's backoff) and extends
  deadlines; an ack id never delivered is refused per id with
  UNKNOWN_ACK_ID and changes nothing. QueueStats then shows nothing left.
"""

from __future__ import annotations

import grpc
import pytest

from tests.integration.test_cluster_replication import end_offsets, wait_led_by, wait_ready
from tests.integration.test_node_client import NodeScenario, node_fixture  # noqa: F401 (fixture)
from tests.support.cluster_process import CALL_TIMEOUT_S, ClusterProcess
from weir.v1 import admin_pb2, admin_pb2_grpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PARTITIONS = 6
BEFORE = 300
DURING = 300
QUEUE_RECORDS = 60
QUEUE_PARTITIONS = 2
BACKOFF_MS = 500  # the queue topic's retry_backoff_ms_min and _max
JITTER = 0.2
INVALID_ARGUMENT = 3
FAILED_PRECONDITION = 9


def create_topic(cluster: ClusterProcess, name: str, partitions: int, **config: int) -> None:
    with grpc.insecure_channel(cluster.address(1)) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        admin.CreateTopic(
            admin_pb2.CreateTopicRequest(
                name=name,
                partition_count=partitions,
                replication_factor=3,
                config=admin_pb2.TopicConfig(**config),
            ),
            timeout=CALL_TIMEOUT_S * 4,
        )
    wait_led_by(cluster, name, cluster.node_ids)


def admin_call(cluster: ClusterProcess, method: str, request: object) -> object:
    with grpc.insecure_channel(cluster.address(2)) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        return getattr(admin, method)(request, timeout=CALL_TIMEOUT_S)


def test_node_group_members_share_partitions_commit_and_rebalance_without_skipping(
    node: str, cluster: ClusterProcess
) -> None:
    wait_ready(cluster)
    create_topic(cluster, "node-groups", PARTITIONS)
    flags = {
        "bootstrap": ",".join(cluster.addresses),
        "topic": "node-groups",
        "group": "node-members",
        "partitions": PARTITIONS,
        "records-before": BEFORE,
        "records-during": DURING,
    }
    scenario = NodeScenario(node, "group.js", flags)
    try:
        settled = scenario.wait_for("settled", 60)
        done = scenario.finish(90)
    finally:
        scenario.stop()

    everything = set(range(PARTITIONS))
    # Two members: disjoint, everything owned, balanced; then three.
    assert set(settled["a"]) | set(settled["b"]) == everything
    assert not set(settled["a"]) & set(settled["b"])
    assert len(settled["a"]) == len(settled["b"]) == PARTITIONS // 2
    shares = [set(done["rebalanced"][m]) for m in "abc"]
    assert set().union(*shares) == everything
    assert sum(len(s) for s in shares) == PARTITIONS
    assert all(len(s) == PARTITIONS // 3 for s in shares)
    # Checked in the Node process as it happened: no partition started on
    # a member while another owned it, no record to a member that did not own it.
    assert done["violations"] == []
    ends = end_offsets(cluster.address(1), "node-groups")
    assert sum(ends) == BEFORE + DURING
    assert [p["end"] for p in done["per_partition"]] == ends
    assert all(p["skipped"] == 0 for p in done["per_partition"]), done["per_partition"]
    # A revoked partition was committed before its AssignmentAck: its new
    # owner started right after the last record handed over.
    assert all(p["duplicates"] == 0 for p in done["per_partition"]), done["per_partition"]
    assert done["records"] == BEFORE + DURING
    assert sum(m["revocations"] for m in done["members"].values()) >= 1
    assert done["members"]["c"]["assignments"] >= 1

    described = admin_call(
        cluster, "DescribeGroup", admin_pb2.DescribeGroupRequest(name="node-members")
    )
    assert isinstance(described, admin_pb2.DescribeGroupResponse)
    committed = {p.partition: p.committed_offset for p in described.partitions}
    assert committed == dict(enumerate(ends))
    assert list(described.members) == []  # each closed its stream: left the group


def test_node_queue_consumer_acks_nacks_extends_and_gets_refusals_per_ack_id(
    node: str, cluster: ClusterProcess
) -> None:
    wait_ready(cluster)
    create_topic(
        cluster,
        "node-jobs",
        QUEUE_PARTITIONS,
        retry_backoff_ms_min=BACKOFF_MS,
        retry_backoff_ms_max=BACKOFF_MS,
    )
    flags = {
        "bootstrap": ",".join(cluster.addresses),
        "topic": "node-jobs",
        "group": "node-workers",
        "partitions": QUEUE_PARTITIONS,
        "records": QUEUE_RECORDS,
    }
    scenario = NodeScenario(node, "queue.js", flags)
    try:
        done = scenario.finish(60)
    finally:
        scenario.stop()

    nacked = {f"q-{i}" for i in range(0, QUEUE_RECORDS, 3)}
    assert done["acked"] == QUEUE_RECORDS
    assert done["acked_once"] is True
    assert done["nacked"] == len(nacked)
    assert done["extended"] == len(range(1, QUEUE_RECORDS, 3))
    # Every nacked record, and only those, came back once, with attempt 2,
    # no sooner after its nack was sent than the backoff allows (-20 % jitter).
    redelivered = {r["value"]: r for r in done["redelivered"]}
    assert set(redelivered) == nacked
    assert len(done["redelivered"]) == len(nacked)
    assert all(r["attempt"] == 2 for r in redelivered.values())
    assert min(r["after_ms"] for r in redelivered.values()) >= BACKOFF_MS * (1 - JITTER) - 20
    assert done["deliveries"] == QUEUE_RECORDS + len(nacked)

    refusals = done["refusals"]
    unknown = {"code": INVALID_ARGUMENT, "reason": "UNKNOWN_ACK_ID", "retriable": False}
    assert refusals["garbage"] == [{"index": 0, **unknown}]
    assert refusals["mixed"] == [{"index": 1, **unknown}]  # the real id's ack succeeded
    not_in_flight = {"code": FAILED_PRECONDITION, "reason": "NOT_IN_FLIGHT", "retriable": False}
    assert refusals["nack_acked"] == [{"index": 0, **not_in_flight}]
    invalid = {"code": INVALID_ARGUMENT, "reason": "INVALID_EXTENSION", "retriable": False}
    assert refusals["extend_too_short"] == [{"index": 0, **invalid}, {"index": 1, **invalid}]
    assert refusals["empty"] == "RangeError"
    assert done["streams"] == 1  # no refusal ended the stream

    # Nothing is left: the refused nack did not bring the acked record back.
    stats = admin_call(
        cluster,
        "QueueStats",
        admin_pb2.QueueStatsRequest(topic="node-jobs", group="node-workers"),
    )
    assert isinstance(stats, admin_pb2.QueueStatsResponse)
    assert len(stats.partitions) == QUEUE_PARTITIONS
    for p in stats.partitions:
        assert (p.ready, p.in_flight, p.delayed, p.dead_lettered) == (0, 0, 0, 0), p
