"""A Node.js client, loading proto/ at run time, against a three-node cluster.

`clients/node/check.js` uses only npm packages pinned in
`clients/node/package-lock.json` (@grpc/grpc-js, @grpc/proto-loader,
protobufjs, google-proto-files), which `make test` installs with `npm ci`.
Against three real nodes it creates a topic, decodes refused calls (the
ErrorInfo of the status trailer and the in-stream `weir.v1.Error`), produces
with an idempotent producer id (acks ALL, per-partition sequences, one
record per request and some of five, streams to every node so most requests
are forwarded), resends a batch with its sequence and gets its original
offsets, gets OUT_OF_ORDER_SEQUENCE for a gap and PRODUCER_FENCED for an old
epoch, and reads everything back with byte credit computed from the decoded
records (a 1 KiB window, run dry hundreds of times), checking each record
arrives once, in order, as produced. It prints its figures as one JSON line,
which this test checks, together with the end offsets the cluster reports.

Without node, or with clients/node not installed, the test fails (it does
not skip): CI has Node.js 20 and npm, and `make test` runs `npm ci` first.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.support.cluster_process import CALL_TIMEOUT_S, ClusterProcess
from weir.v1 import admin_pb2, admin_pb2_grpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

NODE_CLIENT = Path(__file__).resolve().parents[2] / "clients" / "node"
INSTALLED_STAMP = NODE_CLIENT / "node_modules" / ".installed-stamp"
RECORDS = 3000
# The client's own watchdog, then ours (it exits 2 on its own first).
CLIENT_TIMEOUT_MS = 60_000
CLIENT_WAIT_S = 75.0


@pytest.fixture(name="node")
def node_fixture() -> str:
    """The node executable, once clients/node is installed; a clear failure otherwise."""
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        pytest.fail(
            "node or npm not found on PATH: this test needs Node.js 20 and npm "
            "(`make test` installs clients/node with `npm ci`)"
        )
    if not INSTALLED_STAMP.exists():
        pytest.fail(
            f"{NODE_CLIENT}/node_modules is not installed: run `make node-client` "
            "(`make test` does it first)"
        )
    return node


def run_client(node: str, cluster: ClusterProcess, topic: str) -> dict[str, Any]:
    command = [
        node,
        "check.js",
        "--bootstrap",
        ",".join(cluster.addresses),
        "--records",
        str(RECORDS),
        "--topic",
        topic,
        "--timeout-ms",
        str(CLIENT_TIMEOUT_MS),
    ]
    try:
        result = subprocess.run(
            command,
            cwd=NODE_CLIENT,
            capture_output=True,
            text=True,
            timeout=CLIENT_WAIT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"the Node client hung: {error}\n{cluster.outputs()}") from error
    assert result.returncode == 0, (
        f"the Node client failed ({result.returncode}):\n{result.stderr}\n{result.stdout}\n"
        f"{cluster.outputs()}"
    )
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def end_offsets(cluster: ClusterProcess, topic: str) -> list[int]:
    with grpc.insecure_channel(cluster.address(1)) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        described = admin.DescribeTopic(
            admin_pb2.DescribeTopicRequest(name=topic), timeout=CALL_TIMEOUT_S
        )
    return [p.end_offset for p in described.partitions]


def test_node_client_produces_idempotently_and_consumes_with_byte_credit(
    node: str, cluster: ClusterProcess
) -> None:
    cluster.wait_converged()
    started = time.monotonic()
    figures = run_client(node, cluster, "node-client")
    elapsed_s = time.monotonic() - started

    assert figures["refusals"] == {
        "describe_missing": "TOPIC_NOT_FOUND",
        "create_existing": "TOPIC_EXISTS",
        "consume_missing": "TOPIC_NOT_FOUND",
        "produce_missing": "TOPIC_NOT_FOUND",
    }
    produce = figures["produce"]
    assert produce["records"] == RECORDS
    assert produce["multi_record_requests"] > 0
    assert produce["requests"] > RECORDS // 2  # mostly one record per request

    idempotence = figures["idempotence"]
    assert idempotence["retry_offsets_match"] is True
    assert idempotence["gap"] == "OUT_OF_ORDER_SEQUENCE"
    assert idempotence["successor_epoch"] == 1
    assert idempotence["fenced"] == "PRODUCER_FENCED"

    # The records plus the one the successor epoch wrote, each exactly once:
    # the client checked order and content; the cluster's end offsets agree.
    consume = figures["consume"]
    assert consume["records"] == RECORDS + 1
    assert consume["per_partition"] == end_offsets(cluster, "node-client")
    # Byte credit ran out again and again, and the broker said so.
    assert consume["bytes"] > 100 * consume["byte_window"]
    assert consume["credit_grants"] > 100
    assert consume["credit_too_small_notices"] > 0
    assert figures["credit_probe"]["record_bytes"] > 1

    assert elapsed_s < 30, f"the Node client took {elapsed_s:.1f} s: {figures}"
