"""The host's decisions about a group, with no I/O: quiescence, sends, reveals, outcomes.

The driver (asyncio, LMDB, gRPC) and the deterministic simulator
(`tests/sim/host.py`) both call this module, so the seeds exercise the very
rules the real node follows. Nothing here imports asyncio, grpc, lmdb or
`time`; node liveness comes in as a function.

Quiescence (DESIGN §4 "Idle groups are free", after CockroachDB): the host
stops ticking a group that has nothing to do; a group that is not ticked has
no timers, so the core needs no change.

- A leader may go quiet when every member holds its whole log, everything is
  committed and applied, no transfer runs, every member's node is alive, and
  this has held for `quiesce_after_ticks` ticks (so the followers heard the
  final commit index on a heartbeat).
- A follower may go quiet when it knows a leader on a live node, has heard
  from that leader since it last woke, and its log is committed to its end.
- A quiet group wakes when a message arrives after which it may no longer be
  quiet: for a follower anything but its leader's traffic, for a leader
  anything but acknowledgements of its fully replicated log (so a campaign
  wakes everybody, the leader included), and
  when the liveness of a member's node changes: a follower then forgets that
  it heard its leader if that leader lives on the node, so it stays awake
  until the leader speaks again, or campaigns after an election timeout.
  Proposals and transfers wake a group too (the host does that directly).

Step-down on liveness: when the nodes of a quorum of a leader group's
voters are dead (this node counted alive), the leader steps down at once,
quiet or not, keeping its term. No answer can reach it, and the core's
CheckQuorum (one election timeout) runs only while the group is ticked: a
quiet leader would otherwise lead until liveness woke it and a whole
CheckQuorum window then passed. A false "dead" (a stalled event loop) costs
at most that step-down and the election that follows; safety never rests on
liveness.

Send order: a leader's appends, heartbeats, snapshots and TimeoutNow promise
nothing about its own disk and go out before its fsync (thesis §10.2.1: the
core counts the leader's own copy only once `advance()` reports it durable).
Everything else (vote requests and grants, acknowledgements) promises a
durable state and goes after. Nothing is sent while a turn waits for the
disk: the messages produced meanwhile leave with the next turn (driver.py
says why).

Early reveal: when a message moves a partition's commit index outside a
turn, the committed entries whose log rows this node has committed, and
that no newer suffix of the core's log replaces, become visible to readers
and decide their proposals at once (`reveal_upto`), instead of waiting for
the turn in flight and the next one. The turn that later applies them
writes their index rows as usual.

Outcome of a proposal (DESIGN §4 "Offsets at propose time"): decided only by
applying its index: the same term means committed, another term means not
written, so the proposer may retry safely.

`HostPolicy` is a class so that the simulator can run deliberately broken
variants (tests/sim/broken.py); the host uses `POLICY`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Protocol

from ..raft.rawnode import RawNode, Ready
from ..raft.types import NONE, Message, MessageType, NodeId, Role

LEADER_TRAFFIC = (MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT)
SENT_BEFORE_DURABLE = (*LEADER_TRAFFIC, MessageType.TIMEOUT_NOW)
ACKNOWLEDGEMENTS = (MessageType.APPEND_RESP, MessageType.HEARTBEAT_RESP)

Alive = Callable[[NodeId], bool]


class Quiet(Protocol):
    """A group's quiescence state, as the host and the simulator keep it."""

    quiesced: bool
    settled_ticks: int
    heard_leader: bool


class Outcome(enum.Enum):
    COMMITTED = "committed"
    NOT_WRITTEN = "not written"


class HostPolicy:
    """The rules; each method reads the core's state and mutates only `Quiet`."""

    # ---- send order -------------------------------------------------------------------

    def sent_before_durable(self, message: Message) -> bool:
        """Whether `message` may leave before this node's writes of its Ready are durable."""
        return message.type in SENT_BEFORE_DURABLE

    # ---- early reveal -----------------------------------------------------------------

    def reveal_upto(
        self,
        raw: RawNode,
        *,
        visible_index: int,
        applied_submitted: int,
        rows_committed_index: int,
        ready: Ready | None,
    ) -> int:
        """The highest index a partition may make visible now, outside a turn.

        Asked when a message moved the group's commit index: the entries
        after `visible_index` up to the returned index (`visible_index`
        itself when there are none) become visible to readers and their
        proposals are decided as committed. Readers read this node's stored
        log rows, so each such row must be the committed entry, and stay:

        - at most `log.committed`: Raft never replaces a committed entry;
        - below `log.unstable_offset`: from there on the core holds entries
          storage has not been given yet. On a follower they may replace
          rows storage holds (a new leader's suffix, still unstable): those
          rows are readable and committed here, but they are not the
          committed entries, and the next turn overwrites them (storage
          asserts "replacing an applied entry"; simulator variant
          `RevealsReplacedRows`);
        - at most `rows_committed_index`, the last log row committed to this
          node's disk: a row written by the turn in flight is readable too,
          but a crash or a failed write loses it, and a consumer would have
          read a record this node no longer has (`RevealsBeforeDurable`).
          Today the core marks entries stable only in `advance()`, after the
          writer's commit, so the bound above implies this one; the rule
          does not rely on it.

        Nothing is revealed while entries handed to the application wait to
        be revealed or were revealed ahead of it (`applied_submitted !=
        visible_index`: storage computes offsets from the applied ones), nor
        while a snapshot is received (`pending_snapshot`) or in the
        outstanding `ready`: the turns serve those.
        """
        log = raw.raft.log
        if applied_submitted != visible_index or log.pending_snapshot is not None:
            return visible_index
        if ready is not None and ready.snapshot is not None:
            return visible_index
        hi = min(log.committed, log.unstable_offset - 1, rows_committed_index)
        return max(hi, visible_index)

    # ---- outcomes ---------------------------------------------------------------------

    def outcome(self, proposal_term: int, applied_term: int) -> Outcome:
        """A proposal made in `proposal_term`, its index applied with `applied_term`."""
        return Outcome.COMMITTED if proposal_term == applied_term else Outcome.NOT_WRITTEN

    # ---- quiescence -------------------------------------------------------------------

    def quiet_ok(self, quiet: Quiet, raw: RawNode, alive: Alive) -> bool:
        """Whether the group may be (or stay) quiet now, apart from settling time."""
        raft = raw.raft
        me = raft.id
        if raft.role is Role.FOLLOWER:
            leader = raft.leader
            # A leader goes quiet only with its whole log committed. A follower
            # whose commit index lags its log missed the final heartbeat
            # (dropped): it stays awake, so its election timer fires and the
            # campaign wakes the leader, whose next heartbeat carries the commit
            # index (simulator seed 5009).
            committed = raft.log.committed == raft.log.last_index()
            return leader not in (NONE, me) and quiet.heard_leader and alive(leader) and committed
        if raft.role is not Role.LEADER or raft.lead_transferee != NONE:
            return False
        log = raft.log
        last = log.last_index()
        if log.committed != last:
            return False
        for node, progress in raft.progress.items():
            if progress.match != last or (node != me and not alive(node)):
                return False
        return True

    def can_quiesce(
        self, quiet: Quiet, raw: RawNode, alive: Alive, *, ready_out: bool, after_ticks: int
    ) -> bool:
        """Asked at each tick of an awake group, before ticking it: go quiet now?

        `ready_out`: a Ready of the group is taken and not advanced yet.
        """
        if ready_out or not self.quiet_ok(quiet, raw, alive):
            quiet.settled_ticks = 0
            return False
        raft = raw.raft
        if raft.role is Role.FOLLOWER:
            return True
        if raft.log.applied != raft.log.committed or raw.has_ready():
            quiet.settled_ticks = 0
            return False
        quiet.settled_ticks += 1
        return quiet.settled_ticks >= after_ticks

    def after_message(self, quiet: Quiet, raw: RawNode, message: Message, alive: Alive) -> bool:
        """`message` was stepped into the group: returns whether a quiet group must wake."""
        raft = raw.raft
        if message.type in LEADER_TRAFFIC:
            quiet.heard_leader = raft.leader == message.frm
        elif raft.role is not Role.LEADER:
            # Someone else campaigns or answers: stay awake until the leader speaks.
            quiet.heard_leader = False
        elif message.type not in ACKNOWLEDGEMENTS:
            # A quiet leader expects acknowledgements only. A (pre-)vote comes
            # from a member that lost track of it (restarted faster than the
            # liveness window, or timed out while the leader's traffic was
            # lost): the leader's lease rejects it, so unless the leader wakes
            # and heartbeats, that member campaigns in vain until a rival
            # election deposes a healthy leader (simulator seed 2067).
            return quiet.quiesced
        return quiet.quiesced and not self.quiet_ok(quiet, raw, alive)

    def quorum_alive(self, raw: RawNode, alive: Alive) -> bool:
        """Whether the nodes of a quorum of the group's voters are alive, this one counted."""
        raft = raw.raft
        me = raft.id
        live = sum(1 for voter in raft.conf.voters if voter == me or alive(voter))
        return live >= raft.quorum()

    def after_liveness(self, quiet: Quiet, raw: RawNode, node: NodeId, alive: Alive) -> bool:
        """`node`'s liveness changed: returns whether this (quiet) group must wake.

        A leader whose voters' nodes no longer make a quorum steps down here
        (see the module docstring); the caller must then serve the group's
        Ready, which reports the new soft state (`raw.has_ready()`).
        """
        raft = raw.raft
        if node not in raft.conf.members():
            return False
        if raft.leader == node:
            # Stay awake until the leader is heard again (it may have restarted).
            quiet.heard_leader = False
        if raft.role is Role.LEADER and not self.quorum_alive(raw, alive):
            raw.step_down()
        return quiet.quiesced and not self.quiet_ok(quiet, raw, alive)

    def wake(self, quiet: Quiet) -> None:
        quiet.quiesced = False
        quiet.settled_ticks = 0


POLICY = HostPolicy()

__all__ = [
    "ACKNOWLEDGEMENTS",
    "LEADER_TRAFFIC",
    "POLICY",
    "SENT_BEFORE_DURABLE",
    "Alive",
    "HostPolicy",
    "Outcome",
    "Quiet",
]
