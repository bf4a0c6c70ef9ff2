"""Which peers are alive: heard from within `dead_after_ms`.

One heartbeat per peer, not per Raft group: any frame from a node (a batch
or its heartbeat) proves the whole node alive, so idle groups can quiesce
and still learn when a leader's node dies. Pure and clock-free: callers pass
the time, so tests drive it with plain numbers.
"""

from __future__ import annotations

from weir.cluster.raft.types import NodeId


class Liveness:
    def __init__(self, dead_after_ms: float, stalled_after_ms: float | None = None) -> None:
        """`stalled_after_ms`: a gap between two `expire()` calls longer than this
        means our own event loop was held up (a long turn, a paused process),
        so frames from peers may be waiting unread: that round judges nobody.
        Without it, one stall of the loop longer than `dead_after_ms` would
        report every peer dead at once and step down every leader here.
        """
        assert dead_after_ms > 0
        self.dead_after_ms = dead_after_ms
        self.stalled_after_ms = stalled_after_ms
        self._heard_ms: dict[NodeId, float] = {}
        self._alive: set[NodeId] = set()
        self._checked_ms: float | None = None
        self.stalls = 0

    def heard(self, node_id: NodeId, now_ms: float) -> bool:
        """Records a frame from `node_id`; True when this makes it alive."""
        self._heard_ms[node_id] = now_ms
        if node_id in self._alive:
            return False
        self._alive.add(node_id)
        return True

    def expire(self, now_ms: float) -> list[NodeId]:
        """Marks dead every alive node not heard from in time; returns them."""
        checked, self._checked_ms = self._checked_ms, now_ms
        if (
            self.stalled_after_ms is not None
            and checked is not None
            and now_ms - checked > self.stalled_after_ms
        ):
            self.stalls += 1
            return []
        dead = [
            node
            for node in sorted(self._alive)
            if now_ms - self._heard_ms[node] >= self.dead_after_ms
        ]
        self._alive.difference_update(dead)
        return dead

    def alive(self, node_id: NodeId) -> bool:
        return node_id in self._alive

    def forget(self, node_id: NodeId) -> bool:
        """Drops a removed peer; True when it was alive (so listeners hear it die)."""
        self._heard_ms.pop(node_id, None)
        if node_id in self._alive:
            self._alive.discard(node_id)
            return True
        return False
