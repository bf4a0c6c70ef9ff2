"""One Consume stream of the asyncio consumer: its handshake, its reader, what arrived on it.

A `Subscription` is one stream and the records that arrived on it and are
not yet taken (the consumer's bounded buffer). `read` is the reader task
that owns the receiving side: records go into the buffer (through the
consumer's `on_batch`), commit answers to their waiters, so `commit()` from
another task never waits behind an iterator that has nothing to read.
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
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from weir._conn import ConsumeCall, from_rpc_error
from weir._failover import connection_lost
from weir._wire import RecordFields, credit_bytes, decode_batch_response
from weir.errors import ClosedError, UnavailableError, WeirError, WeirTimeoutError
from weir.v1 import broker_pb2

_log = logging.getLogger("weir.consumer")


class Batch:
    """A received batch, decoded once; the iterator takes its records in order."""

    __slots__ = ("base_offset", "next_index", "partition", "records", "sizes", "topic")

    def __init__(
        self,
        topic: str,
        partition: int,
        base_offset: int,
        records: list[RecordFields],
        sizes: list[int],
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.base_offset = base_offset
        self.records = records
        # sizes[i]: record i's byte credit, `credit_bytes` of its fields.
        self.sizes = sizes
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
    error: WeirError | None = None
    ended: bool = False
    reader: asyncio.Task[None] | None = None


# What `read` hands each received batch to: (subscription, topic, partition,
# base offset, end offset, records, their byte credit).
OnBatch = Callable[[Subscription, str, int, int, int, list[RecordFields], list[int]], None]


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


async def read(sub: Subscription, on_batch: OnBatch) -> None:
    """The reader task of `sub`: runs until the stream ends or fails, then wakes every waiter."""
    try:
        while True:
            raw = await sub.call.read()
            if not isinstance(raw, bytes):  # grpc.aio.EOF
                sub.ended = True
                break
            decoded = decode_batch_response(raw)
            if decoded is not None:
                topic, partition, base_offset, end_offset, records, sizes = decoded
                on_batch(sub, topic, partition, base_offset, end_offset, records, sizes)
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
                )
            elif kind == "commit":
                fut = sub.commits.get(response.commit.commit_id)
                if fut is not None and not fut.done():
                    fut.set_result(response.commit)
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
        for fut in sub.commits.values():
            if not fut.done():
                fut.set_exception(failure)
        sub.arrived.set()


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
    for fut in sub.commits.values():
        if not fut.done():
            fut.set_exception(error)
    if not sub.call.done():
        with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError, TimeoutError):
            async with asyncio.timeout(1.0):
                await sub.call.done_writing()
    sub.call.cancel()
    if sub.reader is not None:
        sub.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sub.reader
    sub.buffer.clear()
    sub.buffered = 0
