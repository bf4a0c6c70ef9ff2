"""Small helpers for tests that drive asyncio code in-process.

Every call is bounded: `run` gives the whole test a deadline and
`eventually` polls a predicate until it holds or its deadline passes.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable


def run(main: Callable[[], Awaitable[None]], timeout_s: float = 80) -> None:
    """Runs `main()` on a new event loop, failing after `timeout_s`."""

    async def bounded() -> None:
        async with asyncio.timeout(timeout_s):
            await main()

    asyncio.run(bounded())


async def eventually(
    predicate: Callable[[], bool], timeout_s: float = 20, interval_s: float = 0.01
) -> None:
    """Waits until `predicate()` holds; TimeoutError after `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        # Polling is the point: the predicates read state that nothing signals.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(interval_s)


def free_port() -> int:
    """A loopback port free right now (another process may take it before use)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
