"""Idempotent producing from a client generated from proto/ (its own interpreter).

A retry of a batch with the same producer id, epoch and sequence gets the
original offsets back, on one node and in a three-node cluster, also after
the partition's leader was killed and after every node restarted; a gap in
sequences is OUT_OF_ORDER_SEQUENCE, an older epoch PRODUCER_FENCED, an id
the partition does not know UNKNOWN_PRODUCER_ID, a producer id without a
partition PARTITION_REQUIRED.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import pytest

from tests.support.broker_process import BrokerProcess
from tests.support.cluster_process import CALL_TIMEOUT_S, ClusterProcess
from weir.v1 import admin_pb2, admin_pb2_grpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PROTO_DIR = Path(__file__).resolve().parents[2] / "proto"
TOPIC = "idem"

# The generated client. argv: generated code folder, address, phase, state (JSON).
# Phase "first": create the topic, init a producer, write, retry, and check
# every refusal; prints the state a later phase retries from. Phase "retry":
# resend the last batch of that state and one more.
CLIENT = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, sys.argv[1])
    import grpc
    import weir
    from weir.v1 import admin_pb2, admin_pb2_grpc, broker_pb2, broker_pb2_grpc, records_pb2

    assert weir.__file__.startswith(sys.argv[1]), weir.__file__
    address, phase, state = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])

    def produce(broker, seq, count, pid, epoch, partition=0, request_id=1):
        records = [records_pb2.Record(value=b"s%d" % (seq + i)) for i in range(count)]
        request = broker_pb2.ProduceRequest(
            request_id=request_id, topic="idem", batch=records_pb2.RecordBatch(records=records),
            producer_id=pid, producer_epoch=epoch, first_sequence=seq,
        )
        if partition is not None:
            request.partition = partition
        deadline = time.monotonic() + 60
        while True:
            (response,) = list(broker.Produce(iter([request]), timeout=30))
            error = response.error
            # NOT_LEADER and friends while a leader is elected: retry the same batch.
            if response.HasField("error") and error.retriable and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            return response

    def refused(response, reason, code):
        assert response.HasField("error"), response
        assert response.error.reason == reason, response.error
        assert response.error.code == code.value[0], response.error
        assert not response.error.retriable
        return response.error

    with grpc.insecure_channel(address) as channel:
        broker = broker_pb2_grpc.BrokerServiceStub(channel)
        if phase == "first":
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            admin.CreateTopic(admin_pb2.CreateTopicRequest(name="idem", partition_count=2))
            init = broker.InitProducer(broker_pb2.InitProducerRequest(), timeout=30)
            pid, epoch = init.producer_id, init.producer_epoch
            assert pid > 0 and epoch == 0
            other = broker.InitProducer(broker_pb2.InitProducerRequest(), timeout=30)
            assert other.producer_id != pid

            first = produce(broker, 0, 3, pid, epoch)
            assert not first.HasField("error"), first.error
            base = first.appends[0].base_offset
            again = produce(broker, 0, 3, pid, epoch, request_id=2)
            assert not again.HasField("error"), again.error
            assert again.appends[0].base_offset == base, (again, base)
            assert again.appends[0].record_count == 3
            second = produce(broker, 3, 2, pid, epoch, request_id=3)
            assert second.appends[0].base_offset == base + 3, second
            # The first batch is still one of the last five: still recognised.
            assert produce(broker, 0, 3, pid, epoch).appends[0].base_offset == base

            error = refused(
                produce(broker, 9, 1, pid, epoch), "OUT_OF_ORDER_SEQUENCE",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
            assert error.metadata["expected_sequence"] == "5", error
            refused(
                produce(broker, 7, 1, other.producer_id, 0), "UNKNOWN_PRODUCER_ID",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
            refused(
                produce(broker, 0, 1, pid, epoch, partition=None), "PARTITION_REQUIRED",
                grpc.StatusCode.INVALID_ARGUMENT,
            )

            # A name keeps its id and raises the epoch, which fences the older one.
            named = broker.InitProducer(broker_pb2.InitProducerRequest(producer_name="app-1"), timeout=30)
            assert produce(broker, 0, 1, named.producer_id, named.producer_epoch, partition=1).appends
            newer = broker.InitProducer(broker_pb2.InitProducerRequest(producer_name="app-1"), timeout=30)
            assert newer.producer_id == named.producer_id
            assert newer.producer_epoch == named.producer_epoch + 1
            assert produce(broker, 0, 1, newer.producer_id, newer.producer_epoch, partition=1).appends
            error = refused(
                produce(broker, 1, 1, named.producer_id, named.producer_epoch, partition=1),
                "PRODUCER_FENCED", grpc.StatusCode.FAILED_PRECONDITION,
            )
            assert error.metadata["current_epoch"] == str(newer.producer_epoch)
            try:
                broker.InitProducer(broker_pb2.InitProducerRequest(producer_name="bad\\n"), timeout=30)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
            else:
                raise AssertionError("a control character in a producer name was accepted")

            # Nothing refused was written: offsets are dense after the two batches.
            third = produce(broker, 5, 1, pid, epoch)
            assert third.appends[0].base_offset == base + 5, third
            print(json.dumps({"pid": pid, "epoch": epoch, "seq": 5, "count": 1, "base": base + 5}))
        else:
            s = state
            retried = produce(broker, s["seq"], s["count"], s["pid"], s["epoch"])
            assert not retried.HasField("error"), retried.error
            assert retried.appends[0].base_offset == s["base"], (retried, s)
            following = produce(broker, s["seq"] + s["count"], 1, s["pid"], s["epoch"], request_id=9)
            assert following.appends[0].base_offset == s["base"] + s["count"], following
            print(json.dumps({**s, "seq": s["seq"] + s["count"], "count": 1, "base": s["base"] + s["count"]}))
    assert not [m for m in sys.modules if m.startswith(("weir.server", "weir.cluster", "weir.aio"))]
    """
)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen")
    sources = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.glob("weir/v1/*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            *sources,
        ],
        check=True,
        timeout=60,
    )
    (out / "weir" / "__init__.py").write_text("")
    (out / "weir" / "v1" / "__init__.py").write_text("")
    (out / "client.py").write_text(CLIENT)
    return out


def run_client(generated: Path, address: str, phase: str, state: dict[str, int]) -> dict[str, int]:
    result = subprocess.run(
        [
            sys.executable,
            str(generated / "client.py"),
            str(generated),
            address,
            phase,
            json.dumps(state),
        ],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert result.returncode == 0, result.stderr
    parsed: dict[str, int] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


def partition_leader(cluster: ClusterProcess, node: int) -> int:
    with grpc.insecure_channel(cluster.address(node)) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        described = stub.DescribeTopic(
            admin_pb2.DescribeTopicRequest(name=TOPIC), timeout=CALL_TIMEOUT_S
        )
    return described.partitions[0].leader_id


def wait_for_leader(cluster: ClusterProcess, node: int, not_on: int = 0) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            leader = partition_leader(cluster, node)
        except grpc.RpcError:
            leader = 0
        if leader and leader != not_on:
            return leader
        time.sleep(0.2)
    raise AssertionError("partition 0 got no leader within 30 s")


def test_a_generated_client_retries_on_one_node_and_after_a_restart(
    broker: BrokerProcess, generated: Path
) -> None:
    state = run_client(generated, broker.address, "first", {})
    state = run_client(generated, broker.address, "retry", state)
    broker.kill()
    broker.start()
    run_client(generated, broker.address, "retry", state)


def test_a_generated_client_retries_across_a_leader_kill_and_a_full_restart(
    cluster: ClusterProcess, generated: Path
) -> None:
    state = run_client(generated, cluster.address(1), "first", {})
    leader = wait_for_leader(cluster, 1)
    cluster.kill(leader)
    survivor = next(n for n in cluster.node_ids if n != leader)
    wait_for_leader(cluster, survivor, not_on=leader)
    # The retry goes to a node that is not the old leader; the new leader
    # knows the batch from its replicated producer state.
    state = run_client(generated, cluster.address(survivor), "retry", state)
    cluster.start_node(leader)
    for node in cluster.node_ids:
        cluster.kill(node)
    for node in cluster.node_ids:
        cluster.start_node(node)
    wait_for_leader(cluster, 1)
    run_client(generated, cluster.address(leader), "retry", state)
