"""A Node.js consumer goes on when the node it reads from dies or restarts.

`clients/node/scenarios/resume.js` subscribes (assign mode, every
partition, from the earliest record) on the node that leads partition 0 and
reads slowly. While it is half way through the records produced so far,
the test kills that node with SIGKILL (by the pid it started), or stops it
with SIGTERM (the stream ends UNAVAILABLE `SHUTTING_DOWN`) and starts it
again; then it produces more records through the other nodes. The consumer
must subscribe again on another node, from the offset after the last
record it handed over in each partition, and get every record of the log
in order. Explicit offsets make that exactly once: a record repeated or
skipped fails the Node run, and its per-partition digests of (offset,
value) must equal those of the log as the surviving nodes hold it.

`scenarios/member.js` is a stream-mode group member through the same kill:
it rejoins under its member id and the broker starts each partition at the
group's committed offset, so the records it handed over after its last
commit come again. Those, and only those, are the duplicates at least once
allows; nothing is skipped.

`scenarios/queue_failover.js` is a queue-mode consumer through the same
kill: it subscribes again on another node, its unanswered acks are sent
again, and every record is acked; no record whose ack was answered comes
back, and QueueStats shows nothing left.
"""

from __future__ import annotations

import hashlib

import grpc
import pytest

import weir
from tests.integration.test_cluster_replication import (
    Log,
    assert_identical_logs,
    create_topic,
    end_offsets,
    leaders,
    value_of,
    wait_led_by,
    wait_ready,
)
from tests.integration.test_node_client import NodeScenario, node_fixture  # noqa: F401 (fixture)
from tests.support.cluster_process import CALL_TIMEOUT_S, ClusterProcess
from weir.v1 import admin_pb2, admin_pb2_grpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TOPIC = "node-resume"
PARTITIONS = 2
BEFORE = 1200
AFTER = 400
# At most 10 records unacknowledged, half given back after 20 ms: about
# 250 records/s, so the kill at KILL_AT lands well before BEFORE.
FLAGS = {"message-window": 10, "byte-window": 4096, "grant-delay-ms": 20}
KILL_AT = 300
COMMIT_EVERY = 100
QUEUE_RECORDS = 600
EVENT_TIMEOUT_S = 30.0


def produce(bootstrap: list[str], first: int, count: int) -> set[bytes]:
    values = {b"r-%d" % i for i in range(first, first + count)}
    with weir.Producer(",".join(bootstrap)) as producer:
        futures = [
            producer.send(TOPIC, b"r-%d" % i, partition=i % PARTITIONS)
            for i in range(first, first + count)
        ]
        for future in futures:
            future.result(timeout=60)
    return values


def digest(log: Log) -> str:
    """What resume.js computes: sha256 over offset (8 bytes), value length (4), value."""
    h = hashlib.sha256()
    for offset, record in log:
        value = value_of(record)
        h.update(offset.to_bytes(8, "big") + len(value).to_bytes(4, "big") + value)
    return h.hexdigest()[:16]


@pytest.mark.parametrize("fault", ["kill", "restart"])
def test_node_consumer_resubscribes_after_its_node_dies_and_gets_every_record_once(
    node: str, cluster: ClusterProcess, fault: str
) -> None:
    wait_ready(cluster)
    create_topic(cluster, 1, TOPIC, PARTITIONS)
    wait_led_by(cluster, TOPIC, cluster.node_ids)
    produced = produce(cluster.addresses, 0, BEFORE)
    victim = leaders(cluster.address(1), TOPIC)[0]
    others = [n for n in cluster.node_ids if n != victim]
    bootstrap = [cluster.address(victim)] + [cluster.address(n) for n in others]
    scenario = NodeScenario(
        node, "resume.js", {"bootstrap": ",".join(bootstrap), "topic": TOPIC, **FLAGS}
    )
    try:
        first = scenario.wait_for("subscribed", EVENT_TIMEOUT_S)
        assert first["address"] == cluster.address(victim)
        at_fault = scenario.wait_for("progress", EVENT_TIMEOUT_S, lambda e: e["records"] >= KILL_AT)
        if fault == "kill":
            cluster.kill(victim)
        else:
            cluster.terminate(victim)
        # Mid-read: the node went away with records still to send.
        assert at_fault["records"] < BEFORE - 2 * FLAGS["message-window"], at_fault
        moved = scenario.wait_for("subscribed", EVENT_TIMEOUT_S)
        assert moved["address"] != cluster.address(victim), moved
        if fault == "restart":
            cluster.start_node(victim)
        produced |= produce([cluster.address(n) for n in others], BEFORE, AFTER)
        survivors = cluster.node_ids if fault == "restart" else others
        logs = assert_identical_logs(cluster, TOPIC, survivors)
        scenario.send({"end_offsets": [len(log) for log in logs]})
        done = scenario.finish(EVENT_TIMEOUT_S + 30)
    finally:
        scenario.stop()

    # The idempotent SDK producer wrote each record once; the consumer
    # handed over each of them once, in offset order.
    values = [value_of(record) for log in logs for _, record in log]
    assert sorted(values) == sorted(produced)
    assert done["records"] == BEFORE + AFTER
    assert done["per_partition"] == [len(log) for log in logs]
    assert done["positions"] == [len(log) for log in logs]
    assert done["digests"] == [digest(log) for log in logs]
    # The first stream ended where the fault was, then it moved on.
    assert done["resubscribes"] >= 1
    end = done["ends"][0]
    assert end["address"] == cluster.address(victim)
    assert end["code"] == 14, end  # UNAVAILABLE
    if fault == "restart":
        assert end["reason"] == "SHUTTING_DOWN", end


def _topic_led_everywhere(
    cluster: ClusterProcess, records: int
) -> tuple[int, list[int], list[str]]:
    """TOPIC led by every node, holding `records`; the first partition's leader (the
    node to kill), the other nodes, and a bootstrap list that starts at the victim."""
    wait_ready(cluster)
    create_topic(cluster, 1, TOPIC, PARTITIONS)
    wait_led_by(cluster, TOPIC, cluster.node_ids)
    produce(cluster.addresses, 0, records)
    victim = leaders(cluster.address(1), TOPIC)[0]
    others = [n for n in cluster.node_ids if n != victim]
    return victim, others, [cluster.address(victim)] + [cluster.address(n) for n in others]


def test_node_group_member_rejoins_after_its_node_is_killed_and_repeats_only_uncommitted(
    node: str, cluster: ClusterProcess
) -> None:
    victim, others, bootstrap = _topic_led_everywhere(cluster, BEFORE)
    flags = {
        "bootstrap": ",".join(bootstrap),
        "topic": TOPIC,
        "group": "node-member",
        "commit-every": COMMIT_EVERY,
        "message-window": FLAGS["message-window"],
        "grant-delay-ms": FLAGS["grant-delay-ms"],
    }
    scenario = NodeScenario(node, "member.js", flags)
    try:
        scenario.wait_for("assignment", EVENT_TIMEOUT_S, lambda e: len(e["partitions"]) > 0)
        at_kill = scenario.wait_for(
            "progress", EVENT_TIMEOUT_S, lambda e: e["records"] >= KILL_AT + COMMIT_EVERY // 2
        )
        cluster.kill(victim)
        assert at_kill["records"] < BEFORE - 2 * FLAGS["message-window"], at_kill
        produce([cluster.address(n) for n in others], BEFORE, AFTER)
        ends = end_offsets(cluster.address(others[0]), TOPIC)
        scenario.send({"end_offsets": ends})
        done = scenario.finish(EVENT_TIMEOUT_S + 30)
    finally:
        scenario.stop()

    assert [p["end"] for p in done["per_partition"]] == ends
    assert all(p["skipped"] == 0 for p in done["per_partition"]), done
    # Each partition restarted somewhere between what the member knew was
    # committed (a commit in flight at the kill may have been stored) and its
    # position; exactly the records in between came twice.
    assert done["resumes"], done
    for resume in done["resumes"]:
        assert resume["committed"] <= resume["started"] <= resume["position"], resume
    repeated = sum(r["position"] - r["started"] for r in done["resumes"])
    assert sum(p["duplicates"] for p in done["per_partition"]) == repeated == done["redelivered"]
    assert repeated <= PARTITIONS * COMMIT_EVERY
    assert done["ends"][0]["address"] == cluster.address(victim)
    assert done["streams"] >= 2


def test_node_queue_consumer_resubscribes_after_its_node_is_killed_and_acks_everything(
    node: str, cluster: ClusterProcess
) -> None:
    victim, others, bootstrap = _topic_led_everywhere(cluster, QUEUE_RECORDS)
    flags = {
        "bootstrap": ",".join(bootstrap),
        "topic": TOPIC,
        "group": "node-queue",
        "records": QUEUE_RECORDS,
        "message-window": FLAGS["message-window"],
        "grant-delay-ms": FLAGS["grant-delay-ms"],
    }
    scenario = NodeScenario(node, "queue_failover.js", flags)
    try:
        at_kill = scenario.wait_for("progress", EVENT_TIMEOUT_S, lambda e: e["acked"] >= KILL_AT)
        cluster.kill(victim)
        assert at_kill["acked"] < QUEUE_RECORDS - 2 * FLAGS["message-window"], at_kill
        done = scenario.finish(EVENT_TIMEOUT_S + 30)
    finally:
        scenario.stop()

    # Checked in the Node process: no record came again after its ack was
    # answered, and a record that came again carried a higher attempt.
    assert done["acked"] == QUEUE_RECORDS
    assert done["deliveries"] == QUEUE_RECORDS + done["redeliveries"]
    assert set(done["refused_acks"]) <= {"UNKNOWN_ACK_ID", "NOT_LEADER"}, done
    assert done["streams"] >= 2
    assert done["ends"][0]["address"] == cluster.address(victim)
    with grpc.insecure_channel(cluster.address(others[0])) as channel:
        stats = admin_pb2_grpc.AdminServiceStub(channel).QueueStats(
            admin_pb2.QueueStatsRequest(topic=TOPIC, group="node-queue"), timeout=CALL_TIMEOUT_S
        )
    for p in stats.partitions:
        assert (p.ready, p.in_flight, p.delayed, p.dead_lettered) == (0, 0, 0, 0), p
