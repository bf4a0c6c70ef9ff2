"""Fixtures shared by every kind of test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker_process import LAUNCHED, BrokerProcess

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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's report ends with the output of every node it could see.

    A CI failure is usually read from that report alone: without the nodes'
    warnings and tracebacks, a hang says nothing about which node stalled.
    """
    del item, call
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed:
        return
    for process in sorted(LAUNCHED, key=lambda p: p.pid):
        report.sections.append(
            (
                f"weir serve pid {process.pid} at {process.address} ({process.state()})",
                process.output() or "(no output)",
            )
        )
