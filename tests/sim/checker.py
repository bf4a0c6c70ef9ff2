"""Raft's safety properties (paper Figure 3), checked incrementally after every step.

The checker watches what hosts persist, send and apply, and fails with an
`InvariantViolation` as soon as one property breaks:

- Election Safety: at most one leader per term.
- Log Matching: two persisted entries with the same index and term hold the
  same data and follow an entry of the same term (so, by induction, the logs
  are identical up to there).
- Leader Completeness: a leader of term T holds every entry committed in a
  term before T.
- State Machine Safety: every node applies the same entry at each index
  (applied sequences are prefixes of one another) and never goes back.
- Durability of term and vote: a restarted node's term is at least every term
  it sent a message in, and it remembers the vote it granted in that term.
- No acknowledged proposal is lost (checked on apply and at the end).

It also keeps the latest configuration: the founding one replayed with every
CONFIG entry in the order the cluster applied them, which is what end-state
convergence is measured against (not any one node's view).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from weir.cluster.raft import (
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Raft,
    Ready,
    Role,
    Storage,
)
from weir.cluster.raft.types import EMPTY_CONF

_UNPERSISTED_TERMS = (MessageType.PRE_VOTE, MessageType.PRE_VOTE_RESP)


class InvariantViolation(AssertionError):
    pass


@dataclass
class Canon:
    """The first application of an index anywhere; everyone else must agree."""

    digest: int
    term: int
    data: bytes
    # Upper bound on the term in which the entry was committed: the applier's term.
    commit_term_max: int


@dataclass
class Checker:
    leaders: dict[int, int] = field(default_factory=dict)
    entries: dict[tuple[int, int], tuple[bytes, int]] = field(default_factory=dict)
    canon: dict[int, Canon] = field(default_factory=dict)
    sent_term_max: dict[int, int] = field(default_factory=dict)
    votes_granted: dict[tuple[int, int], int] = field(default_factory=dict)
    persisted: dict[int, tuple[int, int]] = field(default_factory=dict)
    acked: dict[bytes, int] = field(default_factory=dict)
    # The latest configuration and the index of the CONFIG entry that made it.
    conf: ConfState = EMPTY_CONF
    conf_index: int = 0

    def fail(self, what: str) -> None:
        raise InvariantViolation(what)

    # -- roles -----------------------------------------------------------------

    def after_step(self, node: int, raft: Raft) -> None:
        if raft.role is not Role.LEADER:
            return
        known = self.leaders.get(raft.term)
        if known is None:
            self.leaders[raft.term] = node
            self._check_leader_complete(node, raft)
        elif known != node:
            self.fail(f"election safety: {known} and {node} both lead term {raft.term}")

    def _check_leader_complete(self, node: int, raft: Raft) -> None:
        first = raft.log.first_index()
        for index, canon in self.canon.items():
            if canon.commit_term_max < raft.term and index >= first:
                have = raft.log.term_or_none(index)
                if have != canon.term:
                    self.fail(
                        f"leader completeness: leader {node} of term {raft.term} has term"
                        f" {have} at committed index {index} (term {canon.term})"
                    )

    # -- durability ------------------------------------------------------------

    def on_persist(self, node: int, storage: Storage, ready: Ready) -> None:
        hs = storage.hard_state()
        term, vote = self.persisted.get(node, (0, 0))
        if hs.term < term or (hs.term == term and vote and hs.vote != vote):
            self.fail(f"node {node} persisted term/vote {hs.term}/{hs.vote} after {term}/{vote}")
        self.persisted[node] = (hs.term, hs.vote)
        for entry in ready.entries:
            self._check_log_matching(node, storage, entry)

    def _check_log_matching(self, node: int, storage: Storage, entry: Entry) -> None:
        prev_term = storage.term(entry.index - 1)
        key = (entry.index, entry.term)
        value = (entry.data, prev_term)
        known = self.entries.setdefault(key, value)
        if known != value:
            self.fail(
                f"log matching: node {node} holds a different entry {key}: {value} vs {known}"
            )

    def on_send(self, node: int, m: Message) -> None:
        if m.type not in _UNPERSISTED_TERMS and m.term > self.sent_term_max.get(node, 0):
            self.sent_term_max[node] = m.term
        if m.type is MessageType.VOTE_RESP and not m.reject:
            first = self.votes_granted.setdefault((node, m.term), m.to)
            if first != m.to:
                self.fail(f"node {node} voted for {first} and {m.to} in term {m.term}")

    def on_restart(self, node: int, storage: Storage) -> None:
        hs = storage.hard_state()
        sent = self.sent_term_max.get(node, 0)
        if hs.term < sent:
            self.fail(f"node {node} restarted in term {hs.term} after sending in term {sent}")
        granted = self.votes_granted.get((node, hs.term))
        if granted is not None and hs.vote != granted:
            self.fail(f"node {node} restarted without its vote for {granted} in term {hs.term}")

    # -- the state machine ---------------------------------------------------------

    def on_apply(
        self, node: int, raft: Raft, entry: Entry, digest: int, leaders: list[Raft]
    ) -> None:
        canon = self.canon.get(entry.index)
        if canon is None:
            canon = Canon(digest, entry.term, entry.data, raft.term)
            self.canon[entry.index] = canon
            # Entries are applied in order and snapshots come from nodes that
            # applied, so the first application of each index comes in order.
            if entry.type is EntryType.CONFIG:
                self.conf = self.conf.apply(ConfChange.decode(entry.data))
                self.conf_index = entry.index
        elif canon.digest != digest:
            self.fail(
                f"state machine safety: node {node} applied {entry} at {entry.index},"
                f" others applied term {canon.term} data {canon.data!r}"
            )
        for leader in leaders:
            later = leader.term > canon.commit_term_max
            held = entry.index < leader.log.first_index()  # compacted: it was committed there
            if later and not held and leader.log.term_or_none(entry.index) != canon.term:
                self.fail(f"leader completeness: leader {leader.id} lacks committed {entry}")

    def on_ack(self, data: bytes, index: int) -> None:
        canon = self.canon[index]
        if canon.data != data:
            self.fail(f"acknowledged {data!r} at {index} but {canon.data!r} was applied")
        self.acked[data] = index
