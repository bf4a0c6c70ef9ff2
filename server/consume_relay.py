"""Stream mode relays: a partition a member's node has no replica of, read through one that has.

With more nodes than a topic's replication factor, the coordinator may
assign a stream-mode member a partition placed on other nodes only
(cluster_membership.RelayingSession opens the relay). `RelayedLog` stands
in for that partition's log in the member's stream; it reads the
partition through an assign-mode Consume stream to a node with a replica,
marked as a relay (queue_relay.RELAY_METADATA) so that node never relays
it again. Queue mode's relays to a partition's leader are queue_relay.py.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Callable
from typing import Any

import grpc

from weir.cluster.storage import OffsetOutOfRangeError, StoredRun
from weir.server.consume_cursor import Partition
from weir.server.errors import BrokerError, replica_not_available
from weir.server.queue_records import charge_of
from weir.server.queue_relay import CONSUME_METHOD, RELAY_METADATA, REOPEN_CODES, broker_error
from weir.v1 import broker_pb2

# What a relayed partition may hold here, read ahead of its stream: the
# credit its relay grants (at least the topic's record_bytes_max, so the
# largest record always fits).
STREAM_RELAY_WINDOW_BYTES = 1024 * 1024
STREAM_RELAY_WINDOW_MESSAGES = 5000
# Rounds over the partition's replicas before a relay gives up (the member's
# stream then ends with the last error, which is retriable).
STREAM_RELAY_ROUNDS_MAX = 3
STREAM_RELAY_BACKOFF_S = 0.2
# Room in one relayed response beyond the largest record it may carry.
STREAM_RELAY_MESSAGE_SLACK_BYTES = 4 * 1024 * 1024
_RELAY_RETRY_CODES = (*REOPEN_CODES, grpc.StatusCode.ABORTED)
# Channels of closed relays, closed in the background (kept so they are not collected first).
_closing: set[asyncio.Task[None]] = set()


@dataclasses.dataclass(frozen=True, slots=True)
class _Run:
    """One relayed batch: records `base` .. `base + count - 1`, as a stored run's payload."""

    base: int
    count: int
    payload: bytes
    charge: int

    @property
    def end(self) -> int:
        return self.base + self.count


class RelayedLog:
    """A partition this node has no replica of, read for one stream-mode member elsewhere.

    It stands in for the partition's `PartitionLog` in the member's stream
    (consume_group.Member.starts): its relay is an assign-mode Consume
    stream to a node that holds a replica, from the offset the member
    starts at, and what arrives is kept as runs that the stream's cursor
    reads like stored batches (a `ConsumedBatch`'s records are encoded as
    a stored run's payload). The relay grants credit for at most
    `STREAM_RELAY_WINDOW_BYTES` (or the topic's record_bytes_max, if
    larger) and `STREAM_RELAY_WINDOW_MESSAGES` records, and gives it back
    as the stream reads past a run, so that is all it ever holds.

    One log serves one partition of one stream (its one listener is that
    stream's `Partition`): when the stream's position leaves what is held
    (a Seek), the relay starts over from there. A relay whose node fails
    moves to the next replica, from the offset after the last record it
    holds; after `STREAM_RELAY_ROUNDS_MAX` rounds, or on an error that
    another node would answer alike, the log closes with it and the stream
    ends with that error. A Seek to a timestamp needs the time index of a
    local replica and is refused (REPLICA_NOT_AVAILABLE).
    """

    def __init__(
        self, topic: str, partition: int, addresses: list[str], record_bytes_max: int
    ) -> None:
        assert addresses, "a relay needs a node with a replica"
        self.topic = topic
        self.partition = partition
        self._addresses = addresses
        self._window_bytes = max(STREAM_RELAY_WINDOW_BYTES, record_bytes_max)
        self._message_bytes_max = record_bytes_max + STREAM_RELAY_MESSAGE_SLACK_BYTES
        self.start_offset = 0
        # The offset the member starts at (set by `open`).
        self.first_offset = 0
        self._runs: collections.deque[_Run] = collections.deque()
        self._gapped = False  # a run does not start where the one before ended
        self._end = 0  # the offset after the last record held
        self._held_messages = 0
        self._held_bytes = 0
        self._listener: Partition | None = None
        self._error: BrokerError | None = None
        self._task: asyncio.Task[None] | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}
        # Credit read past and not yet given back to the relay.
        self._due_messages = 0
        self._due_bytes = 0
        self._credit_due = asyncio.Event()
        self._ended = False

    # -- the PartitionLog side the consume path reads ------------------------

    @property
    def closed(self) -> bool:
        return self._error is not None

    @property
    def end_offset(self) -> int:
        """The offset after the last record held (the reader's position if it left them)."""
        p = self._listener
        if p is None or self._error is not None:
            return self._end
        position = p.position
        self._release_below(position)
        if position < self.start_offset or self._holds(position):
            return self._end
        following = [r.base for r in self._runs if r.base > position]
        if following and position >= self._runs[0].base:
            # The relay's node skipped records retention deleted meanwhile:
            # the reader moves on to the next it holds (as for a local log).
            self.start_offset = following[0]
            return self._end
        # A Seek moved the reader away from what is held: read from there.
        self._restart(position)
        return position

    def read_run(self, offset: int, bytes_max: int, records_max: int) -> StoredRun | None:
        """The held run with `offset` in it (one relayed batch); None at the end."""
        self._release_below(offset)
        if offset == self._end and not self._gapped:
            return None
        for run in self._runs:
            if run.base <= offset < run.end:
                return StoredRun(run.base, run.count, run.payload, run.base, 0)
        if self._error is not None:
            raise self._error
        raise OffsetOutOfRangeError(self.start_offset, self._end, offset)

    def read(self, offset: int, records_max: int) -> list[object]:
        """Only read once closed (the stream ends with the relay's error)."""
        if self._error is not None:
            raise self._error
        raise OffsetOutOfRangeError(self.start_offset, self._end, offset)

    def offset_for_timestamp(self, timestamp_ms: int) -> int:
        error = replica_not_available(self.topic, self.partition)
        error.message = (
            f"{error.message}: a seek to a timestamp needs a local replica; seek to an offset,"
            " or reconnect to a node holding one"
        )
        raise error

    def add_listener(self, callback: Callable[[], None]) -> None:
        assert isinstance(callback, Partition) and self._listener is None, "one stream reads it"
        self._listener = callback

    def remove_listener(self, callback: Callable[[], None]) -> None:
        """The stream stopped reading the partition: the relay ends."""
        if callback is self._listener:
            self._listener = None
            self.close()

    # -- the relay -----------------------------------------------------------

    async def open(self, start: broker_pb2.StartPosition, committed: int | None) -> int:
        """Subscribe at a replica from `committed` (clamped into its log) or else `start`.

        Returns the offset the member starts at; raises BrokerError if no
        replica serves the subscribe.
        """
        call, first = await self._subscribe(start, committed)
        self.start_offset = first.log_start_offset
        self.first_offset = self._end = first.offset
        self._task = asyncio.create_task(self._run(call), name="weir stream relay")
        return first.offset

    def close(self) -> None:
        """Stop the relay and close its channels; idempotent."""
        if self._ended:
            return
        self._ended = True
        if self._task is not None:
            self._task.cancel()
        if self._error is None:
            self._error = replica_not_available(self.topic, self.partition)
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            task = asyncio.get_running_loop().create_task(channel.close())
            _closing.add(task)
            task.add_done_callback(_closing.discard)

    def _holds(self, position: int) -> bool:
        if position == self._end:
            return True
        if not self._gapped:
            return bool(self._runs) and self._runs[0].base <= position < self._end
        return any(r.base <= position < r.end for r in self._runs)

    def _release_below(self, position: int) -> None:
        """Runs the reader is past go, and their credit back to the relay."""
        runs = self._runs
        while runs and runs[0].end <= position:
            run = runs.popleft()
            self._held_messages -= run.count
            self._held_bytes -= run.charge
            self._due_messages += run.count
            self._due_bytes += run.charge
            self._credit_due.set()
        if not runs:
            self._gapped = False

    def _restart(self, position: int) -> None:
        if self._task is not None:
            self._task.cancel()
        self._runs.clear()
        self._gapped = False
        self._held_messages = self._held_bytes = 0
        self._due_messages = self._due_bytes = 0
        self._end = position
        self._task = asyncio.create_task(self._reopen(position), name="weir stream relay")

    async def _reopen(self, offset: int) -> None:
        try:
            call, first = await self._subscribe(broker_pb2.StartPosition(), offset)
        except BrokerError as error:
            self._fail(error)
            return
        self.start_offset = first.log_start_offset
        self._end = first.offset
        await self._run(call)

    def _fail(self, error: BrokerError) -> None:
        if self._error is None or not self._ended:
            self._error = error
        if self._listener is not None:
            self._listener()

    async def _subscribe(
        self, start: broker_pb2.StartPosition, offset: int | None
    ) -> tuple[Any, broker_pb2.PartitionStart]:
        """A relay subscribed at the first replica that serves it, and where it starts."""
        last: BrokerError | None = None
        for round_ in range(STREAM_RELAY_ROUNDS_MAX):
            if round_:
                await asyncio.sleep(STREAM_RELAY_BACKOFF_S * round_)
            for address in self._addresses:
                try:
                    return await self._subscribe_at(address, start, offset)
                except BrokerError as error:
                    if error.code not in _RELAY_RETRY_CODES:
                        raise
                    last = error
        assert last is not None
        raise last

    async def _subscribe_at(
        self, address: str, start: broker_pb2.StartPosition, offset: int | None
    ) -> tuple[Any, broker_pb2.PartitionStart]:
        for _ in range(2):  # a committed offset retention passed is clamped once
            subscribe = broker_pb2.Subscribe(
                topic=self.topic,
                partitions=[self.partition],
                start=start,
                credit=broker_pb2.Credit(
                    messages=max(0, STREAM_RELAY_WINDOW_MESSAGES - self._held_messages),
                    bytes=max(0, self._window_bytes - self._held_bytes),
                ),
            )
            if offset is not None:
                subscribe.offsets[self.partition] = offset
            call = self._channel(address).stream_stream(
                CONSUME_METHOD,
                request_serializer=broker_pb2.ConsumeRequest.SerializeToString,
                response_deserializer=broker_pb2.ConsumeResponse.FromString,
            )(metadata=RELAY_METADATA)
            try:
                await call.write(broker_pb2.ConsumeRequest(subscribe=subscribe))
                first = await call.read()
            except grpc.aio.AioRpcError as rpc_error:
                call.cancel()
                error = broker_error(rpc_error, "RELAY_FAILED")
                if error.reason == "OFFSET_OUT_OF_RANGE" and offset is not None:
                    low = int(error.metadata.get("start_offset", "0"))
                    high = int(error.metadata.get("end_offset", "0"))
                    offset = min(max(offset, low), high)
                    continue
                raise error from None
            if (
                not isinstance(first, broker_pb2.ConsumeResponse)
                or first.WhichOneof("kind") != "subscribed"
            ):
                call.cancel()
                raise BrokerError(
                    grpc.StatusCode.UNAVAILABLE,
                    "RELAY_FAILED",
                    f"{address} did not answer the relay's subscribe",
                )
            return call, first.subscribed.partitions[0]
        raise replica_not_available(self.topic, self.partition)

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(
                address,
                options=[("grpc.max_receive_message_length", self._message_bytes_max)],
            )
        return channel

    async def _run(self, call: Any) -> None:
        """Read relayed batches into runs; on a retriable end, go on at another replica."""
        while True:
            writer = asyncio.create_task(self._give_back(call), name="weir stream relay credit")
            try:
                error = await self._read(call)
            finally:
                writer.cancel()
                call.cancel()
            if error.code not in _RELAY_RETRY_CODES:
                self._fail(error)
                return
            try:
                call, first = await self._subscribe(broker_pb2.StartPosition(), self._end)
            except BrokerError as refused:
                self._fail(refused)
                return
            self.start_offset = first.log_start_offset

    async def _read(self, call: Any) -> BrokerError:
        try:
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    return BrokerError(
                        grpc.StatusCode.UNAVAILABLE, "RELAY_ENDED", "the relayed stream ended"
                    )
                if response.WhichOneof("kind") == "batch" and response.batch.records:
                    self._hold(response.batch)
        except grpc.aio.AioRpcError as rpc_error:
            return broker_error(rpc_error, "RELAY_ENDED")

    def _hold(self, batch: broker_pb2.ConsumedBatch) -> None:
        payload = broker_pb2.ConsumedBatch(records=batch.records).SerializeToString()
        run = _Run(
            batch.base_offset, len(batch.records), payload, sum(map(charge_of, batch.records))
        )
        if run.base != self._end:
            if not self._runs:
                self.start_offset = max(self.start_offset, run.base)
            else:
                self._gapped = True
        self._runs.append(run)
        self._end = run.end
        self._held_messages += run.count
        self._held_bytes += run.charge
        if self._listener is not None:
            self._listener()

    async def _give_back(self, call: Any) -> None:
        while True:
            await self._credit_due.wait()
            self._credit_due.clear()
            messages, nbytes = self._due_messages, self._due_bytes
            self._due_messages = self._due_bytes = 0
            if messages or nbytes:
                credit = broker_pb2.Credit(messages=messages, bytes=nbytes)
                await call.write(broker_pb2.ConsumeRequest(credit=credit))


__all__ = ["RelayedLog"]
