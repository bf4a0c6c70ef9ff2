"""Values the Raft core exchanges with its host: entries, messages, state and limits.

Everything here is an immutable value (frozen dataclass with slots) so a
`Ready` handed to the host can never be changed behind the core's back.
Wire encoding is not this module's job; the transport maps these to protobuf.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import ClassVar

NodeId = int
# Node id 0 means "nobody": no vote cast, no leader known.
NONE: NodeId = 0


class EntryType(enum.IntEnum):
    NORMAL = 0
    # Appended by every new leader so it can commit an entry of its own term
    # (§5.4.2) and so learn which older entries are committed.
    NOOP = 1
    CONFIG = 2


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


class ConfChangeType(enum.IntEnum):
    ADD_LEARNER = 0
    # Promotes an existing, caught-up learner; a new node cannot become a voter directly.
    ADD_VOTER = 1
    REMOVE = 2


_CONF_CHANGE = struct.Struct(">BQ")


@dataclass(frozen=True, slots=True)
class ConfChange:
    type: ConfChangeType
    node_id: NodeId

    def encode(self) -> bytes:
        return _CONF_CHANGE.pack(self.type, self.node_id)

    @staticmethod
    def decode(data: bytes) -> ConfChange:
        kind, node_id = _CONF_CHANGE.unpack(data)
        return ConfChange(ConfChangeType(kind), node_id)


@dataclass(frozen=True, slots=True)
class ConfState:
    voters: frozenset[NodeId]
    learners: frozenset[NodeId] = frozenset()

    def apply(self, change: ConfChange) -> ConfState:
        node = change.node_id
        voters, learners = set(self.voters), set(self.learners)
        voters.discard(node)
        learners.discard(node)
        if change.type is ConfChangeType.ADD_LEARNER:
            learners.add(node)
        elif change.type is ConfChangeType.ADD_VOTER:
            voters.add(node)
        return ConfState(frozenset(voters), frozenset(learners))

    def members(self) -> frozenset[NodeId]:
        return self.voters | self.learners


@dataclass(frozen=True, slots=True)
class HardState:
    """What must survive a crash: §5.1 (term), §5.2 (vote), and commit to speed restarts."""

    term: int = 0
    vote: NodeId = NONE
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int
    term: int
    conf: ConfState


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A log prefix replaced by the application's state at `meta.index` (`data`)."""

    meta: SnapshotMeta
    data: bytes = b""


class MessageType(enum.Enum):
    APPEND = "append"
    APPEND_RESP = "append_resp"
    HEARTBEAT = "heartbeat"
    HEARTBEAT_RESP = "heartbeat_resp"
    VOTE = "vote"
    VOTE_RESP = "vote_resp"
    PRE_VOTE = "pre_vote"
    PRE_VOTE_RESP = "pre_vote_resp"
    SNAPSHOT = "snapshot"
    TIMEOUT_NOW = "timeout_now"


@dataclass(frozen=True, slots=True)
class Message:
    """One node-to-node message; which fields matter depends on `type`.

    APPEND: `index`/`log_term` locate the entry before `entries`; `commit` is the
    leader's commit index. APPEND_RESP: `index` is the follower's last matching
    index, or on `reject` the probed index, with `hint_index`/`hint_term`
    naming the follower's latest entry that could still match (fast backtracking).
    VOTE/PRE_VOTE: `index`/`log_term` describe the candidate's last entry;
    `transfer` marks a campaign started by TimeoutNow, which ignores leases.
    """

    type: MessageType
    to: NodeId
    frm: NodeId
    term: int
    index: int = 0
    log_term: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    hint_index: int = 0
    hint_term: int = 0
    snapshot: Snapshot | None = None
    transfer: bool = False


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class Config:
    """Per-group settings. Time is counted in ticks; every buffer has a limit."""

    id: NodeId
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    append_entries_max: int = 64
    append_bytes_max: int = 1 << 20
    inflight_messages_max: int = 32
    uncommitted_entries_max: int = 1024
    uncommitted_bytes_max: int = 16 << 20
    # Committed entries handed to the host per Ready (at least one).
    apply_bytes_max: int = 16 << 20
    # A learner is promoted only when it is at most this far behind the leader.
    promote_lag_entries_max: int = 64
    pre_vote: bool = True
    check_quorum: bool = True

    def __post_init__(self) -> None:
        assert self.id != NONE, "node id 0 is reserved for 'nobody'"
        assert 0 < self.heartbeat_ticks < self.election_ticks
        assert self.append_entries_max > 0 and self.append_bytes_max > 0
        assert self.inflight_messages_max > 0
        assert self.uncommitted_entries_max > 0 and self.uncommitted_bytes_max > 0


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state the host may want to observe (not persisted)."""

    leader: NodeId
    role: Role


# Results of requests made to the core. These are expected operating conditions,
# returned rather than raised; `retriable` tells the caller whether to try again.


@dataclass(frozen=True, slots=True)
class NotLeader:
    leader_hint: NodeId
    retriable: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class ProposalDropped:
    reason: str
    retriable: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class ConfChangeRejected:
    reason: str
    retriable: ClassVar[bool] = False


# An accepted proposal is answered with the log index it was appended at.
ProposeResult = int | NotLeader | ProposalDropped
ConfChangeResult = int | NotLeader | ProposalDropped | ConfChangeRejected

EMPTY_CONF = ConfState(frozenset())
