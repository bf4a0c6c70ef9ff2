"""One Raft group on this node: its RawNode, its storage, its waiters, its quiet state.

The host keeps a `Group` per running group. Everything here runs on the
event loop and is touched by the host's driver, its receive callback and
its API calls, never concurrently (one thread, no awaits inside).

Quiescence (DESIGN §4 "Idle groups are free"): the host stops ticking a
group that has nothing to do. The rules (when a group may go quiet, what
wakes it) are in `policy.py`, shared with the simulator; a `Group` holds the
state they read and write (`quiesced`, `settled_ticks`, `heard_leader`).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ..raft.rawnode import RawNode, Ready
from ..raft.types import NONE, Config, Entry, Message, NodeId, Role
from ..storage.codec import entry_next_offset
from ..storage.log import PartitionLog
from ..storage.raft_storage import LmdbRaftStorage
from .policy import LEADER_TRAFFIC, POLICY, Alive
from .tickets import Waiters

ApplyCallback = Callable[[Entry], object]
SnapshotCallback = Callable[[bytes], None]


class Group:
    def __init__(
        self,
        group_id: int,
        config: Config,
        storage: LmdbRaftStorage,
        rng: random.Random,
        waiters: Waiters,
        *,
        partition: bool,
        on_apply: ApplyCallback | None,
        on_snapshot: SnapshotCallback | None,
        quiesce_after_ticks: int,
    ) -> None:
        self.group_id = group_id
        self.partition = partition
        self.on_apply = on_apply
        self.on_snapshot = on_snapshot
        self.waiters = waiters
        self._config = config
        self._rng = rng
        self._quiesce_after_ticks = quiesce_after_ticks
        self.stopped = False
        # Campaign once the founding configuration is applied (start_group).
        self.campaign_pending = False
        # The Ready taken from the RawNode and not advanced yet (at most one),
        # and the writer budget already reserved for it.
        self.ready: Ready | None = None
        self.reserved_bytes = 0
        # Highest index handed to on_apply (or restored from a snapshot): a
        # reopened group replays its log and must not apply twice.
        self.app_applied = 0
        # Leader: the offset after the newest proposed batch, valid while the
        # log's last entry is (`tail_index`, `tail_term`) (see next_offset()).
        self.tail_index = -1
        self.tail_term = -1
        self.tail_offset = 0
        # Quiescence.
        self.quiesced = False
        self.settled_ticks = 0
        self.heard_leader = False
        self.leader_seen = NONE
        self.storage = storage
        self.raw = self._open(storage)

    def _open(self, storage: LmdbRaftStorage) -> RawNode:
        self.storage = storage
        # The highest index handed to storage.apply_entries.
        self.storage_applied = storage.applied_submitted
        # A partition's apply is its index rows: resume after them. An opaque
        # group's state machine lives in memory, so its log is replayed from
        # the snapshot (entries at or below app_applied are skipped).
        applied = storage.applied_submitted if self.partition else None
        raw = RawNode(self._config, storage, self._rng, applied=applied)
        if not self.partition:
            snapshot = storage.snapshot()
            if snapshot.meta.index > self.app_applied and self.on_snapshot is not None:
                self.on_snapshot(snapshot.data)
            self.app_applied = max(self.app_applied, snapshot.meta.index)
        else:
            self.app_applied = max(self.app_applied, storage.applied_submitted)
        self.tail_index = -1
        return raw

    def reopen(self, storage: LmdbRaftStorage) -> None:
        """After a failed write: a new RawNode over the storage reloaded from disk."""
        self.ready = None
        self.reserved_bytes = 0
        self.raw = self._open(storage)

    # ---- status ---------------------------------------------------------------------

    @property
    def leader(self) -> NodeId:
        return self.raw.raft.leader

    @property
    def role(self) -> Role:
        return self.raw.raft.role

    @property
    def partition_log(self) -> PartitionLog | None:
        return self.storage.partition_log

    def members(self) -> frozenset[NodeId]:
        return self.raw.raft.conf.members()

    # ---- offsets ----------------------------------------------------------------------

    def next_offset(self) -> int:
        """The offset after the leader's whole log tail, proposed entries included.

        Storage knows the tail it was given; entries the core appended since
        (proposals, a new leader's no-op) are still in its unstable log.
        """
        raft = self.raw.raft
        last = raft.log.last_index()
        last_term = raft.log.last_term()
        # The index alone does not name the tail: a node that led, lost its
        # uncommitted suffix to another leader and leads again can have the
        # same last index over other entries (other offsets). Index and term
        # name one entry, and with it the whole log before it.
        if self.tail_index == last and self.tail_term == last_term:
            return self.tail_offset
        storage_last = self.storage.last_index()
        offset = self.storage.next_offset
        for entry in raft.log.unstable:
            if entry.index > storage_last:
                offset = entry_next_offset(entry, offset)
        self.tail_index, self.tail_term, self.tail_offset = last, last_term, offset
        return offset

    def proposed(self, index: int, next_offset: int) -> None:
        """The leader just appended the entry at `index` (its last), ending at `next_offset`."""
        log = self.raw.raft.log
        assert log.last_index() == index, "proposed entry is not the log's last"
        self.tail_index, self.tail_term, self.tail_offset = index, log.last_term(), next_offset

    # ---- quiescence (the rules live in policy.py) ---------------------------------------

    def on_message(self, message: Message, alive: Alive) -> bool:
        """`message` was stepped: returns whether this quiet group must wake."""
        return POLICY.after_message(self, self.raw, message, alive)

    def on_liveness(self, node: NodeId, alive: Alive) -> bool:
        """`node`'s liveness changed: returns whether this quiet group must wake.

        A leader that lost the nodes of its quorum steps down here; the
        caller serves the Ready that reports it.
        """
        return POLICY.after_liveness(self, self.raw, node, alive)

    def can_quiesce(self, alive: Alive) -> bool:
        """Checked at each tick of an awake group."""
        return POLICY.can_quiesce(
            self,
            self.raw,
            alive,
            ready_out=self.ready is not None,
            after_ticks=self._quiesce_after_ticks,
        )


__all__ = ["LEADER_TRAFFIC", "ApplyCallback", "Group", "SnapshotCallback"]
