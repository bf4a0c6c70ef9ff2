"""Queue mode at the partition leader: one live dispatch state per (partition, queue group).

`QueueDispatcher` (one per node) keeps a `PartitionQueue` for each
partition this node leads and queue group a stream asked for. It is built
on first use (`open`) from the partition's applied queue state with
`QueueDispatch.become_leader`, after one control entry of this node's own
(so that, in a cluster, the applied state holds every entry committed
before): a group new to the partition starts at the log's end (LATEST, the
default) or start (EARLIEST), written as `below_log_start` of that offset;
a known one writes off what retention deleted. It is dropped when this node
stops leading the partition (its streams end with NOT_LEADER), when a
control write fails (the applied state is the truth again), and when the
topic is deleted.

A `PartitionQueue` owns two tasks:

- the **turn loop** replicates what the state recorded: each turn it
  expires deadlines, takes the control records (`take_control()`) and
  writes them as one QUEUE_CONTROL entry (chunks of the codec's limit),
  awaiting it before the next turn, so at most one write is in flight per
  partition and group, and starts at most one turn per
  `TURN_INTERVAL_MS_MIN`. Each control entry is a Raft entry of the
  partition itself, paid by every replica like a produced batch: at 2,000
  records/s a turn per hand-out made one entry per few records, and the
  partition's produce-to-delivery p50 rose from ~14 to ~21 ms (measured with
  control writes off, then with a 10 ms interval: ~14 ms). Acks and nacks
  wait for the turn that carries them (`next_turn()`), so an ack's answer
  takes up to that interval more. It wakes on any change, at `next_wakeup_ms()` and, while
  records wait for a stream with credit, at least every `IDLE_POLL_MS` (a
  deadline can then be later than the due time `next_wakeup_ms` names);
- the **dead-letter loop** appends each `DeadLetter` to the dead-letter
  topic (queue_deadletter.py), retrying with backoff, then confirms it.

Streams (consume_queue.py) call `hand_out` with their credit: records are
read from the log (queue_records.py): the candidates are the offsets from
the cursor on plus the due delayed offsets below it, which the delay index
finds. The index is paged with a position that moves past rows the state
has settled, and is polled every `DELAY_POLL_MS` while the partition has
delayed rows and a stream is attached, since it cannot say when its next
row becomes due.

Records below the log start: if retention deleted records the group had
not settled (the log start passed the low watermark), the live state is
rebuilt: the turn's records are written, then `below_log_start` of the
applied state, and the state is built again from the applied state (records
in flight go back at once, attempt counted, as after a leader change).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import random
from collections.abc import Callable, Iterator
from typing import NamedTuple, Protocol

import grpc

from weir.cluster.queue import (
    AppliedQueueState,
    Candidate,
    DeadLetter,
    Delivery,
    Outcome,
    QueueConfig,
    QueueDispatch,
    QueueError,
    Redelivery,
    encode_control,
)
from weir.cluster.queue.codec import RECORDS_PER_BATCH_MAX
from weir.cluster.queue.types import ControlRecord
from weir.cluster.storage import PartitionLog
from weir.cluster.storage.delays import DelayedRecord
from weir.server.errors import BrokerError, not_leader, replica_not_available, topic_not_found
from weir.server.queue_deadletter import DeadLetterSink
from weir.server.queue_hosts import QueueHost, write_failure
from weir.server.queue_records import QueueRecord, read_from, read_one
from weir.server.replicator import NotHostedError
from weir.server.topics import Topic
from weir.v1 import broker_pb2

log = logging.getLogger("weir.server.queue")

# The longest nack delay and error a consumer may send (broker.proto `Nack`).
NACK_DELAY_MS_MAX = 86_400_000
NACK_ERROR_BYTES_MAX = 1024
# A partition's queue group starts a turn (one control entry) at most this often.
TURN_INTERVAL_MS_MIN = 10
# The turn loop looks again at least this often while records wait for credit.
IDLE_POLL_MS = 100
# The delay index is polled this often while it has rows and streams wait.
DELAY_POLL_MS = 200
# Reads past records not due yet per hand-out (the stream is woken to go on).
SCAN_READS_MAX = 8
# Due delayed rows read per hand-out.
DELAYED_PAGE_MAX = 256
# A dead letter that failed is tried again after this, doubling up to the max.
DEAD_LETTER_RETRY_MS_MIN = 200
DEAD_LETTER_RETRY_MS_MAX = 30_000

Key = tuple[int, str]  # (partition group id, queue group)


def queue_config(topic: Topic, ordered_keys: bool) -> QueueConfig:
    """The group's settings on the topic's partitions (topic config, `Subscribe.ordered_keys`)."""
    config = topic.config
    return QueueConfig(
        max_deliveries=config.max_deliveries,
        retry_backoff_ms_min=min(config.retry_backoff_ms_min, config.retry_backoff_ms_max),
        retry_backoff_ms_max=config.retry_backoff_ms_max,
        ordered_keys=ordered_keys,
        nack_delay_ms_max=NACK_DELAY_MS_MAX,
        nack_reason_bytes_max=NACK_ERROR_BYTES_MAX,
    )


def queue_groups_full(topic: str, partition: int, message: str) -> BrokerError:
    return BrokerError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "QUEUE_GROUPS_FULL",
        message,
        {"topic": topic, "partition": partition},
    )


def queue_error(error: QueueError) -> BrokerError:
    """A state machine refusal as the `Error` of an `AckFailure`."""
    return BrokerError(getattr(grpc.StatusCode, error.code), error.reason, error.message)


class Subscriber(Protocol):
    """A stream attached to partition queues: woken when records may be ready."""

    def wake(self) -> None: ...

    def queue_failed(self, queue: PartitionQueue, error: BrokerError) -> None:
        """`queue` stopped serving (NOT_LEADER, a failed write, a deleted topic)."""
        ...


class HandedOut(NamedTuple):  # one per record handed out (cluster/queue/types.py: why)
    delivery: Delivery
    record: QueueRecord


class PartitionQueue:
    """One queue group on one partition this node leads (see the module docstring)."""

    def __init__(
        self,
        dispatcher: QueueDispatcher,
        topic: Topic,
        partition: int,
        group: str,
        log_: PartitionLog,
        dispatch: QueueDispatch,
        letters: tuple[DeadLetter, ...],
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.group = group
        self.group_id = topic.group_ids[partition]
        self.log = log_
        self.dispatch = dispatch
        self._dispatcher = dispatcher
        self._clock_ms = dispatcher.clock_ms
        self._streams: list[Subscriber] = []
        self._dirty = asyncio.Event()
        self._turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._letters: collections.deque[DeadLetter] = collections.deque(letters)
        self._letter_ready = asyncio.Event()
        if letters:
            self._letter_ready.set()
        self._buffer: collections.deque[QueueRecord] = collections.deque()
        self._delay_after: DelayedRecord | None = None
        self._rebase_wanted = False
        self._last_turn_s = 0.0
        self.failure: BrokerError | None = None
        self._tasks: list[asyncio.Task[None]] = []
        log_.add_listener(self._on_log_event)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._turn_loop(), name=f"queue turns {self.group_id}"),
            asyncio.create_task(self._dead_letter_loop(), name=f"dead letters {self.group_id}"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._on_task_done)

    async def close(self) -> None:
        self.log.remove_listener(self._on_log_event)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- streams ---------------------------------------------------------------

    def attach(self, stream: Subscriber) -> None:
        self._check()
        self._streams.append(stream)
        stream.wake()

    def detach(self, stream: Subscriber, token: int) -> None:
        """The stream ended: its records go back at once (attempt counted)."""
        with contextlib.suppress(ValueError):
            self._streams.remove(stream)
        if self.failure is None:
            self._settle(self.dispatch.stream_closed(token, self._clock_ms()))

    def _wake_streams(self) -> None:
        for stream in list(self._streams):
            stream.wake()

    def _on_log_event(self) -> None:
        if self.log.closed:
            self.fail(topic_not_found(self.topic.name))
            return
        self._wake_streams()

    def fail(self, error: BrokerError) -> None:
        """Stop serving: every attached stream ends with `error`, waiting acks fail with it."""
        if self.failure is not None:
            return
        self.failure = error
        if not self._turn.done():
            self._turn.set_exception(error)
            self._turn.exception()
        for stream in list(self._streams):
            stream.queue_failed(self, error)
        self._streams.clear()
        self._dispatcher.forget(self)

    def _check(self) -> None:
        if self.failure is not None:
            raise self.failure

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            return
        if isinstance(error, BrokerError):
            self.fail(error)
            return
        log.error("queue task %s failed", task.get_name(), exc_info=error)
        self.fail(
            BrokerError(
                grpc.StatusCode.INTERNAL,
                "INTERNAL",
                f"queue dispatch of partition {self.partition} failed: {error!r}",
            )
        )

    # -- handing out -------------------------------------------------------------

    def hand_out(
        self, token: int, records_max: int, bytes_max: int, bytes_soft_max: int, deadline_ms: int
    ) -> tuple[list[HandedOut], HandedOut | None]:
        """Records for stream `token` within `records_max` and `bytes_max` of byte credit.

        Records go one by one; the first one that would pass `bytes_max` (or
        `bytes_soft_max`, a response's size, once some are taken) is handed
        out anyway and returned apart: the stream holds it (in flight, its
        deadline running) and sends it first when its credit allows.
        """
        self._check()
        if self._rebase_wanted or self.log.start_offset > self.dispatch.acked.low_watermark:
            # Retention deleted records the group has not settled.
            self._rebase_wanted = True
            self._dirty.set()
            return [], None
        now = self._clock_ms()
        deadline_ms = max(deadline_ms, now)
        delayed = self._due_delayed(now)
        out: list[HandedOut] = []
        charged = 0
        over: HandedOut | None = None
        reads = 0
        while len(out) < records_max:
            # Lazily: `deliver` stops at its last delivery, so a call costs
            # what it looks at, not the whole buffer (built for every record,
            # the candidate list made handing out quadratic in the buffer).
            scan = self._scan_candidates()
            if not delayed and self._buffer:
                # The fast lane: new records without a key or a future
                # `deliver_at` go out as one run (QueueDispatch.deliver_new).
                plain = self._plain_prefix(
                    records_max - len(out), bytes_max - charged, bytes_soft_max - charged, now, out
                )
                first = self.dispatch.cursor
                count = (
                    self.dispatch.deliver_new(token, len(plain), deadline_ms, now) if plain else 0
                )
                if count:
                    taken = plain[:count]
                    charged += sum(r.charge for r in taken)
                    # The tuples built in C (map over tuple.__new__): a NamedTuple's
                    # own constructor is a Python call per record.
                    offsets = zip(
                        range(first, first + count),
                        itertools.repeat(1),
                        itertools.repeat(deadline_ms),
                    )
                    deliveries = map(tuple.__new__, itertools.repeat(Delivery), offsets)
                    out.extend(
                        map(
                            tuple.__new__,
                            itertools.repeat(HandedOut),
                            zip(deliveries, taken, strict=True),
                        )
                    )
                    continue
            limit = 1
            if not delayed and self._buffer and self.dispatch.only_new_records(now):
                # Only records of the buffer can go: as many as fit in the
                # credit even if each were its largest (one call for many
                # records; one each cost a call's overhead per record).
                room = min(bytes_max, bytes_soft_max) - charged
                largest = max(r.charge for r in self._buffer) or 1
                limit = max(1, min(records_max - len(out), room // largest))
            got = self.dispatch.deliver(
                token, limit, deadline_ms, now, itertools.chain(delayed, scan)
            )
            if not got:
                if self._buffer or self.dispatch.cursor >= self.log.end_offset:
                    break
                # The buffer ran out at the cursor (every record in it passed
                # over: not due yet): read on, a bounded number of times per
                # call so that a long run of delayed records cannot hold the loop.
                reads += 1
                if reads >= SCAN_READS_MAX:
                    self._wake_streams()
                    break
                continue
            stop = False
            for delivery in got:
                record = self._record_at(delivery.offset)
                if record is None:
                    # Retention deleted it since: settled as the rebuild does.
                    assert len(got) == 1, "a record of the buffer is missing"
                    self._rebase_wanted = True
                    self._dirty.set()
                    stop = True
                    break
                item = HandedOut(delivery, record)
                if charged + record.charge > bytes_max or (
                    out and charged + record.charge > bytes_soft_max
                ):
                    assert len(got) == 1, "a record past the credit was handed out"
                    over = item
                    stop = True
                    break
                out.append(item)
                charged += record.charge
            if stop:
                break
        if out or over is not None:
            self._dirty.set()
        return out, over

    def _plain_prefix(
        self,
        records_max: int,
        bytes_max: int,
        bytes_soft_max: int,
        now_ms: int,
        taken: list[HandedOut],
    ) -> list[QueueRecord]:
        """The buffer's first records (from the cursor) that have no key, are
        due and fit the credit (`bytes_soft_max` once some are taken), in order."""
        plain: list[QueueRecord] = []
        charged = 0
        for record in self._buffer:
            if len(plain) >= records_max or record.key_hash is not None:
                break
            if record.deliver_at_ms is not None and record.deliver_at_ms > now_ms:
                break
            charged += record.charge
            if charged > bytes_max or ((taken or plain) and charged > bytes_soft_max):
                break
            plain.append(record)
        return plain

    def _scan_candidates(self) -> Iterator[Candidate]:
        cursor = self.dispatch.cursor
        buffer = self._buffer
        while buffer and buffer[0].offset < cursor:
            buffer.popleft()
        if buffer and buffer[0].offset != cursor:
            buffer.clear()
        if not buffer and cursor < self.log.end_offset:
            buffer.extend(read_from(self.log, cursor))
        return (r.candidate() for r in buffer)

    def _record_at(self, offset: int) -> QueueRecord | None:
        buffer = self._buffer
        # The buffer holds dense offsets (read_from), so its index is the offset's.
        if buffer and 0 <= offset - buffer[0].offset < len(buffer):
            record = buffer[offset - buffer[0].offset]
            assert record.offset == offset, (record.offset, offset)
            return record
        return read_one(self.log, offset)

    def _due_delayed(self, now_ms: int) -> list[Candidate]:
        """Due delayed records below the cursor, as candidates; moves the index position on."""
        rows = self.log.due_delayed(now_ms, self._delay_after, DELAYED_PAGE_MAX)
        candidates: list[DelayedRecord] = []
        settled = True
        cursor = self.dispatch.cursor
        for row in rows:
            if row.offset < cursor:
                status = self.dispatch.status(row.offset)
                if status == "passed_over":
                    candidates.append(row)
                    settled = False
                    continue
            if settled:
                self._delay_after = row
        result: list[Candidate] = []
        for row in candidates:
            record = read_one(self.log, row.offset)
            if record is not None:
                result.append(record.candidate())
        return result

    # -- consumers' answers -----------------------------------------------------

    def ack(self, offset: int, attempt: int) -> Outcome | QueueError:
        return self.ack_many([(offset, attempt)])[0]

    def ack_many(self, acks: list[tuple[int, int]]) -> list[Outcome | QueueError]:
        """Acks (offset, attempt) pairs in order; one wake-up for all of them."""
        self._check()
        ack, ack_run = self.dispatch.ack, self.dispatch.ack_run
        outcomes: list[Outcome | QueueError] = []
        count = len(acks)
        i = 0
        while i < count:
            # A run of consecutive offsets of one attempt, as a consumer acking
            # what it got in order sends: one call for the run when it is one
            # handed out together (QueueDispatch.ack_run), else one per record.
            first, attempt = acks[i]
            j = i + 1
            while j < count and acks[j] == (first + j - i, attempt):
                j += 1
            if j - i > 1 and ack_run(first, first + j - i, attempt):
                outcomes += itertools.repeat(Outcome.ACKED, j - i)
            else:
                outcomes += [ack(offset, attempt) for offset, attempt in acks[i:j]]
            i = j
        if Outcome.ACKED in outcomes:
            self._dirty.set()
            self._wake_streams()  # room under the bound, a key freed
        return outcomes

    def nack(
        self, offset: int, attempt: int, delay_ms: int | None, reason: str
    ) -> Outcome | QueueError | None:
        """None: the record waits for redelivery (or its dead letter)."""
        self._check()
        answer = self.dispatch.nack(offset, attempt, delay_ms, reason, self._clock_ms())
        if isinstance(answer, Redelivery | DeadLetter):
            self._settle((answer,))
            return None
        return answer

    def extend(
        self, offset: int, attempt: int, token: int, deadline_ms: int
    ) -> Outcome | QueueError:
        self._check()
        return self.dispatch.extend(offset, attempt, token, deadline_ms)

    def poke(self) -> None:
        """Run a turn now (expire deadlines, wake the streams)."""
        self._dirty.set()

    def next_turn(self) -> asyncio.Future[None]:
        """Resolves when everything the state recorded so far is durable (committed)."""
        self._check()
        self._dirty.set()
        return self._turn

    def _settle(self, answers: tuple[Redelivery | DeadLetter, ...]) -> None:
        for answer in answers:
            if isinstance(answer, DeadLetter):
                self._letters.append(answer)
                self._letter_ready.set()
        if answers:
            self._dirty.set()

    # -- the turn loop -------------------------------------------------------------

    async def _turn_loop(self) -> None:
        while True:
            await self._wait_for_turn()
            # At most one control entry per TURN_INTERVAL_MS_MIN (module docstring).
            loop = asyncio.get_running_loop()
            rest_s = self._last_turn_s + TURN_INTERVAL_MS_MIN / 1000 - loop.time()
            if rest_s > 0:
                await asyncio.sleep(rest_s)
            self._last_turn_s = loop.time()
            self._dirty.clear()
            self._settle(self.dispatch.expire(self._clock_ms()))
            turn, self._turn = self._turn, asyncio.get_running_loop().create_future()
            try:
                await self._write(self.dispatch.take_control())
                if self._rebase_wanted:
                    await self._rebase()
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                error = write_failure(exc, self.topic.name, self.partition, self._dispatcher.host)
                if not turn.done():
                    turn.set_exception(error)
                    turn.exception()
                raise error from None
            if not turn.done():
                turn.set_result(None)
            self._wake_streams()

    async def _wait_for_turn(self) -> None:
        now = self._clock_ms()
        wakeup = self.dispatch.next_wakeup_ms()
        timeout_ms: int | None = None
        if wakeup is not None:
            # Past due: records wait for a stream's credit; look again soon.
            timeout_ms = wakeup - now if wakeup > now else IDLE_POLL_MS
        if self._streams and self.log.delayed_count():
            timeout_ms = DELAY_POLL_MS if timeout_ms is None else min(timeout_ms, DELAY_POLL_MS)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(None if timeout_ms is None else timeout_ms / 1000):
                await self._dirty.wait()
        if not self._dirty.is_set():
            self._wake_streams()  # something became due

    async def _write(self, records: list[ControlRecord], *, settle: bool = False) -> None:
        for first in range(0, len(records), RECORDS_PER_BATCH_MAX):
            chunk = records[first : first + RECORDS_PER_BATCH_MAX]
            await self._dispatcher.host.write(
                self.group_id, encode_control(self.group, chunk), settle=settle
            )

    async def _rebase(self) -> None:
        """Write off what retention deleted and rebuild the live state from the applied one."""
        applied = self.log.queue_state(self.group) or AppliedQueueState()
        await self._write(list(applied.below_log_start(self.log.start_offset)), settle=True)
        applied = self.log.queue_state(self.group) or AppliedQueueState()
        self.dispatch, letters = QueueDispatch.become_leader(
            applied, self.dispatch.config, self._dispatcher.rng, self._clock_ms()
        )
        self._buffer.clear()
        self._delay_after = None
        self._letters = collections.deque(letters)
        self._letter_ready.set()
        self._rebase_wanted = False

    # -- dead letters --------------------------------------------------------------

    async def _dead_letter_loop(self) -> None:
        retry_ms = DEAD_LETTER_RETRY_MS_MIN
        while True:
            await self._letter_ready.wait()
            if not self._letters:
                self._letter_ready.clear()
                continue
            letter = self._letters[0]
            if self.dispatch.status(letter.offset) != "dead_lettering":
                self._letters.popleft()  # acked meanwhile, or the state was rebuilt
                continue
            record = read_one(self.log, letter.offset)
            if record is not None:
                try:
                    await self._dispatcher.dead_letters.write(
                        self.topic, self.partition, letter.offset, record.decoded(), letter
                    )
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # an operating error: retried, the record stays pending
                    log.warning(
                        "dead letter of %s[%d]@%d failed, retrying in %d ms: %r",
                        self.topic.name, self.partition, letter.offset, retry_ms, exc,
                    )  # fmt: skip
                    await asyncio.sleep(retry_ms / 1000)
                    retry_ms = min(DEAD_LETTER_RETRY_MS_MAX, retry_ms * 2)
                    continue
            retry_ms = DEAD_LETTER_RETRY_MS_MIN
            self._letters.popleft()
            if self.dispatch.status(letter.offset) == "dead_lettering":
                self.dispatch.dead_letter_written(letter.offset)
                self._dirty.set()
                self._wake_streams()


class QueueDispatcher:
    """Every `PartitionQueue` of this node; an async context manager owns their tasks."""

    def __init__(
        self,
        host: QueueHost,
        dead_letters: DeadLetterSink,
        clock_ms: Callable[[], int],
        rng: random.Random | None = None,
    ) -> None:
        self.host = host
        self.dead_letters = dead_letters
        self.clock_ms = clock_ms
        self.rng = rng or random.Random()
        self._queues: dict[Key, PartitionQueue] = {}
        self._opening: dict[Key, asyncio.Future[PartitionQueue]] = {}
        self._tokens = itertools.count(1)
        self._closing: set[asyncio.Task[None]] = set()
        self._unlisten: Callable[[], None] = lambda: None

    async def __aenter__(self) -> QueueDispatcher:
        self._unlisten = self.host.on_leader_change(self._on_leader)
        return self

    async def __aexit__(self, *_: object) -> None:
        self._unlisten()
        queues = list(self._queues.values())
        self._queues.clear()
        await asyncio.gather(*(q.close() for q in queues), return_exceptions=True)
        await asyncio.gather(*self._closing, return_exceptions=True)

    def tick(self) -> None:
        """Every queue looks at the clock again now (a clock that jumps: tests)."""
        for queue in self._queues.values():
            queue.poke()

    def new_token(self) -> int:
        return next(self._tokens)

    def get(self, topic: Topic, partition: int, group: str) -> PartitionQueue | None:
        queue = self._queues.get((topic.group_ids[partition], group))
        return queue if queue is not None and queue.topic.group_ids == topic.group_ids else None

    def forget(self, queue: PartitionQueue) -> None:
        key = (queue.group_id, queue.group)
        if self._queues.get(key) is queue:
            del self._queues[key]
        task = asyncio.get_running_loop().create_task(queue.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _on_leader(self, group_id: int, leader_id: int) -> None:
        for (gid, _), queue in list(self._queues.items()):
            if gid == group_id and not self.host.leader(group_id)[0]:
                queue.fail(
                    not_leader(
                        queue.topic.name,
                        queue.partition,
                        leader_id,
                        self.host.node_address(leader_id),
                    )
                )

    def leader_check(self, topic: Topic, partition: int) -> None:
        """NOT_LEADER (naming the leader) unless this node leads the partition."""
        leads, leader_id = self.host.leader(topic.group_id(partition))
        if not leads:
            raise not_leader(topic.name, partition, leader_id, self.host.node_address(leader_id))

    async def open(
        self, topic: Topic, partition: int, group: str, start_kind: int, ordered_keys: bool
    ) -> PartitionQueue:
        """The partition's queue of `group`, built on first use (module docstring)."""
        self.leader_check(topic, partition)
        key = (topic.group_id(partition), group)
        while True:
            queue = self._queues.get(key)
            if queue is not None and queue.failure is None:
                return queue
            opening = self._opening.get(key)
            if opening is None:
                break
            await asyncio.shield(opening)
        future: asyncio.Future[PartitionQueue] = asyncio.get_running_loop().create_future()
        self._opening[key] = future
        try:
            queue = await self._build(topic, partition, group, start_kind, ordered_keys)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()
            raise
        finally:
            del self._opening[key]
        if not self.host.leader(key[0])[0]:
            await queue.close()
            self.leader_check(topic, partition)
        self._queues[key] = queue
        queue.start()
        future.set_result(queue)
        return queue

    async def _build(
        self, topic: Topic, partition: int, group: str, start_kind: int, ordered_keys: bool
    ) -> PartitionQueue:
        group_id = topic.group_id(partition)
        try:
            log_ = self.host.log(group_id)
        except NotHostedError:
            raise replica_not_available(topic.name, partition) from None
        applied = log_.queue_state(group)
        if applied is None:
            proposed = [g for gid, g in self._opening if gid == group_id and g != group]
            refused = log_.check_queue_group(group, proposed)
            if refused is not None:
                raise queue_groups_full(topic.name, partition, refused.message)
            start = (
                log_.start_offset
                if start_kind == broker_pb2.START_KIND_EARLIEST
                else log_.end_offset
            )
            records = AppliedQueueState().below_log_start(start)
        else:
            records = applied.below_log_start(log_.start_offset)
        if records or applied is None or self.host.clustered:
            # In a cluster an entry of this term makes the applied state
            # current (every entry before it is committed and applied).
            try:
                await self.host.write(group_id, encode_control(group, records), settle=True)
            except (BrokerError, asyncio.CancelledError):
                raise
            except Exception as exc:
                raise write_failure(exc, topic.name, partition, self.host) from None
        applied = log_.queue_state(group) or AppliedQueueState()
        dispatch, letters = QueueDispatch.become_leader(
            applied, queue_config(topic, ordered_keys), self.rng, self.clock_ms()
        )
        return PartitionQueue(self, topic, partition, group, log_, dispatch, letters)


__all__ = [
    "HandedOut",
    "PartitionQueue",
    "QueueDispatcher",
    "Subscriber",
    "queue_config",
    "queue_error",
]
