"""A tiny deterministic harness for unit tests: a few RawNodes and a perfect, manual network.

Tests drive it step by step and assert on what `ready()` returns: `handle(n)`
runs one Ready through the contract (persist, send, apply, advance) and returns
its messages; `stabilize()` delivers messages until the cluster is quiet.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from weir.cluster.raft import (
    Config,
    ConfState,
    Entry,
    MemoryStorage,
    Message,
    MessageType,
    Raft,
    RawNode,
    Ready,
    Role,
    bootstrap,
)


class Env:
    def __init__(
        self,
        ids: Iterable[int] = (1, 2, 3),
        *,
        learners: Iterable[int] = (),
        raft_class: type[Raft] = Raft,
        bootstrapped: bool = False,
        **config: Any,
    ) -> None:
        """`bootstrapped` puts the founding config in the log (needed to add nodes later)."""
        self.ids = list(ids)
        self.config = config
        self.raft_class = raft_class
        conf = ConfState(frozenset(self.ids), frozenset(learners))
        if bootstrapped:
            conf = ConfState(frozenset())
        self.storages = {i: MemoryStorage(conf) for i in [*self.ids, *learners]}
        if bootstrapped:
            for storage in self.storages.values():
                bootstrap(storage, self.ids)
        self.nodes: dict[int, RawNode] = {}
        self.applied: dict[int, list[Entry]] = {i: [] for i in self.storages}
        self.snapshots: dict[int, bytes] = {}
        self.queue: list[Message] = []
        self.blocked: set[tuple[int, int]] = set()
        self.dropped: list[Message] = []
        for i in self.storages:
            self.start(i)
        if bootstrapped:
            self.flush()  # apply the founding config entries

    def start(self, i: int, storage: MemoryStorage | None = None) -> RawNode:
        """(Re)starts node `i` from its storage, losing anything unpersisted."""
        if storage is not None:
            self.storages[i] = storage
            self.applied.setdefault(i, [])
        cfg = Config(id=i, **self.config)
        rng = random.Random(i)
        self.nodes[i] = RawNode(cfg, self.storages[i], rng, raft_class=self.raft_class)
        return self.nodes[i]

    def raft(self, i: int) -> Raft:
        return self.nodes[i].raft

    def persist(self, i: int, ready: Ready) -> None:
        storage = self.storages[i]
        if ready.snapshot is not None:
            storage.apply_snapshot(ready.snapshot)
        storage.append(ready.entries)
        if ready.hard_state is not None:
            storage.set_hard_state(ready.hard_state)
        if ready.truncate is not None:
            storage.truncate_prefix(ready.truncate)

    def handle(self, i: int) -> list[Message]:
        """Runs one Ready of node `i` through the contract; returns the messages it sent."""
        node = self.nodes[i]
        if not node.has_ready():
            return []
        ready = node.ready()
        self.persist(i, ready)
        if ready.snapshot is not None:
            self.snapshots[i] = ready.snapshot.data
        self.applied[i].extend(ready.committed_entries)
        node.advance(ready)
        for m in ready.messages:
            if (m.frm, m.to) in self.blocked or m.to not in self.nodes:
                self.dropped.append(m)
            else:
                self.queue.append(m)
        return list(ready.messages)

    def flush(self) -> list[Message]:
        out: list[Message] = []
        for i in sorted(self.nodes):
            out.extend(self.handle(i))
        return out

    def deliver(self, only: MessageType | None = None) -> list[Message]:
        """Delivers queued messages (all, or those of one type); returns them."""
        batch = [m for m in self.queue if only is None or m.type is only]
        self.queue = [m for m in self.queue if m not in batch]
        for m in batch:
            self.nodes[m.to].step(m)
        return batch

    def stabilize(self, rounds_max: int = 200) -> list[Message]:
        seen: list[Message] = []
        for _ in range(rounds_max):
            seen.extend(self.flush())
            if not self.queue:
                return seen
            self.deliver()
        raise AssertionError("did not stabilize")

    def campaign(self, i: int) -> None:
        self.nodes[i].campaign()
        self.stabilize()

    def tick(self, i: int, n: int = 1) -> None:
        for _ in range(n):
            self.nodes[i].tick()

    def isolate(self, i: int) -> None:
        for j in self.nodes:
            if j != i:
                self.blocked.update({(i, j), (j, i)})

    def heal(self) -> None:
        self.blocked.clear()

    def leader(self) -> int:
        leaders = [i for i, n in self.nodes.items() if n.raft.role is Role.LEADER]
        assert len(leaders) == 1, leaders
        return leaders[0]

    def log(self, i: int) -> list[tuple[int, int]]:
        """(index, term) of node i's whole log, for compact assertions."""
        r = self.raft(i).log
        return [(e.index, e.term) for e in r.entries(r.first_index(), r.last_index() + 1, 1 << 40)]


def of_type(messages: Iterable[Message], kind: MessageType) -> list[Message]:
    return [m for m in messages if m.type is kind]
