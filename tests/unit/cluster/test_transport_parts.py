"""The transport's pure parts: the bounded send queue, backoff and liveness."""

from __future__ import annotations

import random

import pytest

from weir.cluster.transport.backoff import Backoff
from weir.cluster.transport.config import TransportConfig
from weir.cluster.transport.liveness import Liveness
from weir.cluster.transport.queue import SendQueue

pytestmark = pytest.mark.timeout(10)


def test_queue_refuses_past_its_byte_bound() -> None:
    q = SendQueue(bytes_max=100, messages_max=10)
    assert q.put(b"a" * 60)
    assert not q.put(b"b" * 41)
    assert q.put(b"c" * 40)
    assert (len(q), q.bytes) == (2, 100)
    assert not q.put(b"d")


def test_queue_refuses_past_its_message_bound() -> None:
    q = SendQueue(bytes_max=1000, messages_max=3)
    assert all(q.put(b"x") for _ in range(3))
    assert not q.put(b"x")
    assert q.take(1000) == [b"x"] * 3
    assert q.put(b"x")


def test_take_fills_a_frame_in_order_and_takes_a_large_part_alone() -> None:
    q = SendQueue(bytes_max=10_000, messages_max=100)
    parts = [bytes([i]) * size for i, size in enumerate([30, 30, 30, 500, 10, 10])]
    for p in parts:
        assert q.put(p)
    assert q.take(100) == parts[:3]
    assert q.take(100) == [parts[3]]  # over the frame bound, but alone
    assert q.take(100) == parts[4:]
    assert q.take(100) == []
    assert (len(q), q.bytes) == (0, 0)


def test_clear_reports_what_it_dropped() -> None:
    q = SendQueue(bytes_max=100, messages_max=10)
    q.put(b"ab")
    q.put(b"cde")
    assert q.clear() == (2, 5)
    assert q.bytes == 0 and len(q) == 0


def test_backoff_grows_exponentially_within_jitter_and_caps() -> None:
    b = Backoff(random.Random(1), initial_ms=50, max_ms=2000)
    delays = [b.next_ms() for _ in range(12)]
    for n, delay in enumerate(delays):
        base = min(2000, 50 * 2**n)
        assert base / 2 <= delay <= base
    assert max(delays) <= 2000
    b.reset()
    assert b.next_ms() <= 50


def test_backoff_is_reproducible_from_the_seed_and_jittered() -> None:
    a, b = Backoff(random.Random(7), 50, 2000), Backoff(random.Random(7), 50, 2000)
    assert [a.next_ms() for _ in range(10)] == [b.next_ms() for _ in range(10)]
    many = Backoff(random.Random(3), 50, 2000)
    first = []
    for _ in range(20):
        many.reset()
        first.append(many.next_ms())
    assert len(set(first)) > 1  # jitter: nodes do not redial in lockstep


def test_backoff_survives_a_long_outage() -> None:
    b = Backoff(random.Random(0), 50, 2000)
    for _ in range(10_000):
        assert b.next_ms() <= 2000


def test_liveness_flips_on_heard_and_on_silence() -> None:
    live = Liveness(dead_after_ms=1000)
    assert not live.alive(2)
    assert live.heard(2, now_ms=0)
    assert not live.heard(2, now_ms=500)  # already alive: no change to report
    assert live.expire(now_ms=1499) == []
    assert live.expire(now_ms=1500) == [2]
    assert not live.alive(2)
    assert live.expire(now_ms=5000) == []  # reported once
    assert live.heard(2, now_ms=5000)


def test_liveness_judges_nobody_in_a_round_after_its_own_loop_stalled() -> None:
    # A loop held up for 900 ms must not report a peer dead whose frames are
    # waiting unread; the next round, 100 ms later, judges on fresh reads.
    live = Liveness(dead_after_ms=650, stalled_after_ms=200)
    live.heard(2, now_ms=0)
    live.heard(3, now_ms=0)
    assert live.expire(now_ms=100) == []
    assert live.expire(now_ms=1000) == []  # 900 ms since the last round: a stall
    assert live.stalls == 1
    live.heard(2, now_ms=1050)  # its queued frames are read after the stall
    assert live.expire(now_ms=1100) == [3]  # node 3 really is silent
    assert live.alive(2)


def test_liveness_forgets_removed_peers() -> None:
    live = Liveness(dead_after_ms=100)
    live.heard(3, 0)
    assert live.forget(3)
    assert not live.forget(3)
    assert live.expire(1000) == []


def test_config_refuses_bounds_that_could_never_send() -> None:
    TransportConfig(node_id=1, cluster_id="c")
    with pytest.raises(AssertionError):
        TransportConfig(node_id=0, cluster_id="c")
    with pytest.raises(AssertionError):
        TransportConfig(
            node_id=1, cluster_id="c", message_bytes_max=1 << 20, queue_bytes_max=1 << 10
        )
    with pytest.raises(AssertionError):
        TransportConfig(
            node_id=1, cluster_id="c", heartbeat_interval_ms=500, peer_dead_after_ms=500
        )
