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

`NodeScenario` runs one of `clients/node/scenarios/*.js` for the other
test_node_*.py modules: JSON event lines out, JSON command lines in.
"""

from __future__ import annotations

import collections
import contextlib
import json
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
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


EVENTS_MAX = 10_000
STDERR_LINES_MAX = 200


class NodeScenario:
    """`node scenarios/<script> <flags>` as a child process, stopped by its own pid.

    A thread per pipe reads the child's lines: stdout's JSON events into a
    bounded queue that `wait_for` takes from, stderr's last lines for the
    failure messages.
    """

    def __init__(self, node: str, script: str, flags: dict[str, str | int]) -> None:
        command = [node, f"scenarios/{script}"]
        for name, value in flags.items():
            command += [f"--{name}", str(value)]
        self.process = subprocess.Popen(
            command,
            cwd=NODE_CLIENT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=EVENTS_MAX)
        self.seen: list[dict[str, Any]] = []
        self.stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES_MAX)
        self.readers = [
            threading.Thread(target=self._read_events, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def _read_events(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.events.put(json.loads(line))
        self.events.put(None)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line.rstrip())

    def failure(self, what: str) -> AssertionError:
        stderr = "\n".join(self.stderr)
        return AssertionError(f"{what}; events {self.seen[-5:]}\nnode stderr:\n{stderr}")

    def wait_for(
        self,
        event: str,
        timeout_s: float,
        predicate: Callable[[dict[str, Any]], bool] = lambda _: True,
    ) -> dict[str, Any]:
        """The next `event` line for which `predicate` holds (earlier lines are kept in `seen`)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                got = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise self.failure(f"no {event} event within {timeout_s} s") from None
            if got is None:
                self.process.wait(timeout=5)
                raise self.failure(f"exited {self.process.returncode} before a {event} event")
            self.seen.append(got)
            if got["event"] == event and predicate(got):
                return got

    def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def finish(self, timeout_s: float) -> dict[str, Any]:
        """The `done` event's figures, once the process exited 0."""
        done = self.wait_for("done", timeout_s)
        code = self.process.wait(timeout=10)
        if code != 0:
            raise self.failure(f"exited {code} after done")
        return done

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        if self.process.stdin is not None:
            self.process.stdin.close()
        # The readers end at the pipes' end of file; a full event queue is drained first.
        while self.readers[0].is_alive():
            with contextlib.suppress(queue.Empty):
                self.events.get(timeout=0.1)
        self.readers[1].join(timeout=10)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


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
