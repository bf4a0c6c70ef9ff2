"""The backoff schedule is exponential, jittered, capped, and reproducible from a seed."""

from __future__ import annotations

import random

import pytest

from weir._retry import Backoff

pytestmark = pytest.mark.timeout(10)


def test_same_seed_same_schedule() -> None:
    a = Backoff(100, 5_000, rng=random.Random(7))
    b = Backoff(100, 5_000, rng=random.Random(7))
    assert [a.delay_s(i) for i in range(1, 10)] == [b.delay_s(i) for i in range(1, 10)]


def test_schedule_doubles_within_jitter_and_caps() -> None:
    backoff = Backoff(100, 1_000, jitter=0.2, rng=random.Random(1))
    for attempt, nominal_ms in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (30, 1000)]:
        delay_ms = backoff.delay_s(attempt) * 1000
        assert nominal_ms * 0.8 <= delay_ms <= min(1000, nominal_ms * 1.2)


def test_no_jitter_is_exact() -> None:
    backoff = Backoff(50, 400, jitter=0.0, rng=random.Random(0))
    assert [backoff.delay_s(i) for i in range(1, 6)] == [0.05, 0.1, 0.2, 0.4, 0.4]


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Backoff(100, 50)
    with pytest.raises(ValueError):
        Backoff(100, 200, jitter=1.0)
    with pytest.raises(ValueError):
        Backoff().delay_s(0)
