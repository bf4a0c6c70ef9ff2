"""The leader's view of one follower's log (§5.3 nextIndex/matchIndex) and flow control.

A follower is in one of three states. PROBE: we do not know where its log
matches ours, so at most one AppendEntries is outstanding per heartbeat.
REPLICATE: it matched, so appends are pipelined optimistically, at most
`inflight_messages_max` unacknowledged at once. SNAPSHOT: its next entry was
truncated away; a snapshot is in flight and nothing else is sent until it is
acknowledged or times out.
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    __slots__ = (
        "heard_tick",
        "inflight",
        "inflight_max",
        "is_learner",
        "match",
        "next",
        "paused",
        "pending_snapshot",
        "sent_commit",
        "snapshot_elapsed",
        "state",
    )

    def __init__(self, next_index: int, inflight_max: int, is_learner: bool) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        # PROBE: an append is outstanding; wait for its answer or the next heartbeat.
        self.paused = False
        # Last index carried by each unacknowledged append, oldest first (REPLICATE).
        self.inflight: deque[int] = deque()
        self.inflight_max = inflight_max
        self.pending_snapshot = 0
        self.snapshot_elapsed = 0
        # The commit index the last append to it carried (flush() skips a
        # commit-only append to a follower told already).
        self.sent_commit = 0
        # The leader's tick (`Raft.leader_ticks`) when this member last
        # answered; CheckQuorum's sliding window reads it. 0, the tick the
        # leader took office, gives a new member one window of grace.
        self.heard_tick = 0
        self.is_learner = is_learner

    def __repr__(self) -> str:
        return f"Progress({self.state.value} match={self.match} next={self.next})"

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.paused
        if self.state is ProgressState.REPLICATE:
            return len(self.inflight) >= self.inflight_max
        return True

    def become_probe(self) -> None:
        # After a snapshot the follower holds at least the snapshot's index.
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self._reset(ProgressState.PROBE)

    def become_replicate(self) -> None:
        self.next = self.match + 1
        self._reset(ProgressState.REPLICATE)

    def become_snapshot(self, index: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = index

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.paused = False
        self.pending_snapshot = 0
        self.snapshot_elapsed = 0
        self.inflight.clear()

    def heard_from(self) -> None:
        """The follower answered a heartbeat: let one more append through."""
        if self.state is ProgressState.PROBE:
            self.paused = False
        elif self.state is ProgressState.REPLICATE and len(self.inflight) >= self.inflight_max:
            self.inflight.popleft()

    def sent(self, last_index: int, entry_count: int) -> None:
        """Records an append carrying entries up to `last_index`."""
        if self.state is ProgressState.REPLICATE:
            if entry_count:
                self.next = last_index + 1
                self.inflight.append(last_index)
        else:
            self.paused = True

    def maybe_update(self, index: int) -> bool:
        """The follower matched up to `index`; returns whether that is news."""
        updated = index > self.match
        if updated:
            self.match = index
            self.paused = False
        self.next = max(self.next, index + 1)
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        return updated

    def maybe_decrease(self, rejected: int, hint_index: int) -> bool:
        """The follower rejected an append probing `rejected`; returns whether to resend.

        `hint_index` is where the leader computed matching may resume.
        """
        if self.state is ProgressState.REPLICATE:
            # A rejection for an index at or below match is stale (reordered).
            if rejected <= self.match:
                return False
            # Our optimism was wrong: fall back to probing from the hint.
            self._reset(ProgressState.PROBE)
            self.next = max(self.match + 1, hint_index + 1)
            return True
        if self.next - 1 != rejected:
            return False  # answer to an older probe
        self.next = max(min(rejected, hint_index + 1), self.match + 1)
        self.paused = False
        return True
