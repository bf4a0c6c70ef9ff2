"""The asyncio consumer's failover: which node to subscribe on next, and when to give up.

A reconnect goes to the next node of the bootstrap list (or to the leader a
NOT_LEADER error names), at once within a round of the addresses and after
a backoff once every node failed. Every retriable error moves on, up to
`reconnect_attempts` per known address in a row; a received batch starts
the count again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from weir._failover import Connection
from weir.errors import UnavailableError, WeirError


class Failover:
    """Counts failed subscribe attempts in a row and moves the connection on after each."""

    def __init__(self, conn: Connection, reconnect_attempts: int) -> None:
        self._conn = conn
        self._reconnect_attempts = reconnect_attempts
        self.failures = 0

    def succeeded(self, address: str) -> None:
        """A batch arrived from `address`: the count of failures starts again."""
        if self.failures:
            self.failures = 0
            self._conn.succeeded(address)

    async def move_on(self, address: str, error: WeirError) -> None:
        """Leave the node at `address` after `error`, or raise it if that is not allowed.

        Every retriable error moves: a stream that died or a subscribe that
        failed on one node is worth trying on the next.
        """
        attempts_max = self._reconnect_attempts * self._conn.address_count
        if not error.retriable or self.failures >= attempts_max:
            raise error
        self.failures += 1
        await asyncio.sleep(self._conn.leave(address, error))

    async def subscribe(self, subscribe: Callable[[str], Awaitable[None]]) -> None:
        """Subscribe on the node in use, moving on through the nodes after retriable failures."""
        while True:
            address = self._conn.address
            try:
                if not await self._conn.connect():
                    raise UnavailableError(f"cannot connect to {address}")
                await subscribe(address)
                return
            except WeirError as exc:
                await self.move_on(address, exc)
