"""Queue mode relays: a client's queue stream reading partitions another node leads.

Queue dispatch happens at the partition leader (queue_dispatch.py). When a
client's CONSUME_MODE_QUEUE stream names partitions this node does not
lead, the stream (consume_queue.py) opens one `Relay` per leader node: a
Consume stream of its own to that node's public address, with the same
group, start, ack deadline and ordered_keys, the partitions that node
leads, and gRPC metadata `weir-queue-relay: 1`, so that a node that does
not lead them (any more) refuses with NOT_LEADER instead of relaying again.

- **Credit.** A relay starts with none. The client's stream grants it part
  of the client's credit, taken from the client's credit when granted, so
  the records of all relays and local partitions together never pass what
  the client granted (`granted_*` is what the relay may still receive).
  When a relay ends, what it did not use goes back to the client's credit.
- **Records** arrive as the leader's `ConsumedBatch`es (their ack ids name
  the partition, ackid.py) and are forwarded unchanged.
- **Acks, nacks, extensions** whose ids name a relayed partition are sent
  on that partition's relay with a request id of the relay's own; the
  answer's failures come back by index (`request`). A relay that ends
  fails its unanswered requests with its error.
- **Ending.** A relay that ends with NOT_LEADER, UNAVAILABLE or
  DEADLINE_EXCEEDED (the leader moved or died) is reopened by the client's
  stream to the partition's new leader (or served here if that is this
  node). Any other status ends the client's stream with it. A leader that
  stops without closing its connections (a frozen process or host, a
  network that drops packets) ends nothing, so the client's stream also
  `abandon()`s a relay as soon as this node hears that one of its
  partitions has another leader: the relay then ends with NOT_LEADER and is
  reopened there. A node that hosts no replica of the partition hears of no
  election, so relay channels also ping (HTTP/2 keepalive, `keepalive_ms`
  from the node's own ping policy, RELAY_KEEPALIVE_TIMEOUT_MS to answer):
  a frozen leader's relay fails (measured: "ping timeout" about a minute
  after the relay opened, although pings are due every 10 s) and moves to
  the next guess. A relay's subscribe is answered within RELAY_OPEN_TIMEOUT_S or
  fails RELAY_FAILED, so opening one on a frozen node never hangs.
- **Leaders of partitions with no replica here** (more nodes than the
  replication factor): this node's Raft host knows only the leaders of
  groups it hosts. `RelayLeaders` guesses the others from the
  controller's placement as produce forwarding does
  (produce_forward.LeaderGuesses: the leader an answer last named, else
  the preferred leader; a node that cannot be reached moves the guess on
  to the next replica), and a relay refused NOT_LEADER naming another
  leader is opened again there.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from weir.cluster import controller as ctl
from weir.server.errors import BrokerError
from weir.server.peer_calls import from_peer
from weir.server.produce_forward import LeaderGuesses
from weir.server.queue_hosts import QueueHost
from weir.server.queue_records import charge_of
from weir.server.replicator import NotHostedError
from weir.server.topics import Topic
from weir.v1 import broker_pb2

CONSUME_METHOD = "/weir.v1.BrokerService/Consume"
RELAY_METADATA_KEY = "weir-queue-relay"
RELAY_METADATA = ((RELAY_METADATA_KEY, "1"),)
# Statuses after which a relay is reopened to the partition's (new) leader.
REOPEN_CODES = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
)
# A relay's subscribe not answered within this fails RELAY_FAILED (a frozen node).
RELAY_OPEN_TIMEOUT_S = 10.0
# The shortest interval of a relay channel's keepalive pings, and how long a
# ping may go unanswered before the channel (and the relay) fails.
RELAY_KEEPALIVE_MS_MIN = 10_000
RELAY_KEEPALIVE_TIMEOUT_MS = 10_000
# Requests a relay has sent and not yet seen answered (the client's own bound,
# ANSWERS_INFLIGHT_MAX, keeps it far lower).
RELAY_REQUESTS_MAX = 1024


def is_relayed(context: Any) -> bool:
    """Whether this Consume call is a relay from another node (never relayed again)."""
    return from_peer(context, RELAY_METADATA_KEY)


def broker_error(error: grpc.aio.AioRpcError, fallback: str) -> BrokerError:
    """A relay's final status as a BrokerError (its ErrorInfo reason and metadata kept).

    A status without an ErrorInfo did not come from a Weir node: gRPC's own
    (the leader's node was killed or cannot be reached, a deadline passed).
    It gets `fallback`, a reason docs/errors.md lists (`RELAY_FAILED` when
    the relay could not open, `RELAY_ENDED` when it broke), never the bare
    status code name, so a client can tell what failed.
    """
    reason = fallback
    metadata: dict[str, str] = {}
    for key, raw in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(raw, bytes):
            status = status_pb2.Status.FromString(raw)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    reason = info.reason
                    metadata = {k: v for k, v in info.metadata.items() if k != "retriable"}
    return BrokerError(error.code(), reason, error.details() or "", metadata)


class RelayLeaders:
    """Who leads a topic's partitions, for one queue stream (see the module docstring).

    `controller_topic` is the controller's placement (None on a single node).
    """

    def __init__(
        self,
        topic: Topic,
        host: QueueHost,
        controller_topic: Callable[[str], ctl.Topic] | None,
    ) -> None:
        self._topic = topic
        self._host = host
        self._controller_topic = controller_topic
        self._guesses = LeaderGuesses()

    def of(self, partition: int) -> tuple[bool, int]:
        """(this node leads it, the leader's node id or a guess of it; 0: none known)."""
        group_id = self._topic.group_id(partition)
        leads, leader_id = self._host.leader(group_id)
        if leads or leader_id:
            return leads, leader_id
        replicas = self.guessed(partition)
        for node_id in self._guesses.order(group_id, replicas):
            if self._host.node_address(node_id):
                return False, node_id
        return False, 0

    def guessed(self, partition: int) -> tuple[int, ...]:
        """The partition's replicas when its leader is guessed (no replica here), else ()."""
        if self._controller_topic is None:
            return ()
        try:
            self._host.log(self._topic.group_id(partition))
            return ()  # a replica here: its Raft group names the leader once elected
        except NotHostedError:
            pass
        try:
            placed = self._controller_topic(self._topic.name)
        except BrokerError:
            return ()  # deleted meanwhile
        if partition >= placed.partition_count:
            return ()
        return placed.partitions[partition].replicas

    def opened(self, partitions: list[int], leader_id: int) -> None:
        """A relay to `leader_id` for `partitions` was accepted: it leads them."""
        for partition in partitions:
            if self.guessed(partition):
                self._guesses.heard(self._topic.group_id(partition), leader_id)

    def learn(self, partitions: list[int], asked: int, error: BrokerError) -> bool:
        """A relay to `asked` for `partitions` was refused or ended with `error`: whether a
        guessed leader moved on (so that opening it again may succeed at once)."""
        moved = False
        named = int(error.metadata.get("leader_id", 0) or 0)
        refused = int(error.metadata.get("partition", -1))
        for partition in partitions:
            replicas = self.guessed(partition)
            if not replicas:
                continue
            group_id = self._topic.group_id(partition)
            if error.reason != "NOT_LEADER":
                # Down, or not a Weir node's answer: try the next replica.
                self._guesses.unreachable(group_id, asked, replicas)
                moved = True
            elif partition == refused and named != asked and named in replicas:
                self._guesses.heard(group_id, named)
                moved = True
        return moved


class Relay:
    """One relayed Consume stream to the leader of `partitions` (see the module docstring)."""

    def __init__(
        self,
        leader_id: int,
        address: str,
        subscribe: broker_pb2.Subscribe,
        partitions: list[int],
        on_response: Callable[[Relay, broker_pb2.ConsumeResponse], None],
        message_bytes_max: int,
        keepalive_ms: int = RELAY_KEEPALIVE_MS_MIN,
    ) -> None:
        self.leader_id = leader_id
        self.address = address
        self.partitions = partitions
        self.granted_messages = 0
        self.granted_bytes = 0
        self._subscribe = broker_pb2.Subscribe()
        self._subscribe.CopyFrom(subscribe)
        del self._subscribe.partitions[:]
        self._subscribe.partitions.extend(partitions)
        self._subscribe.ClearField("credit")
        self._on_response = on_response
        self._channel = grpc.aio.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", message_bytes_max),
                ("grpc.max_send_message_length", message_bytes_max),
                ("grpc.keepalive_time_ms", max(keepalive_ms, RELAY_KEEPALIVE_MS_MIN)),
                ("grpc.keepalive_timeout_ms", RELAY_KEEPALIVE_TIMEOUT_MS),
                ("grpc.keepalive_permit_without_calls", 0),
                # Without this gRPC stops pinging after two pings on a stream
                # that sends nothing (as weir._conn says).
                ("grpc.http2.max_pings_without_data", 0),
            ],
        )
        self._call: Any = None
        self._ids = itertools.count(1)
        self._answers: dict[int, asyncio.Future[broker_pb2.AckResult]] = {}
        self.subscribed: broker_pb2.Subscribed | None = None
        self.failure: BrokerError | None = None
        # Byte credit the leader said its next record needs (CREDIT_TOO_SMALL), 0 if none.
        self.bytes_needed = 0
        # One write at a time on the call: grants come from the client stream's
        # writer, requests from its settling tasks.
        self._write_lock = asyncio.Lock()
        # Set by `abandon`: what `run` returns once the call's cancel reaches it.
        self._abandoned: BrokerError | None = None

    def abandon(self, leader_id: int) -> None:
        """End the relay from this side: `leader_id` leads one of its partitions now.

        `run` then returns NOT_LEADER naming it, so the client's stream
        reopens the partitions where they are led; nothing else would end a
        relay to a leader that stopped without closing its connections.
        """
        if self._abandoned is not None or self._call is None:
            return
        self._abandoned = BrokerError(
            grpc.StatusCode.UNAVAILABLE,
            "NOT_LEADER",
            f"node {leader_id} leads a partition the relay to node {self.leader_id} read",
            {"leader_id": leader_id},
        )
        self._call.cancel()

    async def open(self) -> broker_pb2.Subscribed:
        """Subscribe on the leader; raises its refusal as a BrokerError."""
        self._call = self._channel.stream_stream(
            CONSUME_METHOD,
            request_serializer=broker_pb2.ConsumeRequest.SerializeToString,
            response_deserializer=broker_pb2.ConsumeResponse.FromString,
        )(metadata=RELAY_METADATA)
        try:
            async with asyncio.timeout(RELAY_OPEN_TIMEOUT_S):
                await self._call.write(broker_pb2.ConsumeRequest(subscribe=self._subscribe))
                first = await self._call.read()
        except grpc.aio.AioRpcError as error:
            await self.close()
            raise broker_error(error, "RELAY_FAILED") from None
        except TimeoutError:
            await self.close()
            raise BrokerError(
                grpc.StatusCode.UNAVAILABLE,
                "RELAY_FAILED",
                f"node {self.leader_id} did not answer the relay's subscribe within"
                f" {RELAY_OPEN_TIMEOUT_S:.0f} s",
            ) from None
        except asyncio.CancelledError:
            # Abandoned while opening (its partition's leader changed): the
            # caller moves on as after a refusal; a cancel of the task is passed on.
            task = asyncio.current_task()
            if self._abandoned is None or (task is not None and task.cancelling()):
                raise
            await self.close()
            raise self._abandoned from None
        if first is grpc.aio.EOF or first.WhichOneof("kind") != "subscribed":
            await self.close()
            raise BrokerError(
                grpc.StatusCode.UNAVAILABLE,
                "RELAY_FAILED",
                f"node {self.leader_id} did not answer the relay's subscribe",
            )
        subscribed: broker_pb2.Subscribed = first.subscribed
        self.subscribed = subscribed
        return subscribed

    async def run(self) -> BrokerError:
        """Read until the relay ends; returns why (a status the caller acts on)."""
        try:
            while True:
                response = await self._call.read()
                if response is grpc.aio.EOF:
                    error = BrokerError(
                        grpc.StatusCode.UNAVAILABLE, "RELAY_ENDED", "the relayed stream ended"
                    )
                    break
                kind = response.WhichOneof("kind")
                if kind == "batch":
                    self.granted_messages -= len(response.batch.records)
                    self.granted_bytes -= sum(charge_of(r) for r in response.batch.records)
                    self._on_response(self, response)
                elif kind == "ack":
                    future = self._answers.pop(response.ack.request_id, None)
                    if future is not None and not future.done():
                        future.set_result(response.ack)
                else:
                    if kind == "notice" and response.notice.reason == "CREDIT_TOO_SMALL":
                        self.bytes_needed = int(response.notice.metadata.get("needed_bytes", "0"))
                    self._on_response(self, response)
        except grpc.aio.AioRpcError as rpc_error:
            error = broker_error(rpc_error, "RELAY_ENDED")
        except asyncio.CancelledError:
            # The call's own cancel (abandon) raises this in `read`; a cancel
            # of the task that runs us is passed on.
            task = asyncio.current_task()
            if self._abandoned is None or (task is not None and task.cancelling()):
                raise
            error = self._abandoned
        self.failure = error
        for future in self._answers.values():
            if not future.done():
                future.set_exception(error)
                future.exception()
        self._answers.clear()
        return error

    async def grant(self, messages: int, nbytes: int) -> None:
        self.granted_messages += messages
        self.granted_bytes += nbytes
        credit = broker_pb2.Credit(messages=messages, bytes=nbytes)
        async with self._write_lock:
            await self._call.write(broker_pb2.ConsumeRequest(credit=credit))

    async def request(self, kind: str, body: Any, ack_ids: list[bytes]) -> broker_pb2.AckResult:
        """Sends `kind` (ack, nack, extend_deadline) with `ack_ids` and the fields of `body`."""
        if self.failure is not None:
            raise self.failure
        if len(self._answers) >= RELAY_REQUESTS_MAX:
            raise BrokerError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "RELAY_BUSY",
                f"{RELAY_REQUESTS_MAX} requests on the relay to node {self.leader_id} wait",
            )
        sub = type(body)()
        sub.CopyFrom(body)
        sub.request_id = next(self._ids)
        del sub.ack_ids[:]
        sub.ack_ids.extend(ack_ids)
        future: asyncio.Future[broker_pb2.AckResult] = asyncio.get_running_loop().create_future()
        self._answers[sub.request_id] = future
        async with self._write_lock:
            await self._call.write(broker_pb2.ConsumeRequest(**{kind: sub}))
        return await future

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        await self._channel.close()


__all__ = ["RELAY_METADATA", "Relay", "RelayLeaders", "broker_error", "is_relayed"]
