"""Deliberately broken Raft variants: the simulator must catch each one.

Each subclass reintroduces one classic mistake, so a test can show that the
checker and the fault mix are strong enough to notice it.
"""

from __future__ import annotations

from weir.cluster.raft import NONE, HardState, Raft


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
