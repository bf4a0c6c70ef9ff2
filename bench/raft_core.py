"""Benchmark of the pure Raft core: many groups led by one simulated node.

1,000 groups, each a leader whose two peers are simulated as perfect,
instantly-acknowledging followers (no network, no disk: MemoryStorage).
It measures what the core itself costs per tick and per committed entry,
the budget a multi-Raft host has left for I/O. Prints JSON lines.
"""

from __future__ import annotations

import json
import random
import time

from weir.cluster.raft import (
    Config,
    ConfState,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    RawNode,
    Role,
)

GROUPS = 1000
PEERS = (2, 3)
ENTRY_BYTES = 100
ENTRIES_PER_ROUND = 4
IDLE_ROUNDS = 30
BUSY_ROUNDS = 30

_ANSWERS = {
    MessageType.PRE_VOTE: MessageType.PRE_VOTE_RESP,
    MessageType.VOTE: MessageType.VOTE_RESP,
    MessageType.HEARTBEAT: MessageType.HEARTBEAT_RESP,
    MessageType.APPEND: MessageType.APPEND_RESP,
}


def answer(m: Message) -> Message:
    """What an up-to-date follower that persists instantly would reply."""
    index = m.index + len(m.entries) if m.type is MessageType.APPEND else 0
    return Message(_ANSWERS[m.type], m.frm, m.to, m.term, index=index)


class Group:
    def __init__(self, seed: int) -> None:
        self.storage = MemoryStorage(ConfState(frozenset({1, *PEERS})))
        config = Config(id=1, election_ticks=10, heartbeat_ticks=1)
        self.node = RawNode(config, self.storage, random.Random(seed))
        self.inbox: list[Message] = []
        self.applied = 0

    def turn(self) -> None:
        """One host turn: deliver answers, then persist, send (answer), apply, advance."""
        node = self.node
        for m in self.inbox:
            node.step(m)
        self.inbox = []
        if not node.has_ready():
            return
        ready = node.ready()
        self.storage.append(ready.entries)
        if ready.hard_state is not None:
            self.storage.set_hard_state(ready.hard_state)
        self.inbox = [answer(m) for m in ready.messages]
        self.applied += sum(1 for e in ready.committed_entries if e.type is EntryType.NORMAL)
        node.advance(ready)


def run(groups: list[Group], rounds: int, entries: int) -> tuple[float, int, int]:
    payload = b"x" * ENTRY_BYTES
    applied_before = sum(g.applied for g in groups)
    start = time.perf_counter()
    for _ in range(rounds):
        for g in groups:
            for _ in range(entries):
                g.node.propose(payload)
            g.node.tick()
            g.turn()
    elapsed = time.perf_counter() - start
    return elapsed, rounds * len(groups), sum(g.applied for g in groups) - applied_before


def main() -> None:
    groups = [Group(seed) for seed in range(GROUPS)]
    for g in groups:
        g.node.campaign()
        while g.node.raft.role is not Role.LEADER or g.inbox:
            g.turn()
    common = {"bench": "raft_core", "groups": GROUPS, "peers": len(PEERS)}
    elapsed, ticks, _ = run(groups, IDLE_ROUNDS, 0)
    print(json.dumps({**common, "phase": "idle", "ticks_per_s": round(ticks / elapsed)}))
    elapsed, ticks, committed = run(groups, BUSY_ROUNDS, ENTRIES_PER_ROUND)
    print(
        json.dumps(
            {
                **common,
                "phase": "replicating",
                "entry_bytes": ENTRY_BYTES,
                "entries_per_group_tick": ENTRIES_PER_ROUND,
                "ticks_per_s": round(ticks / elapsed),
                "entries_committed_per_s": round(committed / elapsed),
                "entries_committed": committed,
            }
        )
    )


if __name__ == "__main__":
    main()
