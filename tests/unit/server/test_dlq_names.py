"""Dead-letter topic names: a topic name too long for the default `<topic>.dlq`.

Topic names have at most 249 characters, so a topic of 246 to 249 has no
valid `<topic>.dlq`. Queue mode refuses such a topic while it dead-letters
(max_deliveries > 0) and sets no `dead_letter_topic`, at Subscribe and
before any partition's queue is built (FAILED_PRECONDITION
DEAD_LETTER_TOPIC_REQUIRED); everything else about it works as before.
The node tests run the single node's consume path on real storage
(test_queue_harness).
"""

from __future__ import annotations

import pathlib

import grpc
import pytest

from tests.unit.server.test_queue_harness import queue_node, run
from weir.server.errors import BrokerError
from weir.server.naming import TOPIC_NAME_CHARS_MAX
from weir.server.topics import ConfigPatch, TopicConfig, check_dead_letters, dead_letter_topic_of
from weir.v1 import broker_pb2, records_pb2

pytestmark = pytest.mark.timeout(60)

LONGEST_WITH_DEFAULT = TOPIC_NAME_CHARS_MAX - len(".dlq")  # 245


def name(chars: int, letter: str = "a") -> str:
    return letter * chars


@pytest.mark.parametrize("chars", [1, 200, LONGEST_WITH_DEFAULT])
def test_a_name_that_fits_the_suffix_keeps_its_default(chars: int) -> None:
    assert dead_letter_topic_of(name(chars), TopicConfig()) == name(chars) + ".dlq"
    check_dead_letters(name(chars), TopicConfig())


@pytest.mark.parametrize("chars", range(LONGEST_WITH_DEFAULT + 1, TOPIC_NAME_CHARS_MAX + 1))
def test_a_longer_name_has_no_default_and_says_what_to_set(chars: int) -> None:
    with pytest.raises(BrokerError) as caught:
        check_dead_letters(name(chars), TopicConfig())
    error = caught.value
    assert (error.code, error.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "DEAD_LETTER_TOPIC_REQUIRED",
    )
    assert not error.retriable
    assert error.metadata == {
        "topic": name(chars),
        "field": "dead_letter_topic",
        "topic_chars": str(chars),
        "limit": str(TOPIC_NAME_CHARS_MAX),
    }
    assert "dead_letter_topic" in error.message and "max_deliveries 0" in error.message
    with pytest.raises(BrokerError):
        dead_letter_topic_of(name(chars), TopicConfig())


def test_a_long_name_with_its_own_dead_letter_topic_or_no_dead_letters_is_fine() -> None:
    long = name(TOPIC_NAME_CHARS_MAX)
    config = TopicConfig(dead_letter_topic="graveyard")
    assert dead_letter_topic_of(long, config) == "graveyard"
    check_dead_letters(long, config)
    check_dead_letters(long, TopicConfig(max_deliveries=0))


def test_queue_mode_refuses_a_247_character_topic_without_building_anything(
    tmp_path: pathlib.Path,
) -> None:
    async def body() -> None:
        async with queue_node(tmp_path) as n:
            long = name(247)
            created = await n.topics.create(long, 2, 0, ConfigPatch())  # creating is allowed
            assert created.config.max_deliveries == 5
            await n.append(0, [b"x"], topic=long)
            before = sorted(t.name for t in n.topics.all())
            a = n.subscribe(topic=long, credit=broker_pb2.Credit(messages=10, bytes=1 << 20))
            assert await a.ended() == "DEAD_LETTER_TOPIC_REQUIRED"
            assert a.context.metadata["topic"] == long
            assert a.context.metadata["field"] == "dead_letter_topic"
            assert a.deliveries() == []
            for partition in range(2):
                log = n.replicator.log(n.topics.get(long).group_id(partition))
                assert log.queue_groups() == []
            assert n.queues.get(created, 0, "g") is None
            assert sorted(t.name for t in n.topics.all()) == before
            # Stream mode (no group) reads it as before.
            s = n.subscribe(
                topic=long, mode=broker_pb2.CONSUME_MODE_UNSPECIFIED, group="",
                credit=broker_pb2.Credit(messages=10, bytes=1 << 20),
            )  # fmt: skip

            def streamed() -> list[bytes]:
                batches = [r.batch for r in s.context.responses if r.WhichOneof("kind") == "batch"]
                return [record.value for batch in batches for record in batch.records]

            await s.context.until(lambda: len(streamed()) >= 1)
            assert streamed() == [b"x"]

    run(body)


def test_a_247_character_topic_dead_letters_to_its_own_setting_or_never(
    tmp_path: pathlib.Path,
) -> None:
    async def body() -> None:
        async with queue_node(tmp_path) as n:
            named = name(247, "b")
            await n.topics.create(
                named, 1, 0, ConfigPatch(max_deliveries=1, dead_letter_topic="graveyard")
            )
            never = name(247, "c")
            await n.topics.create(never, 1, 0, ConfigPatch(max_deliveries=0))
            await n.append(0, [b"poison"], topic=named)
            await n.append(0, [b"again"], topic=never)
            a = n.subscribe(topic=named, credit=broker_pb2.Credit(messages=10, bytes=1 << 20))
            await a.until_records(1)
            await a.answer(a.request("nack", [a.deliveries()[0][0].ack_id], error="bad"))
            await n.until(lambda: any(t.name == "graveyard" for t in n.topics.all()))
            log = n.replicator.log(n.topics.get("graveyard").group_id(0))
            await n.until(lambda: log.end_offset == 1)
            [stored] = log.read(0, 1 << 20)
            [record] = records_pb2.RecordBatch.FromString(stored.payload).records
            assert record.headers["weir-dlq-topic"] == named.encode()
            b = n.subscribe(topic=never, credit=broker_pb2.Credit(messages=10, bytes=1 << 20))
            await b.until_records(1)
            await b.answer(b.request("nack", [b.deliveries()[0][0].ack_id], delay_ms=0))
            n.tick(1)
            await b.until_records(2)
            assert b.values() == [b"again", b"again"]
            assert not b.task.done() and not a.task.done()

    run(body)


def test_the_longest_name_with_a_default_dead_letters_to_it(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with queue_node(tmp_path) as n:
            edge = name(LONGEST_WITH_DEFAULT, "d")
            await n.topics.create(edge, 1, 0, ConfigPatch(max_deliveries=1))
            await n.append(0, [b"poison"], topic=edge)
            a = n.subscribe(topic=edge, credit=broker_pb2.Credit(messages=10, bytes=1 << 20))
            await a.until_records(1)
            await a.answer(a.request("nack", [a.deliveries()[0][0].ack_id]))
            dlq = edge + ".dlq"
            assert len(dlq) == TOPIC_NAME_CHARS_MAX
            await n.until(lambda: any(t.name == dlq for t in n.topics.all()))
            log = n.replicator.log(n.topics.get(dlq).group_id(0))
            await n.until(lambda: log.end_offset == 1)

    run(body)
