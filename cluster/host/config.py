"""Settings and counters of the Raft host. Limits are named with their unit last."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..raft.types import NONE, Config, NodeId
from ..transport.config import TransportConfig

# A coarse tick keeps idle consensus cheap (docs/raft.md "Figures": ~45 µs per
# group per idle tick); quiescence makes idle groups free altogether.
TICK_MS_DEFAULT = 100
ELECTION_TICKS_DEFAULT = 10
HEARTBEAT_TICKS_DEFAULT = 2
# A settled leader keeps heartbeating this many ticks before it goes quiet,
# so every follower has heard the final commit index (a heartbeat carries it).
QUIESCE_AFTER_TICKS_DEFAULT = 5
# A proposal whose outcome is not known after this long resolves "unknown".
PROPOSAL_TIMEOUT_MS_DEFAULT = 10_000


@dataclass(frozen=True, slots=True)
class HostConfig:
    node_id: NodeId
    cluster_id: str
    # Peer node id -> "host:port" of its peer service.
    peers: Mapping[NodeId, str] = field(default_factory=dict)
    tick_ms: int = TICK_MS_DEFAULT
    election_ticks: int = ELECTION_TICKS_DEFAULT
    heartbeat_ticks: int = HEARTBEAT_TICKS_DEFAULT
    quiesce: bool = True
    quiesce_after_ticks: int = QUIESCE_AFTER_TICKS_DEFAULT
    proposal_timeout_ms: int = PROPOSAL_TIMEOUT_MS_DEFAULT
    # Raft limits per group (see cluster/raft/types.py Config).
    append_entries_max: int = 64
    append_bytes_max: int = 1 << 20
    inflight_messages_max: int = 32
    uncommitted_entries_max: int = 1024
    uncommitted_bytes_max: int = 16 << 20
    apply_bytes_max: int = 16 << 20
    # The peer transport's settings; None: defaults for this node and cluster.
    transport: TransportConfig | None = None

    def __post_init__(self) -> None:
        assert self.node_id != NONE, "node id 0 is reserved for 'nobody'"
        assert self.node_id not in self.peers, "a node is not its own peer"
        assert self.tick_ms > 0
        assert 0 < self.heartbeat_ticks < self.election_ticks
        assert self.quiesce_after_ticks > self.heartbeat_ticks
        assert self.proposal_timeout_ms > 0
        if self.transport is not None:
            assert self.transport.node_id == self.node_id
            assert self.transport.cluster_id == self.cluster_id

    def raft_config(self) -> Config:
        return Config(
            id=self.node_id,
            election_ticks=self.election_ticks,
            heartbeat_ticks=self.heartbeat_ticks,
            append_entries_max=self.append_entries_max,
            append_bytes_max=self.append_bytes_max,
            inflight_messages_max=self.inflight_messages_max,
            uncommitted_entries_max=self.uncommitted_entries_max,
            uncommitted_bytes_max=self.uncommitted_bytes_max,
            apply_bytes_max=self.apply_bytes_max,
        )

    def transport_config(self) -> TransportConfig:
        if self.transport is not None:
            return self.transport
        return TransportConfig(node_id=self.node_id, cluster_id=self.cluster_id)


@dataclass(slots=True)
class HostStats:
    """Counters since the host started (a copy is handed out by `RaftHost.stats()`)."""

    # Driver turns that handled at least one group, and the groups they handled.
    turns: int = 0
    turn_groups: int = 0
    turn_groups_max: int = 0
    # Writer commits (one fsync each in sync durability) counted during turns.
    turn_commits: int = 0
    turn_commits_max: int = 0
    # Turns whose writes took more than one writer commit (should stay 0).
    turns_multi_commit: int = 0
    # Group ticks (one RawNode.tick() each) and timer rounds.
    ticks: int = 0
    tick_rounds: int = 0
    groups_quiesced: int = 0
    messages_sent: int = 0
    messages_dropped: int = 0
    messages_received: int = 0
    # Received messages for groups not running here, or not addressed to us.
    messages_ignored: int = 0
    # Readies left for a later turn because the writer's budget was full.
    readies_deferred: int = 0
    # Groups reopened from disk after a failed write.
    reopens: int = 0
    # Reveals of partitions' committed entries outside a turn (driver.py).
    early_applies: int = 0
    proposals: int = 0
    # Appends proposed in an entry together with an earlier one (coalesce.py).
    appends_merged: int = 0
    proposals_committed: int = 0
    proposals_not_written: int = 0
    proposals_unknown: int = 0

    @property
    def groups_per_turn(self) -> float:
        return self.turn_groups / self.turns if self.turns else 0.0

    @property
    def commits_per_turn(self) -> float:
        return self.turn_commits / self.turns if self.turns else 0.0


__all__ = ["HostConfig", "HostStats"]
