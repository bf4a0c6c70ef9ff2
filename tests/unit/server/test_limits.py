"""MemoryBudget and Lease: FIFO grants, cancellation, shrink, close, shares, sizes; the config rule."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from weir.server.config import PARSED_RECORD_BYTES, MiB, NodeConfig
from weir.server.limits import (
    BudgetExceededError,
    MemoryBudget,
    request_held_bytes_max,
    rss_bound,
)

pytestmark = pytest.mark.timeout(10)


def in_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Runs an async test in a fresh event loop (the suite has no async plugin)."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


async def settle() -> None:
    """Let every ready callback and task run (a few loop turns)."""
    for _ in range(5):
        await asyncio.sleep(0)


@in_loop
async def test_waiters_are_granted_in_arrival_order() -> None:
    budget = MemoryBudget(100)
    held = await budget.acquire(100)
    order: list[str] = []

    async def take(name: str, nbytes: int) -> None:
        lease = await budget.acquire(nbytes)
        order.append(name)
        lease.close()

    large = asyncio.create_task(take("large", 80))
    await settle()
    small = asyncio.create_task(take("small", 10))
    await settle()
    # 30 bytes free: enough for the small request, but the large one came
    # first and must not be overtaken.
    held.shrink(70)
    await settle()
    assert order == [] and budget.stats().waiting == 2
    assert budget.try_acquire(1) is None, "try_acquire must not overtake waiters either"
    held.close()
    await asyncio.gather(large, small)
    assert order == ["large", "small"]
    stats = budget.stats()
    assert stats.used_bytes == 0 and stats.peak_bytes == 100 and stats.waits == 2


@in_loop
async def test_cancelled_waiter_leaves_the_budget_unchanged_and_wakes_the_next() -> None:
    budget = MemoryBudget(100)
    held = await budget.acquire(60)
    blocked = asyncio.create_task(budget.acquire(90))
    await settle()
    behind = asyncio.create_task(budget.acquire(30))
    await settle()
    assert not behind.done(), "FIFO: the 30 bytes wait behind the 90"
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    # Once the head is gone, the request behind it fits at once.
    lease = await asyncio.wait_for(behind, 5)
    assert budget.used_bytes == 90
    lease.close()
    held.close()
    assert budget.used_bytes == 0 and budget.stats().waiting == 0


@in_loop
async def test_cancelled_in_the_turn_it_was_granted_gives_the_bytes_back() -> None:
    budget = MemoryBudget(100)
    held = await budget.acquire(100)
    waiter = asyncio.create_task(budget.acquire(50))
    await settle()
    held.close()  # grants the waiter ...
    waiter.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert budget.used_bytes == 0


@in_loop
async def test_shrink_returns_part_and_close_the_rest_once() -> None:
    budget = MemoryBudget(100)
    lease = await budget.acquire(80)
    waiter = asyncio.create_task(budget.acquire(50))
    await settle()
    lease.shrink(50)
    assert (await asyncio.wait_for(waiter, 5)).nbytes == 50
    assert budget.used_bytes == 100
    lease.close()
    lease.close()  # harmless: nothing left to give back
    assert budget.used_bytes == 50 and lease.nbytes == 0
    with pytest.raises(AssertionError):
        lease.shrink(1)  # a lease cannot grow


@in_loop
async def test_lease_as_context_manager_closes_on_error() -> None:
    budget = MemoryBudget(10)
    with pytest.raises(RuntimeError):
        async with await budget.acquire(7):
            assert budget.used_bytes == 7
            raise RuntimeError
    assert budget.used_bytes == 0


@in_loop
async def test_over_size_requests_fail_at_once() -> None:
    budget = MemoryBudget(100)
    with pytest.raises(BudgetExceededError):
        await budget.acquire(101)
    with pytest.raises(BudgetExceededError):
        budget.try_acquire(101)
    assert budget.used_bytes == 0 and budget.stats().waiting == 0
    with pytest.raises(ValueError):
        MemoryBudget(0)


@in_loop
async def test_try_acquire_most_grants_what_is_free() -> None:
    budget = MemoryBudget(100)
    held = await budget.acquire(70)
    lease = budget.try_acquire_most(50)
    assert lease is not None and lease.nbytes == 30
    assert budget.try_acquire_most(1) is None
    assert budget.stats().short_grants == 2
    lease.close()
    held.close()


@in_loop
async def test_a_share_caps_its_users_and_the_parent_counts_every_byte() -> None:
    node = MemoryBudget(100)
    share = node.share(50)
    first = share.try_acquire_most(80)
    assert first is not None and first.nbytes == 50
    assert node.used_bytes == 50 and share.try_acquire_most(1) is None
    # Producers still have the other half.
    producer = node.try_acquire(50)
    assert producer is not None
    first.close()
    assert node.used_bytes == 50 and share.used_bytes == 0
    # The parent's own waiters go before the share's.
    parent_waiter = asyncio.create_task(node.acquire(80))
    await settle()
    assert share.try_acquire_most(10) is None
    share_waiter = asyncio.create_task(share.acquire(30))
    await settle()
    producer.close()
    parent_lease = await asyncio.wait_for(parent_waiter, 5)
    await settle()
    assert not share_waiter.done(), "20 bytes are free, the share's waiter needs 30"
    parent_lease.close()  # a release of the parent wakes the share's waiter
    share_lease = await asyncio.wait_for(share_waiter, 5)
    assert node.used_bytes == 30 and share.used_bytes == 30
    share_lease.close()
    assert node.used_bytes == 0 and node.stats().peak_bytes == 100
    with pytest.raises(ValueError):
        node.share(101)


@in_loop
async def test_peak_never_exceeds_the_budget_under_churn() -> None:
    budget = MemoryBudget(1000)
    share = budget.share(500)

    async def worker(seed: int) -> None:
        for i in range(50):
            nbytes = (seed * 37 + i * 11) % 400 + 1
            if i % 3:
                async with await budget.acquire(nbytes):
                    await asyncio.sleep(0)
            else:
                lease = share.try_acquire_most(nbytes)
                await asyncio.sleep(0)
                if lease is not None:
                    lease.close()

    await asyncio.gather(*(worker(seed) for seed in range(20)))
    stats = budget.stats()
    assert stats.used_bytes == 0 and share.used_bytes == 0
    assert 0 < stats.peak_bytes <= 1000 and share.stats().peak_bytes <= 500
    assert stats.waits > 0


def test_config_keeps_the_largest_request_under_half_the_budget(tmp_path: Path) -> None:
    config = NodeConfig(data_dir=tmp_path)
    assert 2 * request_held_bytes_max(config) <= config.inflight_bytes_max
    with pytest.raises(ValueError, match="inflight_bytes_max"):
        NodeConfig(data_dir=tmp_path, inflight_bytes_max=16 * MiB)
    smallest = 2 * (8 * MiB + 100_000 * PARSED_RECORD_BYTES)
    NodeConfig(data_dir=tmp_path, inflight_bytes_max=smallest)


def test_rss_bound_counts_the_budget_once_per_copy(tmp_path: Path) -> None:
    small = rss_bound(NodeConfig(data_dir=tmp_path, inflight_bytes_max=64 * MiB))
    large = rss_bound(NodeConfig(data_dir=tmp_path, inflight_bytes_max=128 * MiB))
    assert large.total_bytes - small.total_bytes == 2 * 64 * MiB
    assert small.calls_bytes == large.calls_bytes
