"""Where partition leaders run: balancing them, and handing them off before a stop.

Raft elects a leader for each group by itself, so after a topic is created
leaders land wherever the first election timer fired, and after a failure
the survivors lead everything. `LeaderBalancer` moves leadership so that
leaders per live node differ by at most one (DESIGN §5):

- Every node balances the groups **it leads**, from what it knows: the
  controller's partitions (replicas, preferred leader), the leader of each
  group it hosts, the liveness of its peers, and, for its own groups, each
  replica's match index (`host.progress`). There is no central coordinator
  to fail over; nodes only ever move their own leaderships, so two nodes
  never issue conflicting transfers of one group.
- `plan_leader_transfers` decides (preferred leaders first, then chains);
  a target is always live and caught up by this leader's own progress
  (`caught_up_replicas`), so leadership never goes to a replica that would
  stall the partition while it catches up. Groups this node does not lead
  are given no caught-up replicas: the plan can only move ours.
- No ping-pong: a group whose leader changed (as seen here) or that this
  node transferred less than `cooldown_s` ago is left alone, so views that
  lag behind each other by a heartbeat cannot bounce a group between nodes.

- A settled node does not plan again until something it plans from
  changes: a round that started no transfer, found every live node within
  one leadership of the others and no group in its cooldown is followed by
  rounds that only compare a signature (leader changes seen here, the live
  nodes, the controller's state version) and plan only once it differs,
  or `BALANCE_SETTLED_REPLAN_S` after the last plan (a replica that caught
  up since can then take back its preferred leadership). A plan is linear
  in the groups: at every `BALANCE_INTERVAL_S` on 1,000 idle partitions it
  was about half of an idle node's event-loop CPU.

`hand_off` moves leadership away before this node stops a group it leads
(reconcile moving a replica, the node shutting down): the followers then
need not wait for an election timeout.

`LeaderWatch` hears the host's leader changes: when each group last changed
leader, and a way to wait until groups have leaders (CreateTopic answers
once its partitions are led).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from weir.cluster import controller as ctl
from weir.cluster.controller.balance import (
    caught_up_replicas,
    leader_spread,
    plan_leader_transfers,
)
from weir.cluster.host import HostError
from weir.server.cluster_meta import ClusterMetadata

log = logging.getLogger("weir.server.cluster")

# How often a node looks at the groups it leads. A plan costs a few
# microseconds per group, and balance is reached within a few rounds.
BALANCE_INTERVAL_S = 0.5
# A settled node (module docstring) plans again at least this often.
BALANCE_SETTLED_REPLAN_S = 10.0
# A group whose leader changed this recently is not moved: the new leader's
# view of its followers (match indexes) needs a round trip to be true, and
# two nodes' views of who leads what need a heartbeat to agree.
TRANSFER_COOLDOWN_S = 3.0
# How long a stop waits for its groups' leadership to move away. A transfer
# to a caught-up replica takes one round trip and one fsync.
HANDOFF_WAIT_S = 2.0
# A group that is not started here yet gives no leader event; reconcile
# starts it within a turn, so waiting for leaders also looks this often.
LEADERS_POLL_S = 0.05


class LeaderHost(Protocol):
    """What balancing needs of `RaftHost` (a fake one in unit tests)."""

    node_id: int

    def groups(self) -> list[int]: ...

    def leader(self, group_id: int) -> int: ...

    def is_leader(self, group_id: int) -> bool: ...

    def progress(self, group_id: int) -> dict[int, int]: ...

    def last_index(self, group_id: int) -> int: ...

    def peer_alive(self, node_id: int) -> bool: ...

    def transfer_leadership(self, group_id: int, to: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Handover:
    """A transfer this node started, with what its target held then."""

    group_id: int
    to_node: int
    match_index: int
    last_index: int


class LeaderWatch:
    """The host's leader changes: when each group last changed, and waits for leaders."""

    def __init__(self, host: LeaderHost, clock: Callable[[], float] = time.monotonic) -> None:
        self._host = host
        self._clock = clock
        self.changed_at: dict[int, float] = {}
        # Leader changes seen so far, of any group.
        self.changes = 0
        self._event = asyncio.Event()

    def on_leader(self, group_id: int, leader_id: int) -> None:
        """The host's leader listener (on the loop, inside the driver: must not block)."""
        del leader_id
        self.changes += 1
        self.changed_at[group_id] = self._clock()
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait_change(self) -> None:
        """Returns at the next leader change of any group seen here."""
        await self._event.wait()

    def leader_of(self, group_id: int) -> int:
        try:
            return self._host.leader(group_id)
        except HostError:
            return 0

    async def wait_led(self, group_ids: Iterable[int], timeout_s: float) -> bool:
        """True once every group has a leader known here; False after `timeout_s`."""
        groups = list(group_ids)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while not all(self.leader_of(g) for g in groups):
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(LEADERS_POLL_S):
                            await self._event.wait()
                return True
        return False


class LeaderBalancer:
    """Balances the leaderships of one node; see the module docstring."""

    def __init__(
        self,
        host: LeaderHost,
        metadata: ClusterMetadata,
        watch: LeaderWatch,
        clock: Callable[[], float] = time.monotonic,
        cooldown_s: float = TRANSFER_COOLDOWN_S,
    ) -> None:
        self._host = host
        self._metadata = metadata
        self._watch = watch
        self._clock = clock
        self._cooldown_s = cooldown_s
        self._transferred_at: dict[int, float] = {}
        self.handovers = 0
        # What the last plan was made from, while it left this node settled
        # (None: not settled), and when it was made.
        self._settled: tuple[object, ...] | None = None
        self._planned_at = -1e18
        # Seen by the last plan: some group cooling, and the leaders' spread.
        self._any_cooling = False
        self._spread = 0
        self.plans = 0

    def _live(self) -> frozenset[int]:
        host = self._host
        nodes = {n.node_id for n in self._metadata.state.nodes()}
        return frozenset(
            n for n in nodes | {host.node_id} if n == host.node_id or host.peer_alive(n)
        )

    def _caught_up(
        self, group_id: int, live: frozenset[int]
    ) -> tuple[frozenset[int], int, dict[int, int]]:
        """Live replicas close to our log, our last index and the match indexes (we lead)."""
        progress = self._host.progress(group_id)
        last = self._host.last_index(group_id)
        return caught_up_replicas(progress, last) & live, last, progress

    def plan(self, now: float | None = None) -> list[Handover]:
        """The transfers of groups this node leads that balancing calls for now."""
        host = self._host
        now = self._clock() if now is None else now
        running = set(host.groups())
        live = self._live()
        self._any_cooling = False
        partitions = [p for p in self._metadata.state.partitions() if p.group_id in running]
        leaders: dict[int, int] = {}
        caught_up: dict[int, frozenset[int]] = {}
        held: dict[int, tuple[int, dict[int, int]]] = {}
        for partition in partitions:
            group = partition.group_id
            try:
                leader = host.leader(group)
                if not leader:
                    continue
                leaders[group] = leader
                if leader != host.node_id or not host.is_leader(group):
                    continue
                if self._cooling(group, now):
                    # Counted where it is, but not moved.
                    self._any_cooling = True
                    continue
                ready, last, progress = self._caught_up(group, live)
            except HostError:
                continue
            caught_up[group] = ready
            held[group] = (last, progress)
        self.plans += 1
        self._spread = leader_spread(leaders, live)
        transfers = plan_leader_transfers(partitions, live, leaders, caught_up)
        return [
            Handover(
                t.group_id, t.to_node, held[t.group_id][1].get(t.to_node, 0), held[t.group_id][0]
            )
            for t in transfers
            if t.from_node == host.node_id and t.group_id in held
        ]

    def _cooling(self, group_id: int, now: float) -> bool:
        last = max(
            self._watch.changed_at.get(group_id, -1e18), self._transferred_at.get(group_id, -1e18)
        )
        return now - last < self._cooldown_s

    def _signature(self) -> tuple[object, ...]:
        """What a plan depends on that can change while this node is settled (cheap)."""
        state = self._metadata.state
        return (self._watch.changes, self._live(), id(state), state.version)

    def balance_once(self) -> list[Handover]:
        """Plans and starts the transfers; returns those started (none while settled)."""
        now = self._clock()
        signature = self._signature()
        if self._settled == signature and now - self._planned_at < BALANCE_SETTLED_REPLAN_S:
            return []
        started = []
        handovers = self.plan(now)
        self._planned_at = now
        settled = not handovers and not self._any_cooling and self._spread <= 1
        self._settled = signature if settled else None
        for handover in handovers:
            try:
                self._host.transfer_leadership(handover.group_id, handover.to_node)
            except HostError as exc:
                log.info("leadership of group %d stays: %s", handover.group_id, exc)
                continue
            self._transferred_at[handover.group_id] = now
            self.handovers += 1
            started.append(handover)
            log.info(
                "balancing: leadership of group %d moves to node %d (its match index %d, ours %d)",
                handover.group_id,
                handover.to_node,
                handover.match_index,
                handover.last_index,
            )
        return started

    async def run(self, interval_s: float = BALANCE_INTERVAL_S) -> None:
        """Background task: one balancing round every `interval_s`."""
        while True:
            await asyncio.sleep(interval_s)
            self.balance_once()

    # -- handing off before a stop ----------------------------------------------------

    def handoff_target(self, group_id: int) -> int | None:
        """A live, caught-up voter to take over `group_id`; the preferred leader first."""
        host = self._host
        try:
            if not host.is_leader(group_id):
                return None
            ready, _, progress = self._caught_up(group_id, self._live())
        except HostError:
            return None
        candidates = ready - {host.node_id}
        if not candidates:
            return None
        order = self._replicas(group_id)
        # The preferred leader, then the most caught-up replica.
        return min(candidates, key=lambda n: (n not in order[:1], -progress.get(n, 0), n))

    def preferred_leader(self, group_id: int) -> int:
        """The group's first replica; 0 if the controller does not know the group."""
        replicas = self._replicas(group_id)
        return replicas[0] if replicas else 0

    def _replicas(self, group_id: int) -> tuple[int, ...]:
        for partition in self._metadata.state.partitions():
            if partition.group_id == group_id:
                return partition.replicas
        return ()

    async def hand_off(self, group_ids: Sequence[int], timeout_s: float = HANDOFF_WAIT_S) -> int:
        """Moves leadership of the given groups this node leads to caught-up voters.

        Returns how many still are led here after at most `timeout_s` (0 when
        every transfer completed, or no group had a caught-up voter to take it).
        """
        host = self._host
        moving = []
        for group in group_ids:
            target = self.handoff_target(group)
            if target is None:
                continue
            try:
                host.transfer_leadership(group, target)
            except HostError:
                continue
            moving.append(group)
            log.info("handing off leadership of group %d to node %d", group, target)

        def still_led() -> list[int]:
            led = []
            for group in moving:
                with contextlib.suppress(HostError):
                    if host.is_leader(group):
                        led.append(group)
            return led

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while still_led():
                    await self._watch.wait_change()
        left = still_led()
        if left:
            log.warning("leadership of groups %s did not move within %.1f s", left, timeout_s)
        return len(left)

    def led_groups(self) -> list[int]:
        host = self._host
        led = []
        for group in host.groups():
            if group == ctl.CONTROLLER_GROUP:
                continue
            with contextlib.suppress(HostError):
                if host.is_leader(group):
                    led.append(group)
        return led
