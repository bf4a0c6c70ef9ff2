"""Dead letters: a record that failed its last allowed delivery, appended to the dead-letter topic.

The dead-letter topic is the source topic's `dead_letter_topic` setting, by
default `<topic>.dlq` (a topic whose name is too long for that default has
none: queue mode refuses it at Subscribe, before any partition's queue is
built, so a dispatch state here always names a valid one). It is created when first needed, with the source
topic's partition count and replication factor, through the node's topic
registry (in a cluster the controller, as an admin CreateTopic): a create
that another node won (TOPIC_EXISTS) means it is there. The record goes to
partition `source partition mod dead-letter partition count` through the
node's own produce path (`Router`), so in a cluster it reaches that
partition's leader, with acks=ALL. It keeps its key, value, timestamp and
headers and gains `weir-dlq-topic`, `weir-dlq-partition`, `weir-dlq-offset`,
`weir-dlq-deliveries` and `weir-dlq-error` (a header of those names it had
is replaced); its `deliver_at_ms` is dropped (it was due already).

Failures raise (BrokerError, or the storage or host error of the append):
the dispatcher retries with backoff while the record stays pending.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from weir.cluster.queue import DeadLetter
from weir.server.errors import BrokerError
from weir.server.produce_route import Router
from weir.server.registry import Topics
from weir.server.topics import ConfigPatch, Topic, dead_letter_topic_of
from weir.v1 import broker_pb2, records_pb2


def dead_letter_topic(topic: Topic) -> str:
    """The topic's dead-letter topic ("" in its config: `<topic>.dlq`; DEAD_LETTER_TOPIC_REQUIRED
    if that name is too long)."""
    return dead_letter_topic_of(topic.name, topic.config)


class DeadLetterSink(Protocol):
    async def write(
        self,
        source: Topic,
        partition: int,
        offset: int,
        record: records_pb2.Record,
        letter: DeadLetter,
    ) -> None: ...


def dead_letter_record(
    source: Topic, partition: int, offset: int, record: records_pb2.Record, letter: DeadLetter
) -> records_pb2.Record:
    out = records_pb2.Record()
    out.CopyFrom(record)
    out.ClearField("deliver_at_ms")
    out.headers["weir-dlq-topic"] = source.name.encode()
    out.headers["weir-dlq-partition"] = str(partition).encode()
    out.headers["weir-dlq-offset"] = str(offset).encode()
    out.headers["weir-dlq-deliveries"] = str(letter.deliveries).encode()
    out.headers["weir-dlq-error"] = letter.last_error.encode()
    return out


class RouterDeadLetters:
    """Writes dead letters through the node's topic registry and produce router."""

    def __init__(self, topics: Topics, router: Router) -> None:
        self._topics = topics
        self._router = router

    async def _topic(self, source: Topic) -> Topic:
        name = dead_letter_topic(source)
        try:
            return self._topics.get(name)
        except BrokerError as error:
            if error.reason != "TOPIC_NOT_FOUND":
                raise
        try:
            return await self._topics.create(
                name, source.partition_count, source.replication_factor, ConfigPatch()
            )
        except BrokerError as error:
            if error.reason != "TOPIC_EXISTS":
                raise
        return self._topics.get(name)

    async def write(
        self,
        source: Topic,
        partition: int,
        offset: int,
        record: records_pb2.Record,
        letter: DeadLetter,
    ) -> None:
        topic = await self._topic(source)
        request = broker_pb2.ProduceRequest(
            topic=topic.name,
            partition=partition % topic.partition_count,
            acks=broker_pb2.ACKS_ALL,
            batch=records_pb2.RecordBatch(
                records=[dead_letter_record(source, partition, offset, record, letter)]
            ),
        )
        placed = await self._router.append(request, forwarded=False)
        # Each part's answer raises the append's failure (a forwarded part's
        # too: the leader's refusal comes back as its BrokerError).
        await asyncio.gather(*(p.answered for p in placed))


__all__ = ["DeadLetterSink", "RouterDeadLetters", "dead_letter_record", "dead_letter_topic"]
