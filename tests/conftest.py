"""Fixtures shared by every kind of test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker_process import BrokerProcess

# Three-process clusters for integration tests (tests/support/cluster_process.py).
from tests.support.cluster_process import (  # noqa: F401 (fixtures)
    cluster_fixture,
    make_cluster_fixture,
    proxied_cluster_fixture,
)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A real `weir serve` on a free loopback port, with its data in tmp_path."""
    process = BrokerProcess(tmp_path / "data").start()
    try:
        yield process
    finally:
        process.stop()
