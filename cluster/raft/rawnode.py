"""The host-facing API of one Raft group, and the `Ready` contract.

The core never does I/O. The host drives it with `tick()` (time), `step()`
(messages from peers), `propose()` and friends (client requests), and
collects its output as a `Ready`. Handling a Ready takes these steps, in
this order:

1. Persist. Write `snapshot` (a snapshot received from the leader, via
   `Storage.apply_snapshot`), then `entries` (`Storage.append`, which
   replaces any overlapping suffix), then `hard_state` if not None, then
   `truncate` (a compaction this node requested, via
   `Storage.truncate_prefix`). All of it must be durable before step 2.
2. Send `messages`. Some of them promise durability: a vote grant promises
   the persisted vote, an append acknowledgement promises persisted entries.
   They are emitted in the same Ready as the state they depend on, which is
   why step 1 comes first. A message may be dropped; Raft retries.
3. Apply. Restore the state machine from `snapshot.data` if a snapshot is
   present, then apply `committed_entries` in order. NOOP and CONFIG entries
   carry no application data; the core applies CONFIG entries itself in
   step 4.
4. Call `advance(ready)`. Only then may `ready()` be called again.

`advance()` asserts that storage reflects step 1; `ready()` asserts step 4
happened for the previous Ready. Breaking the contract is a programmer error.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .raft import Raft
from .storage import Storage
from .types import (
    ConfChange,
    ConfChangeRejected,
    ConfChangeResult,
    ConfChangeType,
    Config,
    Entry,
    EntryType,
    HardState,
    Message,
    NodeId,
    NotLeader,
    ProposalDropped,
    ProposeResult,
    Role,
    Snapshot,
    SoftState,
)


@dataclass(frozen=True, slots=True)
class Ready:
    """Everything the host must do for one turn; see the module docstring."""

    hard_state: HardState | None
    soft_state: SoftState | None
    entries: tuple[Entry, ...]
    snapshot: Snapshot | None
    truncate: Snapshot | None
    messages: tuple[Message, ...]
    committed_entries: tuple[Entry, ...]


class RawNode:
    def __init__(
        self,
        config: Config,
        storage: Storage,
        rng: random.Random,
        *,
        applied: int | None = None,
        raft_class: type[Raft] = Raft,
    ) -> None:
        self.raft = raft_class(config, storage, rng, applied)
        self._hard_state = storage.hard_state()
        self._soft_state = self.soft_state()
        self._outstanding: Ready | None = None

    def soft_state(self) -> SoftState:
        return SoftState(self.raft.leader, self.raft.role)

    # -- inputs ------------------------------------------------------------------------

    def tick(self) -> None:
        self.raft.tick()

    def step(self, message: Message) -> None:
        self.raft.step(message)

    def campaign(self) -> None:
        """Starts an election now (tests and bootstrap); PreVote applies if enabled."""
        if self.raft.role is not Role.LEADER:
            self.raft.campaign(pre_vote=self.raft.config.pre_vote)

    def propose(self, data: bytes) -> ProposeResult:
        """Appends `data` if we lead; returns its index, or why it was not accepted."""
        return self._propose(EntryType.NORMAL, data)

    def _propose(self, kind: EntryType, data: bytes) -> ProposeResult:
        r = self.raft
        if r.role is not Role.LEADER:
            return NotLeader(r.leader)
        if r.lead_transferee:
            return ProposalDropped("leadership transfer in progress")
        config = r.config
        if r.uncommitted and (
            len(r.uncommitted) >= config.uncommitted_entries_max
            or r.uncommitted_bytes + len(data) > config.uncommitted_bytes_max
        ):
            return ProposalDropped("too many uncommitted proposals")
        return r.append_entry(kind, data)

    def propose_conf_change(self, change: ConfChange) -> ConfChangeResult:
        """Single-server membership change (one pending at a time, see docs/raft.md)."""
        r = self.raft
        if r.role is not Role.LEADER:
            return NotLeader(r.leader)
        if r.pending_conf_index > r.log.applied:
            return ConfChangeRejected("a configuration change is still pending")
        reason = self._conf_change_problem(change)
        if reason:
            return ConfChangeRejected(reason)
        result = self._propose(EntryType.CONFIG, change.encode())
        if isinstance(result, int):
            r.pending_conf_index = result
        return result

    def _conf_change_problem(self, change: ConfChange) -> str:
        r = self.raft
        node = change.node_id
        if change.type is ConfChangeType.ADD_LEARNER:
            return "already a member" if node in r.conf.members() else ""
        if change.type is ConfChangeType.ADD_VOTER:
            if node not in r.conf.learners:
                return "only a learner can become a voter"
            lag = r.log.last_index() - r.progress[node].match
            if lag > r.config.promote_lag_entries_max:
                return f"learner is {lag} entries behind"
            return ""
        if node not in r.conf.members():
            return "not a member"
        if r.conf.voters == {node}:
            return "cannot remove the last voter"
        return ""

    def transfer_leadership(self, target: NodeId) -> NotLeader | ProposalDropped | None:
        """Hands leadership to `target` (thesis §3.10); proposals wait until it ends."""
        r = self.raft
        if r.role is not Role.LEADER:
            return NotLeader(r.leader)
        if target == r.id or target not in r.conf.voters:
            return ProposalDropped("transfer target is not another voter")
        if r.lead_transferee == target:
            return None
        r.lead_transferee = target
        # The transfer is abandoned if not done within one election timeout.
        r.election_elapsed = 0
        if r.progress[target].match == r.log.last_index():
            r.send_timeout_now(target)
        else:
            r.send_append(target)
        return None

    def compact(self, index: int, data: bytes) -> None:
        """Drops the log up to `index` (at most the applied index), keeping `data`.

        `data` is the application's state at `index`; the leader sends it to
        followers that need entries which are gone.
        """
        self.raft.compact(index, data)

    # -- outputs -------------------------------------------------------------------------

    def has_ready(self) -> bool:
        r = self.raft
        log = r.log
        return bool(
            r.msgs
            or r.append_pending
            or log.unstable
            or log.pending_snapshot is not None
            or r.pending_truncate is not None
            or (log.committed > log.applied and log.pending_snapshot is None)
            or r.term != self._hard_state.term
            or r.vote != self._hard_state.vote
            or log.committed != self._hard_state.commit
            or r.leader != self._soft_state.leader
            or r.role is not self._soft_state.role
        )

    def ready(self) -> Ready:
        assert self._outstanding is None, "ready() called again before advance()"
        r = self.raft
        r.flush()
        log = r.log
        hard_state = r.hard_state()
        soft_state = self.soft_state()
        committed: tuple[Entry, ...] = ()
        # Entries after a pending snapshot are applied in a later Ready.
        if log.pending_snapshot is None:
            committed = tuple(log.next_committed(r.config.apply_bytes_max))
        ready = Ready(
            hard_state=None if hard_state == self._hard_state else hard_state,
            soft_state=None if soft_state == self._soft_state else soft_state,
            entries=tuple(log.unstable),
            snapshot=log.pending_snapshot,
            truncate=r.pending_truncate,
            messages=tuple(r.msgs),
            committed_entries=committed,
        )
        r.msgs = []
        self._soft_state = soft_state
        self._outstanding = ready
        return ready

    def advance(self, ready: Ready) -> None:
        assert ready is self._outstanding, "advance() with a Ready that is not outstanding"
        self._outstanding = None
        r = self.raft
        log = r.log
        storage = log.storage
        if ready.hard_state is not None:
            assert storage.hard_state() == ready.hard_state, "hard state not persisted"
            self._hard_state = ready.hard_state
        if ready.snapshot is not None:
            index = ready.snapshot.meta.index
            assert storage.first_index() > index, "snapshot not persisted"
            log.stable_snapshot_to(index)
            log.applied = max(log.applied, index)
        if ready.entries:
            last = ready.entries[-1]
            assert storage.last_index() >= last.index, "entries not persisted"
            assert storage.term(last.index) == last.term, "entries not persisted"
            log.stable_to(last.index, last.term)
        if ready.truncate is not None:
            assert storage.first_index() > ready.truncate.meta.index, "truncation not done"
            if r.pending_truncate is ready.truncate:
                r.pending_truncate = None
        for entry in ready.committed_entries:
            if entry.type is EntryType.CONFIG:
                r.apply_conf_entry(entry)
        if ready.committed_entries:
            log.applied = ready.committed_entries[-1].index
        r.on_persisted()
