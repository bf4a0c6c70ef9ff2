"""Hardening of the node's admin side against a real `weir serve` (issue 9).

- With storage full, every admin method answers a rich status (STORAGE_FULL
  with ErrorInfo) or succeeds; none answers UNKNOWN, and a refused change
  changes nothing.
- gRPC health is NOT_SERVING while storage cannot write and SERVING again
  once it can, watched through a Health/Watch stream.
- A damaged entry in one topic's partition does not stop retention of the
  others: a WARNING names the partition and the healthy topic is trimmed.
- A delete is durable and visible at once; its data is dropped in the
  background (other topic changes proceed meanwhile, a restart resumes it),
  and the group offsets of the deleted topic go with it.
- A storage writer that dies stops the node with a CRITICAL line naming the
  task and one `error:` line, exit code 1, instead of a node that goes on
  without being able to write.

Stored rows are read with plain py-lmdb, never through our storage layer:
while the node runs through LMDB's multi-process read transactions, and
with the node stopped where the test says so.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import lmdb
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.broker_process import BrokerProcess
from tests.support.raw_client import CALL_TIMEOUT_S, RawClient, open_stream, request, rich_status
from weir.v1 import admin_pb2, broker_pb2, records_pb2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

StatusCode = grpc.StatusCode
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
STORAGE_FULL = (StatusCode.UNAVAILABLE, "STORAGE_FULL")

# Small enough to fill in a few seconds with ~50 KiB batches.
MAP_SIZE_BYTES = 2 * 2**20
FILL_REQUESTS_MAX = 1000
# Waits on a condition of the broker fail after this long; none is a timing assertion.
DEADLINE_S = 60.0

# The meta store's namespaces (server/topics.py, server/offsets.py): a
# namespace is stored as its length byte followed by its name.
TOPIC_NS = b"\x05topic"
DELETING_NS = b"\x0etopic_deleting"
OFFSET_NS = b"\x06offset"
OFFSET_BY_LOG_NS = b"\x0doffset_by_log"
# The fixed head of a record batch inside a stored entry (cluster/storage/
# codec.py), which the entry's data crc covers: kind (1 = RECORDS), flags,
# reserved, record count, base offset.
BATCH_HEAD = struct.Struct(">BBHIQ")
# LMDB's page header (lmdb.h, MDB_page): the u16 page type flags follow the
# page number and a pad; pages are 4 KiB on this platform.
LMDB_PAGE_BYTES = 4096
LMDB_PAGE_FLAGS_AT = 10


def read_rows(data_dir: Path, db_name: bytes) -> list[tuple[bytes, bytes]]:
    """Every row of a named database, through LMDB's own multi-process locking."""
    env = lmdb.open(str(data_dir), max_dbs=16, readonly=True, lock=True)
    try:
        db = env.open_db(db_name, create=False)
        with env.begin(db=db) as txn:
            return [(bytes(k), bytes(v)) for k, v in txn.cursor()]
    finally:
        env.close()


def meta_rows(data_dir: Path, namespace: bytes) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in read_rows(data_dir, b"meta") if k.startswith(namespace)]


def log_rows_of(data_dir: Path, group_ids: set[int]) -> int:
    return sum(
        1 for k, _ in read_rows(data_dir, b"log") if struct.unpack(">I", k[:4])[0] in group_ids
    )


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll an observable condition of the broker, failing after a deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def small_map_broker(tmp_path: Path) -> BrokerProcess:
    return BrokerProcess(tmp_path / "data", "--storage-map-size-bytes", str(MAP_SIZE_BYTES)).start()


def fill(client: RawClient, topic: str, values: int, value_bytes: int) -> None:
    """Produce batches of `values` records until storage refuses one."""
    for i in range(FILL_REQUESTS_MAX):
        response = client.produce_one(request(topic, [b"f" * value_bytes] * values, request_id=i))
        if response.HasField("error"):
            assert response.error.code == StatusCode.UNAVAILABLE.value[0], response.error
            return
    raise AssertionError(f"{FILL_REQUESTS_MAX} batches fit in a {MAP_SIZE_BYTES} byte map")


def exited(pid: int) -> bool:
    """Whether the (unreaped) child process has exited: its state is Z in /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "Z"


def call_status(call: Callable[[], object]) -> tuple[StatusCode, str | None]:
    try:
        call()
    except grpc.RpcError as error:
        return rich_status(error)
    return StatusCode.OK, None


@pytest.fixture
def small_map(tmp_path: Path) -> Iterator[BrokerProcess]:
    process = small_map_broker(tmp_path)
    try:
        yield process
    finally:
        process.stop()


def test_full_storage_gives_every_admin_method_a_rich_status(small_map: BrokerProcess) -> None:
    with RawClient(small_map.address) as client:
        client.create_topic("filler")
        # Large batches first, then single tiny records, then topics: each
        # step stops at its first refusal, until even a topic row is refused.
        fill(client, "filler", 50, 1000)
        fill(client, "filler", 1, 1)
        for i in range(FILL_REQUESTS_MAX):
            status = call_status(lambda i=i: client.create_topic(f"pad-{i}"))  # type: ignore[misc]
            if status != (StatusCode.OK, None):
                break
        assert status == STORAGE_FULL, status
        before = client.admin.ListTopics(admin_pb2.ListTopicsRequest(), timeout=CALL_TIMEOUT_S)
        assert f"pad-{i}" not in {t.name for t in before.topics}, "a refused create changes nothing"

        def update() -> object:
            return client.admin.UpdateTopicConfig(
                admin_pb2.UpdateTopicConfigRequest(
                    name="filler", config=admin_pb2.TopicConfig(retention_ms=3_600_000)
                ),
                timeout=CALL_TIMEOUT_S,
            )

        calls: dict[str, Callable[[], object]] = {
            "CreateTopic": lambda: client.create_topic("one-more"),
            "DescribeTopic": lambda: client.describe("filler"),
            "UpdateTopicConfig": update,
            "ListTopics": lambda: client.admin.ListTopics(
                admin_pb2.ListTopicsRequest(), timeout=CALL_TIMEOUT_S
            ),
            "DescribeCluster": lambda: client.admin.DescribeCluster(
                admin_pb2.DescribeClusterRequest(), timeout=CALL_TIMEOUT_S
            ),
        }
        for name, call in calls.items():
            status = call_status(call)
            assert status in ((StatusCode.OK, None), STORAGE_FULL), (name, status)
        after = client.admin.ListTopics(admin_pb2.ListTopicsRequest(), timeout=CALL_TIMEOUT_S)
        assert after == before or "one-more" in {t.name for t in after.topics}
        (filler,) = [t for t in after.topics if t.name == "filler"]
        if call_status(update) == STORAGE_FULL:
            assert filler.config.retention_ms == -1, "a refused update changes nothing"

        # DeleteTopic either succeeds or is refused the same way; deleting
        # frees the space that lets the node write again.
        status = call_status(
            lambda: client.admin.DeleteTopic(
                admin_pb2.DeleteTopicRequest(name="filler"), timeout=CALL_TIMEOUT_S
            )
        )
        assert status in ((StatusCode.OK, None), STORAGE_FULL), status


def test_health_follows_whether_storage_can_write(small_map: BrokerProcess) -> None:
    with RawClient(small_map.address) as client:
        health = health_pb2_grpc.HealthStub(client.channel)
        watches = {
            service: health.Watch(health_pb2.HealthCheckRequest(service=service), timeout=90)
            for service in ("", "weir.v1.BrokerService")
        }
        try:
            for watch in watches.values():
                assert next(watch).status == SERVING
            client.create_topic("filler")
            fill(client, "filler", 50, 1000)
            for service, watch in watches.items():
                assert next(watch).status == NOT_SERVING, service

            # Storage's own write probe may report SERVING before this delete
            # (a small write can fit where a batch did not); either way the
            # next status is SERVING, once a write succeeds.
            client.admin.DeleteTopic(
                admin_pb2.DeleteTopicRequest(name="filler"), timeout=CALL_TIMEOUT_S
            )
            for service, watch in watches.items():
                assert next(watch).status == SERVING, service
            client.create_topic("after")
            produced = client.produce_one(request("after", [b"x" * 1000] * 50))
            assert not produced.HasField("error"), produced.error
        finally:
            for watch in watches.values():
                watch.cancel()


def damage_entry_heads(data_dir: Path, base_offset: int, record_count: int) -> int:
    """Flips the batch kind of every stored copy of an entry; returns how many.

    The entry is found by the head bytes its checksum covers; LMDB may hold
    stale copies of the page in free space, which are damaged too (harmless).
    """
    path = data_dir / "data.mdb"
    data = bytearray(path.read_bytes())
    head = BATCH_HEAD.pack(1, 0, 0, record_count, base_offset)
    found = 0
    at = data.find(head)
    while at >= 0:
        data[at] ^= 0xFF
        found += 1
        at = data.find(head, at + 1)
    path.write_bytes(bytes(data))
    return found


def test_a_damaged_partition_does_not_stop_retention_of_the_others(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    node = BrokerProcess(data_dir).start()
    try:
        with RawClient(node.address) as client:
            # Sorted first, so retention meets the damage before the healthy topic.
            client.create_topic("a-damaged")
            client.create_topic("b-healthy")
            # 7 and 11 records per batch: counts no other entry here has.
            for i in range(3):
                assert not client.produce_one(
                    request("a-damaged", [b"d%d" % i] * 7, request_id=i)
                ).HasField("error")
            for i in range(10):
                assert not client.produce_one(
                    request("b-healthy", [b"h" * 100] * 11, request_id=i)
                ).HasField("error")
            healthy_bytes = client.describe("b-healthy").partitions[0].size_bytes
        node.stop()
        assert damage_entry_heads(data_dir, 0, 7) >= 1

        node = BrokerProcess(data_dir, "--retention-check-interval-ms", "50").start()
        with RawClient(node.address) as client:
            for topic in ("a-damaged", "b-healthy"):
                client.admin.UpdateTopicConfig(
                    admin_pb2.UpdateTopicConfigRequest(
                        name=topic, config=admin_pb2.TopicConfig(retention_bytes=healthy_bytes // 3)
                    ),
                    timeout=CALL_TIMEOUT_S,
                )
            wait_for(
                lambda: client.describe("b-healthy").partitions[0].start_offset > 0,
                "retention trims the healthy topic",
            )
            info = client.describe("b-healthy").partitions[0]
            assert info.size_bytes <= healthy_bytes // 3
            wait_for(
                lambda: "retention skips partition 0 of topic 'a-damaged'" in node.output(),
                "a warning names the damaged partition",
            )
            warning = next(line for line in node.output().splitlines() if "'a-damaged'" in line)
            assert " WARNING " in warning, warning
            # The node still serves everything else.
            produced = client.produce_one(request("b-healthy", [b"later"]))
            assert not produced.HasField("error"), produced.error
    finally:
        node.stop()


def commit_offsets(client: RawClient, topic: str, group: str, partitions: int) -> None:
    stream, _ = open_stream(client, broker_pb2.Subscribe(topic=topic, group=group))
    try:
        commit = broker_pb2.Commit(
            commit_id=1,
            offsets=[broker_pb2.PartitionOffset(partition=p, offset=1) for p in range(partitions)],
        )
        stream.send(broker_pb2.ConsumeRequest(commit=commit))
        result = stream.next().commit
        assert not result.HasField("error"), result.error
    finally:
        stream.close()


def test_deleting_a_topic_removes_its_group_offsets(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    node = BrokerProcess(data_dir).start()
    try:
        with RawClient(node.address) as client:
            client.create_topic("kept", partitions=2)
            for p in range(2):
                client.produce_one(request("kept", [b"k"], partition=p))
            commit_offsets(client, "kept", "g-kept", 2)
            for cycle in range(3):
                client.create_topic("churn", partitions=8)
                for p in range(8):
                    assert not client.produce_one(
                        request("churn", [b"c%d" % cycle], partition=p)
                    ).HasField("error")
                for group in ("g1", "g2", "g3"):
                    commit_offsets(client, "churn", group, 8)
                client.admin.DeleteTopic(
                    admin_pb2.DeleteTopicRequest(name="churn"), timeout=CALL_TIMEOUT_S
                )
            wait_for(
                lambda: not meta_rows(data_dir, DELETING_NS), "the deleted topics' data is dropped"
            )
        node.stop()
        offsets = meta_rows(data_dir, OFFSET_NS)
        assert sorted(k[len(OFFSET_NS) :].split(b"\0")[0] for k, _ in offsets) == [
            b"g-kept",
            b"g-kept",
        ], "only the live topic's offsets remain"
        assert len(meta_rows(data_dir, OFFSET_BY_LOG_NS)) == 2

        # The kept group's offsets still read back after a restart.
        node.start()
        with RawClient(node.address) as client:
            _, subscribed = open_stream(client, broker_pb2.Subscribe(topic="kept", group="g-kept"))
            assert [p.offset for p in subscribed.partitions] == [1, 1]
    finally:
        node.stop()


def fill_partitions(client: RawClient, topic: str, partitions: int, batches: int) -> None:
    """Many small entries on every partition, so that dropping them takes many steps."""
    batch = records_pb2.RecordBatch(records=[records_pb2.Record(value=b"v" * 100)] * 20)
    requests = [
        broker_pb2.ProduceRequest(
            request_id=p * batches + b, topic=topic, partition=p, batch=batch, acks=1
        )
        for p in range(partitions)
        for b in range(batches)
    ]
    for response in client.produce(requests):
        assert not response.HasField("error"), response.error


def test_other_topic_changes_proceed_while_a_large_delete_drops_its_data(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    node = BrokerProcess(data_dir).start()
    try:
        with RawClient(node.address) as client:
            client.create_topic("large", partitions=64)
            fill_partitions(client, "large", 64, 60)
            (topic_row,) = [v for k, v in meta_rows(data_dir, TOPIC_NS) if k.endswith(b"large")]
            group_ids = set(json.loads(topic_row)["group_ids"])
            assert log_rows_of(data_dir, group_ids) == 64 * 60

            client.admin.DeleteTopic(
                admin_pb2.DeleteTopicRequest(name="large"), timeout=CALL_TIMEOUT_S
            )
            events = ["deleted"]
            client.create_topic("meanwhile")
            events.append("created")
            client.admin.DeleteTopic(
                admin_pb2.DeleteTopicRequest(name="meanwhile"), timeout=CALL_TIMEOUT_S
            )
            client.create_topic("large")
            events.append("deleted and created again")
            # The large topic's rows are still being dropped after all of that.
            if meta_rows(data_dir, DELETING_NS) and log_rows_of(data_dir, group_ids):
                events.append("data drop still running")
            assert events == [
                "deleted",
                "created",
                "deleted and created again",
                "data drop still running",
            ]
            assert client.describe("large").partitions[0].end_offset == 0, "a new, empty topic"
            wait_for(lambda: not meta_rows(data_dir, DELETING_NS), "the data drop finishes")
            assert log_rows_of(data_dir, group_ids) == 0
    finally:
        node.stop()


def test_an_interrupted_data_drop_resumes_after_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    node = BrokerProcess(data_dir).start()
    try:
        with RawClient(node.address) as client:
            client.create_topic("large", partitions=64)
            fill_partitions(client, "large", 64, 30)
            commit_offsets(client, "large", "g", 64)
            (topic_row,) = [v for k, v in meta_rows(data_dir, TOPIC_NS) if k.endswith(b"large")]
            group_ids = set(json.loads(topic_row)["group_ids"])
            client.admin.DeleteTopic(
                admin_pb2.DeleteTopicRequest(name="large"), timeout=CALL_TIMEOUT_S
            )
        node.kill()
        # Whatever the crash interrupted, the delete itself was durable.
        assert not [k for k, _ in meta_rows(data_dir, TOPIC_NS) if k.endswith(b"large")]

        node.start()
        with RawClient(node.address) as client:
            status = call_status(lambda: client.describe("large"))
            assert status == (StatusCode.NOT_FOUND, "TOPIC_NOT_FOUND")
            wait_for(lambda: not meta_rows(data_dir, DELETING_NS), "the resumed drop finishes")
        assert log_rows_of(data_dir, group_ids) == 0
        assert not meta_rows(data_dir, OFFSET_NS)
        assert not meta_rows(data_dir, OFFSET_BY_LOG_NS)
    finally:
        node.stop()


def test_a_dead_storage_writer_stops_the_node_with_a_clear_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    node = BrokerProcess(data_dir).start()
    try:
        with RawClient(node.address) as client:
            client.create_topic("t")
            for i in range(3):
                assert not client.produce_one(request("t", [b"x"] * 5, request_id=i)).HasField(
                    "error"
                )
            (topic_row,) = [v for k, v in meta_rows(data_dir, TOPIC_NS) if k.endswith(b"t")]
            (group_id,) = json.loads(topic_row)["group_ids"]
        node.stop()
        # Damage the B-tree page that holds the offset index row of the
        # second batch (base offset 5 at raft index 2): its page type becomes
        # invalid, so the next append's write transaction fails with
        # MDB_CORRUPTED, which no retry heals, and the writer thread dies.
        path = data_dir / "data.mdb"
        data = bytearray(path.read_bytes())
        row = struct.pack(">IQQ", group_id, 5, 2)
        at = data.find(row)
        assert at >= 0
        while at >= 0:
            page = at - at % LMDB_PAGE_BYTES
            data[page + LMDB_PAGE_FLAGS_AT : page + LMDB_PAGE_FLAGS_AT + 2] = b"\0\0"
            at = data.find(row, at + 1)
        path.write_bytes(bytes(data))

        node.start()
        with RawClient(node.address) as client:
            # The append fails, in its response or by the stream ending as
            # the node stops; either way with UNAVAILABLE.
            try:
                response = client.produce_one(request("t", [b"y"]))
                assert response.error.code == StatusCode.UNAVAILABLE.value[0], response
            except grpc.RpcError as error:
                assert error.code() == StatusCode.UNAVAILABLE, error  # type: ignore[attr-defined]
        wait_for(lambda: exited(node.pid), "the node exits by itself")
        assert node.terminate() == 1, "terminate() only collects the exit code"
        lines = node.output().splitlines()
        assert any(
            " CRITICAL " in line and "'storage health' failed; stopping the node" in line
            for line in lines
        ), node.output()
        assert any("the storage writer died" in line for line in lines if "error:" in line)
    finally:
        node.stop()
