"""The `weir` client commands against a real broker, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.broker_process import BrokerProcess
from weir.partitioner import partition_for_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def weir_cli(
    broker: BrokerProcess, *args: str, stdin: bytes = b"", json_output: bool = False
) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "weir.server.cli", "--bootstrap", broker.address]
    if json_output:
        cmd.append("--json")
    return subprocess.run([*cmd, *args], input=stdin, capture_output=True, timeout=45)


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def test_topic_commands_in_tables_and_json(broker: BrokerProcess) -> None:
    assert "created topic orders (3 partitions" in ok(
        weir_cli(
            broker, "topic", "create", "orders", "--partitions", "3", "--retention-ms", "60000"
        )
    )
    table = ok(weir_cli(broker, "topic", "list")).splitlines()
    assert table[0].split() == [
        "TOPIC", "PARTITIONS", "RF", "RETENTION_BYTES", "RETENTION_MS", "RECORD_BYTES_MAX"
    ]  # fmt: skip
    assert table[1].split()[:5] == ["orders", "3", "1", "unlimited", "60000"]

    listed = json.loads(ok(weir_cli(broker, "topic", "list", json_output=True)))
    assert [t["name"] for t in listed] == ["orders"]
    # --json is accepted after the subcommand too.
    described = json.loads(ok(weir_cli(broker, "topic", "describe", "orders", "--json")))
    assert described["partitions"] == 3
    assert [p["partition"] for p in described["partition_states"]] == [0, 1, 2]
    assert "PARTITION" in ok(weir_cli(broker, "topic", "describe", "orders"))

    assert "deleted topic orders" in ok(weir_cli(broker, "topic", "delete", "orders"))
    assert json.loads(ok(weir_cli(broker, "topic", "list", json_output=True))) == []


def test_errors_are_one_line_with_reason_and_exit_code(broker: BrokerProcess) -> None:
    ok(weir_cli(broker, "topic", "create", "dup"))
    exists = weir_cli(broker, "topic", "create", "dup")
    assert exists.returncode == 1
    assert exists.stderr.decode().strip() == "error: TOPIC_EXISTS: topic 'dup' already exists"
    missing = weir_cli(broker, "topic", "describe", "nope")
    assert missing.returncode == 1
    assert missing.stderr.decode().startswith("error: TOPIC_NOT_FOUND: ")
    bad = weir_cli(broker, "topic", "create", "bad name")
    assert bad.returncode == 2
    assert bad.stderr.decode().startswith("error: INVALID_TOPIC_NAME: ")
    usage = weir_cli(broker, "topic", "create")
    assert usage.returncode == 2


def test_produce_then_consume_with_keys_json_and_group(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    ok(weir_cli(broker, "topic", "create", "events", "--partitions", "2"))
    lines = b"".join(b"user-%d:event %d\n" % (i % 5, i) for i in range(200))
    summary = ok(weir_cli(broker, "produce", "events", "--key-separator", ":", stdin=lines))
    assert summary.startswith("produced 200 records to events")

    source = tmp_path / "more.txt"
    source.write_bytes(b"plain 1\nplain 2\n")
    report = json.loads(
        ok(
            weir_cli(
                broker, "produce", "events", "--file", str(source), "--progress", json_output=True
            )
        )
    )
    assert report["records"] == 2 and report["failed"] == 0

    first = ok(
        weir_cli(
            broker, "consume", "events", "--from-beginning", "--group", "g", "--max", "150",
            "--timeout-s", "5", json_output=True,
        )
    ).splitlines()  # fmt: skip
    assert len(first) == 150
    records = [json.loads(line) for line in first]
    assert set(records[0]) >= {"topic", "partition", "offset", "key", "value", "timestamp_ms"}
    for record in records:
        if record["key"] is not None:
            assert record["value"].startswith("event ")
            assert record["key"].startswith("user-")

    # The group committed its position: the next run gets the other 52.
    rest = ok(
        weir_cli(
            broker, "consume", "events", "--from-beginning", "--group", "g", "--timeout-s", "2"
        )
    ).splitlines()
    assert len(rest) == 52
    seen = {r["value"] for r in records} | set(rest)
    assert seen == {f"event {i}" for i in range(200)} | {"plain 1", "plain 2"}


def test_consume_one_partition_and_cluster_status(broker: BrokerProcess) -> None:
    ok(weir_cli(broker, "topic", "create", "p", "--partitions", "2"))
    ok(weir_cli(broker, "produce", "p", "--key-separator", "=", stdin=b"a=1\nb=2\nc=3\nd=4\n"))
    both = ok(weir_cli(broker, "consume", "p", "--from-beginning", "--timeout-s", "1")).split()
    only = ok(
        weir_cli(broker, "consume", "p", "--from-beginning", "--timeout-s", "1", "--partition", "1")
    ).split()
    assert sorted(both) == ["1", "2", "3", "4"]
    expected = [
        v for k, v in zip("abcd", "1234", strict=True) if partition_for_key(k.encode(), 2) == 1
    ]
    assert only == expected

    status = json.loads(ok(weir_cli(broker, "cluster", "status", json_output=True)))
    assert status["nodes"][0]["alive"] is True
    assert "NODE" in ok(weir_cli(broker, "cluster", "status"))


def test_unreachable_broker_is_a_clean_error(broker: BrokerProcess) -> None:
    broker.kill()
    result = weir_cli(broker, "topic", "list")
    assert result.returncode == 1
    assert result.stderr.decode().startswith("error: UNAVAILABLE: ")
    assert len(result.stderr.decode().strip().splitlines()) == 1
