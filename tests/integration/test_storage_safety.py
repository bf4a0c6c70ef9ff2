"""Data safety of a real node's folder: one owner, damage detected, never SIGBUS.

Each test drives real `weir serve` processes over loopback gRPC with their
LMDB files in a temporary folder (issue 9, "Data safety").
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import grpc
import lmdb
import pytest

from tests.support.broker_process import BrokerProcess
from tests.support.raw_client import (
    RawClient,
    open_stream,
    read_partition,
    request,
    rich_status,
    start_at,
)
from weir.v1 import broker_pb2

pytestmark = [pytest.mark.integration]

# A refused or failed start ends long before this; a hang fails the test.
SERVE_EXIT_TIMEOUT_S = 60.0


def serve_until_exit(data_dir: Path) -> subprocess.CompletedProcess[str]:
    """Runs `weir serve` on `data_dir` and waits for it to give up."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "weir.server.cli",
            "serve",
            "--data-dir",
            str(data_dir),
            "--listen",
            "127.0.0.1:0",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SERVE_EXIT_TIMEOUT_S,
        check=False,
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [
        line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error:")
    ]


def assert_refused_cleanly(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != -signal.SIGBUS, f"killed by SIGBUS:\n{output}"
    assert result.returncode > 0, f"exit {result.returncode}:\n{output}"
    errors = error_lines(result)
    assert len(errors) == 1, output
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert "listening on" not in output, output


def produce_values(client: RawClient, topic: str, values: list[bytes], request_id: int) -> int:
    response = client.produce_one(request(topic, values, request_id=request_id))
    assert not response.HasField("error"), response.error
    (append,) = response.appends
    return int(append.base_offset)


@pytest.mark.timeout(180)
def test_second_node_on_the_same_data_folder_is_refused(broker: BrokerProcess) -> None:
    with RawClient(broker.address) as client:
        client.create_topic("owned")
        assert produce_values(client, "owned", [b"before"], 1) == 0

    second = serve_until_exit(broker.data_dir)

    assert_refused_cleanly(second, str(broker.data_dir), f"pid {broker.pid}")
    # The first node is untouched and keeps serving both directions.
    with RawClient(broker.address) as client:
        assert produce_values(client, "owned", [b"after"], 2) == 1
        assert [r.value for r in read_partition(client, "owned", 0)] == [b"before", b"after"]


@pytest.mark.timeout(180)
def test_truncated_data_file_is_refused_at_start_without_sigbus(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    broker = BrokerProcess(data_dir).start()
    try:
        with RawClient(broker.address) as client:
            client.create_topic("big")
            # About 4 MiB, so half the file cuts through pages LMDB uses.
            for i in range(40):
                produce_values(client, "big", [bytes([i]) * 1000] * 100, i + 1)
    finally:
        assert broker.terminate() == 0
    data_file = data_dir / "data.mdb"
    size_bytes = data_file.stat().st_size
    with data_file.open("r+b") as f:
        f.truncate(size_bytes // 2)

    result = serve_until_exit(data_dir)

    assert_refused_cleanly(result, "data.mdb")


@pytest.mark.timeout(180)
def test_data_file_cut_to_a_few_bytes_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    broker = BrokerProcess(data_dir).start()
    try:
        with RawClient(broker.address) as client:
            client.create_topic("tiny")
            produce_values(client, "tiny", [b"x"], 1)
    finally:
        assert broker.terminate() == 0
    with (data_dir / "data.mdb").open("r+b") as f:
        # Shorter than LMDB's two meta pages: LMDB itself calls the file invalid.
        f.truncate(100)

    result = serve_until_exit(data_dir)

    assert_refused_cleanly(result, "data.mdb")


def _group_holding(data_dir: Path, marker: bytes) -> tuple[bytes, int]:
    """The `log` key of the first entry whose payload holds `marker`, and its length."""
    env = lmdb.open(str(data_dir), max_dbs=16, readonly=True, lock=False)
    try:
        db = env.open_db(b"log", create=False)
        with env.begin(db=db) as txn:
            for key, value in txn.cursor():
                if marker in value:
                    return bytes(key), len(value)
    finally:
        env.close()
    raise AssertionError(f"no entry holds {marker!r}")


def _flip_payload_byte(data_dir: Path, key: bytes, position: int) -> None:
    env = lmdb.open(str(data_dir), max_dbs=16)
    try:
        db = env.open_db(b"log", create=False)
        with env.begin(write=True, db=db) as txn:
            value = bytearray(txn.get(key))
            value[position] ^= 0xFF
            txn.put(key, bytes(value))
    finally:
        env.close()


@pytest.mark.timeout(180)
def test_damaged_entry_answers_data_corrupted_for_its_partition_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    broker = BrokerProcess(data_dir).start()
    try:
        with RawClient(broker.address) as client:
            client.create_topic("damaged")
            client.create_topic("healthy")
            produce_values(client, "damaged", [b"damaged-first"], 1)
            # A later entry keeps the damaged one away from the log's tail,
            # which recovery verifies when the log is opened.
            produce_values(client, "damaged", [b"damaged-second"], 2)
            produce_values(client, "healthy", [b"healthy-first"], 3)
        assert broker.terminate() == 0
        key, _ = _group_holding(data_dir, b"damaged-first")
        _flip_payload_byte(data_dir, key, -3)
        broker.start()

        with RawClient(broker.address) as client:
            stream, _ = open_stream(
                client,
                broker_pb2.Subscribe(
                    topic="damaged",
                    partitions=[0],
                    start=start_at(broker_pb2.START_KIND_EARLIEST),
                    credit=broker_pb2.Credit(messages=10, bytes=1 << 20),
                ),
            )
            try:
                with pytest.raises(grpc.RpcError) as failed:
                    stream.next()
                assert rich_status(failed.value) == (grpc.StatusCode.DATA_LOSS, "DATA_CORRUPTED")
            finally:
                stream.close()
            # The healthy topic reads and writes as before.
            assert [r.value for r in read_partition(client, "healthy", 0)] == [b"healthy-first"]
            assert produce_values(client, "healthy", [b"healthy-second"], 4) == 1
            assert produce_values(client, "damaged", [b"damaged-third"], 5) == 2
    finally:
        broker.stop()
