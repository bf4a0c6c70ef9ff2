"""A seeded simulation of multi-Raft hosts: several groups per node, the host's own rules.

Each simulated node runs several Raft groups (different voter sets among 3-5
nodes) the way `cluster/host/driver.py` does, deciding everything the driver
decides through the same `HostPolicy` (cluster/host/policy.py) and the same
node liveness (`cluster/transport/liveness.py`):

- a timer ticks only awake groups; `can_quiesce` puts settled ones to sleep;
- node-level heartbeats (and any frame) keep peers alive within a window;
  the network's faults hit heartbeats too, and every liveness change goes
  through `after_liveness`, every delivered message through `after_message`;
- one turn at a time per node: propose the appends waiting for it, take
  the Ready of every dirty group, send what `sent_before_durable` allows at
  once, apply committed entries (those whose rows are on disk here become
  visible and decide their proposals at once), and only when the (possibly
  slow) fsync is done persist, send the rest, reveal and decide the other
  applied entries and `advance`; ticks, messages and appends keep arriving
  meanwhile, and nothing is sent until the next turn;
- a client's append to a group's leader waits, merged with the group's other
  appends on that node, until the node's next turn starts, which proposes
  them as one entry (`RaftHost._coalesce`, `_flush_pending`): the appends
  that arrive while a turn waits for the disk share an entry;
- every delivered message may move the commit index: the entries
  `reveal_upto` allows become visible and decide their proposals at once
  (`Driver._apply_committed`); the simulated storage holds only what is
  durable (persist runs when the fsync is done), so its last index is the
  "rows committed here" of the real storage;
- storage faults: a failed write reopens every group of the turn from disk;
  crashes in the middle of a turn lose what was not durable.

Checked per group: every property of `checker.py` and `properties.py` (a
quiet leader counts as having heard the members its node sees alive, which
is what quiescence rests on), no lost work (a group with a Ready is dirty or
being served), proposal outcomes (committed means that entry was applied at
its index; not written means it never is; a proposal decided when its entry
was revealed early is decided the same when the turn applies it), and
visibility: an entry revealed early counts as applied (it must be the entry
every replica applies there), readers read this node's stored row, which
must be that entry, and a node keeps every entry it showed readers (no turn
overwrites it, and a crash or a failed write does not lose it: checked at
each one, and after every early reveal and tick as if one came then). After
healing: every group converges with no help (proposals go to the first
group only, so a group left behind by a quiet leader stays behind), and
once idle for a while every group whose members are all up is quiet
everywhere and receives no ticks.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from weir.cluster.host.policy import POLICY, HostPolicy, Outcome
from weir.cluster.raft import (
    CompactedError,
    Config,
    ConfState,
    Entry,
    Message,
    Raft,
    RawNode,
    Ready,
    Role,
    UnavailableError,
)
from weir.cluster.transport.liveness import Liveness

from .checker import Checker, InvariantViolation
from .cluster import SimNode
from .properties import Properties

ELECTION_TICKS = 10


@dataclass(frozen=True)
class HostScenario:
    """Fault mix of one kind of multi-group run. Probabilities are per tick unless noted."""

    name: str
    nodes: int = 3
    groups: int = 3
    fault_ticks: int = 150
    heal_ticks_max: int = 200
    # After convergence: idle this long, then every group must be quiet and
    # must not have been ticked during the last `free_ticks`.
    idle_ticks: int = 30
    free_ticks: int = 10
    drop: float = 0.03  # per message or heartbeat
    duplicate: float = 0.02
    delay_ticks_max: int = 3
    crash: float = 0.0
    down_ticks_max: int = 25
    crash_in_turn: float = 0.0  # per turn: crash before persisting or before the late sends
    partition: float = 0.0
    isolate_leader: float = 0.0  # cut off the node leading a random group
    propose: float = 0.2  # one proposal to a random group
    transfer: float = 0.0
    compact: float = 0.0  # per replica
    defer_turn: float = 0.0  # per turn: the fsync takes 1..defer_ticks_max ticks
    defer_ticks_max: int = 3
    write_fail: float = 0.0  # per turn: the write transaction fails
    # At heal: a node leading some group goes down for good.
    keep_leader_down: float = 0.0
    node_heartbeat_ticks: int = 1
    dead_after_ticks: int = 5
    quiesce_after_ticks: int = 3


class Replica(SimNode):
    """One group on one node: its RawNode and disk, its application, its quiet state."""

    def __init__(self, node_id: int, group_id: int, voters: frozenset[int]) -> None:
        super().__init__(node_id, ConfState(voters))
        self.group_id = group_id
        self.quiesced = False
        self.settled_ticks = 0
        self.heard_leader = False
        self.ready: Ready | None = None
        self.ticks = 0
        # The highest index visible to readers here (LmdbRaftStorage.visible_index):
        # `applied` is what was handed to the application (`applied_submitted`).
        self.visible = 0


@dataclass
class Turn:
    """A turn waiting for its fsync: per group, the messages and the applied
    entries (not visible yet) that wait for it."""

    due: int
    works: list[tuple[Replica, RawNode, Ready, list[Message], list[Entry]]]


@dataclass
class Appends:
    """A group's appends waiting on one node to be proposed as one entry (coalesce.py)."""

    term: int
    parts: list[bytes] = field(default_factory=list)

    def data(self) -> bytes:
        return b"+".join(self.parts)


@dataclass
class HostNode:
    id: int
    replicas: dict[int, Replica]
    dead_after_ticks: int
    up: bool = True
    down_until: int = 0
    liveness: Liveness = field(init=False)
    dirty: dict[int, None] = field(default_factory=dict)
    active: dict[int, None] = field(default_factory=dict)
    turn: Turn | None = None
    # Per group, the appends waiting for the next turn (RaftHost._pending).
    appends: dict[int, Appends] = field(default_factory=dict)
    # The tick of the latest frame delivered from each peer node.
    frame_heard: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.liveness = Liveness(self.dead_after_ticks)

    def alive(self, node: int) -> bool:
        return node == self.id or self.liveness.alive(node)


@dataclass
class Proposal:
    """A proposed entry's tickets: every append merged into it shares its outcome."""

    term: int
    data: bytes
    node: int
    boots: int
    # Decided when its index became visible here; applying it must agree.
    outcome: Outcome | None = None


class HostCluster:
    def __init__(self, seed: int, scenario: HostScenario, policy: HostPolicy = POLICY) -> None:
        self.seed = seed
        self.scenario = scenario
        self.policy = policy
        self.rng = random.Random(seed)
        self.now = 0
        s = scenario
        ids = list(range(1, s.nodes + 1))
        self.voters: dict[int, frozenset[int]] = {}
        for g in range(s.groups):
            size = 3 if s.nodes == 4 or self.rng.random() < 0.5 else s.nodes
            self.voters[g] = frozenset(self.rng.sample(ids, size))
        self.nodes: dict[int, HostNode] = {}
        for i in ids:
            replicas = {
                g: Replica(i, g, voters) for g, voters in self.voters.items() if i in voters
            }
            self.nodes[i] = HostNode(i, replicas, s.dead_after_ticks)
        self.checkers = {g: Checker(conf=ConfState(v)) for g, v in self.voters.items()}
        self.props = {g: Properties(ELECTION_TICKS, True) for g in self.voters}
        self.queue: list[tuple[int, int, int, int, int, Message | None]] = []
        self.sequence = 0
        self.blocked: set[tuple[int, int]] = set()
        self.heal_at = 0
        self.faulty = True
        self.kept_down: set[int] = set()
        self.proposals = 0
        self.pending: dict[int, dict[int, list[Proposal]]] = {g: {} for g in self.voters}
        self.not_written: set[bytes] = set()
        self.ever_applied: set[bytes] = set()
        self.acked_after_heal = False
        for node in self.nodes.values():
            self.boot(node)

    # -- nodes -------------------------------------------------------------------

    def config(self, node_id: int) -> Config:
        return Config(
            id=node_id,
            election_ticks=ELECTION_TICKS,
            heartbeat_ticks=2,
            append_entries_max=8,
            append_bytes_max=64,
            inflight_messages_max=4,
            uncommitted_entries_max=24,
            pre_vote=True,
            check_quorum=True,
        )

    def boot(self, node: HostNode) -> None:
        node.up = True
        node.turn = None
        node.liveness = Liveness(self.scenario.dead_after_ticks)
        node.frame_heard.clear()
        node.dirty.clear()
        node.active.clear()
        node.appends.clear()
        for g, rep in node.replicas.items():
            self.boot_replica(node, rep)
            node.active[g] = None
            node.dirty[g] = None

    def boot_replica(self, node: HostNode, rep: Replica) -> None:
        """(Re)opens one group from its disk, as the host does after a failed write."""
        g = rep.group_id
        self.checkers[g].on_restart(node.id, rep.storage)
        self.props[g].on_boot(node.id)
        snapshot = rep.storage.snapshot()
        rep.restore(snapshot.data, snapshot.meta.index)
        rep.visible = rep.applied  # a restart re-applies the durable log
        rng = random.Random((self.seed * 1_000_003 + node.id * 1009 + rep.boots) * 31 + g)
        rep.boots += 1
        rep.raw = RawNode(self.config(node.id), rep.storage, rng)
        rep.ready = None
        rep.quiesced = False
        rep.settled_ticks = 0
        rep.heard_leader = False

    def crash(self, node: HostNode) -> None:
        for rep in node.replicas.values():
            self.check_still_held(node, rep, "a crash")
        node.up = False
        node.turn = None
        node.appends.clear()
        for g, rep in node.replicas.items():
            rep.raw = None
            rep.ready = None
            self.props[g].excuse_transfer()
        node.down_until = self.now + self.rng.randint(1, self.scenario.down_ticks_max)

    def wake(self, node: HostNode, rep: Replica) -> None:
        self.policy.wake(rep)
        node.active[rep.group_id] = None

    def leader(self, g: int) -> tuple[HostNode, Replica] | None:
        best: tuple[HostNode, Replica] | None = None
        for node in self.nodes.values():
            rep = node.replicas.get(g)
            if rep is None or rep.raw is None:
                continue
            r = rep.raw.raft
            if r.role is Role.LEADER and (best is None or r.term > _raft(best[1]).term):
                best = (node, rep)
        return best

    def chaos(self) -> bool:
        return self.faulty

    # -- network -------------------------------------------------------------------

    def send(self, frm: int, to: int, g: int, m: Message | None) -> None:
        s = self.scenario
        chaos = self.chaos()
        if chaos and self.rng.random() < s.drop:
            return
        copies = 2 if chaos and self.rng.random() < s.duplicate else 1
        for _ in range(copies):
            delay = 1 + int(self.rng.random() * s.delay_ticks_max)
            self.sequence += 1
            heapq.heappush(self.queue, (self.now + delay, self.sequence, frm, to, g, m))

    def deliver(self) -> None:
        while self.queue and self.queue[0][0] <= self.now:
            _, _, frm, to, g, m = heapq.heappop(self.queue)
            node = self.nodes[to]
            if not node.up or (frm, to) in self.blocked:
                continue
            node.frame_heard[frm] = self.now
            if node.liveness.heard(frm, self.now):
                self.on_liveness(node, frm)
            if m is None:
                continue
            rep = node.replicas.get(g)
            if rep is None or rep.raw is None:
                continue
            r = rep.raw.raft
            props = self.props[g]
            before = props.before(r)
            rep.raw.step(m)
            props.after_step(node.id, r, before, m)
            self.checkers[g].after_step(node.id, r)
            if self.policy.after_message(rep, rep.raw, m, node.alive):
                self.wake(node, rep)
            node.dirty[g] = None
            self.reveal_early(node, rep)

    def on_liveness(self, node: HostNode, peer: int) -> None:
        for g, rep in node.replicas.items():
            assert rep.raw is not None
            if self.policy.after_liveness(rep, rep.raw, peer, node.alive):
                self.wake(node, rep)
            if rep.raw.has_ready():
                # A leader stepped down (its quorum's nodes are dead): report it.
                node.dirty[g] = None

    def heartbeats(self) -> None:
        if self.now % self.scenario.node_heartbeat_ticks:
            return
        for node in self.nodes.values():
            if node.up:
                for peer in self.nodes:
                    if peer != node.id:
                        self.send(node.id, peer, -1, None)
        for node in self.nodes.values():
            if node.up:
                for peer in node.liveness.expire(self.now):
                    self.on_liveness(node, peer)

    # -- the host's timer and turn ---------------------------------------------------

    def timer(self, node: HostNode) -> None:
        for g in list(node.active):
            rep = node.replicas[g]
            raw = rep.raw
            assert raw is not None
            if self.policy.can_quiesce(
                rep,
                raw,
                node.alive,
                ready_out=rep.ready is not None,
                after_ticks=self.scenario.quiesce_after_ticks,
            ):
                del node.active[g]
                rep.quiesced = True
                continue
            props = self.props[g]
            before = props.before(raw.raft)
            raw.tick()
            rep.ticks += 1
            props.after_tick(node.id, raw.raft, before)
            self.checkers[g].after_step(node.id, raw.raft)
            node.dirty[g] = None

    def drive(self, node: HostNode) -> None:
        turn = node.turn
        if turn is not None:
            if turn.due > self.now:
                return
            node.turn = None
            self.finish(node, turn)
            if not node.up:
                return
        self.flush(node)
        groups = list(node.dirty)
        node.dirty.clear()
        works = []
        for g in groups:
            rep = node.replicas[g]
            raw = rep.raw
            assert raw is not None
            if rep.ready is None:
                if not raw.has_ready():
                    continue
                rep.ready = raw.ready()
            ready = rep.ready
            late = []
            for m in ready.messages:
                if self.policy.sent_before_durable(m):
                    self.checkers[g].on_send(node.id, m)
                    self.send(node.id, m.to, g, m)
                else:
                    late.append(m)
            waiting = self.reveal_applied(node, rep, ready, self.apply(node, rep, ready))
            works.append((rep, raw, ready, late, waiting))
        if not works:
            return
        s = self.scenario
        due = self.now
        if self.chaos() and s.defer_turn and self.rng.random() < s.defer_turn:
            due += self.rng.randint(1, s.defer_ticks_max)
        if due == self.now:
            self.finish(node, Turn(due, works))
        else:
            node.turn = Turn(due, works)

    def apply(self, node: HostNode, rep: Replica, ready: Ready) -> list[Entry]:
        """Step 3, before the fsync as in the driver: the application sees committed entries."""
        g = rep.group_id
        if ready.snapshot is not None:
            rep.restore(ready.snapshot.data, ready.snapshot.meta.index)
        leaders = [_raft(r) for _, r in self._replicas(g) if _raft(r).role is Role.LEADER]
        applied = []
        for entry in ready.committed_entries:
            if entry.index <= rep.applied:
                continue
            if entry.index != rep.applied + 1:
                raise InvariantViolation(
                    f"group {g}: node {node.id} applied {entry.index} after {rep.applied}"
                )
            rep.applied = entry.index
            rep.digest = hash((rep.digest, entry.term, entry.data))
            rep.history[entry.index] = rep.digest
            self.observe(node, rep, entry, rep.digest, leaders)
            applied.append(entry)
        return applied

    def observe(
        self, node: HostNode, rep: Replica, entry: Entry, digest: int, leaders: list[Raft]
    ) -> None:
        """`entry` is applied, or revealed before it is: it must be the committed one."""
        g = rep.group_id
        if entry.data in self.not_written:
            raise InvariantViolation(
                f"outcome: group {g} applied {entry.data!r} at {entry.index}, which a"
                " proposer was told was not written"
            )
        if entry.data:
            self.ever_applied.add(entry.data)
        self.checkers[g].on_apply(node.id, _raft(rep), entry, digest, leaders)

    def finish(self, node: HostNode, turn: Turn) -> None:
        """The fsync is done (or failed): persist, send the rest, decide, advance."""
        s = self.scenario
        crash_at = -1
        if self.chaos() and s.crash_in_turn and self.rng.random() < s.crash_in_turn:
            crash_at = self.rng.randrange(2)
        if crash_at == 0:
            return self.crash(node)
        if self.chaos() and s.write_fail and self.rng.random() < s.write_fail:
            for rep, _, _, _, _ in turn.works:
                self.check_still_held(node, rep, "a failed write")
                self.boot_replica(node, rep)
                self.wake(node, rep)
                node.dirty[rep.group_id] = None
            return None
        for rep, raw, ready, _, _ in turn.works:
            if rep.raw is raw:
                self.persist(node, rep, ready)
        if crash_at == 1:
            return self.crash(node)
        for rep, raw, ready, late, waiting in turn.works:
            if rep.raw is not raw:
                continue
            g = rep.group_id
            for m in late:
                self.checkers[g].on_send(node.id, m)
                self.send(node.id, m.to, g, m)
            if ready.snapshot is not None:
                rep.visible = max(rep.visible, ready.snapshot.meta.index)
            for entry in waiting:
                self.reveal(node, rep, entry)
            r = raw.raft
            props = self.props[g]
            before = props.before(r)
            raw.advance(ready)
            rep.ready = None
            props.after_request(node.id, r, before, "advance")
            props.check_conf(node.id, r)
            self.checkers[g].after_step(node.id, r)
            if raw.has_ready():
                node.dirty[g] = None
        return None

    def persist(self, node: HostNode, rep: Replica, ready: Ready) -> None:
        storage = rep.storage
        if ready.entries and ready.entries[0].index <= min(rep.visible, storage.last_index()):
            raise InvariantViolation(
                f"visibility: group {rep.group_id} on node {node.id} overwrites its stored"
                f" rows from {ready.entries[0].index}, but readers saw up to {rep.visible}"
            )
        if ready.snapshot is not None:
            storage.apply_snapshot(ready.snapshot)
        storage.append(ready.entries)
        if ready.hard_state is not None:
            storage.set_hard_state(ready.hard_state)
        if ready.truncate is not None:
            self.props[rep.group_id].check_truncate(node.id, _raft(rep), ready.truncate)
            storage.truncate_prefix(ready.truncate)
            index = storage.first_index() - 1
            rep.history = {i: d for i, d in rep.history.items() if i >= index}
        self.checkers[rep.group_id].on_persist(node.id, storage, ready)

    def decide(self, node: HostNode, rep: Replica, entry: Entry, *, applied: bool = True) -> None:
        """A proposer's ticket, decided (policy.outcome) when its index becomes visible here.

        `applied`: the turn applied the index, so this is the last word: a
        ticket decided earlier (revealed before its turn) must agree with it.
        """
        g = rep.group_id
        waiting = self.pending[g].get(entry.index)
        if not waiting:
            return
        mine = [p for p in waiting if p.node == node.id and p.boots == rep.boots]
        if not mine:
            return
        if applied:
            self.pending[g][entry.index] = [p for p in waiting if p not in mine]
        for p in mine:
            outcome = self.policy.outcome(p.term, entry.term)
            if p.outcome is not None:
                if outcome is not p.outcome:
                    raise InvariantViolation(
                        f"outcome: group {g} on node {node.id} decided {p.data!r} at"
                        f" {entry.index} {p.outcome.value} when revealed, but applying"
                        f" {entry} there says {outcome.value}"
                    )
                continue
            p.outcome = outcome
            if outcome is Outcome.COMMITTED:
                self.checkers[g].on_ack(p.data, entry.index)
                if not self.faulty:
                    self.acked_after_heal = True
            else:
                if p.data in self.ever_applied:
                    raise InvariantViolation(
                        f"outcome: group {g} told the proposer of {p.data!r} at {entry.index}"
                        " 'not written', but it was applied"
                    )
                self.not_written.add(p.data)

    # -- between turns: early reveals (Driver._apply_committed) -----------------------

    def reveal_early(self, node: HostNode, rep: Replica) -> None:
        """A message may have moved the commit index: reveal what `reveal_upto` allows.

        The entries count as applied for the properties (this is what readers
        and proposers see), but the application itself applies them later,
        in the turn that takes them (`rep.applied` does not move).
        """
        raw = rep.raw
        assert raw is not None
        hi = self.policy.reveal_upto(
            raw,
            visible_index=rep.visible,
            applied_submitted=rep.applied,
            # The simulated storage holds only what is durable (persist runs
            # when the fsync is done), so its rows are all committed here.
            rows_committed_index=rep.storage.last_index(),
            ready=rep.ready,
        )
        if hi <= rep.visible:
            return
        assert rep.visible == rep.applied, "revealing past entries that wait"
        try:
            entries = raw.raft.log.entries(rep.visible + 1, hi + 1, raw.raft.config.apply_bytes_max)
        except (CompactedError, UnavailableError):
            return  # the turn finds the same entries
        g = rep.group_id
        leaders = [_raft(r) for _, r in self._replicas(g) if _raft(r).role is Role.LEADER]
        digest = rep.digest
        for entry in entries:
            digest = hash((digest, entry.term, entry.data))
            self.observe(node, rep, entry, digest, leaders)
            self.reveal(node, rep, entry, applied=False)
        self.check_still_held(node, rep, "a crash now")

    def reveal_applied(
        self, node: HostNode, rep: Replica, ready: Ready, applied: list[Entry]
    ) -> list[Entry]:
        """Step 3's visibility: an applied entry whose log row is on disk here, and
        not replaced by this Ready's entries, is visible at once (its ticket is
        decided now); returns the others, which wait for the turn's fsync."""
        bound = rep.storage.last_index()
        if ready.entries:
            bound = min(bound, ready.entries[0].index - 1)
        waiting: list[Entry] = []
        for entry in applied:
            if entry.index <= rep.visible:
                self.decide(node, rep, entry)  # revealed early; applying it decides again
            elif entry.index <= bound and not waiting:
                self.reveal(node, rep, entry)
            else:
                waiting.append(entry)
        return waiting

    def reveal(self, node: HostNode, rep: Replica, entry: Entry, *, applied: bool = True) -> None:
        """Readers see `entry` here from now on: they read its stored row, when this
        node stores one (else the row being written), which must be `entry`."""
        storage = rep.storage
        index = entry.index
        assert index == rep.visible + 1, "visibility moves one entry at a time"
        if storage.first_index() <= index <= storage.last_index():
            term = storage.term(index)
            if term != entry.term:
                raise InvariantViolation(
                    f"visibility: group {rep.group_id} on node {node.id} revealed index"
                    f" {index}, where readers read its stored row of term {term}, but the"
                    f" committed entry has term {entry.term}"
                )
        rep.visible = index
        self.decide(node, rep, entry, applied=applied)

    def check_still_held(self, node: HostNode, rep: Replica, cause: str) -> None:
        """After `cause` a node keeps only its disk: it must still hold every entry
        it showed readers (a consumer must not have read a record it loses)."""
        last = rep.storage.last_index()
        if rep.raw is not None and rep.visible > last:
            raise InvariantViolation(
                f"visibility: group {rep.group_id} on node {node.id} showed readers up to"
                f" {rep.visible}, but its disk holds the log only up to {last}, all that"
                f" {cause} leaves"
            )

    # -- requests --------------------------------------------------------------------

    def propose(self, g: int) -> None:
        """A client's append to `g`'s leader, as `RaftHost.append_batch` takes one
        without a producer (`_coalesce`): it waits, merged with the group's other
        appends, for the node's next turn (`flush`)."""
        found = self.leader(g)
        if found is None:
            return
        node, rep = found
        raft = _raft(rep)
        part = b"g%dp%d" % (g, self.proposals)
        self.proposals += 1
        config = raft.config
        appends = node.appends.get(g)
        if appends is not None and (
            appends.term != raft.term
            or len(appends.data()) + 1 + len(part) > config.append_bytes_max
        ):
            self.propose_appends(node, g)
            appends = None
        # The core's own refusals, checked at once as the host does: the append
        # is refused and nothing waits.
        waiting_bytes = 0 if appends is None else len(appends.data())
        if raft.lead_transferee or (
            raft.uncommitted
            and (
                len(raft.uncommitted) >= config.uncommitted_entries_max
                or raft.uncommitted_bytes + waiting_bytes + len(part) > config.uncommitted_bytes_max
            )
        ):
            return
        if appends is None:
            appends = node.appends[g] = Appends(raft.term)
            node.dirty[g] = None
        appends.parts.append(part)

    def flush(self, node: HostNode) -> None:
        """A turn starts: propose every group's waiting appends (`RaftHost._flush_pending`)."""
        for g in list(node.appends):
            self.propose_appends(node, g)

    def propose_appends(self, node: HostNode, g: int) -> None:
        """Proposes `g`'s waiting appends as one entry (`RaftHost._propose_pending`).

        A node that no longer leads in their term proposes nothing: their
        tickets fail with NOT_LEADER, which promises that nothing was written.
        """
        appends = node.appends.pop(g)
        rep = node.replicas[g]
        raw = _rawnode(rep)
        if raw.raft.role is not Role.LEADER or raw.raft.term != appends.term:
            return
        data = appends.data()
        props = self.props[g]
        before = props.before(raw.raft)
        index = raw.propose(data)
        props.after_request(node.id, raw.raft, before, "a proposal")
        if not isinstance(index, int):
            return  # refused by the core (ProposalDropped): not written either
        proposal = Proposal(raw.raft.term, data, node.id, rep.boots)
        self.pending[g].setdefault(index, []).append(proposal)
        self.wake(node, rep)
        node.dirty[g] = None

    def transfer(self, g: int) -> None:
        found = self.leader(g)
        if found is None:
            return
        node, rep = found
        raw = rep.raw
        assert raw is not None
        target = self.rng.choice(sorted(self.voters[g] - {node.id}))
        props = self.props[g]
        before = props.before(raw.raft)
        raw.transfer_leadership(target)
        props.after_request(node.id, raw.raft, before, "a transfer request")
        props.on_transfer_requested(node.id, raw.raft)
        self.wake(node, rep)
        node.dirty[g] = None

    def compact(self, node: HostNode, rep: Replica) -> None:
        raw = rep.raw
        assert raw is not None
        r = raw.raft
        # The application may be ahead of the core's applied index (it applies
        # before the fsync); the core compacts only what it knows is applied.
        applied = min(rep.applied, r.log.applied)
        if applied - r.log.first_index() < 6:
            return
        index = self.rng.randint(r.log.first_index() - 1, applied)
        props = self.props[rep.group_id]
        before = props.before(r)
        raw.compact(index, rep.app_snapshot(index))
        props.after_request(node.id, r, before, "a compaction")
        node.dirty[rep.group_id] = None

    # -- faults ----------------------------------------------------------------------

    def inject_faults(self) -> None:
        s = self.scenario
        rng = self.rng
        for node in self.nodes.values():
            if not node.up and node.id not in self.kept_down and node.down_until <= self.now:
                self.boot(node)
        if not self.chaos():
            return
        up = [n for n in self.nodes.values() if n.up]
        if s.crash and rng.random() < s.crash and len(up) > (s.nodes + 1) // 2:
            self.crash(rng.choice(up))
        if self.heal_at and self.heal_at <= self.now:
            self.blocked.clear()
            self.heal_at = 0
        ids = sorted(self.nodes)
        if s.partition and rng.random() < s.partition:
            self.blocked.clear()
            self.heal_at = self.now + rng.randint(5, 30)
            if rng.random() < 0.5:
                side = set(rng.sample(ids, rng.randint(1, len(ids) // 2)))
                self.blocked.update((a, b) for a in ids for b in ids if (a in side) != (b in side))
            else:
                for _ in range(rng.randint(1, len(ids))):
                    a, b = rng.sample(ids, 2)
                    self.blocked.add((a, b))
        if s.isolate_leader and rng.random() < s.isolate_leader:
            found = self.leader(rng.randrange(s.groups))
            if found is not None:
                victim = found[0].id
                self.blocked.update((victim, b) for b in ids if b != victim)
                self.blocked.update((b, victim) for b in ids if b != victim)
                self.heal_at = self.now + rng.randint(5, 25)
        if s.transfer and rng.random() < s.transfer:
            self.transfer(rng.randrange(s.groups))
        if s.compact:
            for node in up:
                for rep in node.replicas.values():
                    if rep.raw is not None and rng.random() < s.compact:
                        self.compact(node, rep)

    # -- one tick ------------------------------------------------------------------

    def tick(self) -> None:
        self.now += 1
        for props in self.props.values():
            props.now = self.now
        self.deliver()
        self.heartbeats()
        up = [n for n in self.nodes.values() if n.up]
        for node in up:
            self.timer(node)
        for node in up:
            self.drive(node)
        self.end_of_tick()

    def end_of_tick(self) -> None:
        for g, props in self.props.items():
            rafts = {}
            for node, rep in self._replicas(g):
                r = _raft(rep)
                rafts[node.id] = r
                if r.role is Role.LEADER and rep.quiesced:
                    self._check_nobody_left_behind(g, node, r)
                if r.role is Role.LEADER:
                    # Quiescence rests on node liveness: a leader has also heard a
                    # member when its node received a frame from the member's node
                    # (not for as long as liveness says alive, which outlasts a cut
                    # by dead_after_ticks). Awake or not: a leader woken by a
                    # liveness change counts its quiet time by frames too, and for
                    # an awake one frames only add to what its group heard.
                    heard = props.heard_peers.setdefault((node.id, r.term), {})
                    for v in r.conf.voters:
                        at = node.frame_heard.get(v)
                        if at is not None and at > heard.get(v, 0):
                            heard[v] = at
                if rep.ready is None and g not in node.dirty and _rawnode(rep).has_ready():
                    raise InvariantViolation(
                        f"lost work: group {g} on node {node.id} has a Ready nobody will serve"
                    )
                # Crashes are rare: what one would lose is checked whenever
                # visibility moves outside a turn, and at every tick.
                self.check_still_held(node, rep, "a crash now")
            props.end_of_tick(rafts)

    def _check_nobody_left_behind(self, g: int, node: HostNode, leader: Raft) -> None:
        """A quiet leader sends nothing more: every live member of its term holds its whole log.

        Read from the members' own logs (durable up to what they acknowledged),
        not from the leader's progress, which is what the policy reads.
        """
        last = leader.log.last_index()
        for member, rep in self._replicas(g):
            r = _raft(rep)
            if r.term == leader.term and r.log.last_index() < last:
                raise InvariantViolation(
                    f"quiescence: group {g}'s leader {node.id} (term {leader.term}) is quiet"
                    f" with its log up to {last}, but member {member.id} holds only up to"
                    f" {r.log.last_index()} and nothing will send it the rest"
                )

    def _replicas(self, g: int) -> list[tuple[HostNode, Replica]]:
        out = []
        for node in self.nodes.values():
            rep = node.replicas.get(g)
            if node.up and rep is not None and rep.raw is not None:
                out.append((node, rep))
        return out

    # -- the run -------------------------------------------------------------------

    def run(self) -> None:
        s = self.scenario
        for _ in range(s.fault_ticks):
            self.inject_faults()
            if self.rng.random() < s.propose:
                self.propose(self.rng.randrange(s.groups))
            self.tick()
        self.heal()
        for _ in range(s.heal_ticks_max):
            self.inject_faults()
            if not self.acked_after_heal and self.rng.random() < s.propose:
                self.propose(0)  # the other groups must converge on their own
            self.tick()
            if self.converged():
                break
        else:
            raise InvariantViolation(
                f"liveness: not converged {s.heal_ticks_max} ticks after healing"
                f" ({self.why_not_converged()})"
            )
        self.check_idle_is_free()

    def heal(self) -> None:
        self.faulty = False
        self.blocked.clear()
        self.heal_at = 0
        s = self.scenario
        if s.keep_leader_down and self.rng.random() < s.keep_leader_down:
            # A node leading some group dies for good; every group keeps a quorum.
            leaders = sorted({found[0].id for g in self.voters if (found := self.leader(g))})
            if leaders:
                victim = self.rng.choice(leaders)
                if all(len(v - {victim}) > len(v) // 2 for v in self.voters.values()):
                    self.kept_down = {victim}
        for node in self.nodes.values():
            if node.id in self.kept_down:
                if node.up:
                    self.crash(node)
            elif not node.up:
                self.boot(node)

    def converged(self) -> bool:
        if not self.acked_after_heal:
            return False
        return all(self._group_converged(g) is None for g in self.voters)

    def why_not_converged(self) -> str:
        reasons = [f"group {g}: {why}" for g in self.voters if (why := self._group_converged(g))]
        return "; ".join(reasons) or "no proposal acknowledged after healing"

    def _group_converged(self, g: int) -> str | None:
        members = [(n, r) for n, r in self._replicas(g) if n.id not in self.kept_down]
        leaders = {_raft(r).leader for _, r in members}
        if len(leaders) != 1:
            return f"members follow {sorted(leaders)}"
        lead = leaders.pop()
        found = next((r for n, r in members if n.id == lead), None)
        if found is None or _raft(found).role is not Role.LEADER:
            return f"no live leader ({lead})"
        log = _raft(found).log
        if log.committed != log.last_index():
            return f"leader {lead} commit {log.committed} < last {log.last_index()}"
        wanted = log.last_index()
        behind = [n.id for n, r in members if r.applied < wanted]
        if behind:
            return f"nodes {behind} have not applied {wanted}" + self._quiet_states(g)
        return None

    def _quiet_states(self, g: int) -> str:
        parts = []
        for node, rep in self._replicas(g):
            r = _raft(rep)
            parts.append(
                f"{node.id}:{r.role.value} t{r.term} lead{r.leader} applied{rep.applied}"
                + (" quiet" if rep.quiesced else "")
            )
        return " [" + ", ".join(parts) + "]"

    def check_idle_is_free(self) -> None:
        """Idle groups are free (DESIGN §4): all quiet, no ticks, once idle for a while."""
        s = self.scenario
        checked = [g for g, v in self.voters.items() if not v & self.kept_down]
        counts: dict[tuple[int, int], int] = {}
        for tick in range(s.idle_ticks):
            if tick == s.idle_ticks - s.free_ticks:
                counts = {(n.id, g): r.ticks for g in checked for n, r in self._replicas(g)}
            self.tick()
        for g in checked:
            for node, rep in self._replicas(g):
                ticks = rep.ticks - counts[(node.id, g)]
                if not rep.quiesced or ticks:
                    raise InvariantViolation(
                        f"idle groups are free: group {g} on node {node.id} is"
                        f" {'quiet' if rep.quiesced else 'awake'} and was ticked {ticks} times"
                        f" in the last {s.free_ticks} of {s.idle_ticks} idle ticks"
                        + self._quiet_states(g)
                    )

    def describe(self) -> str:
        parts = []
        for node in self.nodes.values():
            if not node.up:
                parts.append(f"{node.id}:down")
                continue
            groups = []
            for g, rep in node.replicas.items():
                if rep.raw is None:
                    groups.append(f"g{g} closed")
                    continue
                r = rep.raw.raft
                groups.append(
                    f"g{g} {r.role.value} t{r.term} last{r.log.last_index()}"
                    f" commit{r.log.committed} applied{rep.applied} lead{r.leader}"
                    + (" quiet" if rep.quiesced else "")
                )
            parts.append(f"{node.id}: " + ", ".join(groups))
        return "; ".join(parts)


def _rawnode(rep: SimNode) -> RawNode:
    assert rep.raw is not None
    return rep.raw


def _raft(rep: SimNode) -> Raft:
    return _rawnode(rep).raft
