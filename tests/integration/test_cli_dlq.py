"""`weir dlq list | replay` against a real node: dead letters shown with their headers, sent back once.

Records of a topic with `max_deliveries=1` are nacked by a queue-mode SDK
consumer, so each goes to `jobs.dlq` on its first failure. `weir dlq list`
shows them with where they came from and why; `weir dlq replay` appends
each to `jobs` again (without the `weir-dlq-*` headers, with
`weir-replayed-from`) and commits, so a second replay has nothing to do.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

import weir.aio
from tests.support.broker_process import BrokerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RECORDS = 5


def weir_cli(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "weir.server.cli", "--bootstrap", address, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def cli_json(address: str, *args: str) -> dict[str, object]:
    result = weir_cli(address, "--json", *args)
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


def test_dead_letters_are_listed_and_replayed_once(broker: BrokerProcess) -> None:
    async def fail_everything() -> None:
        async with weir.aio.Admin(broker.address) as admin:
            await admin.create_topic("jobs", partitions=2, max_deliveries=1)
        async with weir.aio.Producer(broker.address) as producer:
            for i in range(RECORDS):
                await producer.send("jobs", b"job-%d" % i, key=b"k%d" % i, headers={"h": b"v"})
            await producer.flush()
        async with weir.aio.Consumer(
            broker.address, "jobs", group="workers", mode="queue", start="earliest"
        ) as consumer:
            for _ in range(RECORDS):
                record = await consumer.poll(10)
                assert record is not None
                await consumer.nack(record, error=f"failed {record.value.decode()}")
        async with weir.aio.Admin(broker.address) as admin:
            for _ in range(100):
                try:
                    info = await admin.describe_topic("jobs.dlq")
                    if sum(p.end_offset for p in info.partitions) == RECORDS:
                        return
                except weir.errors.TopicNotFoundError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError("the dead letters never arrived")

    # Nothing dead-lettered yet: an empty list, an empty replay.
    empty = weir_cli(broker.address, "dlq", "list", "nope")
    assert empty.returncode == 1 and "TOPIC_NOT_FOUND" in empty.stderr
    asyncio.run(fail_everything())

    listed = cli_json(broker.address, "dlq", "list", "jobs")
    assert listed["dead_letter_topic"] == "jobs.dlq"
    rows = listed["records"]
    assert isinstance(rows, list) and len(rows) == RECORDS
    assert sorted(r["value"] for r in rows) == [f"job-{i}" for i in range(RECORDS)]
    for row in rows:
        assert row["topic"] == "jobs" and row["deliveries"] == "1"
        assert row["error"] == f"failed {row['value']}"
    human = weir_cli(broker.address, "dlq", "list", "jobs")
    assert human.returncode == 0 and "dead letters of jobs (in jobs.dlq): 5" in human.stdout

    replay = weir_cli(broker.address, "dlq", "replay", "jobs")
    assert replay.returncode == 0, replay.stderr
    assert "replayed 5 of 5 dead letters from jobs.dlq" in replay.stdout
    assert "replaying [" in replay.stderr  # the progress bar
    again = cli_json(broker.address, "dlq", "replay", "jobs")
    assert (again["replayed"], again["total"]) == (0, 0)

    async def read_back() -> list[weir.ConsumedRecord]:
        async with weir.aio.Consumer(broker.address, "jobs", start="earliest") as consumer:
            return [r for _ in range(2 * RECORDS) if (r := await consumer.poll(10)) is not None]

    records = asyncio.run(read_back())
    replayed = [r for r in records if "weir-replayed-from" in r.headers]
    assert sorted(r.value for r in replayed) == [b"job-%d" % i for i in range(RECORDS)]
    for record in replayed:
        assert record.headers["h"] == b"v" and record.key == b"k" + record.value[4:]
        assert not any(name.startswith("weir-dlq-") for name in record.headers)
        assert record.headers["weir-replayed-from"].startswith(b"jobs.dlq/")
