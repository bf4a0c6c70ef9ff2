"""The peer transport: Raft messages of every group between the nodes of a cluster.

One long-lived bidirectional gRPC stream from each node to each peer
(`weir.cluster.v1.PeerService/Exchange`), frames that batch (group id, Raft
message) pairs, bounded send queues that drop instead of blocking, one
heartbeat per peer for node liveness, reconnects with jittered exponential
backoff. Start at `transport.py`; docs/cluster.md describes the wire format
and the bounds.
"""

from .codec import GroupId, message_from_proto, message_to_proto
from .config import PeerStats, TransportConfig
from .errors import PeerMisbehavedError, PeerRefusedError, PeerUnreachableError, TransportError
from .service import add_peer_service, server_options
from .transport import LivenessListener, PeerTransport, ReceiveCallback, TransportStats

__all__ = [
    "GroupId",
    "LivenessListener",
    "PeerMisbehavedError",
    "PeerRefusedError",
    "PeerStats",
    "PeerTransport",
    "PeerUnreachableError",
    "ReceiveCallback",
    "TransportConfig",
    "TransportError",
    "TransportStats",
    "add_peer_service",
    "message_from_proto",
    "message_to_proto",
    "server_options",
]
