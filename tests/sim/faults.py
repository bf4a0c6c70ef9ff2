"""The fault injector and the less orderly drivers: what happens in a tick,
decided by the cluster's seeded RNG."""

from __future__ import annotations

from weir.cluster.raft import ConfChange, ConfChangeType, Raft

from .cluster import Cluster, SimNode


def inject_faults(c: Cluster) -> None:
    s = c.scenario
    rng = c.rng
    for node in c.nodes.values():
        if node.raw is None and not node.retired and node.down_until <= c.now:
            c.boot(node)
    if not c.chaos():
        return  # a calm window: nothing may stop the transfer under way
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
    if s.calm_transfer and rng.random() < s.calm_transfer:
        _calm_transfer(c)
    if s.membership and rng.random() < s.membership:
        if s.membership_any:
            _change_membership_any(c)
        else:
            _change_membership(c)
    if s.compact:
        for node in c.alive():
            if rng.random() < s.compact:
                _compact(c, node)


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


def _raft(node: SimNode) -> Raft:
    assert node.raw is not None
    return node.raw.raft


def _transfer(c: Cluster) -> None:
    leader = c.leader()
    if leader is None or leader.raw is None:
        return
    r = leader.raw.raft
    voters = sorted(r.conf.voters - {leader.id})
    if voters:
        before = c.props.before(r)
        leader.raw.transfer_leadership(c.rng.choice(voters))
        c.props.after_request(leader.id, r, before, "a transfer request")
        c.props.on_transfer_requested(leader.id, r)


def _calm_transfer(c: Cluster) -> None:
    """Thesis §3.10: a transfer to a caught-up voter that nothing disturbs must complete."""
    leader = c.leader()
    if leader is None or leader.raw is None or c.props.calm_transfer is not None:
        return
    r = leader.raw.raft
    if r.lead_transferee or r.pending_conf_index > r.log.applied:
        return  # a configuration change in flight may stop the target from campaigning
    alive = {n.id for n in c.alive()}
    if len(r.conf.voters & alive) < r.quorum():
        return
    targets = []
    for target in sorted(r.conf.voters - {leader.id}):
        if target not in alive or r.progress[target].match != r.log.last_index():
            continue
        t = _raft(c.nodes[target])
        if t.log.applied >= r.pending_conf_index and target in t.conf.voters:
            targets.append(target)
    if not targets:
        return
    s = c.scenario
    defer = s.defer_ticks_max if s.defer_ready else 0
    # TimeoutNow, the votes and their answers: three hops, each a network delay
    # plus a Ready that may wait behind a held one.
    window = 3 * s.delay_ticks_max + 6 * defer + 2
    c.blocked.clear()
    c.heal_at = 0
    c.calm_until = c.now + window
    target = c.rng.choice(targets)
    before = c.props.before(r)
    if leader.raw.transfer_leadership(target) is None:
        c.props.after_request(leader.id, r, before, "a transfer request")
        c.props.on_transfer_requested(leader.id, r)
        c.props.expect_transfer(leader.id, r, target, window)


def _change_membership(c: Cluster) -> None:
    """Cycles learner-add, promotion and removal, one change at a time."""
    leader = c.leader()
    if leader is None or leader.raw is None:
        return
    conf = _raft(leader).conf
    raw = leader.raw
    if conf.learners:
        raw.propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, min(conf.learners)))
    elif len(conf.voters) > c.scenario.nodes:
        victim = c.rng.choice(sorted(conf.voters))
        raw.propose_conf_change(ConfChange(ConfChangeType.REMOVE, victim))
    elif c.next_id <= c.scenario.nodes + 2:
        change = ConfChange(ConfChangeType.ADD_LEARNER, c.next_id)
        if isinstance(raw.propose_conf_change(change), int):
            c.add_node()


def _change_membership_any(c: Cluster) -> None:
    """A change of any type, to any member, at any moment; the core refuses what it must."""
    leader = c.leader()
    if leader is None or leader.raw is None:
        return
    rng = c.rng
    r = leader.raw.raft
    members = sorted(r.conf.members())
    kind = rng.choice(list(ConfChangeType))
    if kind is ConfChangeType.ADD_LEARNER:
        if c.next_id > c.scenario.nodes + 3:
            return
        target = c.next_id
    elif kind is ConfChangeType.REMOVE and len(r.conf.voters) <= 2:
        return  # keep two voters so that the cluster can still survive a fault
    else:
        target = rng.choice(members)
    before = c.props.before(r)
    result = leader.raw.propose_conf_change(ConfChange(kind, target))
    c.props.after_request(leader.id, r, before, "a configuration change")
    if not isinstance(result, int):
        return
    if kind is ConfChangeType.ADD_LEARNER:
        c.add_node()
    if rng.random() < c.scenario.isolate_after_conf:
        _isolate(c, leader)


def _compact(c: Cluster, node: SimNode) -> None:
    # Retention: keep a few entries so some followers catch up from the log
    # and those further behind need the snapshot.
    raw = node.raw
    assert raw is not None
    r = raw.raft
    first = r.log.first_index()
    if node.applied - first < 6:
        return
    index = node.applied
    if c.scenario.compact_any:
        index = c.rng.randint(first - 1, node.applied)
    before = c.props.before(r)
    raw.compact(index, node.app_snapshot(index))
    c.props.after_request(node.id, r, before, "a compaction")
