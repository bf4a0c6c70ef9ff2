"""Bootstrap lists and node rotation: parsing, round robin, backoff between rounds, redirects."""

from __future__ import annotations

import random

import pytest

from weir._nodes import ADDRESSES_MAX, Nodes, parse_bootstrap
from weir._retry import Backoff

pytestmark = pytest.mark.timeout(10)

ABC = ["a:1", "b:2", "c:3"]


def nodes(addresses: list[str], seed: int = 0) -> Nodes:
    rng = random.Random(seed)
    return Nodes(addresses, backoff=Backoff(100, 1_000, jitter=0.0, rng=rng), rng=rng)


def test_bootstrap_forms() -> None:
    assert parse_bootstrap("a:1") == ["a:1"]
    assert parse_bootstrap("a:1, b:2,c:3") == ABC
    assert parse_bootstrap(("a:1", "b:2", "a:1")) == ["a:1", "b:2"]  # duplicates dropped
    assert parse_bootstrap(["[::1]:7070"]) == ["[::1]:7070"]


@pytest.mark.parametrize("bad", ["", "a", "a:1,,b:2", ":1", [], ["a:1", 5], b"a:1"])
def test_bad_bootstrap_is_a_value_error(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_bootstrap(bad)  # type: ignore[arg-type]


def test_bootstrap_list_is_bounded() -> None:
    with pytest.raises(ValueError):
        parse_bootstrap([f"h{i}:1" for i in range(ADDRESSES_MAX + 1)])


def test_start_is_random_from_the_injected_rng_and_reproducible() -> None:
    starts = {nodes(ABC, seed).current for seed in range(40)}
    assert starts == set(ABC)
    assert [nodes(ABC, 7).current for _ in range(3)] == [nodes(ABC, 7).current] * 3


def test_round_robin_moves_at_once_within_a_round_and_backs_off_after_it() -> None:
    n = nodes(ABC)
    start = ABC.index(n.current)
    visited = [n.current]
    delays = []
    for _ in range(6):
        delays.append(n.failed(n.current))
        visited.append(n.current)
    assert visited == [ABC[(start + i) % 3] for i in range(7)]
    # Immediate moves inside a round; 100 ms after the first full round,
    # 200 ms after the second (no jitter here).
    assert delays == [0.0, 0.0, 0.1, 0.0, 0.0, 0.2]
    assert n.rounds_failed == 2


def test_success_starts_a_fresh_round() -> None:
    n = nodes(ABC)
    n.failed(n.current)
    n.failed(n.current)
    n.succeeded(n.current)
    assert [n.failed(n.current) for _ in range(3)] == [0.0, 0.0, 0.1]


def test_a_late_report_about_a_node_already_left_changes_nothing() -> None:
    n = nodes(ABC)
    left = n.current
    n.failed(left)
    now = n.current
    assert n.failed(left) == 0.0
    n.succeeded(left)  # a late success from the old node does not reset the round
    assert n.current == now


def test_single_address_backs_off_on_every_failure() -> None:
    n = nodes(["a:1"])
    assert [n.failed("a:1") for _ in range(4)] == [0.1, 0.2, 0.4, 0.8]
    assert n.current == "a:1"


def test_redirect_learns_the_leader_and_counts_as_a_move() -> None:
    n = nodes(["a:1", "b:2"])
    assert n.redirect("leader:9") == 0.0
    assert n.current == "leader:9"
    assert n.addresses == ("a:1", "b:2", "leader:9")
    # Nodes naming each other in turn (an election): a full round of moves
    # without a success backs off like failures do.
    assert n.redirect("a:1") == 0.0
    assert n.redirect("leader:9") == 0.1


def test_learned_addresses_are_bounded_and_bootstrap_ones_stay() -> None:
    bootstrap = ["a:1", "b:2"]
    n = nodes(bootstrap)
    for i in range(ADDRESSES_MAX * 2):
        n.redirect(f"leader{i}:9")
        assert len(n.addresses) <= ADDRESSES_MAX
        assert n.current == f"leader{i}:9"
    assert n.addresses[:2] == tuple(bootstrap)
