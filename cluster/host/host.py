"""`RaftHost`: every Raft group of one node, its peer transport and its driver.

The host is what the node's server talks to. It starts and stops groups
(opening their LMDB storage and bootstrapping new ones), takes proposals
(record batches for partition groups, opaque commands for the controller,
group 0), answers status questions, and owns two things that run: the peer
transport and one driver task (driver.py) that serves every group's Ready
and ticks the awake ones (group.py explains quiescence). Both belong to one
TaskGroup inside `async with host:`; a driver that dies fails every waiter
with `OutcomeUnknownError` and takes the host down with it, so its owner
sees the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from types import TracebackType

import grpc.aio

from ..raft.storage import bootstrap
from ..raft.types import HardState, Message, NodeId, NotLeader, ProposalDropped, Role
from ..storage.codec import BatchKind, encode_batch, encode_partition_snapshot
from ..storage.errors import StorageError
from ..storage.log import PartitionLog, RetentionPlan
from ..storage.node import NodeStorage
from ..storage.producers import Duplicate, InFlight, ProducerFields, TailBatch, decide, encode_table
from ..storage.queues import encode_table as encode_queue_table
from ..transport.service import add_peer_service
from ..transport.transport import PeerTransport
from .coalesce import Pending
from .config import HostConfig, HostStats
from .driver import Driver, LeaderListener
from .errors import (
    GroupNotFoundError,
    HostError,
    HostStoppedError,
    NotLeaderError,
    OutcomeUnknownError,
    ProposalDroppedError,
)
from .group import ApplyCallback, Group, SnapshotCallback
from .producers import ProducerTail, tail_of
from .tickets import AppendTicket, ProposalTicket, Waiters, fail_ticket

logger = logging.getLogger(__name__)


def _monotonic_ms() -> float:
    return time.monotonic() * 1000


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class RaftHost:
    def __init__(
        self,
        config: HostConfig,
        storage: NodeStorage,
        rng: random.Random,
        clock_ms: Callable[[], float] = _monotonic_ms,
        *,
        wall_clock_ms: Callable[[], int] = _wall_ms,
    ) -> None:
        self.config = config
        self.node_id = config.node_id
        self._storage = storage
        self._rng = rng
        self._clock_ms = clock_ms
        self._wall_clock_ms = wall_clock_ms
        self._raft_config = config.raft_config()
        self._stats = HostStats()
        self._transport = PeerTransport(
            config.transport_config(),
            self._on_receive,
            peers=dict(config.peers),
            rng=random.Random(rng.getrandbits(64)),
            clock_ms=clock_ms,
        )
        self._driver = Driver(
            config.node_id,
            storage,
            self._transport,
            self._stats,
            quiesce=config.quiesce,
            flush=self._flush_pending,
        )
        self._stack: contextlib.AsyncExitStack | None = None
        self._task: asyncio.Task[None] | None = None
        self._running = False
        self._failure: BaseException | None = None
        # Idempotent producers' batches beyond each led group's applied index.
        self._producer_tails: dict[int, ProducerTail] = {}
        # Appends waiting to be proposed as one entry per group (coalesce.py).
        self._pending: dict[int, Pending] = {}
        self._append_bytes_max = self._raft_config.append_bytes_max

    # ---- lifecycle ------------------------------------------------------------------

    def add_peer_service(self, server: grpc.aio.Server) -> None:
        """Serves the peer transport on `server` (call before `server.start()`)."""
        add_peer_service(server, self._transport)

    async def __aenter__(self) -> RaftHost:
        assert self._stack is None, "a RaftHost runs once"
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            await stack.enter_async_context(self._transport)
            tasks = await stack.enter_async_context(asyncio.TaskGroup())
            stack.callback(self._transport.add_liveness_listener(self._driver.on_liveness))
            self._task = tasks.create_task(self._run(), name=f"raft-host-{self.node_id}")
        except BaseException as exc:
            await stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._stack = stack
        self._running = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._stack is not None
        self._running = False
        if self._task is not None:
            self._task.cancel()
        self._fail_all("host stopped")
        await self._stack.__aexit__(exc_type, exc, tb)

    async def _run(self) -> None:
        driver = self._driver
        clock = self._clock_ms
        tick_ms = self.config.tick_ms
        next_tick = clock() + tick_ms
        try:
            while True:
                now = clock()
                if now >= next_tick:
                    driver.tick(now)
                    next_tick += tick_ms
                    if next_tick <= now:
                        # Behind (a long turn): skip the missed ticks, never burst.
                        next_tick = now + tick_ms
                driver.wake_event.clear()
                if driver.dirty:
                    await driver.turn()
                    continue
                delay_s = (next_tick - clock()) / 1000
                if delay_s > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay_s):
                            await driver.wake_event.wait()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            logger.exception("raft host driver of node %d died", self.node_id)
            self._failure = exc
            self._running = False
            self._fail_all(f"driver died: {exc!r}")
            raise

    def _fail_all(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for item in pending.values():
            error = OutcomeUnknownError(item.group.group_id, reason)
            for ticket, _ in item.tickets:
                fail_ticket(ticket, error)
        for group in self._driver.groups.values():
            group.waiters.fail_all(OutcomeUnknownError(group.group_id, reason))
            self._give_back_reservation(group)
        self._driver.waiting.clear()

    @staticmethod
    def _give_back_reservation(group: Group) -> None:
        """Returns what a dead driver held of the writer's budget.

        The writer's close waits until no bytes are reserved; a driver that
        died between reserving and flushing would otherwise leave the node
        hanging on SIGTERM. `flush()` submits nothing: it only releases the
        unused reservation and hands back a future, which nobody awaits here.
        """
        group.reserved_bytes = 0
        if group.storage.failed is not None:
            return
        try:
            done = group.storage.flush()
        except StorageError:
            return
        done.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _check_running(self) -> None:
        if not self._running:
            raise HostStoppedError(
                f"raft host of node {self.node_id} is not running"
                + (f" (driver died: {self._failure!r})" if self._failure else "")
            )

    async def _on_receive(self, frm: NodeId, messages: Sequence[tuple[int, Message]]) -> None:
        await self._driver.receive(frm, messages)

    def set_peer(self, node_id: NodeId, address: str) -> None:
        """Adds a peer node or moves it to a new address."""
        self._transport.set_peer(node_id, address)

    # ---- groups ---------------------------------------------------------------------

    def start_group(
        self,
        group_id: int,
        voters: Sequence[NodeId],
        *,
        partition: bool,
        on_apply: ApplyCallback | None = None,
        on_snapshot: SnapshotCallback | None = None,
        campaign: bool = False,
    ) -> None:
        """Runs `group_id` on this node; a brand-new group is bootstrapped with `voters`.

        `campaign`: if the group is brand-new here, this node campaigns as
        soon as the founding configuration is applied (its first turn), so a
        new partition's preferred leader leads at once instead of whoever's
        random election timer fires first.

        Every founding member must pass the same voters, so all start from
        identical logs. A node that is not among `voters` (a replica being
        added later) starts empty and learns the group from its leader. `on_apply(entry)` is called for each committed NORMAL
        entry in order (partition groups: after the apply is submitted; its
        return value resolves the proposer's ticket); `on_snapshot(data)`
        restores an opaque group's state machine from a snapshot (at start,
        and when the leader sends one). An opaque group replays its log from
        its snapshot at every start, since its state machine lives in memory.
        """
        self._check_running()
        if group_id in self._driver.groups:
            raise ValueError(f"group {group_id} already runs")
        storage = self._storage.raft_storage(group_id, partition=partition)
        bootstrapped = False
        if (
            self.node_id in voters
            and storage.last_index() == 0
            and storage.snapshot().meta.index == 0
            and storage.hard_state() == HardState()
        ):
            bootstrap(storage, sorted(set(voters)))
            bootstrapped = True
        group = Group(
            group_id,
            self._raft_config,
            storage,
            random.Random(self._rng.getrandbits(64)),
            Waiters(group_id, asyncio.get_running_loop()),
            partition=partition,
            on_apply=on_apply,
            on_snapshot=on_snapshot,
            quiesce_after_ticks=self.config.quiesce_after_ticks,
        )
        group.campaign_pending = campaign and bootstrapped
        self._driver.groups[group_id] = group
        self._driver.wake(group)
        self._driver.mark(group)

    def stop_group(self, group_id: int) -> None:
        """Stops running `group_id` here (its data stays); its waiters resolve unknown."""
        driver = self._driver
        group = driver.groups.pop(group_id, None)
        self._producer_tails.pop(group_id, None)
        pending = self._pending.pop(group_id, None)
        if pending is not None:
            for ticket, _ in pending.tickets:
                fail_ticket(ticket, OutcomeUnknownError(group_id, "group stopped"))
        if group is None:
            return
        group.stopped = True
        driver.active.pop(group, None)
        driver.dirty.pop(group, None)
        driver.waiting.pop(group, None)
        group.waiters.fail_all(OutcomeUnknownError(group_id, "group stopped"))
        if group.reserved_bytes and group.storage.failed is None:
            group.storage.flush()  # gives back the unused reservation
            group.reserved_bytes = 0

    async def delete_group(self, group_id: int) -> None:
        """Stops `group_id` and durably deletes its data on this node."""
        self.stop_group(group_id)
        await self._storage.drop_partition_log(group_id)

    def groups(self) -> list[int]:
        return sorted(self._driver.groups)

    def _group(self, group_id: int) -> Group:
        group = self._driver.groups.get(group_id)
        if group is None:
            raise GroupNotFoundError(group_id)
        return group

    # ---- proposals --------------------------------------------------------------------

    def _propose(self, group: Group, data: bytes) -> tuple[int, int]:
        self._check_running()
        self._driver.healthy(group)
        result = group.raw.propose(data)
        if isinstance(result, NotLeader):
            raise NotLeaderError(group.group_id, result.leader_hint)
        if isinstance(result, ProposalDropped):
            raise ProposalDroppedError(group.group_id, result.reason)
        self._stats.proposals += 1
        driver = self._driver
        driver.wake(group)
        driver.mark(group)
        driver.waiting[group] = None
        return result, group.raw.raft.term

    def append_batch(
        self,
        group_id: int,
        payload: bytes,
        record_count: int,
        max_timestamp_ms: int,
        producer: ProducerFields | None = None,
        *,
        delayed: bool = False,
    ) -> AppendTicket:
        """Proposes one record batch to a partition group this node leads.

        `delayed`: some record has a deliver_at_ms (the stored batch's
        DELAYED flag, so that apply indexes its delays).

        `base_offset` follows the leader's whole log tail, proposed entries
        included. Raises `NotLeaderError` / `ProposalDroppedError` at once;
        the ticket's futures carry the outcome (see `AppendTicket`).

        With `producer` (an idempotent producer's batch) the producer check
        runs first, against the applied producer table and this leader's
        log tail: a retry of an applied batch gets a ticket already resolved
        to the original base offset; a retry of a batch in the tail gets a
        ticket on that entry (committed with its offsets, or not written);
        a refused batch raises a `ProducerError`. Nothing is proposed then.

        Without `producer` the batch is merged with the group's other
        appends waiting for the driver (coalesce.py): it is proposed, with
        them, when the driver's next turn starts, and the ticket's
        `index` and `term` are set then.
        """
        assert record_count > 0, "a record batch holds at least one record"
        self._check_running()
        group = self._group(group_id)
        assert group.partition, f"group {group_id} is not a partition"
        self._driver.healthy(group)
        if group.role is not Role.LEADER:
            raise NotLeaderError(group_id, group.leader)
        deadline = self._clock_ms() + self.config.proposal_timeout_ms
        if producer is None:
            return self._coalesce(group, payload, record_count, max_timestamp_ms, deadline, delayed)
        # What is pending for the group is older: it takes its offsets first.
        self._propose_pending(group_id)
        tail: ProducerTail | None = None
        if producer is not None:
            applied = group.storage.applied_submitted
            tail = tail_of(self._producer_tails.get(group_id), group.raw, applied)
            self._producer_tails[group_id] = tail
            decision = decide(
                group.storage.producers.get(producer.producer_id),
                tail.batches(producer.producer_id, applied),
                producer,
                record_count,
            )
            if isinstance(decision, Duplicate):
                return self._answered(group_id, decision.base_offset, record_count)
            if isinstance(decision, InFlight):
                batch = decision.batch
                return group.waiters.add_append(
                    batch.index, batch.term, batch.base_offset, record_count, deadline
                )
        base_offset = group.next_offset()
        data = encode_batch(
            BatchKind.RECORDS,
            base_offset,
            record_count,
            max_timestamp_ms,
            self._wall_clock_ms(),
            payload,
            producer,
            delayed=delayed,
        )
        index, term = self._propose(group, data)
        group.proposed(index, base_offset + record_count)
        if producer is not None and tail is not None:
            tail.add(
                producer,
                TailBatch(
                    producer.epoch,
                    producer.first_sequence,
                    record_count,
                    base_offset,
                    index,
                    term,
                ),
                group.storage.applied_submitted,
            )
        return group.waiters.add_append(index, term, base_offset, record_count, deadline)

    def _coalesce(
        self,
        group: Group,
        payload: bytes,
        record_count: int,
        max_timestamp_ms: int,
        deadline_ms: float,
        delayed: bool = False,
    ) -> AppendTicket:
        """Adds a batch to the group's pending appends; refuses it as `propose` would."""
        raft = group.raw.raft
        pending = self._pending.get(group.group_id)
        if pending is not None and (
            pending.term != raft.term
            or pending.payload_bytes + len(payload) > self._append_bytes_max
        ):
            self._propose_pending(group.group_id)
            pending = None
        # The Raft core's own refusals, checked now so that the caller hears
        # them at once (the replicator waits for room on a full group).
        if raft.lead_transferee:
            raise ProposalDroppedError(group.group_id, "leadership transfer in progress")
        config = raft.config
        pending_bytes = pending.payload_bytes if pending is not None else 0
        if raft.uncommitted and (
            len(raft.uncommitted) >= config.uncommitted_entries_max
            or raft.uncommitted_bytes + pending_bytes + len(payload) > config.uncommitted_bytes_max
        ):
            raise ProposalDroppedError(group.group_id, "too many uncommitted proposals")
        if pending is None:
            offset = group.next_offset()
            pending = Pending(group, raft.term, offset, offset)
            self._pending[group.group_id] = pending
            # The driver proposes it, with whatever arrives meanwhile, when
            # its next turn starts: requests that arrive while a turn waits
            # for the disk become one entry.
            self._driver.mark(group)
        else:
            self._stats.appends_merged += 1
        return pending.add(
            asyncio.get_running_loop(),
            payload,
            record_count,
            max_timestamp_ms,
            deadline_ms,
            delayed,
        )

    def _flush_pending(self) -> None:
        """The driver's call before each turn: propose what waits."""
        if not self._pending:
            return
        for group_id in list(self._pending):
            self._propose_pending(group_id)

    def _propose_pending(self, group_id: int) -> None:
        """Proposes the group's pending appends as one entry, or fails their tickets."""
        pending = self._pending.pop(group_id, None)
        if pending is None:
            return
        group = pending.group
        try:
            self._check_running()
            if not group.stopped:
                self._driver.healthy(group)
            if (
                group.stopped
                or group.role is not Role.LEADER
                or group.raw.raft.term != pending.term
            ):
                raise NotLeaderError(group_id, group.leader)
            if group.next_offset() != pending.base_offset:
                # Cannot happen within one term of one RawNode; refuse rather
                # than store offsets that overlap.
                raise ProposalDroppedError(group_id, "the log tail moved before the proposal")
            data = encode_batch(
                BatchKind.RECORDS,
                pending.base_offset,
                pending.record_count,
                pending.max_timestamp_ms,
                self._wall_clock_ms(),
                pending.payload(),
                None,
                delayed=pending.delayed,
            )
            index, term = self._propose(group, data)
        except HostError as exc:
            # Nothing was proposed: every append of it may be retried.
            for ticket, _ in pending.tickets:
                fail_ticket(ticket, exc)
            return
        group.proposed(index, pending.next_offset)
        waiters = group.waiters
        for ticket, deadline_ms in pending.tickets:
            waiters.adopt(ticket, index, term, deadline_ms)

    def propose_queue_control(
        self, group_id: int, payload: bytes, *, timeout_ms: int | None = None
    ) -> ProposalTicket:
        """Proposes one queue group's control records to a partition this node leads.

        `payload` is `weir.cluster.queue.encode_control(group, records)`,
        stored as a QUEUE_CONTROL batch (no offsets). It must decode and
        name a group the partition accepts (`PartitionLog.check_queue_group`,
        which the dispatcher calls first); otherwise ValueError, nothing
        proposed. Raises `NotLeaderError` / `ProposalDroppedError` at once.
        The ticket's `committed` resolves (to None) once the entry is
        committed with this term and readable here, fails with
        `NotWrittenError` if another term's entry took its index and with
        `OutcomeUnknownError` at the deadline or when the group stops.
        Every replica applies it to its queue table (`LmdbRaftStorage.queues`)
        when it applies the entry, in the turn that learns of the commit: on
        this leader `committed` may resolve just before that apply.
        """
        self._check_running()
        group = self._group(group_id)
        assert group.partition, f"group {group_id} is not a partition"
        self._driver.healthy(group)
        if group.role is not Role.LEADER:
            raise NotLeaderError(group_id, group.leader)
        log = group.partition_log
        assert log is not None
        log.validate_queue_control(payload)
        offset = group.next_offset()
        data = encode_batch(BatchKind.QUEUE_CONTROL, 0, 0, 0, 0, payload)
        index, term = self._propose(group, data)
        group.proposed(index, offset)
        deadline = self._clock_ms() + (timeout_ms or self.config.proposal_timeout_ms)
        return group.waiters.add_proposal(index, term, deadline)

    def _answered(self, group_id: int, base_offset: int, record_count: int) -> AppendTicket:
        """A ticket for a batch that is applied already (a producer's retry)."""
        loop = asyncio.get_running_loop()
        durable: asyncio.Future[int] = loop.create_future()
        committed: asyncio.Future[int] = loop.create_future()
        durable.set_result(base_offset)
        committed.set_result(base_offset)
        return AppendTicket(group_id, 0, 0, base_offset, record_count, durable, committed)

    def submit(
        self, group_id: int, data: bytes, *, timeout_ms: int | None = None
    ) -> ProposalTicket:
        """Proposes opaque `data` to a group that is not a partition (the controller)."""
        group = self._group(group_id)
        assert not group.partition, f"group {group_id} is a partition: use append_batch"
        index, term = self._propose(group, data)
        deadline = self._clock_ms() + (timeout_ms or self.config.proposal_timeout_ms)
        return group.waiters.add_proposal(index, term, deadline)

    async def propose(self, group_id: int, data: bytes, *, timeout_ms: int | None = None) -> int:
        """Proposes opaque `data` and waits until it is applied; returns its index."""
        ticket = self.submit(group_id, data, timeout_ms=timeout_ms)
        await ticket.committed
        return ticket.index

    def transfer_leadership(self, group_id: int, to: NodeId) -> None:
        """Asks the leader of `group_id` (this node) to hand leadership to `to`."""
        self._check_running()
        group = self._group(group_id)
        self._driver.healthy(group)
        result = group.raw.transfer_leadership(to)
        if isinstance(result, NotLeader):
            raise NotLeaderError(group_id, result.leader_hint)
        if isinstance(result, ProposalDropped):
            raise ProposalDroppedError(group_id, result.reason)
        self._driver.wake(group)
        self._driver.mark(group)

    def compact(self, group_id: int, index: int, data: bytes) -> None:
        """Drops the log up to `index` (applied), keeping `data` as the snapshot."""
        self._check_running()
        group = self._group(group_id)
        self._driver.healthy(group)
        raft = group.raw.raft
        if raft.log.pending_snapshot is not None or index > raft.log.applied:
            return
        group.raw.compact(index, data)
        self._driver.mark(group)

    def compact_partition(
        self,
        group_id: int,
        retention_bytes: int | None,
        retention_ms: int | None,
        app_state: bytes = b"",
    ) -> RetentionPlan | None:
        """Retention for a partition group: plans on its log, compacts through Raft.

        Deletes whole applied entries, oldest first (`PartitionLog.plan_retention`);
        the rows go when the compaction's Ready is persisted. Returns the plan.
        """
        group = self._group(group_id)
        log = group.partition_log
        assert log is not None, f"group {group_id} is not a partition"
        plan = log.plan_retention(retention_bytes, retention_ms)
        if plan is None:
            return None
        # The producer and queue tables as applied now, which may be ahead of
        # the snapshot's index: a follower that installs them replays the
        # entries between without effect (ProducerTable.apply, QueueTable.apply).
        storage = group.storage
        producers, queues = storage.producers, storage.queues
        self.compact(
            group_id,
            plan.first_index - 1,
            encode_partition_snapshot(
                plan.start_offset,
                app_state,
                encode_table(producers) if len(producers) else b"",
                encode_queue_table(queues, storage.applied_submitted) if len(queues) else b"",
            ),
        )
        return plan

    # ---- reads and status ---------------------------------------------------------------

    def partition_log(self, group_id: int) -> PartitionLog:
        """The group's committed-only offset view (any replica serves reads from it)."""
        log = self._group(group_id).partition_log
        assert log is not None, f"group {group_id} is not a partition"
        return log

    def leader(self, group_id: int) -> NodeId:
        return self._group(group_id).leader

    def is_leader(self, group_id: int) -> bool:
        return self._group(group_id).role is Role.LEADER

    def term(self, group_id: int) -> int:
        return self._group(group_id).raw.raft.term

    def progress(self, group_id: int) -> dict[NodeId, int]:
        """On the leader: each member's match index (ours included); {} elsewhere."""
        raft = self._group(group_id).raw.raft
        if raft.role is not Role.LEADER:
            return {}
        return {node: pr.match for node, pr in raft.progress.items()}

    def last_index(self, group_id: int) -> int:
        return self._group(group_id).raw.raft.log.last_index()

    def commit_index(self, group_id: int) -> int:
        return self._group(group_id).raw.raft.log.committed

    def applied_index(self, group_id: int) -> int:
        """The highest index whose apply is durable here (a partition's readers may
        see further: committed entries are visible before their apply is durable)."""
        group = self._group(group_id)
        if group.partition:
            return group.storage.applied_index
        return group.app_applied

    def quiesced(self, group_id: int) -> bool:
        return self._group(group_id).quiesced

    def add_leader_listener(self, listener: LeaderListener) -> Callable[[], None]:
        """`listener(group_id, leader_id)` hears every leader change seen here
        (0: no leader known). Called on the loop by the driver; must not block."""
        self._driver.leader_listeners.append(listener)
        return lambda: self._driver.leader_listeners.remove(listener)

    def peer_alive(self, node_id: NodeId) -> bool:
        return self._transport.peer_alive(node_id)

    @property
    def transport(self) -> PeerTransport:
        return self._transport

    def stats(self) -> HostStats:
        stats = replace(self._stats)
        stats.proposals_committed = stats.proposals_not_written = stats.proposals_unknown = 0
        for group in self._driver.groups.values():
            stats.proposals_committed += group.waiters.committed
            stats.proposals_not_written += group.waiters.not_written
            stats.proposals_unknown += group.waiters.unknown
        return stats


__all__ = ["HostError", "RaftHost"]
