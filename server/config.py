"""A node's settings, with every limit named and in its unit.

Addresses and cluster membership are checked here, once, so that `weir
serve`, the test harnesses and the deploy files all meet the same rules:
an address is HOST:PORT, node ids are distinct and at least 1, and a node
given founding peers is one of them.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from weir.cluster.storage import Durability

KiB = 1024
MiB = 1024 * KiB
# What one record of a parsed ProduceRequest takes in memory beyond its
# bytes (measured: about 76 bytes for an empty record), so a request of many
# tiny records is charged to the node's budget for what it really holds.
PARSED_RECORD_BYTES = 96

DEFAULT_CLUSTER_ID = "weir"
# A cluster id is a short name, checked in every peer handshake: letters,
# digits, '.', '_' and '-', starting with a letter or digit.
_CLUSTER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# HOST is a name, an IPv4 address or a bracketed IPv6 address.
_HOST = re.compile(r"\[[0-9A-Fa-f:.%a-zA-Z0-9]+\]|[A-Za-z0-9_][A-Za-z0-9_.-]*")
PORT_MAX = 65535

Peers = tuple[tuple[int, str], ...]


def check_address(address: str, what: str, *, port_zero_ok: bool = True) -> None:
    """Raises ValueError unless `address` is HOST:PORT (port 0 only where it may bind any)."""
    host, sep, port = address.rpartition(":")
    if not sep or not _HOST.fullmatch(host) or not port.isdecimal():
        raise ValueError(f"{what} must be HOST:PORT, not {address!r}")
    low = 0 if port_zero_ok else 1
    if not low <= int(port) <= PORT_MAX:
        raise ValueError(f"{what} port must be between {low} and {PORT_MAX}, not {port}")


def parse_peers(text: str) -> Peers:
    """Parses "1=HOST:PORT,2=HOST:PORT,..." (the founding members' peer addresses).

    The result is sorted by node id; an empty string means no peers (a single
    node). Membership (distinct ids, this node among them) is NodeConfig's check.
    """
    peers: list[tuple[int, str]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        node_id, sep, address = item.partition("=")
        node_id = node_id.strip()
        if not sep or not node_id.isdecimal():
            raise ValueError(
                f"peers must be ID=HOST:PORT entries separated by commas, not {item!r}"
            )
        address = address.strip()
        check_address(address, f"peer {node_id}'s address", port_zero_ok=False)
        peers.append((int(node_id), address))
    return tuple(sorted(peers))


def format_peers(peers: Peers) -> str:
    return ",".join(f"{node_id}={address}" for node_id, address in peers)


@dataclasses.dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything `weir serve` can be told. Defaults suit one laptop."""

    data_dir: Path
    listen: str = "127.0.0.1:7070"
    # The address clients should use to reach this node (defaults to `listen`).
    advertised_address: str = ""
    node_id: int = 1
    durability: Durability = Durability.SYNC
    # The founding members' peer addresses, this node's own included, sorted
    # by node id; the same on every node (like etcd's --initial-cluster).
    # Empty: this node runs alone.
    peers: Peers = ()
    # Where this node accepts other nodes' Raft traffic. Defaults to this
    # node's own entry in `peers`; unused (empty) without peers.
    peer_listen: str = ""
    # Every node of a cluster must be given the same id: the peer handshake
    # refuses a node of another cluster.
    cluster_id: str = DEFAULT_CLUSTER_ID
    # Coordinator groups (docs/groups.md): how many Raft groups hold consumer
    # groups' state. Used once, when the cluster is created (or first started
    # after an upgrade); the count in the controller's state is kept for
    # good, so later changes of this setting have no effect.
    coordinator_groups: int = 6

    # The largest gRPC message a client may send (one ProduceRequest).
    request_bytes_max: int = 8 * MiB
    # Default and ceiling of a topic's record_bytes_max. The ceiling stays
    # well under gRPC's default 4 MiB receive limit so that any generated
    # client can receive the largest record in one ConsumeResponse.
    record_bytes_max_default: int = 1 * MiB
    record_bytes_max_limit: int = 2 * MiB
    partitions_max: int = 1024
    topics_max: int = 10_000

    # Concurrent calls (streams) one client connection may have open.
    streams_per_connection_max: int = 1000
    # Node-wide: client connections open at once; more are closed at accept.
    connections_max: int = 128
    # Node-wide: calls (streams) open at once over all connections; more are
    # answered RESOURCE_EXHAUSTED. With the settings below this bounds the
    # node's memory: see weir.server.limits.rss_bound and docs/operations.md.
    calls_max: int = 256
    # HTTP/2 receive window of each stream: the request bytes the node
    # accepts ahead of a handler that is not reading. Fixed (gRPC's
    # bandwidth-delay probe, which grows it to 4-32 MiB, is off).
    stream_window_bytes: int = 64 * KiB
    # Node-wide: request and response bytes the broker itself holds at once,
    # over all calls (produce requests from read until durable, consume
    # responses above a small per-call floor while built and written). A
    # produce stream waits for room before it reads its next request, and a
    # consumer gets smaller responses, when it is spent. See
    # weir.server.limits and docs/operations.md.
    inflight_bytes_max: int = 256 * MiB
    # Produce: requests one stream may have waiting for durability. When
    # full, the broker stops reading that stream and HTTP/2 flow control
    # pushes back on the client. The record bytes themselves are bounded by
    # the storage writer's queue (storage_write_queue_bytes_max).
    produce_inflight_requests_max: int = 1024
    # Produce: records one request may hold. A request's cost (parse,
    # validation, memory while in flight) grows with its record count, and
    # 8 MiB of empty records would be 4 million; larger requests are refused
    # with TOO_MANY_RECORDS before they are parsed. The SDK's batches stay
    # under the default.
    produce_request_records_max: int = 100_000
    # Idempotent producers (docs/operations.md): a partition forgets a
    # producer that has not written to it for this long (by the leader's
    # clock), and remembers at most this many producers, forgetting the one
    # that wrote least recently first. The leader stamps both into each
    # idempotent batch, so every replica forgets alike; set them the same on
    # every node.
    producer_id_expiry_ms: int = 7 * 24 * 3600 * 1000
    producers_per_partition_max: int = 1_000
    # Consume: the most record bytes in one ConsumeResponse.
    consume_response_bytes_max: int = 1 * MiB
    # Credit a client may accumulate; more is clamped (the broker holds no
    # buffer for credit, so this only keeps the arithmetic sane).
    credit_messages_max: int = 1 << 31
    credit_bytes_max: int = 1 << 40

    storage_map_size_bytes: int = 64 * 1024 * MiB
    storage_write_queue_bytes_max: int = 64 * MiB
    storage_txn_bytes_max: int = 16 * MiB
    retention_check_interval_ms: int = 5_000
    # How long SIGTERM waits for in-flight calls before cancelling them.
    shutdown_grace_ms: int = 10_000

    # HTTP/2 keepalive (weir.server.limits.grpc_options, docs/operations.md).
    # A client may ping every keepalive_client_ping_interval_ms_min or less
    # often, with or without calls open; a ping sooner than that after the
    # previous one is a strike, and one strike more than
    # keepalive_client_ping_strikes_max while the node has sent no data
    # closes the connection with GOAWAY ENHANCE_YOUR_CALM "too_many_pings".
    keepalive_client_ping_interval_ms_min: int = 5_000
    keepalive_client_ping_strikes_max: int = 2
    # The node's own pings on every connection, so that the calls of a client
    # that vanished without closing its connection end (and free their share
    # of calls_max and the budget) within interval + timeout.
    keepalive_ping_interval_ms: int = 60_000
    keepalive_ping_timeout_ms: int = 20_000

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, int) and value <= 0:
                raise ValueError(f"{field.name} must be positive, not {value}")
        self._check_addresses()
        self._check_membership()
        if self.record_bytes_max_default > self.record_bytes_max_limit:
            raise ValueError("record_bytes_max_default exceeds record_bytes_max_limit")
        # A request carries at least one record plus its framing.
        if self.record_bytes_max_limit + 64 * KiB > self.request_bytes_max:
            raise ValueError(
                "record_bytes_max_limit must leave 64 KiB of room under request_bytes_max"
            )
        if self.storage_txn_bytes_max > self.storage_write_queue_bytes_max:
            raise ValueError("storage_txn_bytes_max exceeds storage_write_queue_bytes_max")
        if self.request_bytes_max > self.storage_write_queue_bytes_max:
            raise ValueError("request_bytes_max exceeds storage_write_queue_bytes_max")
        # HTTP/2 allows windows up to 2^31-1; C-core advertises none below 1 KiB.
        if not 1 * KiB <= self.stream_window_bytes <= self.request_bytes_max:
            raise ValueError("stream_window_bytes must be between 1 KiB and request_bytes_max")
        # Half the budget is the most consume responses may hold (clients
        # that stop reading keep theirs), and the largest request, as parsed,
        # must fit in the other half, or a producer could wait for room that
        # never comes.
        request_held_bytes_max = (
            self.request_bytes_max + self.produce_request_records_max * PARSED_RECORD_BYTES
        )
        if self.inflight_bytes_max < 2 * max(
            request_held_bytes_max, self.consume_response_bytes_max
        ):
            raise ValueError(
                "inflight_bytes_max must be at least twice the largest request as parsed "
                f"(request_bytes_max + produce_request_records_max x {PARSED_RECORD_BYTES} B)"
                " and twice consume_response_bytes_max"
            )

    def _check_addresses(self) -> None:
        check_address(self.listen, "listen")
        if self.advertised_address:
            check_address(self.advertised_address, "advertised address", port_zero_ok=False)
        if not _CLUSTER_ID.fullmatch(self.cluster_id):
            raise ValueError(
                f"cluster id must be 1-63 letters, digits, '.', '_' or '-', not {self.cluster_id!r}"
            )

    def _check_membership(self) -> None:
        ids = [node_id for node_id, _ in self.peers]
        if not self.peers:
            if self.peer_listen:
                raise ValueError("peer listen address given without peers")
            return
        for node_id, address in self.peers:
            if node_id < 1:
                raise ValueError(f"peer ids must be at least 1, not {node_id}")
            check_address(address, f"peer {node_id}'s address", port_zero_ok=False)
        if len(set(ids)) != len(ids):
            duplicates = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"peer ids must be distinct: {duplicates} appear twice")
        if list(self.peers) != sorted(self.peers):
            raise ValueError("peers must be sorted by node id (parse_peers sorts them)")
        if self.node_id not in ids:
            raise ValueError(f"node id {self.node_id} is not among the peers {ids}")
        if not self.peer_listen:
            # A frozen dataclass: this default is derived, so set it once here.
            object.__setattr__(self, "peer_listen", dict(self.peers)[self.node_id])
        check_address(self.peer_listen, "peer listen address")
        if self.peer_listen == self.listen:
            raise ValueError(f"peer listen address and listen are both {self.listen}")

    @property
    def clustered(self) -> bool:
        """Whether this node was given founding peers (else it runs alone)."""
        return bool(self.peers)
