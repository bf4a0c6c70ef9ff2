"""The Consume stream in CONSUME_MODE_QUEUE: competing consumers of a queue group.

`serve_queue` checks the Subscribe, opens the group's `PartitionQueue` on
each partition this node leads (queue_dispatch.py), opens a `Relay`
(queue_relay.py) to the leader of each other one (for a partition with no
replica here, with more nodes than the replication factor, the leader is
guessed from the controller's placement and a NOT_LEADER answer naming
another is followed: `RelayLeaders`), answers `Subscribed` (each
partition's `offset` is the group's cursor there, the next record never
delivered) and runs a `_QueueStream`.

The stream has one writer (the handler's task, as in consume.py) and a
reader task. The writer sends, within credit, one `ConsumedBatch` per
partition and turn with a `Delivery` per record (records waiting for
redelivery hold no credit; a record handed out that the byte credit
cannot pay yet is held by the stream, in flight, and sent first once it
can), and writes answers. The reader (consume_requests.py, as in
consume.py) applies credit and settles acks, nacks and extensions: each
request is decoded and applied at once in the partitions' states, and
answered (`AckResult`, one per request) by a task once the turn carrying
it is durable (single node) or committed (cluster); extensions are
answered at once. At most
`ANSWERS_INFLIGHT_MAX` requests wait for an answer; past that the reader
stops reading (HTTP/2 pushes back on the client).

Refusals (docs/groups.md "Queue mode: as served"):
- per ack id, in the `AckResult`: UNKNOWN_ACK_ID (garbage, another
  group's id, another topic's partition, never delivered), NOT_IN_FLIGHT
  (a nack or extension of a delivery no longer held: acked, redelivered
  since, or, for an extension, held by another stream), INVALID_NACK
  (the nack's delay over a day or its error over 1,024 bytes: every id),
  INVALID_EXTENSION (extension_ms outside 1,000..600,000: every id),
  NOT_LEADER (the partition is led elsewhere);
- the Subscribe is refused, nothing built: the topic dead-letters
  (max_deliveries > 0) but its name is too long for the default
  `<topic>.dlq` and no `dead_letter_topic` is set (FAILED_PRECONDITION
  DEAD_LETTER_TOPIC_REQUIRED, topics.py `check_dead_letters`);
- the stream ends: more than 10,000 ids in one request (INVALID_ARGUMENT
  TOO_MANY_ACK_IDS), `heartbeat` or `assignment_ack` (FAILED_PRECONDITION
  NOT_IN_QUEUE_MODE);
- answered with an error, the stream goes on: `commit` (CommitResult) and
  `seek` (SeekResult), FAILED_PRECONDITION NOT_IN_QUEUE_MODE.

However the stream ends, its records go back at once on every partition
(`stream_closed`, attempt counted).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

import grpc

from weir.cluster import controller as ctl
from weir.cluster.storage import StorageError
from weir.server import queue_settle
from weir.server.config import NodeConfig
from weir.server.consume_commit import storage_failure
from weir.server.consume_cursor import Credit
from weir.server.consume_requests import Settlement, read_requests
from weir.server.consume_start import invalid_subscribe, partition_numbers
from weir.server.errors import BrokerError, invalid, shutting_down
from weir.server.queue_dispatch import (
    HandedOut,
    PartitionQueue,
    QueueDispatcher,
)
from weir.server.queue_relay import REOPEN_CODES, Relay, RelayLeaders, is_relayed
from weir.server.queue_settle import ACK_DEADLINE_MS_MAX, ACK_DEADLINE_MS_MIN
from weir.server.topics import Topic, check_dead_letters
from weir.server.wire import delivery_encoder, queue_batch_response, topic_field
from weir.v1 import broker_pb2

Context = grpc.aio.ServicerContext[Any, bytes]

ACK_DEADLINE_MS_DEFAULT = 30_000
ACK_IDS_MAX = 10_000
# Ack, nack, extension, commit and seek requests read and not yet answered.
ANSWERS_INFLIGHT_MAX = 16
# A relay that ended is reopened this many times (backing off) before the stream fails.
REOPEN_ATTEMPTS_MAX = 40
REOPEN_BACKOFF_MS_MAX = 500
# Relays to guessed leaders refused (another leader named, or the node down)
# and opened again elsewhere, at most, per opening.
GUESS_FOLLOWS_MAX = 8
# Records in one ConsumedBatch at most.
RESPONSE_RECORDS_MAX = 500
NOT_IN_QUEUE_MODE = "NOT_IN_QUEUE_MODE"


def not_in_queue_mode(kind: str) -> BrokerError:
    return BrokerError(
        grpc.StatusCode.FAILED_PRECONDITION,
        NOT_IN_QUEUE_MODE,
        f"{kind} is not valid on a CONSUME_MODE_QUEUE subscription: its records are settled one"
        " by one with Ack, Nack and ExtendDeadline",
        {"request": kind},
    )


def check_queue_subscribe(subscribe: broker_pb2.Subscribe) -> int:
    """Checks a CONSUME_MODE_QUEUE Subscribe; returns its ack deadline in ms."""
    if not subscribe.group:
        raise invalid("GROUP_REQUIRED", "CONSUME_MODE_QUEUE needs a consumer group")
    if subscribe.offsets:
        raise invalid_subscribe(
            "a CONSUME_MODE_QUEUE stream reads from its group's position: leave offsets empty",
            field="offsets",
        )
    if subscribe.start.kind not in (
        broker_pb2.START_KIND_UNSPECIFIED,
        broker_pb2.START_KIND_EARLIEST,
        broker_pb2.START_KIND_LATEST,
    ):
        raise invalid_subscribe(
            "a CONSUME_MODE_QUEUE group starts at EARLIEST or LATEST (the default) of a"
            " partition it never read",
            field="start",
            kind=subscribe.start.kind,
        )
    deadline = subscribe.ack_deadline_ms or ACK_DEADLINE_MS_DEFAULT
    if not ACK_DEADLINE_MS_MIN <= deadline <= ACK_DEADLINE_MS_MAX:
        raise invalid_subscribe(
            f"ack_deadline_ms must be 0 (30000) or within {ACK_DEADLINE_MS_MIN}.."
            f"{ACK_DEADLINE_MS_MAX}, not {deadline}",
            field="ack_deadline_ms",
        )
    return deadline


async def serve_queue(
    context: Context,
    topic: Topic,
    subscribe: broker_pb2.Subscribe,
    credit: Credit,
    queues: QueueDispatcher,
    config: NodeConfig,
    stopping: asyncio.Event,
    add_credit: Any,
    controller_topic: Callable[[str], ctl.Topic] | None = None,
) -> None:
    """`controller_topic`: the cluster's placement, to guess the leaders of partitions
    with no replica here (None on a single node)."""
    deadline_ms = check_queue_subscribe(subscribe)
    numbers = partition_numbers(topic, subscribe)
    # Before any partition's queue is built: a record must never reach its
    # last delivery with no dead-letter topic to go to.
    check_dead_letters(topic.name, topic.config)
    local: list[int] = []
    remote: dict[int, list[int]] = {}  # leader node -> its partitions
    leaders = RelayLeaders(topic, queues.host, controller_topic)
    for number in numbers:
        leads, leader_id = leaders.of(number)
        if leads:
            local.append(number)
        elif is_relayed(context) or not leader_id or not queues.host.node_address(leader_id):
            # A relay is never relayed again; without a known leader, retry later.
            queues.leader_check(topic, number)
        else:
            remote.setdefault(leader_id, []).append(number)
    opened: dict[int, PartitionQueue] = {}
    relays: list[Relay] = []
    stream: _QueueStream | None = None
    try:
        for number in local:
            opened[number] = await queues.open(
                topic, number, subscribe.group, subscribe.start.kind, subscribe.ordered_keys
            )
        starts = {
            n: broker_pb2.PartitionStart(
                partition=n,
                offset=q.dispatch.cursor,
                log_start_offset=q.log.start_offset,
                end_offset=q.log.end_offset,
            )
            for n, q in opened.items()
        }
        stream = _QueueStream(
            context, topic, subscribe, opened, credit, queues, config, stopping, add_credit,
            deadline_ms, leaders,
        )  # fmt: skip
        for leader_id, partitions in remote.items():
            await stream.open_relays(leader_id, partitions, relays)
        for relay in relays:
            assert relay.subscribed is not None
            starts.update((p.partition, p) for p in relay.subscribed.partitions)
    except StorageError as exc:
        await _close_all(relays)
        raise storage_failure(exc, topic.name) from None
    except BaseException:
        await _close_all(relays)
        raise
    subscribed = broker_pb2.Subscribed(
        topic=topic.name,
        record_bytes_max=topic.config.record_bytes_max,
        partitions=[starts[n] for n in numbers],
    )
    try:
        await context.write(broker_pb2.ConsumeResponse(subscribed=subscribed).SerializeToString())
    except BaseException:
        await _close_all(relays)
        raise
    await stream.run(relays)


async def _close_all(relays: list[Relay]) -> None:
    await asyncio.gather(*(r.close() for r in relays), return_exceptions=True)


class _QueueStream:
    def __init__(
        self,
        context: Context,
        topic: Topic,
        subscribe: broker_pb2.Subscribe,
        opened: dict[int, PartitionQueue],
        credit: Credit,
        queues: QueueDispatcher,
        config: NodeConfig,
        stopping: asyncio.Event,
        add_credit: Any,
        deadline_ms: int,
        leaders: RelayLeaders,
    ) -> None:
        self._context = context
        self._topic = topic
        self._group = subscribe.group
        self._start_kind = subscribe.start.kind
        self._ordered_keys = subscribe.ordered_keys
        self._opened = opened
        self._order = collections.deque(opened)
        self._credit = credit
        self._queues = queues
        self._config = config
        self._stopping = stopping
        self._add_credit = add_credit
        self._deadline_ms = deadline_ms
        self.token = queues.new_token()
        self._wake = asyncio.Event()
        self._failure: BaseException | None = None
        self._client_done = False
        # A record handed out per partition that the byte credit could not pay yet.
        self._held: dict[int, HandedOut] = {}
        self._notified: set[int] = set()
        self._answers: collections.deque[bytes] = collections.deque()
        self._slots = asyncio.Semaphore(ANSWERS_INFLIGHT_MAX)
        self._open_answers = 0
        self._settlers: set[asyncio.Task[None]] = set()
        # Every partition queue this stream has records of (acks may name others).
        self._touched: dict[int, PartitionQueue] = dict(opened)
        # Partitions led by other nodes, each read through its leader's relay.
        self._subscribe = subscribe
        self._relays: dict[int, Relay] = {}
        self._leaders = leaders
        self._relay_tasks: set[asyncio.Task[None]] = set()
        # Serialized responses the relays received, for the writer. Bounded by
        # the credit granted to the relays (records) and the requests that
        # ANSWERS_INFLIGHT_MAX bounds (notices).
        self._relayed: collections.deque[bytes] = collections.deque()
        # This stream is itself a relay from another node: it never relays.
        self._relayed_here = is_relayed(context)
        # Per partition served here, its deliveries' encoder.
        self._encoders: dict[int, Callable[[int, int, int], bytes]] = {}
        self._topic_field = topic_field(self._topic.name)

    # Subscriber
    def wake(self) -> None:
        self._wake.set()

    def fail(self, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error
        self._wake.set()

    def queue_failed(self, queue: PartitionQueue, error: BrokerError) -> None:
        """A partition served here stopped: read it where it is led now (a relayed stream
        ends instead, so that the stream relaying it reopens)."""
        number = queue.partition
        if not error.retriable or self._relayed_here or self._opened.get(number) is not queue:
            self.fail(error)
            return
        del self._opened[number]
        self._order.remove(number)
        self._touched.pop(number, None)
        self._held.pop(number, None)
        task = asyncio.create_task(self._reopen([number], error))
        self._relay_tasks.add(task)
        task.add_done_callback(self._relay_tasks.discard)
        task.add_done_callback(self._on_task_done)

    def _failed(self) -> bool:
        return self._failure is not None

    # -- relays (queue_relay.py) -----------------------------------------------------

    def new_relay(self, leader_id: int, partitions: list[int]) -> Relay:
        relay = Relay(
            leader_id,
            self._queues.host.node_address(leader_id),
            self._subscribe,
            partitions,
            self._on_relayed,
            self._config.request_bytes_max,
            2 * self._config.keepalive_client_ping_interval_ms_min,
        )
        for number in partitions:
            self._relays[number] = relay
        return relay

    async def open_relays(self, leader_id: int, partitions: list[int], opened: list[Relay]) -> None:
        """Opens relays to the leader of `partitions`, appending them to `opened`.

        A guessed leader's refusal naming another leader, or a guess that
        cannot be reached, is followed to the next guess (at most
        GUESS_FOLLOWS_MAX times); any other refusal is raised.
        """
        pending = [(leader_id, partitions)]
        follows = 0
        while pending:
            leader_id, numbers = pending.pop()
            relay = self.new_relay(leader_id, numbers)
            try:
                await relay.open()
            except BrokerError as error:
                for number in numbers:
                    if self._relays.get(number) is relay:
                        del self._relays[number]
                follows += 1
                if (
                    not error.retriable
                    or follows > GUESS_FOLLOWS_MAX
                    or not self._leaders.learn(numbers, leader_id, error)
                ):
                    raise
                regrouped: dict[int, list[int]] = {}
                for number in numbers:
                    leads, guess = self._leaders.of(number)
                    if leads or not guess:
                        raise
                    regrouped.setdefault(guess, []).append(number)
                pending.extend(regrouped.items())
                continue
            self._leaders.opened(numbers, leader_id)
            opened.append(relay)

    def _on_relayed(self, relay: Relay, response: broker_pb2.ConsumeResponse) -> None:
        if response.WhichOneof("kind") == "notice" and relay.bytes_needed <= self._credit.bytes:
            self._wake.set()  # the writer grants the bytes; the client need not hear of it
            return
        self._relayed.append(response.SerializeToString())
        self._wake.set()

    def _start_relay(self, relay: Relay) -> None:
        task = asyncio.create_task(self._run_relay(relay))
        self._relay_tasks.add(task)
        task.add_done_callback(self._relay_tasks.discard)
        task.add_done_callback(self._on_task_done)

    async def _run_relay(self, relay: Relay) -> None:
        """Serve one relay until it ends, then reopen its partitions where they are led now."""
        try:
            error = await relay.run()
        finally:
            # What the relay was granted and did not use is the client's again.
            self._credit.messages += max(0, relay.granted_messages)
            self._credit.bytes += max(0, relay.granted_bytes)
            relay.granted_messages = relay.granted_bytes = 0
            self._wake.set()
            await relay.close()
        if error.code not in REOPEN_CODES and error.reason != "NOT_LEADER":
            raise error
        self._leaders.learn(relay.partitions, relay.leader_id, error)
        await self._reopen(relay.partitions, error)

    async def _reopen(self, partitions: list[int], cause: BrokerError) -> None:
        """Read `partitions` again where they are led now: here, or through a new relay."""
        for attempt in range(REOPEN_ATTEMPTS_MAX):
            if self._failure is not None:
                return
            remote: dict[int, list[int]] = {}
            try:
                for number in partitions:
                    leads, leader_id = self._leaders.of(number)
                    if leads:
                        queue = await self._queue_of(number)
                        self._relays.pop(number, None)
                        if number not in self._opened:
                            self._opened[number] = queue
                            self._order.append(number)
                            queue.attach(self)
                    elif leader_id and self._queues.host.node_address(leader_id):
                        remote.setdefault(leader_id, []).append(number)
                    else:
                        raise cause
                for leader_id, numbers in remote.items():
                    started: list[Relay] = []
                    try:
                        await self.open_relays(leader_id, numbers, started)
                    finally:
                        for relay in started:
                            self._start_relay(relay)
                        done = {n for relay in started for n in relay.partitions}
                        partitions = [n for n in partitions if n not in done]
                self._wake.set()  # the writer grants the new relays credit
                return
            except BrokerError as error:
                if not error.retriable:
                    raise
                cause = error
                partitions = [n for n in partitions if n not in self._opened]
                await asyncio.sleep(min(REOPEN_BACKOFF_MS_MAX, 50 << attempt) / 1000)
        raise cause

    async def _grant_relays(self) -> None:
        """Share the client's credit among relays that used theirs (never more than it)."""
        relays = list({id(r): r for r in self._relays.values()}.values())
        shares = len(relays) + (1 if self._opened else 0)
        for relay in relays:
            credit = self._credit
            if relay.failure is not None or relay.subscribed is None:
                continue
            if relay.bytes_needed and credit.bytes >= relay.bytes_needed:
                nbytes, relay.bytes_needed = relay.bytes_needed, 0
                credit.bytes -= nbytes
                await relay.grant(0, nbytes)
            if relay.granted_messages <= 0 and credit.messages > 0:
                messages = max(1, credit.messages // shares)
                nbytes = credit.bytes // shares if self._opened else credit.bytes // len(relays)
                credit.messages -= messages
                credit.bytes -= nbytes
                await relay.grant(messages, nbytes)

    async def run(self, relays: list[Relay] | None = None) -> None:
        for relay in relays or ():
            self._start_relay(relay)
        for queue in self._opened.values():
            queue.attach(self)
        tasks = [
            asyncio.create_task(read_requests(self._context, self)),
            asyncio.create_task(self._watch_stopping()),
        ]
        for task in tasks:
            task.add_done_callback(self._on_task_done)
        unlisten = self._queues.host.on_leader_change(self._on_leader)
        try:
            await self._write_loop()
        except StorageError as exc:
            raise storage_failure(exc, self._topic.name) from None
        finally:
            unlisten()
            for task in (*tasks, *self._settlers, *self._relay_tasks):
                task.cancel()
            try:
                await asyncio.gather(
                    *tasks, *self._settlers, *self._relay_tasks, return_exceptions=True
                )
                await asyncio.gather(
                    *(r.close() for r in set(self._relays.values())), return_exceptions=True
                )
            finally:
                # Also when the client's cancel reaches this handler during the
                # awaits above (its stream ended first): skipping this left the
                # stream's records in flight until their deadline (CI, 1 run in ~8).
                for queue in self._touched.values():
                    queue.detach(self, self.token)
        if self._failure is not None:
            raise self._failure

    def _on_leader(self, group_id: int, leader_id: int) -> None:
        """A group hosted here has a new leader: a relay still reading one of its
        partitions from another node is abandoned (queue_relay.py, "Ending")."""
        if not leader_id:
            return  # an election under way: its winner tells
        group_ids = self._topic.group_ids
        for number, relay in list(self._relays.items()):
            if (
                number < len(group_ids)
                and group_ids[number] == group_id
                and relay.leader_id != leader_id
            ):
                relay.abandon(leader_id)

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.fail(task.exception())  # type: ignore[arg-type]

    async def _watch_stopping(self) -> None:
        await self._stopping.wait()
        self.fail(shutting_down())

    # -- the writer ----------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            self._wake.clear()
            if self._failure is not None:
                return
            while self._answers:
                await self._context.write(self._answers.popleft())
                self._open_answers -= 1
                self._slots.release()
            sent = 0
            while self._relayed:
                await self._context.write(self._relayed.popleft())
                sent += 1
            if self._credit.usable:
                for _ in range(len(self._order)):
                    if not self._credit.usable or self._failed():
                        break
                    number = self._order[0]
                    self._order.rotate(-1)
                    sent += await self._send_from(number, self._opened[number])
            if self._relays:
                await self._grant_relays()
            if sent:
                continue
            if self._client_done and self._open_answers == 0:
                return
            await self._wake.wait()

    async def _send_from(self, number: int, queue: PartitionQueue) -> int:
        credit = self._credit
        items: list[HandedOut] = []
        charged = 0
        held = self._held.get(number)
        if held is not None:
            if held.record.charge > credit.bytes:
                if number not in self._notified:
                    self._notified.add(number)
                    await self._notice(number, held)
                return 0
            del self._held[number]
            items.append(held)
            charged = held.record.charge
        if queue.failure is not None:
            return 0  # queue_failed moved the partition (or failed the stream)
        if len(items) < credit.messages:
            more, over = queue.hand_out(
                self.token,
                min(credit.messages, RESPONSE_RECORDS_MAX) - len(items),
                credit.bytes - charged,
                self._config.consume_response_bytes_max - charged,
                self._deadline_ms + self._queues.clock_ms(),
            )
            items.extend(more)
            if over is not None:
                self._held[number] = over
                if not items and over.record.charge > credit.bytes and number not in self._notified:
                    self._notified.add(number)
                    await self._notice(number, over)
        if not items:
            return 0
        self._notified.discard(number)
        credit.messages -= len(items)
        credit.bytes -= sum(i.record.charge for i in items)
        # Built as bytes (server/wire.py): each record as stored, each
        # delivery from the partition's encoder. Filling a protobuf message
        # copied every record and cost a keyword call per delivery.
        encode = self._delivery_encoder(number)
        response = queue_batch_response(
            self._topic_field,
            number,
            items[0].delivery.offset,
            queue.log.end_offset,
            [i.record.framed for i in items],
            [encode(*i.delivery) for i in items],
        )
        await self._context.write(response)
        return 1

    def _delivery_encoder(self, partition: int) -> Callable[[int, int, int], bytes]:
        encode = self._encoders.get(partition)
        if encode is None:
            encode = self._encoders[partition] = delivery_encoder(self._group, partition)
        return encode

    async def _notice(self, number: int, held: HandedOut) -> None:
        needed = held.record.charge - self._credit.bytes
        notice = BrokerError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "CREDIT_TOO_SMALL",
            f"the record at offset {held.delivery.offset} of partition {number} costs"
            f" {held.record.charge} bytes of credit and {self._credit.bytes} remain: grant at"
            f" least {needed} more bytes",
            {
                "partition": number,
                "offset": held.delivery.offset,
                "record_bytes": held.record.charge,
                "credit_bytes": self._credit.bytes,
                "needed_bytes": needed,
            },
        )
        await self._context.write(
            broker_pb2.ConsumeResponse(notice=notice.to_proto()).SerializeToString()
        )

    # -- the reader ----------------------------------------------------------------

    # -- each request (consume_requests.RequestHandler) ----------------------

    def on_half_close(self) -> None:
        self._client_done = True
        self._wake.set()

    def on_refused(self, error: BrokerError) -> None:
        self.fail(error)

    def on_request(self) -> None:
        pass  # a queue stream has no session to keep alive

    def on_credit(self, grant: broker_pb2.Credit) -> None:
        self._add_credit(self._credit, grant)
        self._wake.set()

    async def on_settle(self, kind: str, body: Settlement) -> None:
        if len(body.ack_ids) > ACK_IDS_MAX:
            raise invalid(
                "TOO_MANY_ACK_IDS",
                f"an {kind} carries at most {ACK_IDS_MAX} ack ids, not {len(body.ack_ids)}",
                count=len(body.ack_ids),
                limit=ACK_IDS_MAX,
            )
        await self._take_slot()
        await self._settle(kind, body)

    async def on_commit(self, commit: broker_pb2.Commit) -> None:
        await self._take_slot()
        result = broker_pb2.CommitResult(
            commit_id=commit.commit_id, error=not_in_queue_mode("commit").to_proto()
        )
        self._answer(broker_pb2.ConsumeResponse(commit=result))

    async def on_seek(self, seek: broker_pb2.Seek) -> None:
        await self._take_slot()
        result = broker_pb2.SeekResult(
            seek_id=seek.seek_id,
            partition=seek.partition,
            error=not_in_queue_mode("seek").to_proto(),
        )
        self._answer(broker_pb2.ConsumeResponse(seek=result))

    def on_assignment_ack(self, ack: broker_pb2.AssignmentAck) -> None:
        raise not_in_queue_mode("assignment_ack")

    def on_heartbeat(self) -> None:
        raise not_in_queue_mode("heartbeat")

    async def _take_slot(self) -> None:
        await self._slots.acquire()
        self._open_answers += 1

    def _answer(self, response: broker_pb2.ConsumeResponse) -> None:
        self._answers.append(response.SerializeToString())
        self._wake.set()

    async def _queue_of(self, partition: int) -> PartitionQueue:
        queue = self._touched.get(partition)
        if queue is not None and queue.failure is None:
            return queue
        queue = await self._queues.open(
            self._topic, partition, self._group, self._start_kind, self._ordered_keys
        )
        self._touched[partition] = queue
        return queue

    async def _settle(self, kind: str, body: Settlement) -> None:
        """Apply an ack, nack or extension now; answer it once its turn is durable."""
        applied = await queue_settle.apply(
            self, self._group, self._topic.partition_count, kind, body
        )
        task = asyncio.create_task(self._answer_after(kind, body, applied))
        self._settlers.add(task)
        task.add_done_callback(self._settlers.discard)
        task.add_done_callback(self._on_task_done)

    async def _answer_after(
        self, kind: str, body: Settlement, applied: queue_settle.Applied
    ) -> None:
        self._answer(await queue_settle.answer(kind, body, applied))

    # queue_settle.SettleHost

    def relay_of(self, partition: int) -> Relay | None:
        return self._relays.get(partition)

    def live_queue(self, partition: int) -> PartitionQueue | None:
        queue = self._touched.get(partition)
        return queue if queue is not None and queue.failure is None else None

    async def queue_of(self, partition: int) -> PartitionQueue:
        return await self._queue_of(partition)

    def clock_ms(self) -> int:
        return self._queues.clock_ms()


__all__ = ["check_queue_subscribe", "not_in_queue_mode", "serve_queue"]
