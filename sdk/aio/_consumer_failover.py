"""The asyncio consumer's failover: which node to subscribe on next, and when to give up.

A reconnect goes to the next node of the bootstrap list (or to the leader a
NOT_LEADER error names), at once within a round of the addresses and after
a backoff once every node failed. Every retriable error moves on, up to
`reconnect_attempts` per known address in a row; a received batch or
assignment starts the count again.

A consumer group's coordinator without a leader (`NOT_COORDINATOR`), or a
partition leader the serving node's relay cannot reach (`RELAY_FAILED`,
`RELAY_ENDED`: a node died and its successor is not elected yet), is a
wait, not a failed node (`weir._failover.ElectionWait`): those answers use
no attempt; they are retried for as long as `coordinator_wait_timeout_s`
allows, counted from the first of them since the last success (a subscribe
answered, a batch or an assignment received).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from weir._failover import ELECTION_WAIT_REASONS, Connection, ElectionWait
from weir.errors import UnavailableError, WeirError


class Failover:
    """Counts failed subscribe attempts in a row and moves the connection on after each."""

    def __init__(
        self,
        conn: Connection,
        reconnect_attempts: int,
        *,
        coordinator_wait_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._conn = conn
        self._reconnect_attempts = reconnect_attempts
        self.coordinator_wait = ElectionWait(coordinator_wait_timeout_s, clock)
        self.failures = 0

    def succeeded(self, address: str) -> None:
        """A batch or an assignment arrived from `address`: the counts start again."""
        self.coordinator_wait.reset()
        if self.failures:
            self.failures = 0
            self._conn.succeeded(address)

    async def move_on(self, address: str, error: WeirError) -> None:
        """Leave the node at `address` after `error`, or raise it if that is not allowed.

        Every retriable error moves: a stream that died or a subscribe that
        failed on one node is worth trying on the next.
        """
        if not error.retriable:
            raise error
        if error.reason in ELECTION_WAIT_REASONS:
            remaining_s = self.coordinator_wait.remaining_s()
            if remaining_s <= 0:
                raise error
            delay_s = min(self._conn.leave(address, error), remaining_s)
        else:
            if self.failures >= self._reconnect_attempts * self._conn.address_count:
                raise error
            self.failures += 1
            delay_s = self._conn.leave(address, error)
        await asyncio.sleep(delay_s)

    async def subscribe(self, subscribe: Callable[[str], Awaitable[None]]) -> None:
        """Subscribe on the node in use, moving on through the nodes after retriable failures."""
        while True:
            address = self._conn.address
            try:
                if not await self._conn.connect():
                    raise UnavailableError(f"cannot connect to {address}")
                await subscribe(address)
            except WeirError as exc:
                await self.move_on(address, exc)
            else:
                # A group's subscribe was answered by its coordinator: a later
                # wait for one is a new wait.
                self.coordinator_wait.reset()
                return
