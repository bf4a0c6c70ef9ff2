"""The fault injector: what goes wrong in a tick, decided by the cluster's seeded RNG."""

from __future__ import annotations

from .cluster import Cluster, SimNode


def inject_faults(c: Cluster) -> None:
    s = c.scenario
    rng = c.rng
    for node in c.nodes.values():
        if node.raw is None and not node.retired and node.down_until <= c.now:
            c.boot(node)
    if s.crash and rng.random() < s.crash:
        _crash_one(c)
    if c.heal_at and c.heal_at <= c.now:
        c.blocked.clear()
        c.heal_at = 0
    if s.partition and rng.random() < s.partition:
        _repartition(c)
    if s.isolate_leader and rng.random() < s.isolate_leader:
        _isolate(c, c.leader())
    if s.isolate_new_leader:
        leader = c.leader()
        if leader is not None and leader.raw is not None:
            term = leader.raw.raft.term
            if term > c.newest_leader_term:
                c.newest_leader_term = term
                if rng.random() < s.isolate_new_leader:
                    _isolate(c, leader)
    if s.transfer and rng.random() < s.transfer:
        _transfer(c)
    if s.membership and rng.random() < s.membership:
        c.change_membership()
    if s.compact:
        for node in c.alive():
            if rng.random() < s.compact:
                _compact(node)


def _crash_one(c: Cluster) -> None:
    # Keep a majority of the original size up most of the time so progress is possible.
    alive = c.alive()
    if len(c.nodes) - len(alive) < (c.scenario.nodes + 1) // 2:
        c.crash(c.rng.choice(alive))


def _repartition(c: Cluster) -> None:
    rng = c.rng
    ids = sorted(c.nodes)
    c.blocked.clear()
    kind = rng.randrange(4)
    if kind == 0:
        return  # healed
    if kind == 1:
        # Symmetric: the cluster splits in two sides that cannot talk.
        side = set(rng.sample(ids, rng.randint(1, len(ids) // 2)))
        c.blocked.update((a, b) for a in ids for b in ids if (a in side) != (b in side))
    elif kind == 2:
        # Asymmetric: some directed links fail (one node hears but is not heard).
        for _ in range(rng.randint(1, len(ids))):
            a, b = rng.sample(ids, 2)
            c.blocked.add((a, b))
    else:
        _isolate(c, c.leader())


def _isolate(c: Cluster, node: SimNode | None) -> None:
    """Cuts `node` off from everyone until a random tick soon."""
    if node is None:
        return
    others = [b for b in c.nodes if b != node.id]
    c.blocked.update((node.id, b) for b in others)
    c.blocked.update((b, node.id) for b in others)
    c.heal_at = c.now + c.rng.randint(2, 12)


def _transfer(c: Cluster) -> None:
    leader = c.leader()
    if leader is None or leader.raw is None:
        return
    voters = sorted(leader.raw.raft.conf.voters - {leader.id})
    if voters:
        leader.raw.transfer_leadership(c.rng.choice(voters))


def _compact(node: SimNode) -> None:
    # Retention: keep a few entries so some followers catch up from the log
    # and those further behind need the snapshot.
    raw = node.raw
    assert raw is not None
    if node.applied - raw.raft.log.first_index() >= 6:
        raw.compact(node.applied, node.app_snapshot())
