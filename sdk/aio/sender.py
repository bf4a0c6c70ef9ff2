"""The producer's sender: the one task that talks to the broker.

It owns one `BrokerService.Produce` bidirectional stream at a time, to the
node the producer's `Connection` uses now (see weir/_failover.py). Each turn
it drains ready batches from the accumulator (at most `max_inflight_requests`
unanswered at once), writes each as a ProduceRequest with a fresh
`request_id` and an explicit partition, and a reader task matches responses
back by `request_id`.

Failures:

- before a stream opens, the node must connect; a failed connect moves to
  the next node without touching any batch (nothing was sent), except that
  a full round of failed connects costs each waiting batch one attempt;
- a per-request error that is retriable (`Error.retriable`, UNAVAILABLE)
  puts the batch back at the front of its partition queue after a backoff,
  until `retries` attempts are used up; any other error fails its records;
- a per-request error that says "another node" (UNAVAILABLE of any reason,
  e.g. SHUTTING_DOWN, or NOT_LEADER) also makes the sender *leave* the node:
  no further request goes out on the stream, and once its unanswered
  requests are answered (or the stream breaks) it closes and the next stream
  opens on the next node, or on the leader NOT_LEADER named (at once);
- a broken stream (the call ended, a write failed, or the oldest request
  waited longer than `request_timeout_ms`) sends every unanswered batch back
  for retry in request order, and the next stream opens on the next node:
  at once within a round of the addresses, after a backoff once every node
  failed. The outcome of those batches is unknown: they may have been
  appended, so the retry may store them twice (at least once), but each
  record's future is settled exactly once, by the one answer that counts;
- if the sender itself dies, every waiter fails with `ClosedError` and the
  producer refuses new records: no future is ever left hanging.

With acks="none" the broker only answers failures, so a batch is settled
(offset -1) as soon as it is written to the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import grpc
import grpc.aio

from weir._conn import ProduceCall, from_error_proto, from_rpc_error, produce_call
from weir._failover import Connection, connection_lost, moves_node
from weir._retry import Backoff
from weir._wire import produce_request, topic_field
from weir.aio.accumulator import Accumulator, ProducerBatch
from weir.errors import ClosedError, NotLeaderError, UnavailableError, WeirError, WeirTimeoutError
from weir.types import Acks
from weir.v1 import broker_pb2

__all__ = ["Sender"]

_log = logging.getLogger("weir.producer")


@dataclass(eq=False)
class _Stream:
    """One Produce call and the batches it has not answered yet."""

    call: ProduceCall
    address: str
    inflight: dict[int, tuple[ProducerBatch, float]] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None
    broken: bool = False
    # Why the sender leaves this node (an answer said UNAVAILABLE or
    # NOT_LEADER): nothing more is written on it, and once it has no
    # unanswered requests it closes and the sender moves.
    leaving: WeirError | None = None


class Sender:
    """Moves batches from the accumulator to the broker and settles them."""

    def __init__(
        self,
        *,
        connection: Connection,
        accumulator: Accumulator,
        acks: Acks,
        retries: int,
        backoff: Backoff,
        request_timeout_s: float,
        max_inflight_requests: int,
    ) -> None:
        if max_inflight_requests < 1:
            raise ValueError("max_inflight_requests must be at least 1")
        self._conn = connection
        self._acc = accumulator
        self._acks = acks
        self._retries = retries
        self._backoff = backoff
        self._request_timeout_s = request_timeout_s
        self._inflight_max = max_inflight_requests
        self._stream: _Stream | None = None
        self._acks_proto = int(acks.to_proto())
        self._topic_fields: dict[str, bytes] = {}
        self._next_request_id = 1
        self._reopen_at_s = 0.0
        self._stopping = False
        # Set when the reader task hits a bug; the loop re-raises it so the
        # usual "sender died" path fails every waiter.
        self._fatal: BaseException | None = None

    def stop(self) -> None:
        """Finish once everything queued is settled (the accumulator is closed)."""
        self._stopping = True
        self._acc.wakeup.set()

    async def run(self) -> None:
        """The sender loop. On any unexpected exception every waiter fails."""
        try:
            await self._loop()
        except asyncio.CancelledError:
            self._acc.close(ClosedError("the producer was closed before its records were sent"))
            raise
        except BaseException as exc:
            _log.exception("weir producer sender died")
            self._acc.close(ClosedError(f"the producer's sender died: {exc!r}"))
            raise
        finally:
            await self._close_stream()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not (self._stopping and not self._acc.has_unsettled):
            self._acc.wakeup.clear()
            now = loop.time()
            self._check_timeouts(now)
            if self._acc.has_queued() and now >= self._reopen_at_s:
                await self._send_ready(now)
            await self._sleep_until_next(loop.time())

    async def _send_ready(self, now: float) -> None:
        stream = self._stream
        if stream is not None and stream.leaving is not None:
            if not stream.inflight:
                self._leave(stream, stream.leaving)
            return  # until then, only answers on the old stream can help
        inflight = len(stream.inflight) if stream is not None else 0
        slots = self._inflight_max - inflight
        if slots <= 0:
            return
        batches = self._acc.drain(now, slots)
        if not batches:
            return
        if stream is None:
            rounds_failed = self._conn.nodes.rounds_failed
            stream = await self._open_stream()
            if stream is None:
                if self._conn.nodes.rounds_failed == rounds_failed:
                    # Nothing was sent and another node is left to try: the
                    # batches wait for it as they are.
                    self._acc.requeue(batches, self._reopen_at_s)
                    return
                # No node of the list could be reached: that costs each
                # waiting batch an attempt, so `retries` bounds how long a
                # producer with every node down holds its records.
                for batch in batches:
                    batch.attempts += 1
                error = UnavailableError("no node could be reached")
                self._retry_or_fail(batches, error, at_s=self._reopen_at_s)
                return
        for i, batch in enumerate(batches):
            if stream.broken:
                self._retry_or_fail(batches[i:], UnavailableError("produce stream broke"))
                return
            await self._write(stream, batch)

    async def _write(self, stream: _Stream, batch: ProducerBatch) -> None:
        loop = asyncio.get_running_loop()
        request_id = self._next_request_id
        self._next_request_id += 1
        batch.attempts += 1
        topic = self._topic_fields.get(batch.topic)
        if topic is None:
            topic = self._topic_fields[batch.topic] = topic_field(batch.topic)
        # The batch is already in wire form; only the request's few fields
        # are added around it.
        request = produce_request(
            request_id, topic, batch.partition, batch.payload, self._acks_proto
        )
        if self._acks is not Acks.NONE:
            stream.inflight[request_id] = (batch, loop.time())
        try:
            # A broker that stopped reading blocks the write once HTTP/2's
            # window is full; the request deadline bounds that wait too.
            async with asyncio.timeout(self._request_timeout_s):
                await stream.call.write(request)
        except (grpc.RpcError, asyncio.InvalidStateError, TimeoutError) as exc:
            error: WeirError
            if isinstance(exc, grpc.RpcError):
                error = connection_lost(from_rpc_error(exc))
            elif isinstance(exc, TimeoutError):
                error = WeirTimeoutError("produce stream write timed out", retriable=True)
            else:
                error = UnavailableError("produce stream ended")
            if self._acks is Acks.NONE:
                self._retry_or_fail([batch], error)
            self._break(stream, error)
            return
        if self._acks is Acks.NONE:
            self._acc.complete(batch, [-1] * batch.count, batch.partition)

    async def _open_stream(self) -> _Stream | None:
        """A new stream to the node in use; None (and a move) if it cannot be reached."""
        address = self._conn.address
        if not await self._conn.connect():
            delay = self._conn.leave(address, UnavailableError(f"cannot connect to {address}"))
            self._reopen_at_s = asyncio.get_running_loop().time() + delay
            return None
        stream = _Stream(call=produce_call(self._conn.channel(address)), address=address)
        stream.reader = asyncio.create_task(self._read(stream), name="weir-producer-reader")
        self._stream = stream
        return stream

    async def _read(self, stream: _Stream) -> None:
        """Match responses to batches until the stream ends."""
        error: WeirError
        try:
            while True:
                response = await stream.call.read()
                if response is grpc.aio.EOF:
                    error = UnavailableError("the broker ended the produce stream")
                    break
                assert isinstance(response, broker_pb2.ProduceResponse)
                self._on_response(stream, response)
                if stream.leaving is not None and not stream.inflight:
                    # Every answer is in: move now, not at the next send.
                    self._leave(stream, stream.leaving)
                    return
        except grpc.RpcError as exc:
            error = connection_lost(from_rpc_error(exc))
            if exc.code() is grpc.StatusCode.CANCELLED and stream.broken:
                return
        except Exception as exc:
            self._fatal = exc
            self._acc.wakeup.set()
            return
        self._break(stream, error)

    def _on_response(self, stream: _Stream, response: broker_pb2.ProduceResponse) -> None:
        entry = stream.inflight.pop(response.request_id, None)
        self._acc.wakeup.set()
        if entry is None:
            # acks=none failures and answers to batches already given up on.
            if response.HasField("error"):
                _log.warning(
                    "produce request %d failed: %s",
                    response.request_id,
                    from_error_proto(response.error),
                )
            return
        batch, _ = entry
        if response.HasField("error"):
            error = from_error_proto(response.error)
            if moves_node(error):
                # Leave this node once its other answers are in. A named
                # leader is tried at once; anything else after the backoff.
                if stream.leaving is None:
                    stream.leaving = error
                named = isinstance(error, NotLeaderError) and error.leader_address
                self._retry_or_fail([batch], error, at_s=self._now() if named else None)
            else:
                self._conn.succeeded(stream.address)
                self._retry_or_fail([batch], error)
            return
        self._conn.succeeded(stream.address)
        appends = response.appends
        if len(appends) == 1:
            # The SDK names the partition, so this is the usual answer: all
            # records, in order, from base_offset on.
            append = appends[0]
            if append.record_count == batch.count and not append.record_indexes:
                self._acc.complete(
                    batch,
                    range(append.base_offset, append.base_offset + batch.count),
                    append.partition,
                )
                return
        offsets = [-1] * batch.count
        partition = batch.partition
        for append in appends:
            partition = append.partition
            indexes = append.record_indexes or range(append.record_count)
            for j, index in enumerate(indexes):
                if index < len(offsets):
                    offsets[index] = append.base_offset + j
        self._acc.complete(batch, offsets, partition)

    def _retry_or_fail(
        self, batches: list[ProducerBatch], error: WeirError, at_s: float | None = None
    ) -> None:
        """Requeue the batches `error` allows to retry (at `at_s`, or after a backoff); fail the rest."""
        retry = [b for b in batches if error.retriable and b.attempts <= self._retries]
        for batch in batches:
            if batch not in retry:
                self._acc.fail(batch, error)
        if retry:
            if at_s is None:
                attempt = max(1, *(b.attempts for b in retry))
                at_s = self._now() + self._backoff.delay_s(attempt)
            _log.info(
                "retrying %d batch(es) in %.3fs after %s", len(retry), at_s - self._now(), error
            )
            self._acc.requeue(retry, at_s)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _leave(self, stream: _Stream, error: WeirError) -> None:
        """Close `stream` and move to another node (the next one, or a named leader)."""
        if stream.broken:
            return
        stream.broken = True
        if self._stream is stream:
            self._stream = None
        delay = self._conn.leave(stream.address, stream.leaving or error)
        self._reopen_at_s = max(self._reopen_at_s, self._now() + delay)
        stream.call.cancel()
        self._acc.wakeup.set()

    def _break(self, stream: _Stream, error: WeirError) -> None:
        """Give up on `stream`: its unanswered batches go back for retry on the next node.

        Their outcome is unknown, so they are sent again as they are, in
        request order (which keeps per-partition order), as soon as the
        next stream opens.
        """
        if stream.broken:
            return
        error = connection_lost(error)
        batches = [batch for batch, _ in stream.inflight.values()]
        stream.inflight.clear()
        self._leave(stream, error)
        if batches:
            self._retry_or_fail(batches, error, at_s=self._reopen_at_s)

    def _check_timeouts(self, now: float) -> None:
        stream = self._stream
        if stream is None or not stream.inflight:
            return
        _, sent_at = next(iter(stream.inflight.values()))
        if now - sent_at >= self._request_timeout_s:
            self._break(
                stream,
                WeirTimeoutError(
                    f"no produce response within {self._request_timeout_s:.3f}s",
                    retriable=True,
                ),
            )

    async def _sleep_until_next(self, now: float) -> None:
        """Wait for a wakeup, or until the next linger, retry or request deadline."""
        if self._fatal is not None:
            raise self._fatal
        deadlines: list[float] = []
        stream = self._stream
        # With every in-flight slot taken, or the node being left, only an
        # answer (a wakeup) can help.
        slots_full = stream is not None and (
            len(stream.inflight) >= self._inflight_max or stream.leaving is not None
        )
        queued_at = self._acc.next_ready_s()
        if queued_at is not None and not slots_full:
            deadlines.append(max(queued_at, self._reopen_at_s))
        if stream is not None and stream.inflight:
            _, sent_at = next(iter(stream.inflight.values()))
            deadlines.append(sent_at + self._request_timeout_s)
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        if timeout == 0.0:
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._acc.wakeup.wait()

    async def _close_stream(self) -> None:
        stream = self._stream
        self._stream = None
        if stream is None:
            return
        if not stream.broken and not stream.inflight:
            with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError):
                await stream.call.done_writing()
            if stream.reader is not None:
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    async with asyncio.timeout(self._request_timeout_s):
                        await asyncio.shield(stream.reader)
        stream.broken = True
        stream.call.cancel()
        if stream.reader is not None and not stream.reader.done():
            stream.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stream.reader
