"""A node's settings, with every limit named and in its unit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from weir.cluster.storage import Durability

KiB = 1024
MiB = 1024 * KiB
# What one record of a parsed ProduceRequest takes in memory beyond its
# bytes (measured: about 76 bytes for an empty record), so a request of many
# tiny records is charged to the node's budget for what it really holds.
PARSED_RECORD_BYTES = 96


@dataclasses.dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything `weir serve` can be told. Defaults suit one laptop."""

    data_dir: Path
    listen: str = "127.0.0.1:7070"
    # The address clients should use to reach this node (defaults to `listen`).
    advertised_address: str = ""
    node_id: int = 1
    durability: Durability = Durability.SYNC

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

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, int) and value <= 0:
                raise ValueError(f"{field.name} must be positive, not {value}")
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
