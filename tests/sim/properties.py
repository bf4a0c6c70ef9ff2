"""Properties checked while the simulation runs, beyond the paper's Figure 3.

`checker.py` watches what hosts persist, send and apply. This module watches
each input a node receives (a message, a tick, a request, an `advance`) and
the node's state right after it:

- Terms rise only through a message carrying a higher term or the node's own
  candidacy (then by exactly one); a pre-vote, sent or received, never bumps
  any term (thesis §9.6).
- Leases (thesis §4.2.3): a node that heard from the leader of its term within
  the election timeout, or leads, grants no vote or pre-vote for a higher
  term, unless the request comes from a leadership transfer.
- CheckQuorum (thesis §6.2): a leader that has not heard from a quorum of
  voters (itself counted) for one election timeout has stepped down. The
  core checks a window of `election_ticks - 1` at every tick; the host steps
  a quiet leader down when its node sees the quorum's nodes dead.
- Configuration (thesis §4.1, our apply-time rule): every node's
  configuration equals its snapshot's configuration replayed with the CONFIG
  entries of its log up to its applied index, and a compaction records the
  configuration in effect at its index.
- Leadership transfer (thesis §3.10): a transfer is abandoned within one
  election timeout; a transfer to a caught-up target requested in a calm
  window (no loss, partition, crash or rival candidate) completes.

Each property reads the node's state and what the simulator itself saw
(deliveries and ticks), never the core's own timers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from weir.cluster.raft import (
    NONE,
    ConfChange,
    ConfState,
    EntryType,
    Message,
    MessageType,
    Raft,
    Role,
    Snapshot,
)

from .checker import InvariantViolation

_LEADER_TRAFFIC = (MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT)
_GRANTS = {MessageType.VOTE: MessageType.VOTE_RESP, MessageType.PRE_VOTE: MessageType.PRE_VOTE_RESP}
_LEADER_HEARS = (MessageType.APPEND_RESP, MessageType.HEARTBEAT_RESP)
_BIG = 1 << 62


@dataclass(frozen=True, slots=True)
class Before:
    """A node's state just before an input."""

    term: int
    role: Role
    msgs: int


@dataclass
class ConfReplay:
    """Incremental replay of one node's configuration from its snapshot and log."""

    base_index: int
    applied: int
    conf: ConfState


@dataclass
class Transfer:
    leader: int
    term: int
    target: int
    requested: int
    deadline: int
    excused: bool = False


@dataclass
class Properties:
    election_ticks: int
    check_quorum: bool
    now: int = 0
    # Follower side: (tick, term) of the last leader traffic accepted.
    heard_leader: dict[int, tuple[int, int]] = field(default_factory=dict)
    # Leader side, per (leader, term): the tick each peer was last heard from.
    heard_peers: dict[tuple[int, int], dict[int, int]] = field(default_factory=dict)
    # Per (leader, term): its voters and since when (a new configuration restarts the clock).
    leading_since: dict[tuple[int, int], tuple[frozenset[int], int]] = field(default_factory=dict)
    # Per leader: (term, target, tick) of the transfer it is running.
    transferring: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    replays: dict[int, ConfReplay] = field(default_factory=dict)
    calm_transfer: Transfer | None = None
    transfers_completed: int = 0

    def fail(self, what: str) -> None:
        raise InvariantViolation(what)

    @staticmethod
    def before(r: Raft) -> Before:
        return Before(r.term, r.role, len(r.msgs))

    # -- inputs ------------------------------------------------------------------

    def after_step(self, node: int, r: Raft, b: Before, m: Message) -> None:
        self._check_term(node, r, b, m)
        kind = m.type
        if kind in _GRANTS:
            self._check_lease(node, r, b, m)
        elif kind in _LEADER_TRAFFIC:
            if m.term >= b.term:
                self.heard_leader[node] = (self.now, m.term)
            if kind is MessageType.SNAPSHOT:
                self.check_conf(node, r)
        elif kind in _LEADER_HEARS and b.role is Role.LEADER and m.term == b.term:
            self.heard_peers.setdefault((node, b.term), {})[m.frm] = self.now

    def after_tick(self, node: int, r: Raft, b: Before) -> None:
        self._check_term(node, r, b, None)

    def after_request(self, node: int, r: Raft, b: Before, what: str) -> None:
        """Proposals, transfers, compactions and `advance` never change the term."""
        if r.term != b.term:
            self.fail(f"term: node {node} moved from term {b.term} to {r.term} on {what}")

    def _check_term(self, node: int, r: Raft, b: Before, m: Message | None) -> None:
        if r.term == b.term:
            return
        base = b.term
        if m is not None and m.term > base:
            granted_pre_vote = m.type is MessageType.PRE_VOTE_RESP and not m.reject
            if m.type is not MessageType.PRE_VOTE and not granted_pre_vote:
                base = m.term
        candidacy = r.role in (Role.CANDIDATE, Role.LEADER) and r.vote == r.id
        allowed = (b.term, base, base + 1) if candidacy else (b.term, base)
        cause = "a tick" if m is None else f"{m.type.name} term {m.term} from {m.frm}"
        if r.term not in allowed:
            self.fail(
                f"term: node {node} moved from term {b.term} to {r.term} on {cause}"
                f" (role {r.role.name})"
            )
        if r.role is Role.PRE_CANDIDATE and r.term != b.term:
            self.fail(f"term: pre-candidate {node} moved from term {b.term} to {r.term}")

    def _check_lease(self, node: int, r: Raft, b: Before, m: Message) -> None:
        if not self.check_quorum or m.transfer or m.term <= b.term:
            return
        heard = self.heard_leader.get(node)
        if b.role is Role.LEADER:
            lease = f"it led term {b.term}"
        elif heard is not None and heard[1] == b.term and self.now - heard[0] < self.election_ticks:
            lease = f"it heard from the leader of term {b.term} at tick {heard[0]}"
        else:
            return
        resp = _GRANTS[m.type]
        for out in r.msgs[b.msgs :]:
            if out.type is resp and out.to == m.frm and not out.reject:
                self.fail(
                    f"lease: node {node} granted {m.type.name} for term {m.term} to {m.frm}"
                    f" at tick {self.now} although {lease}"
                )

    # -- configuration -------------------------------------------------------------

    def check_conf(self, node: int, r: Raft) -> None:
        log = r.log
        snapshot = log.pending_snapshot or log.storage.snapshot()
        base = snapshot.meta.index
        replay = self.replays.get(node)
        if replay is None or replay.base_index != base or replay.applied > log.applied:
            replay = ConfReplay(base, base, snapshot.meta.conf)
            self.replays[node] = replay
        if log.applied > replay.applied:
            for entry in log.entries(replay.applied + 1, log.applied + 1, _BIG):
                if entry.type is EntryType.CONFIG:
                    replay.conf = replay.conf.apply(ConfChange.decode(entry.data))
            replay.applied = log.applied
        if r.conf != replay.conf:
            self.fail(
                f"configuration: node {node} has {_conf(r.conf)} but its snapshot at {base}"
                f" and log up to applied {log.applied} say {_conf(replay.conf)}"
            )

    def check_truncate(self, node: int, r: Raft, truncate: Snapshot) -> None:
        """Before a compaction is persisted: it must carry the config at its index."""
        storage = r.log.storage
        snapshot = storage.snapshot()
        conf = snapshot.meta.conf
        index = truncate.meta.index
        if index <= snapshot.meta.index:
            return
        for entry in storage.entries(snapshot.meta.index + 1, index + 1, _BIG):
            if entry.type is EntryType.CONFIG:
                conf = conf.apply(ConfChange.decode(entry.data))
        if truncate.meta.conf != conf:
            self.fail(
                f"configuration: node {node} compacts to {index} recording"
                f" {_conf(truncate.meta.conf)}, but its log says {_conf(conf)} there"
            )

    def on_boot(self, node: int) -> None:
        self.heard_leader.pop(node, None)
        self.replays.pop(node, None)

    # -- once per tick ---------------------------------------------------------------

    def end_of_tick(self, rafts: dict[int, Raft]) -> None:
        for node, r in rafts.items():
            if r.role is not Role.LEADER or r.lead_transferee == NONE:
                self.transferring.pop(node, None)
            if r.role is Role.LEADER:
                self._check_quorum(node, r)
                self._check_transfer_abandoned(node, r)
            if self.calm_transfer is not None:
                self._watch_calm_transfer(node, r)
        t = self.calm_transfer
        if t is not None and self.now >= t.deadline:
            self.calm_transfer = None
            if not t.excused:
                self.fail(
                    f"transfer: leader {t.leader} of term {t.term} was asked at tick"
                    f" {t.requested} to hand over to {t.target}, which was caught up and"
                    f" connected, and nothing stopped it, but {t.target} did not lead"
                    f" by tick {t.deadline}"
                )

    def _check_quorum(self, node: int, r: Raft) -> None:
        if not self.check_quorum:
            return
        key = (node, r.term)
        voters = r.conf.voters
        known = self.leading_since.get(key)
        if known is None or known[0] != voters:
            known = self.leading_since[key] = (voters, self.now)
        since = known[1]
        heard = self.heard_peers.get(key, {})
        times = sorted((self.now if v == node else heard.get(v, 0) for v in voters), reverse=True)
        last = max(since, times[len(voters) // 2])
        if self.now - last >= self.election_ticks:
            self.fail(
                f"check quorum: node {node} still leads term {r.term} at tick {self.now}"
                f" but a quorum of {sorted(r.conf.voters)} was last heard at tick {last}"
            )

    def _check_transfer_abandoned(self, node: int, r: Raft) -> None:
        if r.lead_transferee == NONE:
            return
        self.on_transfer_requested(node, r)
        since = self.transferring[node][2]
        if self.now - since >= self.election_ticks:
            self.fail(
                f"transfer: leader {node} of term {r.term} still transfers to"
                f" {r.lead_transferee} since tick {since}, past an election timeout"
            )

    def on_transfer_requested(self, node: int, r: Raft) -> None:
        known = self.transferring.get(node)
        if r.lead_transferee != NONE and (
            known is None or known[:2] != (r.term, r.lead_transferee)
        ):
            self.transferring[node] = (r.term, r.lead_transferee, self.now)

    def expect_transfer(self, leader: int, r: Raft, target: int, window: int) -> None:
        self.calm_transfer = Transfer(leader, r.term, target, self.now, self.now + window)

    def _watch_calm_transfer(self, node: int, r: Raft) -> None:
        t = self.calm_transfer
        assert t is not None
        if r.term <= t.term:
            return
        if node == t.target and r.role is Role.LEADER:
            self.calm_transfer = None
            self.transfers_completed += 1
        elif node != t.target and r.role is Role.CANDIDATE:
            t.excused = True  # a rival election stopped it

    def excuse_transfer(self) -> None:
        """Something stopped the calm transfer (a fault the simulator injected)."""
        if self.calm_transfer is not None:
            self.calm_transfer.excused = True


def _conf(conf: ConfState) -> str:
    learners = f" learners {sorted(conf.learners)}" if conf.learners else ""
    return f"voters {sorted(conf.voters)}{learners}"
