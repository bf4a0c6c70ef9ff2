"""The node's HTTP/2 keepalive policy reaches gRPC as its settings say (docs/operations.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from weir.server.config import NodeConfig
from weir.server.limits import grpc_options

pytestmark = [pytest.mark.timeout(10)]


def test_defaults_are_the_documented_policy() -> None:
    options = dict(grpc_options(NodeConfig(data_dir=Path("."))))
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 5_000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.http2.max_ping_strikes"] == 2
    assert options["grpc.keepalive_time_ms"] == 60_000
    assert options["grpc.keepalive_timeout_ms"] == 20_000
    # The node's own pings go on while no data flows (gRPC stops after two).
    assert options["grpc.http2.max_pings_without_data"] == 0


def test_settings_reach_grpc() -> None:
    config = NodeConfig(
        data_dir=Path("."),
        keepalive_client_ping_interval_ms_min=60_000,
        keepalive_client_ping_strikes_max=1,
        keepalive_ping_interval_ms=10_000,
        keepalive_ping_timeout_ms=3_000,
    )
    options = dict(grpc_options(config))
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 60_000
    assert options["grpc.http2.max_ping_strikes"] == 1
    assert options["grpc.keepalive_time_ms"] == 10_000
    assert options["grpc.keepalive_timeout_ms"] == 3_000
