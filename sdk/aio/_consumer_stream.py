"""One Consume stream of the asyncio consumer: its handshake, its reader, what arrived on it.

A `Subscription` is one stream and the records that arrived on it and are
not yet taken (the consumer's bounded buffer). `read` is the reader task
that owns the receiving side: records go into the buffer (through the
consumer's `on_batch`), commit and seek answers to their waiters, stream
mode's assignments to the consumer's `on_control` in stream order, queue
mode's `AckResult`s to their waiters, so
`commit()` from another task never waits behind an iterator that has
nothing to read.
Errors are translated here: no `grpc.RpcError` leaves this module.

Each record comes with its byte credit, `weir._wire.credit_bytes` of its
fields (its content size, as the broker charged it), which the consumer
gives back once the application has taken the record.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from weir._conn import ConsumeCall, from_rpc_error
from weir._failover import connection_lost
from weir._wire import (
    DeliveryFields,
    RecordFields,
    credit_bytes,
    decode_batch_response,
    delivery_fields,
)
from weir.errors import ClosedError, UnavailableError, WeirError, WeirTimeoutError
from weir.v1 import broker_pb2

_log = logging.getLogger("weir.consumer")


# Queue mode: the `Delivery` of each record of a batch, in order.
Deliveries = Sequence[DeliveryFields]


class Batch:
    """A received batch, decoded once; the iterator takes its records in order."""

    __slots__ = (
        "base_offset",
        "deliveries",
        "next_index",
        "partition",
        "records",
        "sizes",
        "topic",
    )

    def __init__(
        self,
        topic: str,
        partition: int,
        base_offset: int,
        records: list[RecordFields],
        sizes: list[int],
        deliveries: Deliveries | None = None,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.base_offset = base_offset
        self.records = records
        # sizes[i]: record i's byte credit, `credit_bytes` of its fields.
        self.sizes = sizes
        # Queue mode: deliveries[i] is how record i was handed out (its
        # offset among them: queue deliveries need not be consecutive).
        self.deliveries = deliveries
        self.next_index = 0


@dataclass(eq=False)
class Subscription:
    """One Consume stream and what arrived on it."""

    call: ConsumeCall
    address: str
    # Batches with records not yet taken; `buffered` counts those records.
    buffer: collections.deque[Batch] = field(default_factory=collections.deque)
    buffered: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    commits: dict[int, asyncio.Future[broker_pb2.CommitResult]] = field(default_factory=dict)
    seeks: dict[int, asyncio.Future[broker_pb2.SeekResult]] = field(default_factory=dict)
    # Queue mode: `Ack` / `Nack` / `ExtendDeadline` requests waiting for their `AckResult`.
    acks: dict[int, asyncio.Future[broker_pb2.AckResult]] = field(default_factory=dict)
    error: WeirError | None = None
    ended: bool = False
    reader: asyncio.Task[None] | None = None
    # Stream mode: the task that sends heartbeats and marks auto-commits due.
    timer: asyncio.Task[None] | None = None
    # loop.time() of the last write started on the stream (heartbeats fill gaps).
    last_sent_s: float = 0.0
    # Stream mode: a failed stream's buffered records are dropped at once
    # (the next stream starts where the broker's new assignment says).
    drop_on_error: bool = False


# What `read` hands each received batch to: (subscription, topic, partition,
# base offset, end offset, records, their byte credit, queue mode's
# deliveries or None).
OnBatch = Callable[
    [Subscription, str, int, int, int, list[RecordFields], list[int], Deliveries | None], None
]
# What `read` hands `assignment` and `seek` responses to, before it wakes
# any waiter: the consumer applies them in stream order.
OnControl = Callable[[Subscription, broker_pb2.ConsumeResponse], None]


def drop(sub: Subscription, partitions: frozenset[int] | set[int]) -> tuple[int, int]:
    """Drop the buffered records of `partitions`; returns their (messages, bytes) of credit."""
    messages = nbytes = 0
    kept: collections.deque[Batch] = collections.deque()
    for batch in sub.buffer:
        if batch.partition in partitions:
            messages += len(batch.records) - batch.next_index
            nbytes += sum(batch.sizes[batch.next_index :])
        else:
            kept.append(batch)
    if messages:
        sub.buffer.clear()
        sub.buffer.extend(kept)
        sub.buffered -= messages
    return messages, nbytes


async def handshake(
    call: ConsumeCall, address: str, subscribe: broker_pb2.Subscribe, timeout_s: float
) -> broker_pb2.Subscribed:
    """Send `subscribe` on a new stream and wait for the broker's `subscribed`.

    Cancels the call on any failure, so a failed handshake leaves nothing open.
    """
    try:
        async with asyncio.timeout(timeout_s):
            await call.write(broker_pb2.ConsumeRequest(subscribe=subscribe))
            response = await call.read()
    except TimeoutError:
        call.cancel()
        # A subscribe changes nothing on the broker: safe to try elsewhere.
        raise WeirTimeoutError(
            f"no answer to subscribe from {address} within {timeout_s:.3f}s",
            retriable=True,
        ) from None
    except grpc.RpcError as exc:
        call.cancel()
        raise connection_lost(from_rpc_error(exc)) from None
    except BaseException:
        call.cancel()
        raise
    if not isinstance(response, bytes):
        call.cancel()
        raise UnavailableError("the broker ended the consume stream before subscribing")
    response = broker_pb2.ConsumeResponse.FromString(response)
    if response.WhichOneof("kind") != "subscribed":
        call.cancel()
        raise UnavailableError("the broker's first consume response was not 'subscribed'")
    return response.subscribed


async def read(sub: Subscription, on_batch: OnBatch, on_control: OnControl) -> None:
    """The reader task of `sub`: runs until the stream ends or fails, then wakes every waiter."""
    try:
        while True:
            raw = await sub.call.read()
            if not isinstance(raw, bytes):  # grpc.aio.EOF
                sub.ended = True
                break
            decoded = decode_batch_response(raw)
            if decoded is not None:
                on_batch(sub, *decoded)
                continue
            response = broker_pb2.ConsumeResponse.FromString(raw)
            kind = response.WhichOneof("kind")
            if kind == "batch":
                batch = response.batch
                fields: list[RecordFields] = [
                    (
                        record.key if record.HasField("key") else None,
                        record.value,
                        dict(record.headers),
                        record.timestamp_ms,
                    )
                    for record in batch.records
                ]
                on_batch(
                    sub,
                    batch.topic,
                    batch.partition,
                    batch.base_offset,
                    batch.end_offset,
                    fields,
                    [credit_bytes(key, value, headers) for key, value, headers, _ in fields],
                    [delivery_fields(d) for d in batch.deliveries] or None,
                )
            elif kind == "commit":
                fut = sub.commits.get(response.commit.commit_id)
                if fut is not None and not fut.done():
                    fut.set_result(response.commit)
            elif kind == "ack":
                answer = sub.acks.get(response.ack.request_id)
                if answer is not None and not answer.done():
                    answer.set_result(response.ack)
            elif kind == "assignment":
                on_control(sub, response)
                sub.arrived.set()
            elif kind == "seek":
                on_control(sub, response)
                waiter = sub.seeks.get(response.seek.seek_id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(response.seek)
            elif kind == "notice":
                # CREDIT_TOO_SMALL: the broker waits for byte credit. The
                # consumer's window is never below record_bytes_max, so the
                # credit comes back as the application takes what it holds.
                notice = response.notice
                _log.debug("consume notice %s: %s", notice.reason, notice.message)
    except grpc.RpcError as exc:
        sub.error = connection_lost(from_rpc_error(exc))
    except Exception as exc:
        sub.error = ClosedError(f"the consumer's reader died: {exc!r}")
        raise
    finally:
        failure = sub.error or UnavailableError("the consume stream ended")
        _fail_waiters(sub, failure)
        if sub.error is not None and sub.drop_on_error:
            sub.buffer.clear()
            sub.buffered = 0
        sub.arrived.set()


def _fail_waiters(sub: Subscription, error: WeirError) -> None:
    waiters: list[asyncio.Future[Any]] = [
        *sub.commits.values(),
        *sub.seeks.values(),
        *sub.acks.values(),
    ]
    for waiter in waiters:
        if not waiter.done():
            waiter.set_exception(error)


async def write(sub: Subscription, request: broker_pb2.ConsumeRequest) -> None:
    """Write one request on the stream; the caller serializes writes."""
    try:
        await sub.call.write(request)
    except grpc.RpcError as exc:
        raise connection_lost(from_rpc_error(exc)) from None
    except asyncio.InvalidStateError:
        raise UnavailableError("the consume stream has ended") from None


async def end(sub: Subscription, error: WeirError) -> None:
    """End the stream: fail its commit waiters, stop its reader, drop its buffer."""
    if sub.error is None:
        sub.error = error
    _fail_waiters(sub, error)
    if sub.timer is not None:
        sub.timer.cancel()
    if not sub.call.done():
        with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError, TimeoutError):
            async with asyncio.timeout(1.0):
                await sub.call.done_writing()
    sub.call.cancel()
    if sub.reader is not None:
        sub.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sub.reader
    if sub.timer is not None:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sub.timer
    sub.buffer.clear()
    sub.buffered = 0
