"""The producer's sender: the one task that decides what goes where, and settles it.

Each turn it drains ready batches from the accumulator and sends each to its
partition's leader, as the metadata cache (weir/aio/metadata.py) knows it,
on one `BrokerService.Produce` stream per node. A batch whose leader is not
known goes to the node the producer's `Connection` uses now (the *default
node*, which forwards it to the leader). Every request gets a fresh
`request_id`; a reader task per stream matches answers back by that id, in
whatever order they come.

Limits: at most `max_inflight_requests` unanswered requests per node, and,
for an idempotent producer, at most `PARTITION_INFLIGHT_MAX` per partition
(the broker remembers a producer's last five batches per partition, so every
retry is among them).

Order within a partition: a batch goes out only behind the partition's
batches in flight, on the same stream (one stream keeps the order of a
partition's requests), and never ahead of an earlier batch of the partition.
A retried batch goes back into its queue in creation order, so once a batch
fails, the partition's later batches wait for it, and the broker's refusal
of a later sequence while an earlier one is missing (OUT_OF_ORDER_SEQUENCE)
just sends the later batch again after it (Kafka's rule). An idempotent
batch keeps its sequence number on every retry, so a retry of a batch that
was written is answered with the original offsets.

Failures, each confined to what it concerns:

- NOT_LEADER naming the leader updates the cache and the batch goes there at
  once; NOT_LEADER without one ("no leader yet"), PROPOSAL_DROPPED,
  NOT_WRITTEN and OUTCOME_UNKNOWN retry the batch after a backoff and
  refresh the topic's metadata;
- any other UNAVAILABLE answer (SHUTTING_DOWN, ...) means the node is going
  away: nothing more is written on its stream, which closes once its
  requests are answered, and its leaderships are forgotten;
- a request unanswered after `request_timeout_ms` is given up and retried on
  its own while the stream goes on answering others; only a stream silent
  since that request was written counts as broken;
- a broken stream (the call ended, a write failed, or it went silent) sends
  every unanswered batch of it back for retry, in order;
- a node that cannot be connected to costs no attempt (nothing was sent):
  its batches go to the default node, and a full round of the bootstrap
  list without a connect costs each waiting batch one attempt;
- an idempotent producer's UNKNOWN_PRODUCER_ID or OUT_OF_ORDER_SEQUENCE for
  a partition with nothing earlier pending (the broker forgot the producer,
  or a batch failed for good and left a gap) numbers the partition's
  waiting batches again from the broker's next sequence (0 for a forgotten
  producer) and resends;
  PRODUCER_FENCED fails every record and the producer refuses new ones;
- if the sender itself dies, every waiter fails with `ClosedError` and the
  producer refuses new records: no future is ever left hanging.

Every attempt that ends is reported to `on_attempt`, if set, as a
`ProduceAttempt` (acknowledged, failed, or of unknown outcome).

With acks="none" the broker only answers failures, so a batch is settled
(offset -1) as soon as it is written to the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import grpc.aio

from weir import _failover
from weir._conn import ProduceCall, from_error_proto, from_rpc_error, produce_call
from weir._failover import Connection, connection_lost
from weir._retry import Backoff
from weir._wire import COMBINE_ANSWERS_FIELD, produce_request, topic_field, varint
from weir.aio.accumulator import Accumulator, ProducerBatch
from weir.aio.metadata import MetadataCache
from weir.errors import (
    ClosedError,
    NotLeaderError,
    OutOfOrderSequenceError,
    ProducerFencedError,
    UnavailableError,
    UnknownProducerIdError,
    WeirError,
    WeirTimeoutError,
)
from weir.types import Acks
from weir.v1 import broker_pb2

__all__ = ["PARTITION_INFLIGHT_MAX", "AttemptOutcome", "ProduceAttempt", "Sender"]

_log = logging.getLogger("weir.producer")

# Unanswered requests per partition for an idempotent producer: the batches
# a partition remembers per producer (docs/sdk.md, "Idempotent producing").
PARTITION_INFLIGHT_MAX = 5
# Per-request refusals about one partition (an election, a lost proposal):
# retry the batch after a backoff, refresh the leader, keep the node.
_PARTITION_REASONS = frozenset({"PROPOSAL_DROPPED", "NOT_WRITTEN", "OUTCOME_UNKNOWN"})


class AttemptOutcome(enum.Enum):
    """How one attempt to send a batch ended, as far as the producer knows."""

    ACKNOWLEDGED = "acknowledged"
    # The broker refused it: nothing of it was written.
    FAILED = "failed"
    # It may or may not have been written (a broken stream, a timeout,
    # OUTCOME_UNKNOWN).
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ProduceAttempt:
    """One attempt of one batch, reported to `Producer(on_attempt=...)` when it ends.

    `batch_serial` tells a batch's attempts apart from others' (record
    futures name their batch: `RecordFuture.batch.serial`); `first_sequence`
    is -1 without idempotence.
    """

    topic: str
    partition: int
    batch_serial: int
    record_count: int
    first_sequence: int
    outcome: AttemptOutcome
    base_offset: int | None = None
    error: WeirError | None = None


AttemptHook = Callable[[ProduceAttempt], None]


@dataclass(eq=False, slots=True)
class _Inflight:
    request_id: int
    batch: ProducerBatch
    stream: _Stream
    sent_s: float


@dataclass(eq=False)
class _Stream:
    """One Produce call to one node, and the requests it has not answered yet."""

    address: str
    # Requests to write, in order; bounded by the in-flight limit.
    outbox: asyncio.Queue[tuple[bytes, ProducerBatch]]
    call: ProduceCall | None = None
    inflight: dict[int, _Inflight] = field(default_factory=dict)
    writer: asyncio.Task[None] | None = None
    reader: asyncio.Task[None] | None = None
    broken: bool = False
    # Why the sender leaves this node (an answer said it is going away):
    # nothing more is written on it, and once it has no unanswered requests
    # it closes.
    leaving: WeirError | None = None
    # Loop time of the latest answer: a request that times out on a stream
    # that answered nothing since it was written means the stream is dead.
    answered_s: float = 0.0


class Sender:
    """Moves batches from the accumulator to the partition leaders and settles them."""

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
        metadata: MetadataCache | None = None,
        idempotent: bool = False,
        producer_identity: Callable[[], Awaitable[tuple[int, int]]] | None = None,
        on_attempt: AttemptHook | None = None,
    ) -> None:
        if max_inflight_requests < 1:
            raise ValueError("max_inflight_requests must be at least 1")
        assert not idempotent or acks is not Acks.NONE, "idempotence needs answers"
        self._conn = connection
        self._acc = accumulator
        self._acks = acks
        self._retries = retries
        self._backoff = backoff
        self._request_timeout_s = request_timeout_s
        self._inflight_max = max_inflight_requests
        self._metadata = metadata
        self._idempotent = idempotent
        self._identity = producer_identity
        self._on_attempt = on_attempt
        self._streams: dict[str, _Stream] = {}
        # Loop time before which an address is not used (it failed).
        self._down_until: dict[str, float] = {}
        # Each partition's requests in flight, in the order they were written.
        self._partitions: dict[tuple[str, int], list[_Inflight]] = {}
        # Partitions whose producer state the broker forgot: their batches
        # are numbered again from 0 once none of them is in flight.
        self._reset_pending: dict[tuple[str, int], int] = {}
        self._acks_proto = int(acks.to_proto())
        self._topic_fields: dict[str, bytes] = {}
        self._producer_fields = b""
        self._next_request_id = 1
        self._stopping = False
        # Set when a reader or writer task hits a bug; the loop re-raises it
        # so the usual "sender died" path fails every waiter.
        self._fatal: BaseException | None = None
        # Filled by `_take` during a drain: address -> batches granted a slot.
        self._granted: dict[str, int] = {}
        self._drained_at_s = 0.0

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
            await self._close_streams()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not (self._stopping and not self._acc.has_unsettled):
            self._acc.wakeup.clear()
            now = loop.time()
            self._check_timeouts(now)
            self._close_left_streams()
            if self._acc.has_queued():
                if self._identity is not None:
                    # InitProducer, before the first batch goes out (and not
                    # before: a producer that never sends needs no id).
                    # Batches wait in their queues meanwhile.
                    identity, self._identity = self._identity, None
                    producer_id, epoch = await identity()
                    self._producer_fields = producer_fields(producer_id, epoch)
                    now = loop.time()
                self._send_ready(now)
            await self._sleep_until_next(loop.time())

    # -- sending --------------------------------------------------------------

    def _send_ready(self, now: float) -> None:
        self._granted = {}
        self._drained_at_s = now
        batches = self._acc.drain(now, 1 << 30, self._take)
        for batch in batches:
            self._write(self._route(batch, now), batch, now)

    def _route(self, batch: ProducerBatch, now: float) -> str | None:
        """The address a batch goes to now: its leader's, else the default node's."""
        if self._metadata is not None:
            leader = self._metadata.leader(batch.topic, batch.partition)
            if (
                leader is not None
                and leader.address
                and self._down_until.get(leader.address, 0.0) <= now
            ):
                return leader.address
        default = self._conn.address
        if self._down_until.get(default, 0.0) > now:
            return None
        return default

    def _take(self, batch: ProducerBatch) -> bool:
        """Whether `batch`, the ready head of its queue, may be sent now (and reserve its slot)."""
        now = self._drained_at_s
        key = (batch.topic, batch.partition)
        inflight = self._partitions.get(key)
        if key in self._reset_pending:
            if inflight:
                return False
            self._acc.resequence(batch.topic, batch.partition, self._reset_pending.pop(key))
        address = self._route(batch, now)
        if address is None:
            return False
        if inflight:
            if self._idempotent and len(inflight) >= PARTITION_INFLIGHT_MAX:
                return False
            last = inflight[-1]
            if last.batch.serial > batch.serial:
                return False  # a retry never overtakes a later batch in flight
            if any(e.stream.address != address or e.stream.broken for e in inflight):
                return False  # the old node's answers come first
        stream = self._streams.get(address)
        if stream is not None and (stream.leaving is not None or stream.broken):
            return False
        # acks="none" keeps no requests in flight: its outbox is what waits.
        used = self._granted.get(address, 0)
        if stream is not None:
            used += max(len(stream.inflight), stream.outbox.qsize())
        if used >= self._inflight_max:
            return False
        self._granted[address] = self._granted.get(address, 0) + 1
        return True

    def _write(self, address: str | None, batch: ProducerBatch, now: float) -> None:
        assert address is not None, "_take granted a routed batch"
        stream = self._streams.get(address)
        if stream is None:
            stream = self._open_stream(address)
        request_id = self._next_request_id
        self._next_request_id += 1
        batch.attempts += 1
        topic = self._topic_fields.get(batch.topic)
        if topic is None:
            topic = self._topic_fields[batch.topic] = topic_field(batch.topic)
        # The batch is already in wire form; only the request's few fields
        # are added around it (the producer's fields 6-8 come last).
        request = produce_request(
            request_id, topic, batch.partition, batch.payload, self._acks_proto
        )
        if self._idempotent:
            request += self._producer_fields + sequence_field(batch.first_sequence)
        request += COMBINE_ANSWERS_FIELD
        if self._acks is not Acks.NONE:
            entry = _Inflight(request_id, batch, stream, now)
            stream.inflight[request_id] = entry
            self._partitions.setdefault((batch.topic, batch.partition), []).append(entry)
        stream.outbox.put_nowait((request, batch))

    def _open_stream(self, address: str) -> _Stream:
        # Room for every request the in-flight limit allows, and acks=none's.
        stream = _Stream(address, asyncio.Queue(maxsize=self._inflight_max + 1))
        stream.answered_s = asyncio.get_running_loop().time()
        stream.writer = asyncio.create_task(self._run_writer(stream), name="weir-producer-writer")
        self._streams[address] = stream
        return stream

    async def _run_writer(self, stream: _Stream) -> None:
        """Connect, then write the stream's requests in order until it ends."""
        try:
            channel = self._conn.channel(stream.address)
            if not await _failover._wait_ready(channel, self._conn.connect_timeout_s):
                self._connect_failed(stream)
                return
            if stream.broken:
                return
            call = stream.call = produce_call(channel)
            stream.reader = asyncio.create_task(self._read(stream), name="weir-producer-reader")
            while not stream.broken:
                request, batch = await stream.outbox.get()
                try:
                    # A broker that stopped reading blocks the write once
                    # HTTP/2's window is full; the request deadline bounds it.
                    async with asyncio.timeout(self._request_timeout_s):
                        await call.write(request)
                except (grpc.RpcError, asyncio.InvalidStateError, TimeoutError) as exc:
                    error: WeirError
                    if isinstance(exc, grpc.RpcError):
                        error = connection_lost(from_rpc_error(exc))
                    elif isinstance(exc, TimeoutError):
                        error = WeirTimeoutError("produce stream write timed out", retriable=True)
                    else:
                        error = UnavailableError("produce stream ended")
                    if self._acks is Acks.NONE:
                        self._attempt_failed([batch], error, outcome=AttemptOutcome.UNKNOWN)
                    self._break(stream, error)
                    return
                if self._acks is Acks.NONE:
                    self._acc.complete(batch, [-1] * batch.count, batch.partition)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fatal = exc
            self._acc.wakeup.set()

    def _connect_failed(self, stream: _Stream) -> None:
        """Nothing was sent on `stream`: its batches wait for another node, without an attempt."""
        if stream.broken:
            return
        stream.broken = True
        if self._streams.get(stream.address) is stream:
            del self._streams[stream.address]
        batches = self._unlink(stream)
        while not stream.outbox.empty():
            _, batch = stream.outbox.get_nowait()
            if batch not in batches:
                batches.append(batch)
        error = UnavailableError(f"cannot connect to {stream.address}")
        rounds_failed = self._conn.nodes.rounds_failed
        at_s = self._node_failed(stream.address, error)
        if self._conn.nodes.rounds_failed == rounds_failed:
            for batch in batches:
                batch.attempts -= 1
            self._acc.requeue(batches, at_s)
        else:
            # No node of the list could be reached: that costs each waiting
            # batch its attempt, so `retries` bounds how long a producer with
            # every node down holds its records.
            self._retry_or_fail(batches, UnavailableError("no node could be reached"), at_s)
        self._acc.wakeup.set()

    # -- answers --------------------------------------------------------------

    async def _read(self, stream: _Stream) -> None:
        """Match responses to batches until the stream ends."""
        assert stream.call is not None
        error: WeirError
        try:
            while True:
                response = await stream.call.read()
                if response is grpc.aio.EOF:
                    error = UnavailableError("the broker ended the produce stream")
                    break
                assert isinstance(response, broker_pb2.ProduceResponse)
                stream.answered_s = asyncio.get_running_loop().time()
                self._on_response(stream, response)
                # Answers to further requests, combined into this response
                # (the SDK sets combine_answers on every request).
                for more in response.more:
                    self._on_response(stream, more)
                if stream.leaving is not None and not stream.inflight:
                    self._leave(stream)
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
            # acks=none failures and answers to requests already given up on.
            if response.HasField("error"):
                _log.warning(
                    "produce request %d failed: %s",
                    response.request_id,
                    from_error_proto(response.error),
                )
            return
        self._unlink_one(entry)
        batch = entry.batch
        if response.HasField("error"):
            self._on_refusal(stream, batch, from_error_proto(response.error))
            return
        if stream.address == self._conn.address:
            self._conn.succeeded(stream.address)
        appends = response.appends
        if len(appends) == 1:
            # The SDK names the partition, so this is the usual answer: all
            # records, in order, from base_offset on.
            append = appends[0]
            if append.record_count == batch.count and not append.record_indexes:
                self._report(batch, AttemptOutcome.ACKNOWLEDGED, base_offset=append.base_offset)
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
        self._report(batch, AttemptOutcome.ACKNOWLEDGED, base_offset=offsets[0])
        self._acc.complete(batch, offsets, partition)

    def _on_refusal(self, stream: _Stream, batch: ProducerBatch, error: WeirError) -> None:
        """A per-request error: what it says about the batch, its partition and the node."""
        now = self._now()
        outcome = (
            AttemptOutcome.UNKNOWN if error.reason == "OUTCOME_UNKNOWN" else AttemptOutcome.FAILED
        )
        if isinstance(error, NotLeaderError):
            if error.leader_address and self._metadata is not None:
                self._metadata.set_leader(
                    batch.topic, batch.partition, error.leader_id or 0, error.leader_address
                )
                # At once to a leader this sender can use; a hint that leads
                # back here, or to a node it just saw fail, waits a backoff
                # (else nodes pointing at each other burn every retry at once).
                usable = (
                    error.leader_address != stream.address
                    and self._down_until.get(error.leader_address, 0.0) <= now
                )
                self._attempt_failed([batch], error, now if usable else None, outcome=outcome)
                return
            if error.leader_address and stream.address == self._conn.address:
                # Without a metadata cache the default node follows the leader.
                self._conn.leave(stream.address, error)
                self._attempt_failed([batch], error, now, outcome=outcome)
                return
            if self._metadata is not None:
                self._metadata.forget(batch.topic, batch.partition)
            self._attempt_failed([batch], error, outcome=outcome)
            return
        if isinstance(error, OutOfOrderSequenceError | UnknownProducerIdError):
            key = (batch.topic, batch.partition)
            if self._earlier_pending(batch):
                # An earlier batch of the partition is being retried: this one
                # goes again after it. Its attempt is the earlier one's doing.
                batch.attempts -= 1
                self._report(batch, AttemptOutcome.FAILED, error=error)
                self._acc.requeue([batch], now)
                return
            expected = error.metadata.get("expected_sequence", "")
            if isinstance(error, UnknownProducerIdError) or expected.isdigit():
                # Nothing earlier of the partition is pending, so the broker's
                # next sequence is the truth: the partition forgot this
                # producer (start again at 0), or an earlier batch failed for
                # good and left a gap (or was written after all). Number the
                # waiting batches from there once none is in flight.
                start = 0 if isinstance(error, UnknownProducerIdError) else int(expected)
                _log.info("%s: numbering %s/%d from %d", error, key[0], key[1], start)
                self._reset_pending[key] = start
                self._attempt_failed([batch], _retriable(error), now, outcome=outcome)
                return
            self._attempt_failed([batch], error, outcome=outcome)
            return
        if isinstance(error, ProducerFencedError):
            self._report(batch, outcome, error=error)
            self._acc.fail(batch, error)
            # Final: nothing more may be written by this producer.
            self._acc.close(error, final=True)
            return
        if error.code is grpc.StatusCode.UNAVAILABLE:
            if error.reason in _PARTITION_REASONS:
                if self._metadata is not None:
                    self._metadata.request_refresh(batch.topic)
            elif stream.leaving is None:
                # The node is going away (SHUTTING_DOWN, ...): leave it once
                # its other answers are in.
                stream.leaving = error
                if self._metadata is not None:
                    self._metadata.forget_address(stream.address)
            self._attempt_failed([batch], error, outcome=outcome)
            return
        if stream.address == self._conn.address:
            self._conn.succeeded(stream.address)
        self._attempt_failed([batch], error, outcome=outcome)

    def _earlier_pending(self, batch: ProducerBatch) -> bool:
        """Whether an earlier batch of the same partition is not settled yet."""
        key = (batch.topic, batch.partition)
        if any(e.batch.serial < batch.serial for e in self._partitions.get(key, ())):
            return True
        return any(
            b.serial < batch.serial and not b.settled
            for b in self._acc.queued(batch.topic, batch.partition)
        )

    def _attempt_failed(
        self,
        batches: list[ProducerBatch],
        error: WeirError,
        at_s: float | None = None,
        *,
        outcome: AttemptOutcome,
    ) -> None:
        """Report the batches' attempt as ended with `outcome`, then retry or fail them."""
        for batch in batches:
            self._report(batch, outcome, error=error)
        self._retry_or_fail(batches, error, at_s)

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

    def _report(
        self,
        batch: ProducerBatch,
        outcome: AttemptOutcome,
        *,
        base_offset: int | None = None,
        error: WeirError | None = None,
    ) -> None:
        if self._on_attempt is None:
            return
        attempt = ProduceAttempt(
            batch.topic,
            batch.partition,
            batch.serial,
            batch.count,
            batch.first_sequence,
            outcome,
            base_offset,
            error,
        )
        try:
            self._on_attempt(attempt)
        except Exception:
            _log.exception("on_attempt hook failed")

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    # -- streams and nodes ----------------------------------------------------

    def _unlink_one(self, entry: _Inflight) -> None:
        key = (entry.batch.topic, entry.batch.partition)
        entries = self._partitions.get(key)
        if entries is not None:
            with contextlib.suppress(ValueError):
                entries.remove(entry)
            if not entries:
                del self._partitions[key]

    def _unlink(self, stream: _Stream) -> list[ProducerBatch]:
        """Forget every unanswered request of `stream`; their batches, in request order."""
        entries = list(stream.inflight.values())
        stream.inflight.clear()
        for entry in entries:
            self._unlink_one(entry)
        return [entry.batch for entry in entries]

    def _node_failed(self, address: str, error: WeirError) -> float:
        """The node at `address` failed: stop using it for a while; returns when to retry."""
        now = self._now()
        if self._metadata is not None:
            self._metadata.forget_address(address)
        if address == self._conn.address:
            delay = self._conn.leave(address, error)
            at_s = now + delay
            current = self._conn.address
            self._down_until[current] = max(self._down_until.get(current, 0.0), at_s)
            if current != address:
                self._down_until[address] = now + self._backoff.delay_s(1)
            return at_s
        # A leader's address: its partitions go to the default node meanwhile.
        self._down_until[address] = now + self._backoff.delay_s(1)
        return now

    def _close_left_streams(self) -> None:
        for stream in list(self._streams.values()):
            if stream.leaving is not None and not stream.inflight:
                self._leave(stream)

    def _leave(self, stream: _Stream) -> None:
        """Close a stream whose node is going away, once it has nothing unanswered."""
        if stream.broken:
            return
        stream.broken = True
        if self._streams.get(stream.address) is stream:
            del self._streams[stream.address]
        self._node_failed(stream.address, stream.leaving or UnavailableError("left"))
        self._cancel(stream)
        self._acc.wakeup.set()

    def _break(self, stream: _Stream, error: WeirError) -> None:
        """Give up on `stream`: its unanswered batches go back for retry.

        Their outcome is unknown, so they are sent again as they are, in
        request order (an idempotent producer's retry is answered with the
        original offsets if it was written; otherwise it may be stored twice).
        """
        if stream.broken:
            return
        stream.broken = True
        if self._streams.get(stream.address) is stream:
            del self._streams[stream.address]
        error = connection_lost(error)
        batches = self._unlink(stream)
        at_s = self._node_failed(stream.address, error)
        self._cancel(stream)
        if batches:
            self._attempt_failed(batches, error, at_s, outcome=AttemptOutcome.UNKNOWN)
        self._acc.wakeup.set()

    def _cancel(self, stream: _Stream) -> None:
        if stream.call is not None:
            stream.call.cancel()
        if stream.writer is not None and stream.writer is not asyncio.current_task():
            stream.writer.cancel()

    def _check_timeouts(self, now: float) -> None:
        for stream in list(self._streams.values()):
            expired = [
                e for e in stream.inflight.values() if now - e.sent_s >= self._request_timeout_s
            ]
            if not expired:
                continue
            error = WeirTimeoutError(
                f"no produce response within {self._request_timeout_s:.3f}s", retriable=True
            )
            if stream.answered_s < expired[0].sent_s:
                self._break(stream, error)  # silent since: the stream is dead
                continue
            # The node answers other requests: only these wait too long (their
            # partition is in an election). Retry them alone.
            for entry in expired:
                del stream.inflight[entry.request_id]
                self._unlink_one(entry)
            self._attempt_failed([e.batch for e in expired], error, outcome=AttemptOutcome.UNKNOWN)

    async def _sleep_until_next(self, now: float) -> None:
        """Wait for a wakeup, or until the next linger, retry, reconnect or request deadline."""
        if self._fatal is not None:
            raise self._fatal
        deadlines: list[float] = []
        queued_at = self._acc.next_ready_s()
        # A head that was ready at the last drain and stayed queued waits for
        # a slot or an answer, which wake the sender.
        if queued_at is not None and queued_at > self._drained_at_s:
            deadlines.append(queued_at)
        if queued_at is not None:
            deadlines += [t for t in self._down_until.values() if t > now]
        for stream in self._streams.values():
            if stream.inflight:
                oldest = next(iter(stream.inflight.values()))
                deadlines.append(oldest.sent_s + self._request_timeout_s)
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        if timeout == 0.0:
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._acc.wakeup.wait()

    async def _close_streams(self) -> None:
        streams = list(self._streams.values())
        self._streams.clear()
        for stream in streams:
            if not stream.broken and not stream.inflight and stream.call is not None:
                with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError):
                    await stream.call.done_writing()
                if stream.reader is not None:
                    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                        async with asyncio.timeout(self._request_timeout_s):
                            await asyncio.shield(stream.reader)
            stream.broken = True
            if stream.call is not None:
                stream.call.cancel()
            for task in (stream.writer, stream.reader):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task


def _retriable(error: WeirError) -> WeirError:
    error.retriable = True
    return error


def producer_fields(producer_id: int, epoch: int) -> bytes:
    """`ProduceRequest.producer_id` (field 6) and `producer_epoch` (field 7), encoded."""
    out = b"\x30" + varint(producer_id)
    if epoch:
        out += b"\x38" + varint(epoch)
    return out


def sequence_field(first_sequence: int) -> bytes:
    """`ProduceRequest.first_sequence` (field 8), encoded (absent when 0, as protobuf does)."""
    assert first_sequence >= 0, "an idempotent batch is numbered when sealed"
    return b"\x40" + varint(first_sequence) if first_sequence else b""
