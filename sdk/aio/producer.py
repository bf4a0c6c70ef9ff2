"""The asyncio producer: `send()` appends to a batch, one sender task does the I/O.

    async with weir.aio.Producer("127.0.0.1:7070") as producer:
        fut = await producer.send("orders", b"payload", key=b"customer-42")
        meta = await fut  # RecordMetadata(topic, partition, offset)

`send()` returns as soon as the record is in a batch (waiting only for
buffer space, and on first use of a topic for its partition count); the
future resolves when the broker answers that batch. Keyed records go to
murmur2(key) % partitions, keyless records to a sticky partition that
rotates when its batch is sent, and an explicit `partition` wins over both.

The producer is idempotent by default: at start it asks the cluster for a
producer id (`InitProducer`), numbers each partition's records, and a retry
(after a failover, a lost answer, a timeout) resends the same numbered
batch, which the broker answers with the original offsets instead of
writing it twice. Batches go straight to their partition's leader (see
weir/aio/sender.py and weir/aio/metadata.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import grpc.aio

from weir._conn import admin_stub
from weir._failover import Connection, call_unary
from weir._nodes import Bootstrap
from weir._retry import Backoff
from weir._wire import (
    VALUE_ONLY_SMALL_MAX,
    framed_record,
    record_body,
    value_only_framed,
    varint,
)
from weir.aio.accumulator import BATCH_RECORDS_MAX, Accumulator
from weir.aio.batch import RecordFuture
from weir.aio.metadata import MetadataCache
from weir.aio.sender import AttemptHook, Sender
from weir.errors import (
    ClosedError,
    InvalidArgumentError,
    RecordTooLargeError,
    WeirError,
    WeirTimeoutError,
)
from weir.partitioner import StickyPartitioner, partition_for_key
from weir.types import Acks
from weir.v1 import admin_pb2, broker_pb2

__all__ = ["Producer"]

MIB = 1024 * 1024
# The most bytes a timestamp adds to a record: its tag and a varint of at
# most ten bytes (today's time in milliseconds takes six).
_STAMP_BYTES_MAX = 1 + 10


def stored_record_size(body: bytes, timestamp_ms: int) -> int:
    """A record's size as the broker measures it against `record_bytes_max`.

    That is the size of its `weir.v1.Record` encoding as stored: `body` plus,
    for a record without a timestamp, the one the broker fills in (the
    current time in milliseconds), so the producer refuses exactly what the
    broker would refuse.
    """
    if timestamp_ms:
        return len(body)
    return len(body) + 1 + len(varint(time.time_ns() // 1_000_000))


def check_deliver_at(deliver_at_ms: int) -> None:
    """Refuses what the broker would refuse for every topic (a negative time)."""
    if deliver_at_ms < 0:
        raise InvalidArgumentError(
            f"deliver_at_ms must be a time in milliseconds since the epoch, got {deliver_at_ms}",
            reason="INVALID_DELIVER_AT",
            metadata={"deliver_at_ms": str(deliver_at_ms)},
        )


class Producer:
    """Sends records to a Weir broker, batching per partition.

    Args:
        bootstrap: "host:port" of any broker node, or several: a sequence
            of them or one comma-separated string. The producer uses one
            node at a time and moves to another when it fails (see
            docs/sdk.md, "Bootstrap lists and failover").
        acks: "all" (committed on a majority; default), "leader" (written by
            the leader), or "none" (fire and forget; offsets come back as -1).
        linger_ms: How long a batch may wait for more records before it goes.
        batch_bytes_max: Bound on one batch's encoded records.
        batch_records_max: Bound on one batch's record count; keep it at or
            below the broker's `produce_request_records_max` (default
            100,000), which refuses larger requests.
        buffer_bytes_max: Bound on the bytes of all records not yet answered.
        buffer_wait_timeout_ms: How long `send()` waits for buffer space
            before it raises `BufferFullError`.
        retries: Further attempts for a batch after a retriable failure
            (a failed connect uses none, since nothing was sent, unless
            every known address failed to connect in a row). Metadata calls
            try each known address up to `retries + 1` times.
        retry_backoff_ms: First retry delay; it doubles up to
            `retry_backoff_max_ms`, with +-20% jitter.
        request_timeout_ms: How long a request may go unanswered before the
            stream is considered broken and its batches are retried.
        max_inflight_requests: Unanswered requests per node at once (the
            producer keeps one stream per node it sends to). A partition's
            batches go out in order and a retry never overtakes a later
            batch, so with idempotence (the default) per-partition order
            holds across retries whatever this is; an idempotent producer
            keeps at most 5 requests of one partition unanswered. Without
            idempotence a retried batch may be stored twice, and after one
            that was not written, the next may already be.
        metadata_max_age_ms: How long a topic's partitions and leaders are
            cached (NOT_LEADER and failures refresh them sooner).
        idempotence: Number each partition's records so that retries never
            write twice (docs/sdk.md, "Idempotent producing"). On by
            default; off with acks="none", which gets no answers to retry by.
        producer_name: A stable name for an idempotent producer: a new
            producer with the same name fences this one (its batches then
            fail with `ProducerFencedError`). None: an anonymous producer id.
        on_attempt: Called on the event loop with a `ProduceAttempt` each
            time an attempt to send a batch ends (acknowledged, refused, or
            of unknown outcome): a history for tests and metrics. Must not
            block.
        rng: Randomness for the backoff jitter and the first node (seed it
            for reproducible tests).
    """

    def __init__(
        self,
        bootstrap: Bootstrap,
        *,
        acks: Acks | str = "all",
        linger_ms: float = 5,
        batch_bytes_max: int = 1 * MIB,
        batch_records_max: int = BATCH_RECORDS_MAX,
        buffer_bytes_max: int = 32 * MIB,
        buffer_wait_timeout_ms: float = 30_000,
        retries: int = 5,
        retry_backoff_ms: int = 100,
        retry_backoff_max_ms: int = 5_000,
        request_timeout_ms: float = 30_000,
        max_inflight_requests: int = 5,
        metadata_max_age_ms: float = 300_000,
        idempotence: bool = True,
        producer_name: str | None = None,
        on_attempt: AttemptHook | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must not be negative")
        if linger_ms < 0 or buffer_wait_timeout_ms < 0 or request_timeout_ms <= 0:
            raise ValueError(
                "linger_ms, buffer_wait_timeout_ms must be >= 0, request_timeout_ms > 0"
            )
        if batch_bytes_max > buffer_bytes_max:
            raise ValueError("batch_bytes_max must not exceed buffer_bytes_max")
        self._acks = Acks.parse(acks)
        self._linger_s = linger_ms / 1000.0
        self._batch_bytes_max = batch_bytes_max
        self._batch_records_max = batch_records_max
        self._buffer_bytes_max = buffer_bytes_max
        self._buffer_wait_timeout_s = buffer_wait_timeout_ms / 1000.0
        self._retries = retries
        self._backoff = Backoff(
            retry_backoff_ms, max(retry_backoff_ms, retry_backoff_max_ms), rng=rng
        )
        self._request_timeout_s = request_timeout_ms / 1000.0
        self._max_inflight_requests = max_inflight_requests
        self._metadata_max_age_s = metadata_max_age_ms / 1000.0
        rng = rng if rng is not None else random.Random()
        self._sticky = StickyPartitioner(start=rng.randrange(1 << 16))
        self._conn = Connection(
            bootstrap,
            rng=rng,
            backoff_ms=retry_backoff_ms,
            backoff_max_ms=retry_backoff_max_ms,
            connect_timeout_s=self._request_timeout_s,
        )
        self._idempotent = idempotence and self._acks is not Acks.NONE
        self._producer_name = producer_name or ""
        self._on_attempt = on_attempt
        self._metadata = MetadataCache(
            self._describe,
            max_age_s=self._metadata_max_age_s,
            refresh_interval_s=retry_backoff_ms / 1000.0,
        )
        # (producer id, epoch) once InitProducer answered.
        self.producer_identity: tuple[int, int] | None = None
        self._started = False
        self._closed = False

    async def __aenter__(self) -> Producer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the channel and start the sender task (`async with` does this)."""
        if self._started:
            return
        self._accumulator = Accumulator(
            batch_bytes_max=self._batch_bytes_max,
            batch_records_max=self._batch_records_max,
            buffer_bytes_max=self._buffer_bytes_max,
            linger_s=self._linger_s,
            on_batch_closed=self._on_batch_closed,
            idempotent=self._idempotent,
        )
        self._metadata.on_change = self._accumulator.wakeup.set
        self._sender = Sender(
            connection=self._conn,
            accumulator=self._accumulator,
            acks=self._acks,
            retries=self._retries,
            backoff=self._backoff,
            request_timeout_s=self._request_timeout_s,
            max_inflight_requests=self._max_inflight_requests,
            metadata=self._metadata,
            idempotent=self._idempotent,
            producer_identity=self._init_producer if self._idempotent else None,
            on_attempt=self._on_attempt,
        )
        self._sender_task = asyncio.create_task(self._sender.run(), name="weir-producer-sender")
        self._started = True

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Mapping[str, bytes] | None = None,
        partition: int | None = None,
        timestamp_ms: int = 0,
        deliver_at_ms: int | None = None,
    ) -> RecordFuture:
        """Add a record to its partition's batch and return a future of its metadata.

        Waits only for buffer space (then `BufferFullError`) and, on first use
        of a topic, for its partition count (`TopicNotFoundError` if the topic
        does not exist). The future (a `RecordFuture`, which behaves as an
        `asyncio.Future`) fails with a `WeirError` if the batch does.

        `deliver_at_ms` (milliseconds since the Unix epoch): queue-mode
        consumers do not get the record before then (delayed delivery);
        stream-mode consumers read it in offset order regardless. A negative
        value raises `InvalidArgumentError` here; one beyond the topic's
        `retention_ms` is refused by the broker (`DELIVER_AT_BEYOND_RETENTION`),
        which fails the record's whole batch (docs/sdk.md).
        """
        # The fast path below does no await that can suspend: a record that
        # fits the buffer of a topic with fresh metadata costs one encoding
        # and one append. Everything else takes `_send_slow`.
        if self._closed or not self._started or self._sender_task.done():
            self._check_usable()
        if value.__class__ is not bytes:
            if not isinstance(value, bytes | bytearray | memoryview):
                raise TypeError("value must be bytes")
            value = bytes(value)
        if key is not None:
            if not isinstance(key, bytes | bytearray | memoryview):
                raise TypeError("key must be bytes or None")
            key = bytes(key)
        if deliver_at_ms:
            check_deliver_at(deliver_at_ms)
        else:
            deliver_at_ms = 0
        cached = self._metadata.cached(topic)
        if cached is None:
            return await self._send_slow(
                topic, value, key, headers, partition, timestamp_ms, deliver_at_ms
            )
        count = cached.partition_count
        record_bytes_max = cached.record_bytes_max
        if partition is None:
            if key is not None:
                partition = partition_for_key(key, count)
            else:
                partition = self._sticky.partition(topic, count)
        elif partition < 0 or partition >= count:
            return await self._send_slow(
                topic, value, key, headers, partition, timestamp_ms, deliver_at_ms
            )
        if (
            key is None
            and not headers
            and not timestamp_ms
            and not deliver_at_ms
            and len(value) <= VALUE_ONLY_SMALL_MAX
        ):
            framed = value_only_framed(value)
            body = framed[2:]
        else:
            body = record_body(
                value, key, dict(headers) if headers else None, timestamp_ms, deliver_at_ms
            )
            framed = framed_record(body)
        # The broker may add a timestamp of up to _STAMP_BYTES_MAX bytes; only
        # a record that close to the limit needs the exact size (slow path).
        if record_bytes_max > 0 and len(body) + _STAMP_BYTES_MAX > record_bytes_max:
            return await self._send_slow(
                topic, value, key, headers, partition, timestamp_ms, deliver_at_ms
            )
        accumulator = self._accumulator
        fut = accumulator.try_append(topic, partition, body, framed)
        if fut is None:
            fut = await accumulator.append(
                topic, partition, body, self._buffer_wait_timeout_s, framed=framed
            )
        if accumulator.closed_since_yield:
            # A batch is full: let the sender write it before this task goes
            # on filling the next one (an application that never waits would
            # otherwise hold the loop until the buffer is full).
            accumulator.closed_since_yield = False
            await asyncio.sleep(0)
        return fut

    async def _send_slow(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: Mapping[str, bytes] | None,
        partition: int | None,
        timestamp_ms: int,
        deliver_at_ms: int = 0,
    ) -> RecordFuture:
        """`send()` when metadata must be fetched, or a limit must be checked against it."""
        count, record_bytes_max = await self._topic_meta(topic)
        if partition is None:
            if key is not None:
                partition = partition_for_key(key, count)
            else:
                partition = self._sticky.partition(topic, count)
        elif partition < 0 or partition >= count:
            count, record_bytes_max = await self._topic_meta(topic, refresh=True)
            if partition < 0 or partition >= count:
                raise InvalidArgumentError(
                    f"partition {partition} out of range for topic {topic!r} "
                    f"with {count} partitions",
                    reason="PARTITION_OUT_OF_RANGE",
                    metadata={"topic": topic, "partition": str(partition)},
                )
        body = record_body(
            value, key, dict(headers) if headers else None, timestamp_ms, deliver_at_ms
        )
        size = stored_record_size(body, timestamp_ms)
        if record_bytes_max > 0 and size > record_bytes_max:
            # Checked here so the broker's rejection does not fail the other
            # records of the batch; the limit may have been raised meanwhile.
            _, record_bytes_max = await self._topic_meta(topic, refresh=True)
            if size > record_bytes_max:
                raise RecordTooLargeError(
                    f"record of {size} bytes exceeds record_bytes_max {record_bytes_max} "
                    f"of topic {topic!r}",
                    metadata={"topic": topic, "size": str(size), "limit": str(record_bytes_max)},
                )
        return await self._accumulator.append(topic, partition, body, self._buffer_wait_timeout_s)

    async def flush(self, timeout_s: float | None = None) -> None:
        """Send every buffered record now and wait until all are answered."""
        self._check_usable()
        try:
            # If the sender dies it fails every batch, which also ends this wait.
            async with asyncio.timeout(timeout_s):
                await self._accumulator.flush()
        except TimeoutError:
            raise WeirTimeoutError(f"flush did not finish within {timeout_s}s") from None

    async def close(self, timeout_s: float | None = None) -> None:
        """Flush, then stop the sender and close the channel.

        With `timeout_s`, records still unanswered after it fail with `ClosedError`.
        """
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        self._accumulator.close()
        self._sender.stop()
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self._sender_task)
        except TimeoutError:
            self._sender_task.cancel()
        except Exception:
            pass  # the sender already failed every waiter with its error
        finally:
            if not self._sender_task.done():
                self._sender_task.cancel()
            # Its failure, if any, was reported to every waiter.
            with contextlib.suppress(BaseException):
                await self._sender_task
            await self._metadata.close()
            await self._conn.close()

    async def partitions_for(self, topic: str) -> int:
        """The topic's partition count (cached for `metadata_max_age_ms`)."""
        self._check_usable()
        count, _ = await self._topic_meta(topic)
        return count

    # -- internals ---------------------------------------------------------

    def _check_usable(self) -> None:
        if not self._started:
            raise ClosedError("the producer is not started; use 'async with' or start()")
        if self._closed:
            raise ClosedError("the producer is closed")
        if self._sender_task.done():
            raise ClosedError("the producer's sender has stopped")

    def _on_batch_closed(self, topic: str, partition: int) -> None:
        cached = self._metadata.cached(topic)
        if cached is not None:
            self._sticky.batch_sent(topic, partition, cached.partition_count)

    async def _topic_meta(self, topic: str, *, refresh: bool = False) -> tuple[int, int]:
        """(partition count, record_bytes_max), cached for `metadata_max_age_ms`."""
        meta = await self._metadata.get(topic, refresh=refresh)
        return meta.partition_count, meta.record_bytes_max

    async def _describe(self, topic: str) -> admin_pb2.DescribeTopicResponse:
        request = admin_pb2.DescribeTopicRequest(name=topic)

        def describe(channel: grpc.aio.Channel) -> Any:
            return admin_stub(channel).DescribeTopic(request, timeout=self._request_timeout_s)

        response: admin_pb2.DescribeTopicResponse = await call_unary(
            self._conn, describe, attempts_per_address=self._retries + 1
        )
        return response

    async def _init_producer(self) -> tuple[int, int]:
        """A producer id and epoch from any node, retried until one answers.

        Records wait in their batches meanwhile; when a whole round of
        attempts fails, those waiting fail with the error (as a batch does
        after its retries) and the producer goes on trying for later ones.
        """
        request = broker_pb2.InitProducerRequest(producer_name=self._producer_name)

        def init(channel: grpc.aio.Channel) -> Any:
            method = channel.unary_unary(
                "/weir.v1.BrokerService/InitProducer",
                request_serializer=broker_pb2.InitProducerRequest.SerializeToString,
                response_deserializer=broker_pb2.InitProducerResponse.FromString,
            )
            return method(request, timeout=self._request_timeout_s)

        round_ = 0
        while True:
            try:
                response: broker_pb2.InitProducerResponse = await call_unary(
                    self._conn, init, attempts_per_address=self._retries + 1
                )
            except WeirError as error:
                if not error.retriable:
                    raise
                round_ += 1
                self._accumulator.fail_unsettled(error)
                if self._closed:
                    # Closing, and nothing is left to send: the sender ends
                    # without a producer id (0 is none).
                    return 0, 0
                await asyncio.sleep(self._backoff.delay_s(round_))
                continue
            self.producer_identity = (response.producer_id, response.producer_epoch)
            return self.producer_identity
