"""Settings and counters of the peer transport. Every limit is named with its unit last."""

from __future__ import annotations

from dataclasses import dataclass

from weir.cluster.raft.types import NONE, NodeId

# Room a frame needs beyond its largest message: the frame and field headers.
_FRAME_SLACK_BYTES = 64 << 10


@dataclass(frozen=True, slots=True)
class TransportConfig:
    node_id: NodeId
    cluster_id: str
    # A frame collects queued messages until it would exceed this size; a
    # single larger message goes alone in its own frame.
    frame_bytes_max: int = 1 << 20
    # The largest single encoded message accepted by `send`. Raft's
    # `append_bytes_max` (1 MiB) keeps appends far below it, but one entry
    # may hold a record batch of several MiB, and snapshots carry state.
    message_bytes_max: int = 16 << 20
    # Per peer: messages waiting for the stream, bounded both ways. A full
    # queue drops (Raft retries); it never blocks the host.
    queue_bytes_max: int = 32 << 20
    queue_messages_max: int = 8192
    # Node-level liveness: a heartbeat goes out on a stream that sent
    # nothing for this long, and a peer not heard from for
    # `peer_dead_after_ms` is reported dead (checked every heartbeat
    # interval). A leader whose quorum's nodes are dead steps down then, the
    # only way a quiet leader ends (cluster/host/policy.py): 650 ms, plus a
    # check, plus a turn, ends it within the default election timeout (1 s),
    # while six heartbeats in a row must go missing first. A false "dead"
    # (a stalled event loop) costs a step-down and an election, never safety.
    heartbeat_interval_ms: int = 100
    peer_dead_after_ms: int = 650
    # Reconnect backoff (exponential, with jitter from the injected RNG).
    reconnect_initial_ms: int = 50
    reconnect_max_ms: int = 2000
    # Deadline for dialling a peer and exchanging Hellos.
    handshake_timeout_ms: int = 2000
    # A write that HTTP/2 flow control holds back longer than this (the
    # peer stopped reading) ends the stream; the queue drops meanwhile.
    write_timeout_ms: int = 5000
    # How long closing waits for the streams peers opened to us to end.
    close_timeout_ms: int = 2000

    def __post_init__(self) -> None:
        assert self.node_id != NONE, "node id 0 is reserved for 'nobody'"
        assert self.cluster_id, "a node must know its cluster id"
        assert 0 < self.frame_bytes_max <= self.message_bytes_max
        # A message that fits `send` must fit the queue, or it could never go.
        assert self.message_bytes_max <= self.queue_bytes_max
        assert self.queue_messages_max > 0
        assert 0 < self.heartbeat_interval_ms < self.peer_dead_after_ms
        assert 0 < self.reconnect_initial_ms <= self.reconnect_max_ms
        assert self.handshake_timeout_ms > 0 and self.write_timeout_ms > 0

    @property
    def grpc_message_bytes_max(self) -> int:
        """What `grpc.max_send_message_length` / `max_receive_message_length`
        must allow on both ends: the largest frame the transport writes."""
        return self.message_bytes_max + _FRAME_SLACK_BYTES


@dataclass(slots=True)
class PeerStats:
    """Counters for one peer. Sending-side counters describe our stream to it,
    receiving-side ones the streams it opened to us."""

    # Sending side.
    frames_sent: int = 0
    messages_sent: int = 0
    bytes_sent: int = 0
    heartbeats_sent: int = 0
    # Messages refused by `send` or discarded from the queue, by reason.
    drops_queue_full: int = 0
    drops_disconnected: int = 0
    drops_oversize: int = 0
    dropped_bytes: int = 0
    # Handshakes completed; every one after the first is a reconnect.
    connects: int = 0
    connect_failures: int = 0
    refusals: int = 0
    write_timeouts: int = 0
    queue_messages: int = 0
    queue_bytes: int = 0
    # Receiving side.
    frames_received: int = 0
    messages_received: int = 0
    bytes_received: int = 0
    heartbeats_received: int = 0
    # Incoming streams from this node that we closed for a bad frame.
    misbehaved: int = 0

    @property
    def reconnects(self) -> int:
        return max(0, self.connects - 1)

    @property
    def drops(self) -> int:
        return self.drops_queue_full + self.drops_disconnected + self.drops_oversize
