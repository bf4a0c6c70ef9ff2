"""The driver: one task that owns every Raft group of the node and handles their Readies.

Each turn (DESIGN §4):

1. take the `Ready` of every group with work (the dirty set; idle groups
   cost nothing), reserve its bytes in the writer's budget without waiting
   (a group that does not fit keeps its Ready for a later turn, so one large
   group never holds the others back), and submit its writes, all inside
   one writer hold, so one writer turn (one transaction, one fsync) covers
   every group;
2. send the messages that promise nothing about our disk, batched per peer:
   a leader's appends, heartbeats, snapshots and TimeoutNow go out before
   its own fsync (thesis §10.2.1; the core counts the leader's copy only
   once `advance()` reports it durable);
3. apply committed entries (the partition's index rows join the same
   writer turn; `on_apply` for opaque groups). A partition's committed entry
   whose log row is already committed here is visible to readers from this
   moment and its tickets resolve now, without waiting for this turn's fsync
   (DESIGN §4 "Committed-only reads": visibility follows the commit; the
   index rows written on apply do not gate it);
4. await durability, then send the rest (vote grants, append
   acknowledgements and everything else that promises a durable state),
   resolve the remaining tickets and `advance()`.

Messages, ticks and proposals that arrive while a turn waits for the disk
are stepped into the RawNodes at once (the core allows input while a Ready
is outstanding) and are served by the next turn, which also proposes the
appends the host merged meanwhile (coalesce.py). One exception keeps a
record's visibility from waiting for an fsync it does not depend on: a
partition whose commit index moved (a follower's acknowledgement on the
leader, the leader's commit index on a follower) reveals the committed
entries whose log rows are already committed here at once
(`_apply_committed`, rule in `POLICY.reveal_upto`): they become visible and
their tickets resolve without waiting for the turn in flight. The Ready that
later carries them writes their index rows as usual.

Sending a leader's new appends early too (while its turn's fsync runs,
without waiting for the next Ready) was built and measured: it made the
end-to-end latency worse on this 2-core machine (p99 at 2,000 records/s
+2 to +6 ms in alternating runs), the extra, smaller messages costing more
CPU on every node than the wait they saved (docs/benchmarks.md), so the
appends wait for the next turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..raft.rawnode import RawNode, Ready
from ..raft.storage import CompactedError, UnavailableError
from ..raft.types import Entry, EntryType, Message, NodeId
from ..storage.errors import StorageError
from ..storage.node import NodeStorage
from ..transport.transport import PeerTransport
from .config import HostStats
from .group import Group
from .policy import POLICY

logger = logging.getLogger(__name__)

LeaderListener = Callable[[int, NodeId], None]


@dataclass(slots=True)
class _Work:
    group: Group
    raw: RawNode
    ready: Ready
    durable: asyncio.Future[None]
    applied: list[tuple[Entry, object]] = field(default_factory=list)
    late: list[Message] = field(default_factory=list)


class Driver:
    """The groups, which of them have work or are awake, and the turn that serves them."""

    def __init__(
        self,
        node_id: NodeId,
        storage: NodeStorage,
        transport: PeerTransport,
        stats: HostStats,
        *,
        quiesce: bool,
        flush: Callable[[], None] = lambda: None,
    ) -> None:
        """`flush`: proposes the appends waiting to be merged (the host's
        coalescing); called before every turn."""
        self.node_id = node_id
        self._flush = flush
        self._storage = storage
        self._transport = transport
        self.stats = stats
        self._quiesce = quiesce
        self.groups: dict[int, Group] = {}
        # Ordered sets (dicts) so turns visit groups in a reproducible order.
        self.dirty: dict[Group, None] = {}
        self.active: dict[Group, None] = {}
        self.waiting: dict[Group, None] = {}
        self.wake_event = asyncio.Event()
        self.leader_listeners: list[LeaderListener] = []

    # ---- inputs (called on the loop by the host, the transport and the timer) ---------

    def mark(self, group: Group) -> None:
        """`group` may have a Ready: serve it next turn."""
        self.dirty[group] = None
        self.wake_event.set()

    def wake(self, group: Group) -> None:
        """Tick `group` again (it had quiesced, or must not)."""
        POLICY.wake(group)
        if not group.stopped:
            self.active[group] = None

    def healthy(self, group: Group) -> None:
        """Reopens `group` if a write of its storage failed since we last looked."""
        error = group.storage.failed
        if error is not None:
            self._reopen(group, error)

    def _reopen(self, group: Group, error: BaseException) -> None:
        logger.warning(
            "group %d: a write failed (%s); reopening it from disk", group.group_id, error
        )
        # Raises the writer's error if the writer is dead: the node stops.
        storage = self._storage.raft_storage(group.group_id, partition=group.partition)
        group.reopen(storage)
        self.stats.reopens += 1
        self.wake(group)
        self.mark(group)

    async def receive(self, frm: NodeId, messages: Sequence[tuple[int, Message]]) -> None:
        """The transport's callback: step each message at once (no queue, no await)."""
        alive = self._transport.peer_alive
        stats = self.stats
        stepped: dict[Group, None] = {}
        for group_id, message in messages:
            stats.messages_received += 1
            group = self.groups.get(group_id)
            if group is None or message.to != self.node_id or message.frm != frm:
                stats.messages_ignored += 1
                continue
            self.healthy(group)
            group.raw.step(message)
            if group.on_message(message, alive):
                self.wake(group)
            self.dirty[group] = None
            if group.partition:
                stepped[group] = None
        self.wake_event.set()
        for group in stepped:
            self._apply_committed(group)

    def on_liveness(self, node: NodeId, alive: bool) -> None:
        """A node's liveness changed: wake the quiet groups it is a member of.

        A leader whose voters' nodes no longer make a quorum steps down in
        `group.on_liveness` (policy.py); its Ready reports the new soft state
        (leader listeners, DescribeTopic), so the next turn serves it.
        """
        del alive
        is_alive = self._transport.peer_alive
        for group in self.groups.values():
            if group.on_liveness(node, is_alive):
                self.wake(group)
            if group.raw.has_ready():
                self.dirty[group] = None
        self.wake_event.set()

    def tick(self, now_ms: float) -> None:
        """One timer round: tick every awake group (quiescing the settled ones)."""
        stats = self.stats
        stats.tick_rounds += 1
        alive = self._transport.peer_alive
        for group in list(self.active):
            if group.stopped:
                del self.active[group]
                continue
            self.healthy(group)
            if self._quiesce and group.can_quiesce(alive):
                del self.active[group]
                group.quiesced = True
                stats.groups_quiesced += 1
                continue
            group.raw.tick()
            stats.ticks += 1
            self.dirty[group] = None
        for group in list(self.waiting):
            group.waiters.expire(now_ms)
            if not len(group.waiters):
                del self.waiting[group]

    # ---- the turn ------------------------------------------------------------------

    async def turn(self) -> None:
        self._flush()
        groups = [g for g in self.dirty if not g.stopped]
        self.dirty.clear()
        stats = self.stats
        works: list[_Work] = []
        deferred: list[Group] = []
        commits_before = self._storage.writer_stats()["writer_commits"]
        early: dict[NodeId, list[tuple[int, Message]]] = {}
        with self._storage.hold_writes():
            for group in groups:
                work = self._persist(group, deferred)
                if work is not None:
                    works.append(work)
                    for message in work.ready.messages:
                        if POLICY.sent_before_durable(message):
                            early.setdefault(message.to, []).append((group.group_id, message))
                        else:
                            work.late.append(message)
        self._send(early)
        for work in works:
            self._apply(work)
        if not works:
            if deferred:
                await self._wait_for_budget(deferred[0])
            return
        outcomes = await self._durable(works)
        commits = self._storage.writer_stats()["writer_commits"] - commits_before
        stats.turns += 1
        stats.turn_groups += len(works)
        stats.turn_groups_max = max(stats.turn_groups_max, len(works))
        stats.turn_commits += commits
        stats.turn_commits_max = max(stats.turn_commits_max, commits)
        if commits > 1:
            stats.turns_multi_commit += 1
        late: dict[NodeId, list[tuple[int, Message]]] = {}
        for work, outcome in zip(works, outcomes, strict=True):
            group = work.group
            if group.stopped or group.raw is not work.raw:
                continue  # stopped, or already reopened
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, StorageError):
                    raise outcome
                self._reopen(group, outcome)
                continue
            for message in work.late:
                late.setdefault(message.to, []).append((group.group_id, message))
            group.waiters.on_durable(work.ready.entries)
            group.raw.advance(work.ready)
            group.ready = None
            if group.campaign_pending and not group.raw.raft.has_unapplied_conf():
                group.campaign_pending = False
                group.raw.campaign()
            for entry, result in work.applied:
                group.waiters.on_applied(entry, result)
            if group.raw.has_ready():
                self.dirty[group] = None
        self._send(late)

    async def _durable(self, works: list[_Work]) -> list[BaseException | None]:
        """Waits until this turn's writes are durable: each work's outcome (None: durable).

        Usually one future resolved where the writer completes its turn, so
        the driver wakes one loop iteration after the commit; awaiting every
        group's own future (each a callback chained on the writer's) cost
        three iterations, ~0.7 ms at p50 and 2.5 ms at p90 on a leader whose
        loop also serves clients. Only when some write failed are the groups'
        own futures asked which of them did.
        """
        try:
            await self._storage.writes_done()
        except StorageError:
            pass
        else:
            return [None] * len(works)
        outcomes = await asyncio.gather(*(w.durable for w in works), return_exceptions=True)
        return [o if isinstance(o, BaseException) else None for o in outcomes]

    def _persist(self, group: Group, deferred: list[Group]) -> _Work | None:
        """Step 1 for one group: take its Ready, reserve, submit its writes."""
        self.healthy(group)
        raw = group.raw
        if group.ready is None:
            if not raw.has_ready():
                return None
            group.ready = raw.ready()
            soft = group.ready.soft_state
            if soft is not None and soft.leader != group.leader_seen:
                group.leader_seen = soft.leader
                self._notify_leader(group.group_id, soft.leader)
        ready = group.ready
        storage = group.storage
        try:
            need = storage.ready_bytes(ready) - group.reserved_bytes
            if need > 0 and not storage.try_reserve(need):
                self.stats.readies_deferred += 1
                deferred.append(group)
                self.dirty[group] = None
                return None
            # The writes below take from the reservation; flush() gives back the rest.
            group.reserved_bytes = 0
            if ready.snapshot is not None:
                storage.apply_snapshot(ready.snapshot)
                group.storage_applied = max(group.storage_applied, ready.snapshot.meta.index)
            storage.append(ready.entries)
            if ready.hard_state is not None:
                storage.set_hard_state(ready.hard_state)
            if ready.truncate is not None:
                storage.truncate_prefix(ready.truncate)
            fresh = [e for e in ready.committed_entries if e.index > group.storage_applied]
            if fresh:
                storage.apply_entries(fresh)
                group.storage_applied = fresh[-1].index
            durable = storage.flush()
        except StorageError as exc:
            self._reopen(group, exc)
            return None
        return _Work(group, raw, ready, durable)

    def _apply(self, work: _Work) -> None:
        """Step 3: hand committed entries to the application, in order."""
        group, ready = work.group, work.ready
        if ready.snapshot is not None:
            index = ready.snapshot.meta.index
            group.waiters.on_snapshot(index)
            if not group.partition and group.on_snapshot is not None and index > group.app_applied:
                group.on_snapshot(ready.snapshot.data)
            group.app_applied = max(group.app_applied, index)
        on_apply = group.on_apply
        # Committed and readable here (partitions only): decide its tickets now.
        visible = group.storage.visible_index if group.partition else 0
        for entry in ready.committed_entries:
            if entry.index <= group.app_applied:
                continue
            result: object = None
            if entry.type is EntryType.NORMAL and on_apply is not None:
                result = on_apply(entry)
            if entry.index <= visible:
                group.waiters.on_applied(entry, result)
            else:
                work.applied.append((entry, result))
            group.app_applied = entry.index

    def _apply_committed(self, group: Group) -> None:
        """Reveals a partition's committed entries whose log rows are committed here.

        Called when a message moved the commit index outside a turn: the
        entries become visible to readers and their tickets resolve now. Their
        index rows are written when a turn's Ready applies them (step 3),
        inside that turn's writer commit, so this adds no fsync. Entries a
        snapshot replaces, and opaque groups (their `on_apply` follows the
        Ready), are left to the turn.
        """
        if group.stopped or not group.partition or group.on_apply is not None:
            return
        storage = group.storage
        lo = storage.visible_index + 1
        # The rule (and why each bound) is the policy's, shared with the simulator.
        hi = POLICY.reveal_upto(
            group.raw,
            visible_index=storage.visible_index,
            applied_submitted=storage.applied_submitted,
            rows_committed_index=storage.rows_committed_index,
            ready=group.ready,
        )
        if hi < lo:
            return
        try:
            entries = group.raw.raft.log.entries(lo, hi + 1, group.raw.raft.config.apply_bytes_max)
            storage.reveal_committed(entries)
        except (CompactedError, UnavailableError, StorageError):
            return  # the turn finds the same entries, or reopens the group
        self.stats.early_applies += 1
        for entry in entries:
            group.waiters.on_applied(entry, None)

    def _send(self, batches: dict[NodeId, list[tuple[int, Message]]]) -> None:
        send = self._transport.send
        stats = self.stats
        for node, messages in batches.items():
            for group_id, message in messages:
                if send(node, group_id, message):
                    stats.messages_sent += 1
                else:
                    stats.messages_dropped += 1

    async def _wait_for_budget(self, group: Group) -> None:
        """No group fitted in the writer's budget: wait for the first one's bytes."""
        assert group.ready is not None
        need = group.storage.ready_bytes(group.ready) - group.reserved_bytes
        if need > 0:
            await group.storage.reserve(need)
            group.reserved_bytes += need
        self.dirty[group] = None

    def _notify_leader(self, group_id: int, leader: NodeId) -> None:
        for listener in list(self.leader_listeners):
            try:
                listener(group_id, leader)
            except Exception:
                # A broken listener must not stop the others or the driver.
                logger.exception("leader listener failed for group %d", group_id)


__all__ = ["Driver", "LeaderListener"]
