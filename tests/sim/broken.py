"""Deliberately broken Raft variants and host policies: the simulator must catch each one.

Each subclass reintroduces one classic mistake (a one-line change in the
real code), so a test can show that the checker and the fault mix are
strong enough to notice it. `Raft` subclasses run in tests/sim/cluster.py,
`HostPolicy` subclasses in the multi-group hosts of tests/sim/host.py.
docs/raft.md lists the first seed catching each.
"""

from __future__ import annotations

from weir.cluster.host.policy import Alive, HostPolicy, Quiet
from weir.cluster.raft import (
    NONE,
    ConfChange,
    ConfChangeResult,
    HardState,
    Message,
    MessageType,
    NodeId,
    Raft,
    RawNode,
    Ready,
    Role,
)


class CommitsPreviousTermByCount(Raft):
    """Commits an entry of an earlier term once a majority stores it (Figure 8)."""

    def maybe_commit(self) -> bool:
        matches = sorted((self.progress[n].match for n in self.conf.voters), reverse=True)
        index = matches[self.quorum() - 1]
        if index > self.log.committed:
            self.log.commit_to(index)
            self.on_committed()
            return True
        return False


class VotesWithoutLogCheck(Raft):
    """Grants votes without the §5.4.1 up-to-date check."""

    def is_up_to_date(self, index: int, term: int) -> bool:
        return True


class ForgetsVote(Raft):
    """Never persists its vote, so after a restart it may vote twice in a term."""

    def hard_state(self) -> HardState:
        return HardState(self.term, NONE, self.log.committed)


class PreVoteIgnoresLease(Raft):
    """Thesis §4.2.3 applied to votes only: pre-votes are granted during a lease."""

    def step(self, m: Message) -> None:
        if m.type is MessageType.PRE_VOTE and m.term > self.term:
            self.handle_vote_request(m)  # the lease check is skipped for pre-votes
            return
        super().step(m)


class PreVoteBumpsTerm(Raft):
    """Thesis §9.6 broken: a voter adopts the term of a pre-vote it receives."""

    def step(self, m: Message) -> None:
        if m.type is MessageType.PRE_VOTE and m.term > self.term and not self.in_lease():
            self.become_follower(m.term, NONE)
        super().step(m)


class NoCheckQuorumStepDown(Raft):
    """Thesis §6.2 broken: the leader never notices that it lost its quorum."""

    def _quorum_active(self) -> bool:
        return True


class ChecksQuorumOncePerTimeout(Raft):
    """Thesis §6.2 checked once per election timeout over the last one: a cut-off leader leads 1-2 timeouts."""

    def check_quorum_ticks(self) -> int:
        return self.config.election_ticks + 1  # answers since the previous check count

    def _quorum_active(self) -> bool:
        return self.leader_ticks % self.config.election_ticks != 0 or super()._quorum_active()


class ConfigAppliedAtAppend(Raft):
    """The leader switches configuration when it appends the change, not when it applies it."""

    def propose_conf_change(self, change: ConfChange) -> ConfChangeResult:
        result = super().propose_conf_change(change)
        if isinstance(result, int):
            self.conf = self.conf.apply(change)
        return result


class TransferNeverAbandoned(Raft):
    """Thesis §3.10 broken: a transfer that cannot finish blocks proposals forever."""

    def _tick_leader(self) -> None:
        transferee = self.lead_transferee
        super()._tick_leader()
        if self.role is Role.LEADER:
            self.lead_transferee = transferee


# -- the host's policy (cluster/host/policy.py), run by tests/sim/host.py ------------------


class FollowerIgnoresLeaderDeath(HostPolicy):
    """A quiet follower trusts a leader it once heard, even when the leader's node dies."""

    def quiet_ok(self, quiet: Quiet, raw: RawNode, alive: Alive) -> bool:
        raft = raw.raft
        if raft.role is Role.FOLLOWER:
            return raft.leader not in (NONE, raft.id) and quiet.heard_leader
        return super().quiet_ok(quiet, raw, alive)

    def after_liveness(self, quiet: Quiet, raw: RawNode, node: NodeId, alive: Alive) -> bool:
        heard_leader = quiet.heard_leader
        super().after_liveness(quiet, raw, node, alive)
        quiet.heard_leader = heard_leader  # the bug: a dead leader's node changes nothing
        return quiet.quiesced and not self.quiet_ok(quiet, raw, alive)


class LeaderQuiescesWhileFollowerLags(HostPolicy):
    """A leader goes quiet once its log is committed, though a follower lacks part of it."""

    def quiet_ok(self, quiet: Quiet, raw: RawNode, alive: Alive) -> bool:
        raft = raw.raft
        if raft.role is Role.LEADER and raft.lead_transferee == NONE:
            log = raft.log
            return log.committed == log.last_index() and all(alive(n) for n in raft.progress)
        return super().quiet_ok(quiet, raw, alive)


class LeaderIgnoresLiveness(HostPolicy):
    """A leader stays leader when its node sees its quorum's nodes dead (it only wakes)."""

    def quorum_alive(self, raw: RawNode, alive: Alive) -> bool:
        return True


class VoteSentBeforeDurable(HostPolicy):
    """Vote grants leave with the leader's traffic, before the vote is fsynced."""

    def sent_before_durable(self, message: Message) -> bool:
        return message.type is MessageType.VOTE_RESP or super().sent_before_durable(message)


def _reveal_allowed(
    raw: RawNode, visible_index: int, applied_submitted: int, ready: Ready | None
) -> bool:
    """`HostPolicy.reveal_upto`'s preconditions, which the variants below keep."""
    if applied_submitted != visible_index or raw.raft.log.pending_snapshot is not None:
        return False
    return ready is None or ready.snapshot is None


class RevealsReplacedRows(HostPolicy):
    """Early reveal without the `unstable_offset` cap: a follower shows readers
    stored rows that the new leader's suffix, still unstable, replaces."""

    def reveal_upto(
        self,
        raw: RawNode,
        *,
        visible_index: int,
        applied_submitted: int,
        rows_committed_index: int,
        ready: Ready | None,
    ) -> int:
        if not _reveal_allowed(raw, visible_index, applied_submitted, ready):
            return visible_index
        return max(visible_index, min(raw.raft.log.committed, rows_committed_index))


class RevealsBeforeDurable(HostPolicy):
    """Early reveal of committed entries whose rows are not on this node's disk
    yet (as if a row being written were as good as a stored one): a crash then
    loses records a consumer read here. Rows a newer suffix replaces are still
    left alone, so this is not `RevealsReplacedRows` again."""

    def reveal_upto(
        self,
        raw: RawNode,
        *,
        visible_index: int,
        applied_submitted: int,
        rows_committed_index: int,
        ready: Ready | None,
    ) -> int:
        log = raw.raft.log
        upto = super().reveal_upto(
            raw,
            visible_index=visible_index,
            applied_submitted=applied_submitted,
            rows_committed_index=rows_committed_index,
            ready=ready,
        )
        if upto == visible_index or log.unstable_offset <= rows_committed_index:
            return upto  # nothing to reveal, or a newer suffix replaces stored rows
        return max(upto, log.committed)
