"""A seeded simulation of a Raft cluster: hosts, a faulty network, crashes, clients.

Each simulated host follows the Ready contract: persist into its
MemoryStorage (its 'disk'), send, apply, advance. A crash throws away the
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
        # The application: a hash chain over applied entries.
        self.applied = 0
        self.digest = 0

    def restore(self, data: bytes, index: int) -> None:
        self.applied, self.digest = _APP_STATE.unpack(data) if data else (index, 0)
        assert self.applied == index, "snapshot data does not match its index"

    def app_snapshot(self) -> bytes:
        return _APP_STATE.pack(self.applied, self.digest)


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
        snapshot = node.storage.snapshot()
        node.restore(snapshot.data, snapshot.meta.index)
        rng = random.Random(self.seed * 1_000_003 + node.id * 1009 + node.boots)
        node.boots += 1
        node.raw = RawNode(self.config(node.id), node.storage, rng, raft_class=self.raft_class)

    def crash(self, node: SimNode) -> None:
        node.raw = None
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

    def handle_ready(self, node: SimNode) -> None:
        raw = node.raw
        assert raw is not None
        if not raw.has_ready():
            return
        ready = raw.ready()
        crash_at = -1
        if self.faulty and self.rng.random() < self.scenario.crash_in_ready:
            crash_at = self.rng.randrange(3)
        if crash_at == 0:
            return self.crash(node)
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
        raw.advance(ready)

    def persist(self, node: SimNode, ready: Ready) -> None:
        storage = node.storage
        if ready.snapshot is not None:
            storage.apply_snapshot(ready.snapshot)
        storage.append(ready.entries)
        if ready.hard_state is not None:
            storage.set_hard_state(ready.hard_state)
        if ready.truncate is not None:
            storage.truncate_prefix(ready.truncate)
        self.checker.on_persist(node.id, storage, ready)

    def apply(self, node: SimNode, entry: Entry) -> None:
        if entry.index != node.applied + 1:
            raise InvariantViolation(f"node {node.id} applied {entry.index} after {node.applied}")
        node.applied = entry.index
        node.digest = hash((node.digest, entry.term, entry.data))
        leaders = [_raft(n) for n in self.alive() if _raft(n).role is Role.LEADER]
        self.checker.on_apply(node.id, _raft(node), entry, node.digest, leaders)
        if entry.type is EntryType.CONFIG:
            change = ConfChange.decode(entry.data)
            if change.type is ConfChangeType.REMOVE:
                self.retiring.add(change.node_id)
        elif self.pending.get(entry.data) == node.id:
            # The proposing leader applied it: the client hears "committed".
            del self.pending[entry.data]
            self.checker.on_ack(entry.data, entry.index)
            if not self.faulty:
                self.acked_after_heal = True

    # -- network -----------------------------------------------------------------

    def send(self, m: Message) -> None:
        s = self.scenario
        if self.faulty and self.rng.random() < s.drop:
            return
        copies = 2 if self.faulty and self.rng.random() < s.duplicate else 1
        for _ in range(copies):
            delay = 1 + int(self.rng.random() * s.delay_ticks_max)
            self.sequence += 1
            heapq.heappush(self.queue, (self.now + delay, self.sequence, m))

    def deliver(self) -> None:
        while self.queue and self.queue[0][0] <= self.now:
            m = heapq.heappop(self.queue)[2]
            node = self.nodes.get(m.to)
            if node is None or node.raw is None or (m.frm, m.to) in self.blocked:
                continue
            node.raw.step(m)
            self.checker.after_step(node.id, node.raw.raft)

    # -- one tick ------------------------------------------------------------------

    def tick(self) -> None:
        self.now += 1
        self.deliver()
        for node in self.alive():
            assert node.raw is not None
            node.raw.tick()
            self.checker.after_step(node.id, node.raw.raft)
        for node in self.alive():
            self.handle_ready(node)
        self.retire()

    def propose(self) -> None:
        leader = self.leader()
        if leader is None or leader.raw is None:
            return
        data = b"p%d" % self.proposals
        self.proposals += 1
        if isinstance(leader.raw.propose(data), int):
            self.pending[data] = leader.id

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
            if not self.acked_after_heal and self.rng.random() < s.propose:
                self.propose()
            self.tick()
            if self.converged():
                return
        raise InvariantViolation(
            f"liveness: not converged {s.heal_ticks_max} ticks after healing: {self.describe()}"
        )

    def heal(self) -> None:
        self.faulty = False
        self.blocked.clear()
        for node in self.nodes.values():
            if node.raw is None and not node.retired:
                self.boot(node)

    def converged(self) -> bool:
        if not self.acked_after_heal:
            return False
        leader = self.leader()
        if leader is None:
            return False
        wanted = max(self.checker.acked.values())
        return all(self.nodes[m].applied >= wanted for m in _raft(leader).conf.members())

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
            )
        return "; ".join(parts)

    # -- membership ------------------------------------------------------------------

    def add_node(self) -> SimNode:
        node = SimNode(self.next_id, ConfState(frozenset()))
        self.next_id += 1
        self.nodes[node.id] = node
        self.boot(node)
        return node

    def change_membership(self) -> None:
        """Cycles learner-add, promotion and removal, one change at a time."""
        leader = self.leader()
        if leader is None:
            return
        conf = _raft(leader).conf
        raw = _rawnode(leader)
        if conf.learners:
            raw.propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, min(conf.learners)))
        elif len(conf.voters) > self.scenario.nodes:
            victim = self.rng.choice(sorted(conf.voters))
            raw.propose_conf_change(ConfChange(ConfChangeType.REMOVE, victim))
        elif self.next_id <= self.scenario.nodes + 2:
            change = ConfChange(ConfChangeType.ADD_LEARNER, self.next_id)
            if isinstance(raw.propose_conf_change(change), int):
                self.add_node()

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
