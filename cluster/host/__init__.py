"""The multi-Raft host: every Raft group of one node, driven by one task.

Start at `host.py` (`RaftHost`, the API the server wires in), then
`driver.py` (the turn: persist all groups in one writer turn, send, apply,
advance) and `group.py` (one group, and quiescence). docs/cluster.md
"Multi-Raft host" describes the contract.
"""

from .config import HostConfig, HostStats
from .driver import LeaderListener
from .errors import (
    GroupNotFoundError,
    HostError,
    HostStoppedError,
    NotLeaderError,
    NotWrittenError,
    OutcomeUnknownError,
    ProposalDroppedError,
)
from .group import ApplyCallback, SnapshotCallback
from .host import RaftHost
from .tickets import AppendTicket, ProposalTicket

__all__ = [
    "AppendTicket",
    "ApplyCallback",
    "GroupNotFoundError",
    "HostConfig",
    "HostError",
    "HostStats",
    "HostStoppedError",
    "LeaderListener",
    "NotLeaderError",
    "NotWrittenError",
    "OutcomeUnknownError",
    "ProposalDroppedError",
    "ProposalTicket",
    "RaftHost",
    "SnapshotCallback",
]
