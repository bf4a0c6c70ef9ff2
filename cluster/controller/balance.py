"""Leader balancing: which leaderships to transfer so live nodes lead evenly.

When a node fails, Raft elects new leaders among the survivors by itself;
when it is back and caught up, nothing moves leadership back. This plan
does (DESIGN §5): given who leads each group now, it returns transfers
(TimeoutNow, thesis §3.10) after which, among live nodes, leaders per node
differ by at most one, whenever the caught-up replicas allow it.

A transfer's target is always a live replica that has caught up (its match
index is close to the leader's, see `caught_up_replicas`): handing
leadership to a lagging replica would stall the partition while it catches
up, and to a dead one would leave it leaderless for an election timeout.

The plan has two phases:

1. **Preferred leaders first.** A group whose preferred leader (first
   replica) can lead it goes back to it whenever that does not make the
   spread worse (the preferred leader leads fewer groups than the current
   one). Placement spread preferred leaders evenly, so this alone
   rebalances after a node's return in the common case, and leadership
   goes back where operators expect it (as Kafka's preferred replica
   election, KIP-183).
2. **Cost-reducing paths.** While some node leads at least two more groups
   than another one it can reach, leadership moves along a chain of groups
   u → … → v (each hop a group the previous node leads and the next can
   lead), which lowers u by one and raises v by one and leaves the nodes in
   between unchanged. An assignment with no such chain is optimal (Harvey,
   Ladner, Lovász, Tamir, "Semi-matchings for bipartite graphs and load
   balancing", 2006): it minimises the most leaderships on one node, so when
   a spread of one is possible at all, it is reached.

Every step lowers the sum of squared leader counts or, at an equal sum,
puts one more group on its preferred leader, so replanning with the same
inputs proposes nothing new and two plans never undo each other.

Pure and deterministic; about `transfers_max` groups change leader per
plan at most, so a node that returns does not trigger a storm of elections
at once.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from weir.cluster.controller.model import GroupId, NodeId, Partition

# Transfers one plan proposes at most. Each is one TimeoutNow and one short
# election; the host plans again once they are done, so balance is still
# reached within a few rounds ("within seconds", DESIGN §5).
TRANSFERS_PER_PLAN_MAX = 32
# A replica this close to its leader's last index may take over leadership.
CAUGHT_UP_LAG_ENTRIES_MAX = 64


@dataclass(frozen=True, slots=True)
class Transfer:
    group_id: GroupId
    from_node: NodeId
    to_node: NodeId


def caught_up_replicas(
    match_index: Mapping[NodeId, int],
    last_index: int,
    lag_entries_max: int = CAUGHT_UP_LAG_ENTRIES_MAX,
) -> frozenset[NodeId]:
    """Replicas whose match index is within `lag_entries_max` of the leader's last index."""
    return frozenset(n for n, m in match_index.items() if m >= last_index - lag_entries_max)


def leader_spread(leaders: Mapping[GroupId, NodeId], live: Iterable[NodeId]) -> int:
    """max - min of the groups each live node leads (0 without live nodes)."""
    counts = _counts(leaders, frozenset(live))
    return max(counts.values()) - min(counts.values()) if counts else 0


def _counts(leaders: Mapping[GroupId, NodeId], live: frozenset[NodeId]) -> dict[NodeId, int]:
    counts = dict.fromkeys(sorted(live), 0)
    for node in leaders.values():
        if node in counts:
            counts[node] += 1
    return counts


class _Plan:
    """The leaders a plan would reach, with the counts and index it keeps up to date."""

    def __init__(
        self,
        partitions: Iterable[Partition],
        live: frozenset[NodeId],
        leaders: Mapping[GroupId, NodeId],
        caught_up: Mapping[GroupId, frozenset[NodeId]],
    ) -> None:
        self.preferred: dict[GroupId, NodeId] = {}
        # Nodes that may lead each group, in preference order: the preferred
        # leader first, then replica order. The current leader is always allowed.
        self.allowed: dict[GroupId, tuple[NodeId, ...]] = {}
        self.original: dict[GroupId, NodeId] = {}
        for partition in partitions:
            group = partition.group_id
            assert group not in self.preferred, f"group {group} listed twice"
            leader = leaders.get(group)
            # A group without a known live leader (an election is running,
            # or the leader's node is down) is left to Raft.
            if leader is None or leader not in live or leader not in partition.replicas:
                self.preferred[group] = partition.preferred_leader
                continue
            ready = caught_up.get(group, frozenset())
            self.allowed[group] = tuple(
                n for n in partition.replicas if n == leader or (n in live and n in ready)
            )
            self.preferred[group] = partition.preferred_leader
            self.original[group] = leader
        self.current = dict(self.original)
        # Groups whose leader in `current` differs from `original`, kept by
        # move(): counting them afresh at every step made a plan quadratic
        # in the groups (1,000 idle partitions cost a node 8 % of a core).
        self._changed = 0
        self.counts = _counts(self.current, live)
        self.led: dict[NodeId, set[GroupId]] = collections.defaultdict(set)
        for group, node in self.current.items():
            self.led[node].add(group)

    def move(self, group: GroupId, to: NodeId) -> None:
        assert to in self.allowed[group], (group, to)
        frm = self.current[group]
        original = self.original[group]
        self._changed += (to != original) - (frm != original)
        self.counts[frm] -= 1
        self.counts[to] += 1
        self.led[frm].discard(group)
        self.led[to].add(group)
        self.current[group] = to

    def changed(self) -> int:
        return self._changed

    def spread(self) -> int:
        return max(self.counts.values()) - min(self.counts.values()) if self.counts else 0

    def transfers(self) -> tuple[Transfer, ...]:
        return tuple(
            Transfer(g, self.original[g], n)
            for g, n in sorted(self.current.items())
            if self.original[g] != n
        )

    def restore_preferred(self, transfers_max: int) -> None:
        for group in sorted(self.current):
            if self.changed() >= transfers_max:
                return
            frm, to = self.current[group], self.preferred[group]
            if to != frm and to in self.allowed[group] and self.counts[frm] > self.counts[to]:
                self.move(group, to)

    def cost_reducing_path(self) -> list[tuple[GroupId, NodeId]] | None:
        """Hops (group, new leader) from a node to one that leads at least two fewer groups."""
        sources = sorted(self.counts, key=lambda n: (-self.counts[n], n))
        for source in sources:
            # Breadth first: the shortest chain moves the fewest leaderships.
            parent: dict[NodeId, tuple[NodeId, GroupId] | None] = {source: None}
            frontier = [source]
            best: NodeId | None = None
            while frontier and best is None:
                following: list[NodeId] = []
                for node in frontier:
                    for group in sorted(self.led[node]):
                        for to in self.allowed[group]:
                            if to in parent:
                                continue
                            parent[to] = (node, group)
                            following.append(to)
                candidates = [n for n in following if self.counts[n] <= self.counts[source] - 2]
                if candidates:
                    best = min(candidates, key=lambda n: (self.counts[n], n))
                frontier = following
            if best is None:
                continue
            hops: list[tuple[GroupId, NodeId]] = []
            node = best
            while (step := parent[node]) is not None:
                prev, group = step
                hops.append((group, node))
                node = prev
            hops.reverse()
            return hops
        return None


def plan_leader_transfers(
    partitions: Iterable[Partition],
    live: Iterable[NodeId],
    leaders: Mapping[GroupId, NodeId],
    caught_up: Mapping[GroupId, frozenset[NodeId]],
    transfers_max: int = TRANSFERS_PER_PLAN_MAX,
) -> tuple[Transfer, ...]:
    """The leadership transfers that balance leaders over `live` nodes, sorted by group.

    `partitions` are the groups to balance (`ControllerState.partitions()`:
    live topics and offsets partitions); `leaders` the current leader of
    each group as the host knows it (absent: unknown); `caught_up` per
    group, the replicas that are close enough to the leader's log to take
    over (`caught_up_replicas`). Each transfer goes from the group's current
    leader to a live, caught-up replica. At most `transfers_max` transfers,
    or one chain of at most one transfer per live node when that is longer.
    """
    assert transfers_max >= 1
    plan = _Plan(partitions, frozenset(live), leaders, caught_up)
    plan.restore_preferred(transfers_max)
    # Each path lowers the sum of squared counts, so the loop ends; the bound
    # only caps the work of one call (a path may undo an earlier move).
    for _ in range(4 * transfers_max + len(plan.counts)):
        if plan.spread() <= 1:
            break
        hops = plan.cost_reducing_path()
        if hops is None:
            break
        undo = [(group, plan.current[group]) for group, _ in hops]
        empty = plan.changed() == 0
        for group, to in hops:
            plan.move(group, to)
        # A chain is all or nothing (a part of it would overload a node in
        # between); a plan may hold one chain longer than the bound, or a
        # small bound could never let a long chain through.
        if plan.changed() > transfers_max and not empty:
            for group, to in reversed(undo):
                plan.move(group, to)
            break
    return plan.transfers()
