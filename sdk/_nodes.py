"""Which node a client talks to: its bootstrap addresses and the moves between them.

A client is given one address or several (a sequence, or one string with
commas). It talks to one node at a time; when that node fails (a failed
connect, a dead connection, UNAVAILABLE) it moves to the next address, round
robin from a random start, so that many clients started together spread over
the nodes. Moves within a round are immediate: the next node is probably
fine. After a full round without a success the client waits, with an
exponential backoff and jitter, so that a cluster that is down is not
hammered. A NOT_LEADER answer that names the leader moves the client to that
address, adding it to the known addresses if it is new.

This module is bookkeeping only, without I/O, clock or global randomness, so
rotations and backoffs are unit-tested from a seed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from weir._retry import Backoff

__all__ = ["ADDRESSES_MAX", "Bootstrap", "Nodes", "parse_bootstrap"]

# Bound on the addresses a client knows: the bootstrap list plus leaders it
# was sent to. A cluster is a handful of nodes; 64 leaves plenty of room.
ADDRESSES_MAX = 64

Bootstrap = str | Sequence[str]


def parse_bootstrap(bootstrap: Bootstrap) -> list[str]:
    """The addresses of `bootstrap`, in order, without duplicates.

    Accepts "host:port", "host1:port1,host2:port2" or a sequence of
    "host:port" strings; raises ValueError for anything else.
    """
    if isinstance(bootstrap, str):
        parts: Sequence[str] = bootstrap.split(",")
    elif isinstance(bootstrap, Sequence) and all(isinstance(p, str) for p in bootstrap):
        parts = bootstrap
    else:
        raise ValueError(
            f"bootstrap must be 'host:port', a comma-separated list of them, or a "
            f"sequence of them; got {bootstrap!r}"
        )
    addresses: list[str] = []
    for part in parts:
        address = part.strip()
        if not address or ":" not in address or address.startswith(":"):
            raise ValueError(f"bootstrap addresses must be 'host:port', got {part!r}")
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise ValueError("bootstrap needs at least one 'host:port'")
    if len(addresses) > ADDRESSES_MAX:
        raise ValueError(f"at most {ADDRESSES_MAX} bootstrap addresses, got {len(addresses)}")
    return addresses


class Nodes:
    """The known addresses, the current one, and how long to wait before using it.

    `failed()` and `redirect()` return the seconds to wait before the new
    current node is tried: 0 within a round, a backoff after every full
    round of moves without a `succeeded()` in between.
    """

    def __init__(self, addresses: Sequence[str], *, backoff: Backoff, rng: random.Random) -> None:
        assert addresses, "parse_bootstrap refuses an empty list"
        assert len(addresses) <= ADDRESSES_MAX
        self._addresses = list(addresses)
        self._bootstrap_count = len(self._addresses)
        self._index = rng.randrange(len(self._addresses))
        self._backoff = backoff
        # Moves since the last success, and full rounds among them.
        self._moves = 0
        self.rounds_failed = 0

    @property
    def current(self) -> str:
        """The address the client uses now."""
        return self._addresses[self._index]

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every known address: the bootstrap list, then learned leaders."""
        return tuple(self._addresses)

    def failed(self, address: str) -> float:
        """The node at `address` failed: move to the next address.

        A failure reported for an address the client already left (another
        call on the same client saw it first) changes nothing.
        """
        if address != self.current:
            return 0.0
        self._index = (self._index + 1) % len(self._addresses)
        return self._moved()

    def redirect(self, address: str) -> float:
        """Move to `address` (a leader the broker named), learning it if new."""
        if address not in self._addresses:
            if len(self._addresses) >= ADDRESSES_MAX:
                self._forget_one_learned()
            if len(self._addresses) >= ADDRESSES_MAX:
                # No room (every address is a bootstrap one): go round robin.
                return self.failed(self.current)
            self._addresses.append(address)
        self._index = self._addresses.index(address)
        # A redirect counts as a move, so that nodes naming each other as
        # leader (an election under way) back off after a round as well.
        return self._moved()

    def succeeded(self, address: str) -> None:
        """The node at `address` served a request: the next failure starts a fresh round."""
        if address == self.current:
            self._moves = 0
            self.rounds_failed = 0

    def _moved(self) -> float:
        self._moves += 1
        if self._moves < len(self._addresses):
            return 0.0
        self._moves = 0
        self.rounds_failed += 1
        return self._backoff.delay_s(self.rounds_failed)

    def _forget_one_learned(self) -> None:
        """Drop the oldest learned address that is not current (bootstrap ones stay)."""
        current = self.current
        for i in range(self._bootstrap_count, len(self._addresses)):
            if self._addresses[i] != current:
                del self._addresses[i]
                self._index = self._addresses.index(current)
                return
