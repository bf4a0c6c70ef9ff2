"""Retry delays: exponential backoff with jitter, from an injected RNG.

A seeded `random.Random` makes the schedule reproducible in tests; the
jitter keeps many clients that failed together from retrying together.
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delay before retry number `attempt` (1-based), in seconds.

    The nominal delay doubles from `base_ms` up to `max_ms`; the actual delay
    is drawn uniformly from [nominal * (1 - jitter), nominal * (1 + jitter)]
    and never exceeds `max_ms`.
    """

    def __init__(
        self,
        base_ms: int = 100,
        max_ms: int = 5_000,
        *,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        if base_ms < 0 or max_ms < base_ms:
            raise ValueError("need 0 <= base_ms <= max_ms")
        if not 0.0 <= jitter < 1.0:
            raise ValueError("jitter must be in [0, 1)")
        self.base_ms = base_ms
        self.max_ms = max_ms
        self.jitter = jitter
        self._rng = rng if rng is not None else random.Random()

    def delay_s(self, attempt: int) -> float:
        """Seconds to wait before retry `attempt` (1 for the first retry)."""
        if attempt < 1:
            raise ValueError("attempt starts at 1")
        nominal = min(self.max_ms, self.base_ms * (2 ** min(attempt - 1, 30)))
        low = nominal * (1.0 - self.jitter)
        high = nominal * (1.0 + self.jitter)
        return min(float(self.max_ms), self._rng.uniform(low, high)) / 1000.0
