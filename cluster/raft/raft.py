"""One Raft group's state and the transitions shared by all roles.

`Raft` owns term, vote, role, the log and the leader's per-follower
progress. Messages enter through `step()`, which settles terms (§5.1) and
vote requests (§5.2, §5.4.1) here and hands everything else to the step
function of the current role in `roles.py`. Nothing here performs I/O:
outgoing messages are queued in `msgs` and leave through `RawNode.ready()`.
"""

from __future__ import annotations

import random
from collections import deque

from .log import RaftLog
from .progress import Progress, ProgressState
from .roles import STEPS
from .storage import CompactedError, Storage, UnavailableError
from .types import (
    NONE,
    ConfChange,
    ConfChangeRejected,
    ConfChangeResult,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    NodeId,
    NotLeader,
    ProposalDropped,
    ProposeResult,
    Role,
    Snapshot,
    SnapshotMeta,
)

# Tuples, not sets: membership by identity avoids hashing enums on the hot path.
_LEADER_TRAFFIC = (MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT)
_VOTE_REQUESTS = (MessageType.VOTE, MessageType.PRE_VOTE)


class Raft:
    def __init__(
        self,
        config: Config,
        storage: Storage,
        rng: random.Random,
        applied: int | None = None,
    ) -> None:
        self.id = config.id
        self.config = config
        self.rng = rng
        self.log = RaftLog(storage)
        hard_state = storage.hard_state()
        self.term = hard_state.term
        self.vote = hard_state.vote
        snapshot = storage.snapshot()
        self.conf = snapshot.meta.conf
        # Configurations that took effect at an applied index, to label compactions.
        self.conf_history: list[tuple[int, ConfState]] = [(snapshot.meta.index, self.conf)]
        self.role = Role.FOLLOWER
        self.leader = NONE
        self.msgs: list[Message] = []
        self.progress: dict[NodeId, Progress] = {}
        self.votes: dict[NodeId, bool] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        # Leader: ticks since it took office, the clock of CheckQuorum (each
        # Progress records the value when its member last answered).
        self.leader_ticks = 0
        self.randomized_timeout = config.election_ticks
        self.lead_transferee = NONE
        # Leader: ticks since the transfer started; its own clock, so that a
        # transfer request never delays CheckQuorum.
        self.transfer_elapsed = 0
        # Leader: index of the latest config entry (or its no-op); one change at a time.
        self.pending_conf_index = 0
        # Leader: (index, bytes) of proposals not yet committed, to bound them.
        self.uncommitted: deque[tuple[int, int]] = deque()
        self.uncommitted_bytes = 0
        # Leader: new proposals wait for the next ready() so they travel in one batch.
        self.append_pending = False
        # Leader: the commit index moved; the next ready() tells every follower,
        # on the appends it sends anyway where there are any (see flush()).
        self.commit_pending = False
        self.pending_truncate: Snapshot | None = None
        if applied is not None:
            self._replay_conf_to(applied)
        self.become_follower(self.term, NONE)

    def _replay_conf_to(self, applied: int) -> None:
        """Restart with a durable applied index: rebuild the config entries it covers."""
        assert self.log.applied <= applied <= self.log.committed, "applied out of range"
        for entry in self.log.entries(self.log.applied + 1, applied + 1, 1 << 62):
            if entry.type is EntryType.CONFIG:
                self.apply_conf_entry(entry)
        self.log.applied = applied

    # -- durable state ---------------------------------------------------------------

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def quorum(self) -> int:
        return len(self.conf.voters) // 2 + 1

    def promotable(self) -> bool:
        return self.id in self.conf.voters and self.log.pending_snapshot is None

    def is_up_to_date(self, index: int, term: int) -> bool:
        """Vote-granting rule §5.4.1 (a method so tests can break it on purpose)."""
        return self.log.is_up_to_date(index, term)

    # -- role changes ----------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NONE
        self.leader = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.leader_ticks = 0
        # §5.2: randomized timeouts in [T, 2T) make split votes rare.
        election_ticks = self.config.election_ticks
        self.randomized_timeout = election_ticks + self.rng.randrange(election_ticks)
        self.votes = {}
        self.lead_transferee = NONE
        self.transfer_elapsed = 0
        self.progress = {}
        self.uncommitted.clear()
        self.uncommitted_bytes = 0
        self.append_pending = False
        self.commit_pending = False

    def become_follower(self, term: int, leader: NodeId) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader

    def step_down(self) -> None:
        """The host knows we cannot reach a quorum: stop leading, keep the term.

        Always safe (a follower with no leader only waits for an election);
        it ends leaderships that the host can see are cut off sooner than
        CheckQuorum would, e.g. for groups that were quiet and not ticked.
        """
        if self.role is Role.LEADER:
            self.become_follower(self.term, NONE)

    def become_pre_candidate(self) -> None:
        # PreVote (thesis §9.6) keeps our term: losing a pre-election disturbs nobody.
        assert self.role is not Role.LEADER
        term = self.term
        self._reset(term)
        self.role = Role.PRE_CANDIDATE

    def become_candidate(self) -> None:
        assert self.role is not Role.LEADER
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def become_leader(self) -> None:
        assert self.role is Role.CANDIDATE
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        last = self.log.last_index()
        for node in self.conf.members():
            self.progress[node] = Progress(
                last + 1, self.config.inflight_messages_max, node in self.conf.learners
            )
        me = self.progress[self.id]
        me.become_replicate()
        # Only what the host has persisted counts towards our own vote in commits.
        me.maybe_update(self.log.unstable_offset - 1)
        # §5.4.2/§8: an entry of our term lets us commit (and learn) earlier ones.
        # No config change until it is applied: a new leader must commit in its
        # own term before changing membership (raft-dev, 2015 single-server bug).
        self.pending_conf_index = self.append_entry(EntryType.NOOP, b"")

    # -- elections -------------------------------------------------------------------

    def has_unapplied_conf(self) -> bool:
        log = self.log
        if log.committed <= log.applied:
            return False
        entries = log.entries(log.applied + 1, log.committed + 1, 1 << 62)
        return any(e.type is EntryType.CONFIG for e in entries)

    def campaign(self, pre_vote: bool, transfer: bool = False) -> None:
        # A committed config change we have not applied yet may change who votes.
        if not self.promotable() or self.has_unapplied_conf():
            return
        if pre_vote:
            self.become_pre_candidate()
            kind, term = MessageType.PRE_VOTE, self.term + 1
        else:
            self.become_candidate()
            kind, term = MessageType.VOTE, self.term
        if self.record_vote(self.id, True) is not None:
            return
        index, log_term = self.log.last_index(), self.log.last_term()
        for node in sorted(self.conf.voters):
            if node != self.id:
                self.send(kind, node, term=term, index=index, log_term=log_term, transfer=transfer)

    def record_vote(self, node: NodeId, granted: bool) -> bool | None:
        """Counts a vote; returns True when won, False when lost, None while open."""
        if node in self.conf.voters:
            self.votes.setdefault(node, granted)
        yes = sum(1 for g in self.votes.values() if g)
        no = len(self.votes) - yes
        if yes >= self.quorum():
            if self.role is Role.PRE_CANDIDATE:
                self.campaign(pre_vote=False)
            else:
                self.become_leader()
                self.bcast_append()
            return True
        if no > len(self.conf.voters) - self.quorum():
            self.become_follower(self.term, NONE)
            return False
        return None

    def handle_vote_request(self, m: Message) -> None:
        # We may vote for whoever we already voted for, for anyone if we have no
        # vote and know no leader in this term, and pre-votes concern a future term.
        can_vote = (
            self.vote == m.frm
            or (self.vote == NONE and self.leader == NONE)
            or (m.type is MessageType.PRE_VOTE and m.term > self.term)
        )
        resp = MessageType.VOTE_RESP if m.type is MessageType.VOTE else MessageType.PRE_VOTE_RESP
        if can_vote and self.is_up_to_date(m.index, m.log_term):
            self.send(resp, m.frm, term=m.term)
            if m.type is MessageType.VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self.send(resp, m.frm, reject=True)

    # -- message entry point -----------------------------------------------------------

    def step(self, m: Message) -> None:
        assert m.to == self.id, f"message for {m.to} delivered to {self.id}"
        if m.term > self.term:
            if m.type in _VOTE_REQUESTS and self.in_lease() and not m.transfer:
                return  # thesis §4.2.3: a live leader's followers ignore disruptive servers
            if m.type is MessageType.PRE_VOTE:
                pass  # a pre-vote never changes our term
            elif m.type is MessageType.PRE_VOTE_RESP and not m.reject:
                pass  # granted pre-votes carry the term the candidate will use
            else:
                self.become_follower(m.term, m.frm if m.type in _LEADER_TRAFFIC else NONE)
        elif m.term < self.term:
            self._answer_stale(m)
            return
        if m.type in _VOTE_REQUESTS:
            self.handle_vote_request(m)
            return
        STEPS[self.role](self, m)

    def in_lease(self) -> bool:
        return (
            self.config.check_quorum
            and self.leader != NONE
            and self.election_elapsed < self.config.election_ticks
        )

    def _answer_stale(self, m: Message) -> None:
        # A leader cut off by a partition never learns of the newer term if we
        # stay silent (PreVote keeps our term from reaching it through votes).
        if m.type in (MessageType.APPEND, MessageType.HEARTBEAT):
            if self.config.check_quorum or self.config.pre_vote:
                self.send(MessageType.APPEND_RESP, m.frm)
        elif m.type is MessageType.PRE_VOTE:
            self.send(MessageType.PRE_VOTE_RESP, m.frm, reject=True)

    # -- time --------------------------------------------------------------------------

    def tick(self) -> None:
        if self.role is Role.LEADER:
            self._tick_leader()
            return
        self.election_elapsed += 1
        if self.election_elapsed >= self.randomized_timeout and self.promotable():
            self.election_elapsed = 0
            self.campaign(pre_vote=self.config.pre_vote)

    def _tick_leader(self) -> None:
        # A leader's election_elapsed stays 0, so in_lease() holds while it leads.
        self.heartbeat_elapsed += 1
        self.leader_ticks += 1
        if self.config.check_quorum and not self._quorum_active():
            self.become_follower(self.term, NONE)
            return
        if self.lead_transferee != NONE:
            self.transfer_elapsed += 1
            if self.transfer_elapsed >= self.config.election_ticks:
                self.lead_transferee = NONE  # not done within an election timeout: abandoned
        for node, pr in self.progress.items():
            if pr.state is ProgressState.SNAPSHOT:
                pr.snapshot_elapsed += 1
                # The snapshot or its answer was lost: try again from a probe.
                if pr.snapshot_elapsed > self.config.election_ticks:
                    pr.become_probe()
                    self.send_append(node)
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self.bcast_heartbeat()

    def check_quorum_ticks(self) -> int:
        """CheckQuorum's window: a quorum must have answered within this many ticks.

        One tick less than the election timeout T, checked at every tick: a
        sliding window, where one verdict per T over the activity of the
        last T ends a cut-off leadership only 1-2 T after the cut. An answer
        arrives at or after the tick it is stamped with (`leader_ticks` at
        receipt), so a leader cut off from its quorum steps down at most
        T - 1 of its ticks after the cut; the tick left over covers a late
        tick and the host's turn that reports the change, keeping the end
        within T. While the quorum is reachable, answers to heartbeats sent
        every `heartbeat_ticks` (< T - 1 by default) keep it well inside.
        """
        return self.config.election_ticks - 1

    def heard_recently(self, pr: Progress) -> bool:
        """Leader: whether the member of `pr` answered within the CheckQuorum window."""
        return self.leader_ticks - pr.heard_tick < self.check_quorum_ticks()

    def _quorum_active(self) -> bool:
        """CheckQuorum (thesis §6.2): has a quorum of voters, us included, answered lately?"""
        # Runs at every leader tick of every group: stop at the first quorum.
        missing = self.quorum() - 1  # we count ourselves
        if missing <= 0:
            return True
        stale = self.leader_ticks - self.check_quorum_ticks()
        voters = self.conf.voters
        me = self.id
        for node, pr in self.progress.items():
            if pr.heard_tick > stale and node != me and node in voters:
                missing -= 1
                if not missing:
                    return True
        return False

    # -- requests from the host (through RawNode) --------------------------------------

    def propose(self, kind: EntryType, data: bytes) -> ProposeResult:
        if self.role is not Role.LEADER:
            return NotLeader(self.leader)
        if self.lead_transferee:
            return ProposalDropped("leadership transfer in progress")
        config = self.config
        if self.uncommitted and (
            len(self.uncommitted) >= config.uncommitted_entries_max
            or self.uncommitted_bytes + len(data) > config.uncommitted_bytes_max
        ):
            return ProposalDropped("too many uncommitted proposals")
        return self.append_entry(kind, data)

    def propose_conf_change(self, change: ConfChange) -> ConfChangeResult:
        if self.role is not Role.LEADER:
            return NotLeader(self.leader)
        if self.pending_conf_index > self.log.applied:
            return ConfChangeRejected("a configuration change is still pending")
        reason = self._conf_change_problem(change)
        if reason:
            return ConfChangeRejected(reason)
        result = self.propose(EntryType.CONFIG, change.encode())
        if isinstance(result, int):
            self.pending_conf_index = result
        return result

    def _conf_change_problem(self, change: ConfChange) -> str:
        node = change.node_id
        if change.type is ConfChangeType.ADD_LEARNER:
            return "already a member" if node in self.conf.members() else ""
        if change.type is ConfChangeType.ADD_VOTER:
            if node not in self.conf.learners:
                return "only a learner can become a voter"
            lag = self.log.last_index() - self.progress[node].match
            if lag > self.config.promote_lag_entries_max:
                return f"learner is {lag} entries behind"
            return ""
        if node not in self.conf.members():
            return "not a member"
        if self.conf.voters == {node}:
            return "cannot remove the last voter"
        return ""

    def transfer_leadership(self, target: NodeId) -> NotLeader | ProposalDropped | None:
        if self.role is not Role.LEADER:
            return NotLeader(self.leader)
        if target == self.id or target not in self.conf.voters:
            return ProposalDropped("transfer target is not another voter")
        if self.lead_transferee == target:
            return None
        self.lead_transferee = target
        self.transfer_elapsed = 0
        if self.progress[target].match == self.log.last_index():
            self.send_timeout_now(target)
        else:
            self.send_append(target)
        return None

    def on_advance(
        self,
        snapshot: Snapshot | None,
        entries: tuple[Entry, ...],
        truncate: Snapshot | None,
        committed: tuple[Entry, ...],
    ) -> None:
        """The host persisted and applied a Ready holding these (see rawnode.py)."""
        log = self.log
        if snapshot is not None:
            log.stable_snapshot_to(snapshot.meta.index)
            log.applied = max(log.applied, snapshot.meta.index)
        if entries:
            log.stable_to(entries[-1].index, entries[-1].term)
        if truncate is not None and self.pending_truncate is truncate:
            self.pending_truncate = None
        for entry in committed:
            # A snapshot received while this Ready was out already holds the
            # configuration as of its index: older changes must not reapply.
            if entry.type is EntryType.CONFIG and entry.index > self.conf_history[-1][0]:
                self.apply_conf_entry(entry)
        if committed:
            log.applied = max(log.applied, committed[-1].index)
        self.on_persisted()

    # -- sending -----------------------------------------------------------------------

    def send(
        self,
        kind: MessageType,
        to: NodeId,
        *,
        term: int | None = None,
        index: int = 0,
        log_term: int = 0,
        entries: tuple[Entry, ...] = (),
        commit: int = 0,
        reject: bool = False,
        hint_index: int = 0,
        hint_term: int = 0,
        snapshot: Snapshot | None = None,
        transfer: bool = False,
    ) -> None:
        self.msgs.append(
            Message(
                kind,
                to,
                self.id,
                self.term if term is None else term,
                index,
                log_term,
                entries,
                commit,
                reject,
                hint_index,
                hint_term,
                snapshot,
                transfer,
            )
        )

    def send_append(self, to: NodeId, send_if_empty: bool = True) -> bool:
        """Sends the next batch to `to` if its flow control allows; returns whether sent."""
        pr = self.progress[to]
        if pr.is_paused():
            return False
        log = self.log
        last = log.last_index()
        prev = pr.next - 1
        try:
            prev_term = log.term(prev)
            hi = min(pr.next + self.config.append_entries_max, last + 1)
            entries = log.entries(pr.next, hi, self.config.append_bytes_max) if prev < last else []
        except CompactedError:
            return self._send_snapshot(to, pr)
        if not entries and not send_if_empty:
            return False
        self.send(
            MessageType.APPEND,
            to,
            index=prev,
            log_term=prev_term,
            entries=tuple(entries),
            commit=log.committed,
        )
        pr.sent(entries[-1].index if entries else prev, len(entries))
        pr.sent_commit = log.committed
        return True

    def _send_snapshot(self, to: NodeId, pr: Progress) -> bool:
        # Only to a follower that answers: a snapshot can be large.
        if not self.heard_recently(pr):
            return False
        try:
            snapshot = self.log.storage.snapshot()
        except UnavailableError:
            return False  # the application is still producing it; retry on a later heartbeat
        self.send(MessageType.SNAPSHOT, to, snapshot=snapshot)
        pr.become_snapshot(snapshot.meta.index)
        return True

    def send_timeout_now(self, to: NodeId) -> None:
        self.send(MessageType.TIMEOUT_NOW, to)

    def bcast_append(self) -> None:
        for node in self.progress:
            if node != self.id:
                self.send_append(node)

    def bcast_heartbeat(self) -> None:
        for node, pr in self.progress.items():
            if node != self.id:
                # Never let a follower commit past what we know it holds.
                self.send(MessageType.HEARTBEAT, node, commit=min(pr.match, self.log.committed))

    # -- the leader's log --------------------------------------------------------------

    def append_entry(self, kind: EntryType, data: bytes) -> int:
        index = self.log.last_index() + 1
        self.log.append([Entry(self.term, index, kind, data)])
        if kind is EntryType.NORMAL:
            self.uncommitted.append((index, len(data)))
            self.uncommitted_bytes += len(data)
        self.append_pending = True
        return index

    def maybe_commit(self) -> bool:
        """Advances commit to the highest index a quorum of voters has persisted.

        §5.4.2: only an entry of the current term is committed by counting
        replicas; earlier entries become committed along with it.
        """
        matches = sorted((self.progress[n].match for n in self.conf.voters), reverse=True)
        index = matches[self.quorum() - 1]
        if index > self.log.committed and self.log.term_or_none(index) == self.term:
            self.log.commit_to(index)
            self.on_committed()
            return True
        return False

    def on_committed(self) -> None:
        while self.uncommitted and self.uncommitted[0][0] <= self.log.committed:
            self.uncommitted_bytes -= self.uncommitted.popleft()[1]

    def on_persisted(self) -> None:
        """The host persisted our unstable entries: count our own copy for commits."""
        if self.role is not Role.LEADER:
            return
        persisted = self.log.unstable_offset - 1
        if self.progress[self.id].maybe_update(persisted) and self.maybe_commit():
            self.commit_pending = True

    def flush(self) -> None:
        """Sends what waited for the next Ready: proposals, then the commit index.

        Proposals made since the last Ready go out filling each follower's
        window. A commit index that moved since then rides on those appends
        (each carries it); a follower that got none gets an empty append
        carrying it. Both wait for the Ready anyway (the host sends only what
        a Ready hands it), so deferring them to here delays nothing, and a
        commit learned while proposals queue costs no message of its own:
        at a steady produce rate this halves the appends, their answers and
        the followers' turns.
        """
        append, self.append_pending = self.append_pending, False
        commit, self.commit_pending = self.commit_pending, False
        if self.role is not Role.LEADER or not (append or commit):
            return
        committed = self.log.committed
        for node, pr in self.progress.items():
            if node == self.id:
                continue
            if append:
                while self.send_append(node, send_if_empty=False):
                    pass
            if commit and pr.sent_commit < committed:
                self.send_append(node)

    # -- membership and compaction -------------------------------------------------------

    def apply_conf_entry(self, entry: Entry) -> None:
        """Config changes take effect when applied (etcd's rule, see docs/raft.md)."""
        change = ConfChange.decode(entry.data)
        self.conf = self.conf.apply(change)
        self.conf_history.append((entry.index, self.conf))
        if self.role is not Role.LEADER:
            return
        if self.id not in self.conf.voters:
            self.become_follower(self.term, NONE)
            return
        for node in list(self.progress):
            if node not in self.conf.members():
                del self.progress[node]
        for node in self.conf.members():
            pr = self.progress.get(node)
            if pr is None:
                pr = Progress(self.log.last_index() + 1, self.config.inflight_messages_max, False)
                pr.heard_tick = self.leader_ticks  # a window's grace before CheckQuorum
                self.progress[node] = pr
                self.send_append(node)
            pr.is_learner = node in self.conf.learners
        if self.lead_transferee not in self.conf.voters:
            self.lead_transferee = NONE
        if self.maybe_commit():
            self.commit_pending = True

    def conf_at(self, index: int) -> ConfState:
        conf = self.conf_history[0][1]
        for at, state in self.conf_history:
            if at <= index:
                conf = state
        return conf

    def compact(self, index: int, data: bytes) -> None:
        """Asks the host to drop the log up to `index`, keeping `data` as the snapshot."""
        assert index <= self.log.applied, "compacting past the applied index"
        assert self.log.pending_snapshot is None
        if index < self.log.first_index():
            return
        pending = self.pending_truncate
        if pending is not None and index <= pending.meta.index:
            # A larger compaction is not persisted yet and conf_history no longer
            # knows the configuration below it (thesis §5.1: a snapshot records
            # the configuration as of its last index).
            return
        meta = SnapshotMeta(index, self.log.term(index), self.conf_at(index))
        self.pending_truncate = Snapshot(meta, data)
        self.conf_history = [(index, meta.conf)] + [c for c in self.conf_history if c[0] > index]
