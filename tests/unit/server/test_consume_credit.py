"""Byte credit as clients count it, reads bounded by credit, commits that do not hold credit back.

The consume path runs in-process on real storage, with a scripted
ServicerContext (the harness of test_consume_costs).

- A client that counts only value bytes drifts below what records cost; it
  gets one CREDIT_TOO_SMALL notice naming the bytes it needs, instead of a
  stream gone quiet, and the stream goes on once it grants them.
- Records stored one per batch, read with a credit of 1: each response reads
  one stored batch, not every batch a response's size would hold.
- A commit whose storage waits (replication, in a cluster) does not hold
  back the credit sent after it; commits waiting together are stored in one
  write.
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Iterable, Mapping

import grpc
import pytest

from tests.unit.server.test_consume_costs import T0_MS, ReadCounter, ScriptedContext, node, run
from weir._wire import credit_bytes
from weir.server.topics import ConfigPatch, Topic
from weir.v1 import broker_pb2, errors_pb2, records_pb2

pytestmark = pytest.mark.timeout(120)

EARLIEST = broker_pb2.StartPosition(kind=broker_pb2.START_KIND_EARLIEST)


def notices(context: ScriptedContext) -> list[errors_pb2.Error]:
    return [r.notice for r in context.responses if r.WhichOneof("kind") == "notice"]


def delivered(context: ScriptedContext) -> list[records_pb2.Record]:
    return [
        record
        for r in context.responses
        if r.WhichOneof("kind") == "batch"
        for record in r.batch.records
    ]


async def settle() -> None:
    """Let the stream's tasks run until they wait."""
    for _ in range(20):
        await asyncio.sleep(0)


# -- byte credit any client can compute -------------------------------------------


def test_a_client_counting_only_value_bytes_gets_one_notice_then_goes_on(
    tmp_path: pathlib.Path,
) -> None:
    records = [
        records_pb2.Record(key=b"k%07d" % i, value=b"v" * 100, headers={"type": b"order"})
        for i in range(400)
    ]
    cost = credit_bytes(b"k0000000", b"v" * 100, {"type": b"order"})  # 8 + 100 + 4 + 5

    async def body() -> None:
        async with node(tmp_path) as n:
            await n.topics.create("t", 1, 0, ConfigPatch())
            for start in range(0, len(records), 50):
                await n.append("t", 0, records[start : start + 50])
            # Ten records of credit, as a client that counts only values
            # reckons them: 100 bytes each.
            context = n.subscribe(
                broker_pb2.Subscribe(
                    topic="t",
                    start=EARLIEST,
                    credit=broker_pb2.Credit(messages=10, bytes=10 * 100),
                )
            )
            await context.until(lambda: bool(notices(context)))
            sent = 1000 // cost
            assert context.records == sent
            (notice,) = notices(context)
            assert (notice.code, notice.reason) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                "CREDIT_TOO_SMALL",
            )
            assert not notice.retriable
            assert dict(notice.metadata) == {
                "partition": "0",
                "offset": str(sent),
                "record_bytes": str(cost),
                "credit_bytes": str(1000 - sent * cost),
                "needed_bytes": str(cost - (1000 - sent * cost)),
            }

            # Once: more appends and more messages alone bring no second notice.
            await n.append("t", 0, records[:5])
            context.credit(5, 0)
            await settle()
            assert len(notices(context)) == 1 and context.records == sent

            # The stream goes on with the bytes the notice named; blocked
            # again after that record, the partition is named again.
            context.credit(0, int(notice.metadata["needed_bytes"]))
            await context.until(lambda: len(notices(context)) == 2)
            assert context.records == sent + 1
            assert [r.key for r in delivered(context)] == [r.key for r in records[: sent + 1]]
            assert notices(context)[1].metadata["offset"] == str(sent + 1)
            assert notices(context)[1].metadata["credit_bytes"] == "0"

    run(body)


def test_records_without_content_cost_only_messages(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with node(tmp_path) as n:
            await n.topics.create("t", 1, 0, ConfigPatch())
            await n.append("t", 0, [records_pb2.Record(timestamp_ms=T0_MS + i) for i in range(3)])
            await n.append("t", 0, [records_pb2.Record(value=b"x")])
            context = n.subscribe(
                broker_pb2.Subscribe(
                    topic="t", start=EARLIEST, credit=broker_pb2.Credit(messages=10, bytes=0)
                )
            )
            await context.until(lambda: context.records == 3 and bool(notices(context)))
            (notice,) = notices(context)
            assert notice.metadata["needed_bytes"] == "1"
            context.credit(0, 1)
            await context.until(lambda: context.records == 4)

    run(body)


# -- reads bounded by credit --------------------------------------------------------

SINGLE_BATCHES = 300


def test_a_credit_of_one_reads_one_stored_batch_per_response(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = ReadCounter(monkeypatch)

    async def body() -> None:
        async with node(tmp_path) as n:
            await n.topics.create("one", 1, 0, ConfigPatch())
            stored_bytes = 0
            for i in range(SINGLE_BATCHES):
                record = records_pb2.Record(value=b"%05d" % i + b"x" * 95, timestamp_ms=T0_MS)
                await n.append("one", 0, [record])
                stored_bytes += records_pb2.RecordBatch(records=[record]).ByteSize()
            reads.bytes = reads.calls = 0
            context = n.subscribe(
                broker_pb2.Subscribe(
                    topic="one", start=EARLIEST, credit=broker_pb2.Credit(messages=1, bytes=1 << 30)
                )
            )
            while context.records < SINGLE_BATCHES:
                seen = context.records
                await context.until(lambda seen=seen: context.records > seen)  # type: ignore[misc]
                assert context.records == seen + 1
                context.credit(1, 0)
            print(
                f"{SINGLE_BATCHES} batches of {stored_bytes} B: read {reads.bytes} B in {reads.calls} reads"
            )
            # Each response used to read (and checksum) up to 4,096 batches,
            # a response's worth, and use one.
            assert reads.bytes == stored_bytes
            assert reads.calls == SINGLE_BATCHES

    run(body)


def test_a_credit_window_reads_about_what_it_can_send(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = ReadCounter(monkeypatch)
    window = 50

    async def body() -> None:
        async with node(tmp_path) as n:
            await n.topics.create("w", 1, 0, ConfigPatch())
            stored_bytes = 0
            for i in range(SINGLE_BATCHES):
                record = records_pb2.Record(value=b"x" * 100, timestamp_ms=T0_MS + i)
                await n.append("w", 0, [record])
                stored_bytes += records_pb2.RecordBatch(records=[record]).ByteSize()
            reads.bytes = reads.calls = 0
            context = n.subscribe(
                broker_pb2.Subscribe(
                    topic="w",
                    start=EARLIEST,
                    credit=broker_pb2.Credit(messages=window, bytes=1 << 30),
                )
            )
            sizes = []
            while context.records < SINGLE_BATCHES:
                seen = context.records
                await context.until(lambda seen=seen: context.records > seen)  # type: ignore[misc]
                sizes.append(context.records - seen)
                context.credit(context.records - seen, 0)
            print(f"responses of {sizes[:8]}...; read {reads.bytes} B in {reads.calls} reads")
            # Each response reads exactly the batches its message credit
            # allows, in one read (one transaction, one cursor walk).
            assert reads.bytes == stored_bytes
            assert reads.calls == len(sizes)
            assert reads.batches == SINGLE_BATCHES

    run(body)


def test_byte_credit_bounds_what_is_read(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plenty of message credit, little byte credit: a read takes at most about
    twice the byte credit, not a response's worth of batches."""
    reads = ReadCounter(monkeypatch)
    credit_bytes_step = 250  # two records of 100 content bytes, not three

    async def body() -> None:
        async with node(tmp_path) as n:
            await n.topics.create("b", 1, 0, ConfigPatch())
            for i in range(SINGLE_BATCHES):
                record = records_pb2.Record(value=b"x" * 100, timestamp_ms=T0_MS + i)
                await n.append("b", 0, [record])
            stored_record_bytes = records_pb2.RecordBatch(records=[record]).ByteSize()
            reads.bytes = reads.calls = 0
            context = n.subscribe(
                broker_pb2.Subscribe(
                    topic="b",
                    start=EARLIEST,
                    credit=broker_pb2.Credit(messages=1000, bytes=credit_bytes_step),
                )
            )
            await context.until(lambda: context.records == 2)
            assert reads.calls == 1
            assert reads.bytes <= 2 * credit_bytes_step + stored_record_bytes
            # 50 bytes were left over: with 250 more, three records go.
            context.credit(0, credit_bytes_step)
            await context.until(lambda: context.records == 5)
            assert reads.bytes <= 2 * (2 * credit_bytes_step + stored_record_bytes)

    run(body)


# -- commits do not hold back credit ----------------------------------------------


class GatedOffsets:
    """The node's offsets, with every commit waiting on a gate the test opens."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.calls: list[dict[int, int]] = []

    def get(self, group: str, topic: Topic, partition: int) -> int | None:
        return self.inner.get(group, topic, partition)  # type: ignore[attr-defined, no-any-return]

    async def fetch(self, group: str, topic: Topic, partitions: Iterable[int]) -> dict[int, int]:
        return await self.inner.fetch(group, topic, partitions)  # type: ignore[attr-defined, no-any-return]

    async def commit(self, group: str, topic: Topic, offsets: Mapping[int, int]) -> dict[int, int]:
        self.calls.append(dict(offsets))
        await self.gate.wait()
        return await self.inner.commit(group, topic, offsets)  # type: ignore[attr-defined, no-any-return]

    async def forget_log(self, group_id: int) -> None:
        await self.inner.forget_log(group_id)  # type: ignore[attr-defined]


def commit_request(commit_id: int, offset: int) -> broker_pb2.ConsumeRequest:
    commit = broker_pb2.Commit(
        commit_id=commit_id, offsets=[broker_pb2.PartitionOffset(partition=0, offset=offset)]
    )
    return broker_pb2.ConsumeRequest(commit=commit)


def test_credit_after_a_commit_is_served_while_the_commit_waits(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with node(tmp_path) as n:
            offsets = GatedOffsets(n.path.offsets)
            n.path.offsets = offsets  # type: ignore[assignment]
            await n.topics.create("c", 1, 0, ConfigPatch())
            await n.append("c", 0, [records_pb2.Record(value=b"%d" % i) for i in range(40)])
            context = n.subscribe(
                broker_pb2.Subscribe(
                    topic="c", group="g", start=EARLIEST, credit=broker_pb2.Credit()
                )
            )
            await context.until(lambda: bool(context.responses))
            # One commit, then credit: the records come while the commit waits.
            context.requests.put_nowait(commit_request(1, 0))
            context.credit(5)
            await context.until(lambda: context.records == 5)
            assert offsets.calls == [{0: 0}] and not offsets.gate.is_set()

            # A client committing after every record, credit 1 each time.
            for i in range(1, 11):
                context.requests.put_nowait(commit_request(1 + i, 5 + i))
                context.credit(1)
            await context.until(lambda: context.records == 15)
            assert len(offsets.calls) == 1, "nothing stored yet: the first commit still waits"

            offsets.gate.set()

            def answers() -> list[broker_pb2.CommitResult]:
                return [r.commit for r in context.responses if r.WhichOneof("kind") == "commit"]

            await context.until(lambda: len(answers()) == 11)
            assert [a.commit_id for a in answers()] == list(range(1, 12)), "answered in order"
            assert all(not a.HasField("error") for a in answers())
            assert answers()[-1].offsets == [broker_pb2.PartitionOffset(partition=0, offset=15)]
            # The ten that waited behind the first were stored in one write.
            assert offsets.calls == [{0: 0}, {0: 15}]
            assert n.path.stats.commit_writes == 2
            assert offsets.inner.get("g", n.topics.get("c"), 0) == 15  # type: ignore[attr-defined]

    run(body)
