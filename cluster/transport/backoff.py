"""Exponential reconnect backoff with jitter, driven by an injected RNG.

Jitter keeps the nodes of a cluster that lost a peer at the same moment
from redialling it in lockstep. The delay after the n-th failure in a row is
`min(max_ms, initial_ms * multiplier**n)` scaled by a random factor in
`[1 - jitter, 1]`; a connection that completes its handshake resets it.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(
        self,
        rng: random.Random,
        initial_ms: float,
        max_ms: float,
        multiplier: float = 2.0,
        jitter: float = 0.5,
    ) -> None:
        assert 0 < initial_ms <= max_ms
        assert multiplier >= 1.0 and 0.0 <= jitter <= 1.0
        self._rng = rng
        self._initial_ms = initial_ms
        self._max_ms = max_ms
        self._multiplier = multiplier
        self._jitter = jitter
        self.failures = 0

    def next_ms(self) -> float:
        """The delay before the next attempt, after one more failure."""
        # Cap the exponent so the float never overflows on a long outage.
        exponent = min(self.failures, 64)
        base_ms = min(self._max_ms, self._initial_ms * self._multiplier**exponent)
        self.failures += 1
        return base_ms * (1.0 - self._jitter * self._rng.random())

    def reset(self) -> None:
        self.failures = 0
