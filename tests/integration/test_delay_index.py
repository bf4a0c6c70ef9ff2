"""Delayed delivery's index on a real three-node cluster (issue 8).

Records with `deliver_at_ms` are produced through one node (parts for
partitions other nodes lead are forwarded, and the leader validates and
flags them again); every replica applies them and writes the same delay
index rows. The nodes are then stopped and each node's LMDB folder is read
with plain py-lmdb: no debug path, no mock. Bad delays are refused with
their reasons and change nothing.
"""

from __future__ import annotations

import pathlib
import time

import grpc
import lmdb
import pytest

from tests.integration.test_cluster_replication import end_offsets, wait_led_by, wait_ready
from tests.support.cluster_process import ClusterProcess
from tests.support.raw_client import RawClient
from weir.cluster.storage import keys
from weir.v1 import admin_pb2, admin_pb2_grpc, broker_pb2, records_pb2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CALL_TIMEOUT_S = 20.0
TOPIC = "jobs"
PARTITIONS = 3
RETENTION_MS = 7 * 86_400_000
REQUESTS_PER_PARTITION = 20
RECORDS_PER_REQUEST = 5
CONVERGE_TIMEOUT_S = 60.0


def create_topic(cluster: ClusterProcess, timeout_s: float = 60.0) -> None:
    """The topic, replication factor 3, with time retention; retries UNAVAILABLE."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(cluster.address(1)) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        while True:
            try:
                stub.CreateTopic(
                    admin_pb2.CreateTopicRequest(
                        name=TOPIC,
                        partition_count=PARTITIONS,
                        replication_factor=3,
                        config=admin_pb2.TopicConfig(retention_ms=RETENTION_MS),
                    ),
                    timeout=CALL_TIMEOUT_S,
                )
                return
            except grpc.RpcError as error:
                code = error.code()  # type: ignore[attr-defined]
                if code is not grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)


def deliver_at(partition: int, offset: int, now_ms: int) -> int:
    """A distinct due time per record, so a row names its record; every third has none."""
    if offset % 3 == 2:
        return 0
    return now_ms + 60_000 + partition * 1_000_000 + offset


def produce_request(
    request_id: int, partition: int, first_offset: int, now_ms: int
) -> broker_pb2.ProduceRequest:
    records = [
        records_pb2.Record(
            value=b"job-%d-%d" % (partition, offset),
            deliver_at_ms=deliver_at(partition, offset, now_ms),
        )
        for offset in range(first_offset, first_offset + RECORDS_PER_REQUEST)
    ]
    return broker_pb2.ProduceRequest(
        request_id=request_id,
        topic=TOPIC,
        partition=partition,
        batch=records_pb2.RecordBatch(records=records),
        acks=broker_pb2.ACKS_ALL,
    )


def delay_rows_of(data_dir: pathlib.Path) -> dict[int, list[tuple[int, int]]]:
    """Every group's delay index rows, (deliver_at_ms, offset) in key order, by group."""
    env = lmdb.open(str(data_dir), max_dbs=16, readonly=True, lock=False)
    try:
        index = env.open_db(b"delay_index", create=False)
        by_offset = env.open_db(b"delay_offsets", create=False)
        rows: dict[int, list[tuple[int, int]]] = {}
        counts: dict[int, int] = {}
        with env.begin() as txn:
            for key, value in txn.cursor(db=index):
                group_id, due_ms, offset = keys.parse_delay_key(bytes(key))
                if due_ms == 0:
                    counts[group_id] = keys.unpack_u64(bytes(value))
                else:
                    rows.setdefault(group_id, []).append((due_ms, offset))
            offsets: dict[int, set[tuple[int, int]]] = {}
            for key, value in txn.cursor(db=by_offset):
                group_id, offset = keys.parse_offset_key(bytes(key))
                offsets.setdefault(group_id, set()).add((keys.unpack_u64(bytes(value)), offset))
    finally:
        env.close()
    assert {g: set(r) for g, r in rows.items()} == offsets
    assert counts == {g: len(r) for g, r in rows.items()}
    return rows


def test_every_replica_indexes_the_delayed_records(cluster: ClusterProcess) -> None:
    wait_ready(cluster)
    create_topic(cluster)
    wait_led_by(cluster, TOPIC, cluster.node_ids)
    now_ms = int(time.time() * 1000)
    requests = [
        produce_request(
            1 + partition * REQUESTS_PER_PARTITION + n,
            partition,
            n * RECORDS_PER_REQUEST,
            now_ms,
        )
        for partition in range(PARTITIONS)
        for n in range(REQUESTS_PER_PARTITION)
    ]
    total = REQUESTS_PER_PARTITION * RECORDS_PER_REQUEST
    with RawClient(cluster.address(1)) as client:
        answers = list(client.produce(requests, timeout_s=60.0))
        assert len(answers) == len(requests)
        assert [a.HasField("error") for a in answers] == [False] * len(requests), answers

        # Refused, with their reasons, and nothing written.
        negative = produce_request(9001, 0, 0, now_ms)
        negative.batch.records[1].deliver_at_ms = -5
        beyond = produce_request(9002, 1, 0, now_ms)
        beyond.batch.records[0].deliver_at_ms = now_ms + RETENTION_MS + 3_600_000
        for bad, reason in (
            (negative, "INVALID_DELIVER_AT"),
            (beyond, "DELIVER_AT_BEYOND_RETENTION"),
        ):
            (answer,) = client.produce([bad])
            assert answer.HasField("error"), answer
            assert (answer.error.code, answer.error.reason) == (
                grpc.StatusCode.INVALID_ARGUMENT.value[0],
                reason,
            )

    def converged() -> bool:
        return all(
            end_offsets(cluster.address(n), TOPIC) == [total] * PARTITIONS for n in cluster.node_ids
        )

    cluster.wait_until(converged, CONVERGE_TIMEOUT_S, "every replica applying every record")
    # The apply that writes the rows commits right after the records become
    # visible (visibility follows the commit): stop only once it surely did.
    time.sleep(1.0)
    data_dirs = {n: cluster.node(n).data_dir for n in cluster.node_ids}
    cluster.stop()

    expected = {
        partition: sorted(
            (deliver_at(partition, offset, now_ms), offset)
            for offset in range(total)
            if deliver_at(partition, offset, now_ms)
        )
        for partition in range(PARTITIONS)
    }
    for node in cluster.node_ids:
        rows = delay_rows_of(data_dirs[node])
        # Group ids are the controller's; the due times name the partition.
        by_partition = {
            (group_rows[0][0] - now_ms - 60_000) // 1_000_000: group_rows
            for group_rows in rows.values()
        }
        assert by_partition == expected, f"node {node}"
