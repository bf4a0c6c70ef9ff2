"""A seeded simulation of a Raft cluster: hosts, a faulty network, crashes, clients.

Each simulated host follows the Ready contract: persist into its
MemoryStorage (its 'disk'), send, apply, advance. Like the asyncio host,
which persists in a writer thread, it may hold a Ready for a few ticks while
ticks, messages and proposals keep arriving; a write may fail (the host
then reopens the group from what is on disk). A crash throws away the
RawNode and with it everything not yet persisted; a restart builds a new
RawNode from the storage. All randomness comes from one `random.Random`
seeded with the seed, so a seed replays the same history.
"""

from __future__ import annotations

import heapq
import random
import struct
from dataclasses import dataclass

from weir.cluster.raft import (
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    MemoryStorage,
    Message,
    Raft,
    RawNode,
    Ready,
    Role,
    bootstrap,
)

from .checker import Checker, InvariantViolation
from .properties import Properties

_APP_STATE = struct.Struct(">qq")


@dataclass(frozen=True)
class Scenario:
    """Fault mix of one kind of run. Probabilities are per tick unless noted."""

    name: str
    nodes: int = 3
    fault_ticks: int = 120
    # Liveness bound: after faults stop, everything acknowledged is applied
    # everywhere within this many ticks.
    heal_ticks_max: int = 150
    drop: float = 0.05  # per message
    duplicate: float = 0.02  # per message
    delay_ticks_max: int = 3
    crash: float = 0.0
    down_ticks_max: int = 25
    crash_in_ready: float = 0.0  # per Ready: crash before persisting, sending or applying
    partition: float = 0.0
    # Cut the current leader off for a few ticks: leaves entries on it alone,
    # the raw material of the paper's Figure 8.
    isolate_leader: float = 0.0
    # Per newly elected leader: cut it off before its first appends arrive.
    isolate_new_leader: float = 0.0
    propose: float = 0.4
    transfer: float = 0.0
    compact: float = 0.0  # per node and tick
    membership: float = 0.0
    # Membership changes of every type (learner, promotion, removal of anyone,
    # the leader included) instead of the orderly add-promote-remove cycle.
    membership_any: bool = False
    # After a config proposal is accepted, cut the leader off at once.
    isolate_after_conf: float = 0.0
    # Per Ready: hold it for 1..defer_ticks_max ticks before persisting (slow fsync).
    defer_ready: float = 0.0
    defer_ticks_max: int = 3
    write_fail: float = 0.0  # per Ready write: the transaction fails, nothing is durable
    long_delay: float = 0.0  # per message: delayed 1 to 3 election timeouts
    # Compact at a random index at or below the applied one (not just the applied one).
    compact_any: bool = False
    # At heal: probability that a minority of voters stays down to the end.
    keep_down: float = 0.0
    # Per tick: a transfer to a caught-up target in a calm window; it must complete.
    calm_transfer: float = 0.0
    append_entries_max: int = 8
    inflight_messages_max: int = 4
    pre_vote: bool = True
    check_quorum: bool = True
    # Founding configuration in log entries (needed when nodes join later)
    # instead of in the initial snapshot.
    bootstrap_log: bool = False


class SimNode:
    def __init__(self, node_id: int, conf: ConfState) -> None:
        self.id = node_id
        self.storage = MemoryStorage(conf)
        self.raw: RawNode | None = None
        self.boots = 0
        self.down_until = 0
        self.retired = False
        # The application: a hash chain over applied entries, and its value at
        # each index still in the log (to compact at any of them).
        self.applied = 0
        self.digest = 0
        self.history: dict[int, int] = {0: 0}
        # A Ready taken from the node whose handling is not finished yet.
        self.outstanding: Ready | None = None
        self.due = 0

    def restore(self, data: bytes, index: int) -> None:
        self.applied, self.digest = _APP_STATE.unpack(data) if data else (index, 0)
        assert self.applied == index, "snapshot data does not match its index"
        self.history = {index: self.digest}

    def app_snapshot(self, index: int) -> bytes:
        return _APP_STATE.pack(index, self.history[index])


class SimulationFailure(AssertionError):
    pass


class Cluster:
    def __init__(self, seed: int, scenario: Scenario, raft_class: type[Raft] = Raft) -> None:
        self.seed = seed
        self.scenario = scenario
        self.raft_class = raft_class
        self.rng = random.Random(seed)
        self.now = 0
        voters = frozenset(range(1, scenario.nodes + 1))
        conf = ConfState(frozenset() if scenario.bootstrap_log else voters)
        self.nodes = {i: SimNode(i, conf) for i in sorted(voters)}
        if scenario.bootstrap_log:
            for node in self.nodes.values():
                bootstrap(node.storage, sorted(voters))
        self.next_id = scenario.nodes + 1
        self.queue: list[tuple[int, int, Message]] = []
        self.sequence = 0
        self.blocked: set[tuple[int, int]] = set()
        self.heal_at = 0
        self.newest_leader_term = 0
        self.faulty = True
        self.checker = Checker()
        if not scenario.bootstrap_log:
            self.checker.conf = conf
        self.props = Properties(self.config(1).election_ticks, scenario.check_quorum)
        # Ticks until which no fault is injected (a calm leadership transfer).
        self.calm_until = 0
        self.kept_down: set[int] = set()
        self.pending: dict[bytes, int] = {}
        self.proposals = 0
        self.acked_after_heal = False
        self.retiring: set[int] = set()
        for node in self.nodes.values():
            self.boot(node)

    # -- hosts -------------------------------------------------------------------

    def config(self, node_id: int) -> Config:
        s = self.scenario
        return Config(
            id=node_id,
            election_ticks=10,
            heartbeat_ticks=2,
            append_entries_max=s.append_entries_max,
            append_bytes_max=64,
            inflight_messages_max=s.inflight_messages_max,
            uncommitted_entries_max=24,
            promote_lag_entries_max=4,
            pre_vote=s.pre_vote,
            check_quorum=s.check_quorum,
        )

    def boot(self, node: SimNode) -> None:
        self.checker.on_restart(node.id, node.storage)
        self.props.on_boot(node.id)
        node.outstanding = None
        snapshot = node.storage.snapshot()
        node.restore(snapshot.data, snapshot.meta.index)
        rng = random.Random(self.seed * 1_000_003 + node.id * 1009 + node.boots)
        node.boots += 1
        node.raw = RawNode(self.config(node.id), node.storage, rng, raft_class=self.raft_class)

    def crash(self, node: SimNode) -> None:
        node.raw = None
        node.outstanding = None
        self.props.excuse_transfer()
        node.down_until = self.now + self.rng.randint(1, self.scenario.down_ticks_max)

    def alive(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.raw is not None]

    def leader(self) -> SimNode | None:
        best: SimNode | None = None
        for node in self.alive():
            assert node.raw is not None
            r = node.raw.raft
            if r.role is Role.LEADER and (best is None or r.term > _raft(best).term):
                best = node
        return best

    def chaos(self) -> bool:
        """Whether faults may happen now (not after healing, not in a calm window)."""
        return self.faulty and self.now >= self.calm_until

    def drive(self, node: SimNode) -> None:
        """The host's turn: finish a due Ready, then take the next one."""
        raw = node.raw
        assert raw is not None
        if node.outstanding is not None:
            if node.due > self.now:
                return
            self.finish(node)
            if node.raw is not raw:
                return  # crashed, or reopened after a failed write
        if not raw.has_ready():
            return
        node.outstanding = raw.ready()
        s = self.scenario
        node.due = self.now
        if s.defer_ready and self.rng.random() < s.defer_ready:
            node.due += self.rng.randint(1, s.defer_ticks_max)
            return
        self.finish(node)

    def finish(self, node: SimNode) -> None:
        raw, ready = node.raw, node.outstanding
        assert raw is not None and ready is not None
        node.outstanding = None
        s = self.scenario
        crash_at = -1
        if self.chaos() and self.rng.random() < s.crash_in_ready:
            crash_at = self.rng.randrange(3)
        if crash_at == 0:
            return self.crash(node)
        if self.chaos() and s.write_fail and self.rng.random() < s.write_fail:
            # The write transaction failed, so none of it is durable and the
            # Ready cannot be advanced: the host reopens the group from disk.
            return self.boot(node)
        self.persist(node, ready)
        if crash_at == 1:
            return self.crash(node)
        for m in ready.messages:
            self.checker.on_send(node.id, m)
            self.send(m)
        if crash_at == 2:
            return self.crash(node)
        if ready.snapshot is not None:
            node.restore(ready.snapshot.data, ready.snapshot.meta.index)
        for entry in ready.committed_entries:
            self.apply(node, entry)
        r = raw.raft
        before = self.props.before(r)
        raw.advance(ready)
        self.props.after_request(node.id, r, before, "advance")
        self.props.check_conf(node.id, r)
        self.checker.after_step(node.id, r)

    def persist(self, node: SimNode, ready: Ready) -> None:
        storage = node.storage
        if ready.snapshot is not None:
            storage.apply_snapshot(ready.snapshot)
        storage.append(ready.entries)
        if ready.hard_state is not None:
            storage.set_hard_state(ready.hard_state)
        if ready.truncate is not None:
            self.props.check_truncate(node.id, _raft(node), ready.truncate)
            storage.truncate_prefix(ready.truncate)
            index = storage.first_index() - 1
            node.history = {i: d for i, d in node.history.items() if i >= index}
        self.checker.on_persist(node.id, storage, ready)

    def apply(self, node: SimNode, entry: Entry) -> None:
        if entry.index != node.applied + 1:
            raise InvariantViolation(f"node {node.id} applied {entry.index} after {node.applied}")
        node.applied = entry.index
        node.digest = hash((node.digest, entry.term, entry.data))
        node.history[entry.index] = node.digest
        leaders = [_raft(n) for n in self.alive() if _raft(n).role is Role.LEADER]
        self.checker.on_apply(node.id, _raft(node), entry, node.digest, leaders)
        if entry.type is EntryType.CONFIG:
            change = ConfChange.decode(entry.data)
            # The host stops a group once the node itself applied its removal
            # (stopping it when others do could swallow its last commit index).
            if change.type is ConfChangeType.REMOVE and change.node_id == node.id:
                self.retiring.add(node.id)
        elif self.pending.get(entry.data) == node.id:
            # The proposing leader applied it: the client hears "committed".
            del self.pending[entry.data]
            self.checker.on_ack(entry.data, entry.index)
            if not self.faulty:
                self.acked_after_heal = True

    # -- network -----------------------------------------------------------------

    def send(self, m: Message) -> None:
        s = self.scenario
        chaos = self.chaos()
        if chaos and self.rng.random() < s.drop:
            return
        copies = 2 if chaos and self.rng.random() < s.duplicate else 1
        for _ in range(copies):
            delay = 1 + int(self.rng.random() * s.delay_ticks_max)
            if chaos and s.long_delay and self.rng.random() < s.long_delay:
                election_ticks = self.props.election_ticks
                delay = self.rng.randint(election_ticks, 3 * election_ticks)
            self.sequence += 1
            heapq.heappush(self.queue, (self.now + delay, self.sequence, m))

    def deliver(self) -> None:
        while self.queue and self.queue[0][0] <= self.now:
            m = heapq.heappop(self.queue)[2]
            node = self.nodes.get(m.to)
            if node is None or node.raw is None or (m.frm, m.to) in self.blocked:
                continue
            r = node.raw.raft
            before = self.props.before(r)
            node.raw.step(m)
            self.props.after_step(node.id, r, before, m)
            self.checker.after_step(node.id, r)

    # -- one tick ------------------------------------------------------------------

    def tick(self) -> None:
        self.now += 1
        self.props.now = self.now
        self.deliver()
        for node in self.alive():
            assert node.raw is not None
            r = node.raw.raft
            before = self.props.before(r)
            node.raw.tick()
            self.props.after_tick(node.id, r, before)
            self.checker.after_step(node.id, r)
        for node in self.alive():
            self.drive(node)
        self.props.end_of_tick({n.id: _raft(n) for n in self.alive()})
        self.retire()

    def propose(self) -> None:
        leader = self.leader()
        if leader is None or leader.raw is None:
            return
        data = b"p%d" % self.proposals
        self.proposals += 1
        r = leader.raw.raft
        before = self.props.before(r)
        if isinstance(leader.raw.propose(data), int):
            self.pending[data] = leader.id
        self.props.after_request(leader.id, r, before, "a proposal")

    def run(self) -> None:
        from .faults import inject_faults

        s = self.scenario
        for _ in range(s.fault_ticks):
            inject_faults(self)
            if self.rng.random() < s.propose:
                self.propose()
            self.tick()
        self.heal()
        for _ in range(s.heal_ticks_max):
            self.keep_quorum_up()
            if not self.acked_after_heal and self.rng.random() < s.propose:
                self.propose()
            self.tick()
            if self.converged():
                return
        down = f" ({sorted(self.kept_down)} kept down)" if self.kept_down else ""
        raise InvariantViolation(
            f"liveness: not converged {s.heal_ticks_max} ticks after healing{down}:"
            f" {self.describe()}"
        )

    def heal(self) -> None:
        self.faulty = False
        self.blocked.clear()
        s = self.scenario
        voters = sorted(self.checker.conf.voters)
        if s.keep_down and len(voters) >= 3 and self.rng.random() < s.keep_down:
            count = self.rng.randint(1, (len(voters) - 1) // 2)
            self.kept_down = set(self.rng.sample(voters, count))
        for node in self.nodes.values():
            if node.id in self.kept_down:
                if node.raw is not None:
                    self.crash(node)
            elif node.raw is None and not node.retired:
                self.boot(node)

    def keep_quorum_up(self) -> None:
        """A minority stays down only while every live voter can still reach a quorum.

        A voter that has not applied the latest configuration counts votes in
        the one it has, so each live voter's own view must keep a quorum up.
        """
        if not self.kept_down:
            return
        for node in self.alive():
            conf = _raft(node).conf
            if node.id not in conf.voters:
                continue
            up = [v for v in conf.voters if v not in self.kept_down and not self.nodes[v].retired]
            if len(up) <= len(conf.voters) // 2:
                for node_id in sorted(self.kept_down):
                    down = self.nodes[node_id]
                    if down.raw is None and not down.retired:
                        self.boot(down)
                self.kept_down.clear()
                return

    def converged(self) -> bool:
        """Every live member of the latest configuration follows one leader and has it all."""
        if not self.acked_after_heal:
            return False
        conf = self.checker.conf
        wanted = max(max(self.checker.acked.values()), self.checker.conf_index)
        leaders = set()
        for node_id in conf.members() - self.kept_down:
            node = self.nodes[node_id]
            if node.raw is None or node.applied < wanted or node.raw.raft.conf != conf:
                return False
            leaders.add(node.raw.raft.leader)
        if len(leaders) != 1:
            return False
        leader = self.nodes.get(leaders.pop())
        if leader is None or leader.raw is None or leader.id not in conf.voters:
            return False
        return leader.raw.raft.role is Role.LEADER

    def describe(self) -> str:
        parts = []
        for node in self.nodes.values():
            if node.raw is None:
                parts.append(f"{node.id}:down")
                continue
            r = node.raw.raft
            parts.append(
                f"{node.id}:{r.role.value} t{r.term} last{r.log.last_index()}"
                f" commit{r.log.committed} applied{node.applied} lead{r.leader}"
                + (" ready-held" if node.outstanding is not None else "")
            )
        return "; ".join(parts)

    # -- membership ------------------------------------------------------------------

    def add_node(self) -> SimNode:
        node = SimNode(self.next_id, ConfState(frozenset()))
        self.next_id += 1
        self.nodes[node.id] = node
        self.boot(node)
        return node

    def retire(self) -> None:
        """Stops nodes whose removal is committed (ids are never reused)."""
        for node_id in self.retiring:
            node = self.nodes[node_id]
            node.retired = True
            node.raw = None
        self.retiring.clear()


def _rawnode(node: SimNode) -> RawNode:
    assert node.raw is not None
    return node.raw


def _raft(node: SimNode) -> Raft:
    return _rawnode(node).raft
