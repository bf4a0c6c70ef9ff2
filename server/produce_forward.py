"""Forwarding produce work to a partition's leader (DESIGN §6 "Any node accepts any call").

When a produce request (or one routed part of it) belongs to a partition
this node does not lead, the produce path hands it to the `Forwarder`,
which sends it, with `partition` set, over one long-lived pipelined Produce
stream per leader node (a `_Link`) to that node's peer address (in a
cluster; its Produce service is served on the peer port too), and
passes the leader's answer (its offsets, or its typed error) back as the
answer to the client.

- Order: one client stream's reader submits its parts in arrival order;
  a link sends them in that order on one stream, and the leader appends a
  stream's requests in arrival order, so offsets within a partition follow
  the client's order.
- Bounds: per link at most `inflight_requests_max` requests and
  `inflight_bytes_max` payload bytes wait for their answer; a submit beyond
  that waits (the client's stream waits in HTTP/2 flow control, as for a
  local append), up to `answer_timeout_ms`.
- Failures: a link that breaks fails its waiters: a request already
  written to the stream may have been appended, so it answers
  OUTCOME_UNKNOWN; one not yet written answers NOT_LEADER with the leader
  it was meant for, so the client goes there itself. For
  `reconnect_backoff_ms` after a failure, submits answer NOT_LEADER at
  once; then the link reconnects on the next submit. An answer that does
  not come within `answer_timeout_ms` (past the leader's own proposal
  deadline) answers OUTCOME_UNKNOWN with DEADLINE_EXCEEDED.
- No loops: the stream carries the `weir-forwarded` metadata key and a node
  never forwards what arrived on such a stream; it answers NOT_LEADER.
- acks=NONE is forwarded as acks=LEADER: the leader answers NONE only on
  error, and the link needs an answer to free the request's slot; the
  client still hears only errors.
- Partitions with no replica here (more nodes than the replication
  factor): this node knows their replicas (the controller's metadata) but
  not which one leads, so it forwards to a guess (`LeaderGuesses`) and
  learns from the answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from weir.cluster.storage import ProducerFields
from weir.server.errors import BrokerError, from_proto, not_leader, outcome_unknown
from weir.server.wire import encode_varint, identity
from weir.v1 import broker_pb2

logger = logging.getLogger(__name__)

FORWARDED_KEY = "weir-forwarded"
PRODUCE_METHOD = "/weir.v1.BrokerService/Produce"
# ProduceRequest.batch (field 4, length-delimited).
_BATCH_TAG = b"\x22"


@dataclasses.dataclass(frozen=True, slots=True)
class ForwardConfig:
    # Per leader node: requests and payload bytes sent or queued, unanswered.
    inflight_requests_max: int = 1024
    inflight_bytes_max: int = 32 << 20
    # Past the leader's proposal deadline (10 s), so its own answer wins.
    answer_timeout_ms: int = 15_000
    # A leader that does not accept the connection this fast is treated as gone.
    connect_timeout_ms: int = 1_000
    # After a broken link, submits answer NOT_LEADER for this long.
    reconnect_backoff_ms: int = 200
    # A forwarded request is a client's request (at most request_bytes_max)
    # plus the timestamps the broker filled in.
    message_bytes_max: int = 64 << 20


def encode_request(
    request_id: int,
    topic: str,
    partition: int,
    acks: broker_pb2.Acks,
    batch: bytes,
    producer: ProducerFields | None = None,
) -> bytes:
    """A ProduceRequest around already serialized RecordBatch bytes, without re-parsing them.

    An idempotent producer's fields travel with it: the leader checks them.
    """
    # The link reads combined answers (`ProduceResponse.more`): one stream
    # message for every answer the leader has ready, not one per request.
    request = broker_pb2.ProduceRequest(
        request_id=request_id, topic=topic, partition=partition, acks=acks, combine_answers=True
    )
    if producer is not None:
        request.producer_id = producer.producer_id
        request.producer_epoch = producer.epoch
        request.first_sequence = producer.first_sequence
    head = request.SerializeToString()
    return head + _BATCH_TAG + encode_varint(len(batch)) + batch


def _retrieve(future: asyncio.Future[Any]) -> None:
    # A request whose other part failed is answered without awaiting this one.
    if not future.cancelled():
        future.exception()


@dataclasses.dataclass(slots=True)
class _Waiter:
    topic: str
    partition: int
    nbytes: int
    raw: bytes | None  # dropped once written to the stream
    future: asyncio.Future[int]
    timer: asyncio.TimerHandle | None = None

    @property
    def sent(self) -> bool:
        return self.raw is None


class _Link:
    """One pipelined Produce stream to one leader node, reconnected on demand."""

    def __init__(
        self, node_id: int, address: str, dial_address: str, config: ForwardConfig
    ) -> None:
        self.node_id = node_id
        # `address` is the leader's client address (named in NOT_LEADER for
        # clients); `dial_address` is where this node reaches it.
        self.address = address
        self.dial_address = dial_address
        self._config = config
        self._ids = itertools.count(1)
        # Unanswered requests by id, in submission order (dicts keep it).
        self._waiters: dict[int, _Waiter] = {}
        self._inflight_bytes = 0
        self._room = asyncio.Event()
        self._work = asyncio.Event()
        self._down_until = 0.0
        self.sent = 0
        self.failures = 0

    def _has_room(self, nbytes: int) -> bool:
        config = self._config
        if len(self._waiters) >= config.inflight_requests_max:
            return False
        # One request larger than the whole budget still goes, alone.
        return not self._waiters or self._inflight_bytes + nbytes <= config.inflight_bytes_max

    async def submit(
        self,
        topic: str,
        partition: int,
        acks: broker_pb2.Acks,
        payload: bytes,
        producer: ProducerFields | None = None,
    ) -> asyncio.Future[int]:
        if time.monotonic() < self._down_until:
            raise not_leader(topic, partition, self.node_id, self.address)
        nbytes = len(payload)
        try:
            async with asyncio.timeout(self._config.answer_timeout_ms / 1000):
                while not self._has_room(nbytes):
                    self._room.clear()
                    await self._room.wait()
        except TimeoutError:
            raise not_leader(topic, partition, self.node_id, self.address) from None
        if acks == broker_pb2.ACKS_NONE:
            acks = broker_pb2.ACKS_LEADER
        request_id = next(self._ids)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        future.add_done_callback(_retrieve)
        raw = encode_request(request_id, topic, partition, acks, payload, producer)
        waiter = _Waiter(topic, partition, nbytes, raw, future)
        waiter.timer = loop.call_later(
            self._config.answer_timeout_ms / 1000, self._expire, request_id
        )
        self._waiters[request_id] = waiter
        self._inflight_bytes += nbytes
        self._work.set()
        return future

    def _resolve(self, request_id: int) -> _Waiter | None:
        waiter = self._waiters.pop(request_id, None)
        if waiter is None:
            return None
        if waiter.timer is not None:
            waiter.timer.cancel()
        self._inflight_bytes -= waiter.nbytes
        self._room.set()
        return waiter

    def _expire(self, request_id: int) -> None:
        waiter = self._resolve(request_id)
        if waiter is None or waiter.future.done():
            return
        if waiter.sent:
            error = outcome_unknown(
                waiter.topic,
                waiter.partition,
                f"the leader (node {self.node_id}) did not answer in time",
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
        else:
            error = not_leader(waiter.topic, waiter.partition, self.node_id, self.address)
        waiter.future.set_exception(error)

    def fail_all(self, cause: str) -> None:
        for request_id in list(self._waiters):
            waiter = self._resolve(request_id)
            assert waiter is not None
            if waiter.future.done():
                continue
            if waiter.sent:
                error = outcome_unknown(
                    waiter.topic,
                    waiter.partition,
                    f"the link to the leader (node {self.node_id}) broke: {cause}",
                )
            else:
                error = not_leader(waiter.topic, waiter.partition, self.node_id, self.address)
            waiter.future.set_exception(error)

    async def run(self) -> None:
        """Connects when there is work; on a broken stream fails its waiters and backs off."""
        options = [
            ("grpc.max_send_message_length", self._config.message_bytes_max),
            ("grpc.max_receive_message_length", self._config.message_bytes_max),
        ]
        while True:
            await self._work.wait()
            async with grpc.aio.insecure_channel(self.dial_address, options=options) as channel:
                # Connected first: a write gRPC buffers before the connection
                # exists would otherwise count as sent (outcome unknown).
                try:
                    async with asyncio.timeout(self._config.connect_timeout_ms / 1000):
                        await channel.channel_ready()
                except TimeoutError:
                    cause = "could not connect"
                else:
                    call = channel.stream_stream(
                        PRODUCE_METHOD,
                        request_serializer=identity,
                        response_deserializer=broker_pb2.ProduceResponse.FromString,
                    )(metadata=((FORWARDED_KEY, "1"),))
                    cause = await self._serve(call)
            self.failures += 1
            logger.info(
                "forwarding link to node %d (%s) broke: %s", self.node_id, self.address, cause
            )
            self._down_until = time.monotonic() + self._config.reconnect_backoff_ms / 1000
            self.fail_all(cause)
            self._work.clear()
            await asyncio.sleep(self._config.reconnect_backoff_ms / 1000)

    async def _serve(self, call: Any) -> str:
        """Runs one stream until it breaks; returns why."""
        sender = asyncio.create_task(self._send(call), name=f"forward-send-{self.node_id}")
        receiver = asyncio.create_task(self._receive(call), name=f"forward-recv-{self.node_id}")
        try:
            await asyncio.wait((sender, receiver), return_when=asyncio.FIRST_COMPLETED)
        finally:
            call.cancel()
            for task in (sender, receiver):
                task.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)
        first = receiver if receiver.done() and not receiver.cancelled() else sender
        if first.cancelled():
            return "cancelled"
        failure = first.exception()
        if isinstance(failure, grpc.aio.AioRpcError):
            return f"{failure.code().name}: {failure.details()}"
        if failure is not None:
            logger.error("forwarding to node %d failed", self.node_id, exc_info=failure)
            return repr(failure)
        return "the leader ended the stream"

    async def _receive(self, call: Any) -> None:
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                return
            self._answer(response)
            for more in response.more:
                self._answer(more)

    async def _send(self, call: Any) -> None:
        # Sends unsent waiters in submission order; dicts keep insertion order,
        # and the newest waiters are the unsent ones.
        while True:
            self._work.clear()
            unsent = [w for w in self._waiters.values() if not w.sent]
            if not unsent:
                await self._work.wait()
                continue
            for waiter in unsent:
                if waiter.future.done() or waiter.raw is None:
                    continue
                raw, waiter.raw = waiter.raw, None  # sent from here on: outcome unknown
                await call.write(raw)
                self.sent += 1

    def _answer(self, response: broker_pb2.ProduceResponse) -> None:
        waiter = self._resolve(response.request_id)
        if waiter is None or waiter.future.done():
            return  # expired meanwhile: it was answered OUTCOME_UNKNOWN
        if response.HasField("error"):
            waiter.future.set_exception(from_proto(response.error))
        elif len(response.appends) == 1:
            waiter.future.set_result(response.appends[0].base_offset)
        else:
            waiter.future.set_exception(
                outcome_unknown(
                    waiter.topic, waiter.partition, "the leader's answer names no single append"
                )
            )


# Partitions whose leader guess is remembered, at most (a few bytes each);
# past it the guesses start over from the preferred leaders.
LEADER_GUESSES_MAX = 65_536


class LeaderGuesses:
    """Who leads the partitions this node has no replica of, as forwards taught it.

    Only a replica hears its group's leader. A node without one forwards to
    its guess: the leader an answer last named, else the preferred leader
    (the first replica, where leader balancing keeps leadership). A replica
    that does not lead answers NOT_LEADER naming the leader, which becomes
    the guess; a node that cannot be reached moves the guess on to the next
    replica. Keyed by Raft group id, at most `LEADER_GUESSES_MAX` of them.
    """

    def __init__(self, entries_max: int = LEADER_GUESSES_MAX) -> None:
        self._entries_max = entries_max
        self._leaders: dict[int, int] = {}

    def order(self, group_id: int, replicas: tuple[int, ...]) -> list[int]:
        """The replicas to try, the guess first, then the others in placement order."""
        guess = self._leaders.get(group_id)
        if guess not in replicas:
            return list(replicas)
        return [guess, *(r for r in replicas if r != guess)]

    def heard(self, group_id: int, leader_id: int) -> None:
        """An answer showed (or named) the group's leader."""
        if group_id not in self._leaders and len(self._leaders) >= self._entries_max:
            self._leaders.clear()
        self._leaders[group_id] = leader_id

    def unreachable(self, group_id: int, node_id: int, replicas: tuple[int, ...]) -> None:
        """`node_id` could not be reached: guess the replica after it next."""
        if node_id in replicas:
            self.heard(group_id, replicas[(replicas.index(node_id) + 1) % len(replicas)])

    def answered(
        self, group_id: int, asked: int, replicas: tuple[int, ...], answer: asyncio.Future[Any]
    ) -> None:
        """A forward's answer (a done callback): what it says of who leads."""
        if answer.cancelled():
            return
        error = answer.exception()
        if error is None:
            self.heard(group_id, asked)
            return
        if not isinstance(error, BrokerError) or error.reason != "NOT_LEADER":
            return
        named = int(error.metadata.get("leader_id", "0") or 0)
        if named == asked:
            # Answered in its name by a link that could not send the request.
            self.unreachable(group_id, asked, replicas)
        elif named:
            self.heard(group_id, named)


class Forwarder:
    """Links to the leaders this node forwards to; an async context manager owns their tasks."""

    def __init__(
        self,
        config: ForwardConfig | None = None,
        dial_address: Callable[[int], str] | None = None,
    ) -> None:
        self._config = config or ForwardConfig()
        # Where to reach a leader: a cluster forwards over the peer port, so
        # node-to-node traffic stays on the peer network (and its limits);
        # without a resolver, the leader's client address.
        self._dial_address = dial_address
        self._links: dict[int, _Link] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._group: asyncio.TaskGroup | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    async def __aenter__(self) -> Forwarder:
        stack = contextlib.AsyncExitStack()
        self._group = await stack.enter_async_context(asyncio.TaskGroup())
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._stack is not None
        for task in self._tasks.values():
            task.cancel()
        for link in self._links.values():
            link.fail_all("this node is stopping")
        self._group = None
        await self._stack.__aexit__(exc_type, exc, tb)

    async def submit(
        self,
        leader_id: int,
        address: str,
        topic: str,
        partition: int,
        acks: broker_pb2.Acks,
        payload: bytes,
        producer: ProducerFields | None = None,
    ) -> asyncio.Future[int]:
        """Queues one batch for `leader_id`; the future resolves to its base offset.

        Raises BrokerError (NOT_LEADER) when the link cannot take it; the
        future fails with a BrokerError (the leader's, or OUTCOME_UNKNOWN).
        """
        if self._group is None:
            raise not_leader(topic, partition, leader_id, address)
        dial = (self._dial_address(leader_id) if self._dial_address else "") or address
        link = self._links.get(leader_id)
        if link is None or link.address != address or link.dial_address != dial:
            if link is not None:
                self._tasks.pop(leader_id).cancel()
                link.fail_all(f"node {leader_id} moved to {dial}")
            link = self._links[leader_id] = _Link(leader_id, address, dial, self._config)
            self._tasks[leader_id] = self._group.create_task(
                link.run(), name=f"forward-to-{leader_id}"
            )
        return await link.submit(topic, partition, acks, payload, producer)

    def stats(self) -> dict[int, tuple[int, int]]:
        """(requests sent, broken streams) per leader node."""
        return {node: (link.sent, link.failures) for node, link in self._links.items()}


__all__ = [
    "FORWARDED_KEY",
    "LEADER_GUESSES_MAX",
    "ForwardConfig",
    "Forwarder",
    "LeaderGuesses",
    "encode_request",
]
