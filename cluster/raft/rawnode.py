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
    ConfChangeResult,
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
        return self.raft.propose(EntryType.NORMAL, data)

    def propose_conf_change(self, change: ConfChange) -> ConfChangeResult:
        """Single-server membership change (one pending at a time, see docs/raft.md)."""
        return self.raft.propose_conf_change(change)

    def transfer_leadership(self, target: NodeId) -> NotLeader | ProposalDropped | None:
        """Hands leadership to `target` (thesis §3.10); proposals wait until it ends.

        The transfer is abandoned if not done within one election timeout.
        """
        return self.raft.transfer_leadership(target)

    def step_down(self) -> None:
        """Stops leading without changing the term (the host saw a quorum unreachable)."""
        self.raft.step_down()

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
            or r.commit_pending
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
        storage = self.raft.log.storage
        if ready.hard_state is not None:
            assert storage.hard_state() == ready.hard_state, "hard state not persisted"
            self._hard_state = ready.hard_state
        if ready.snapshot is not None:
            assert storage.first_index() > ready.snapshot.meta.index, "snapshot not persisted"
        if ready.entries:
            last = ready.entries[-1]
            assert storage.last_index() >= last.index, "entries not persisted"
            assert storage.term(last.index) == last.term, "entries not persisted"
        if ready.truncate is not None:
            assert storage.first_index() > ready.truncate.meta.index, "truncation not done"
        self.raft.on_advance(ready.snapshot, ready.entries, ready.truncate, ready.committed_entries)
