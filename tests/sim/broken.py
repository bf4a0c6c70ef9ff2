"""Deliberately broken Raft variants: the simulator must catch each one.

Each subclass reintroduces one classic mistake (a one-line change in the
real code), so a test can show that the checker and the fault mix are
strong enough to notice it. docs/raft.md lists the first seed catching each.
"""

from __future__ import annotations

from weir.cluster.raft import (
    NONE,
    ConfChange,
    ConfChangeResult,
    HardState,
    Message,
    MessageType,
    Raft,
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
