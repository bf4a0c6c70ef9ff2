"""LeaderGuesses: where a node with no replica of a partition forwards its produce work."""

from __future__ import annotations

import asyncio

import pytest

from weir.server.errors import BrokerError, not_leader, outcome_unknown
from weir.server.produce_forward import LeaderGuesses

pytestmark = pytest.mark.timeout(10)

REPLICAS = (3, 1, 2)


def answered(guesses: LeaderGuesses, asked: int, result: int | BrokerError) -> None:
    """A forward of group 7 to `asked` answered with `result`."""
    loop = asyncio.new_event_loop()
    try:
        future: asyncio.Future[int] = loop.create_future()
        if isinstance(result, BrokerError):
            future.set_exception(result)
        else:
            future.set_result(result)
        guesses.answered(7, asked, REPLICAS, future)
    finally:
        loop.close()


def test_the_preferred_leader_is_tried_first_then_the_others_in_placement_order() -> None:
    assert LeaderGuesses().order(7, REPLICAS) == [3, 1, 2]


def test_a_not_leader_answer_naming_the_leader_makes_it_the_guess() -> None:
    guesses = LeaderGuesses()
    answered(guesses, 3, not_leader("t", 0, 2, "b:2"))
    assert guesses.order(7, REPLICAS) == [2, 3, 1]


def test_an_answer_in_the_name_of_the_node_asked_moves_the_guess_on() -> None:
    guesses = LeaderGuesses()
    answered(guesses, 3, not_leader("t", 0, 3, "b:3"))  # its link could not send
    assert guesses.order(7, REPLICAS)[0] == 1
    guesses.unreachable(7, 2, REPLICAS)  # the last wraps around to the first
    assert guesses.order(7, REPLICAS)[0] == 3


def test_a_written_answer_confirms_the_guess_and_other_errors_change_nothing() -> None:
    guesses = LeaderGuesses()
    answered(guesses, 1, 5)
    answered(guesses, 1, outcome_unknown("t", 0, "deadline passed"))
    answered(guesses, 1, not_leader("t", 0, 0, ""))  # an election: no news
    assert guesses.order(7, REPLICAS) == [1, 3, 2]


def test_a_guess_that_is_no_replica_any_more_is_ignored_and_the_table_is_bounded() -> None:
    guesses = LeaderGuesses(entries_max=2)
    guesses.heard(7, 9)
    assert guesses.order(7, REPLICAS) == [3, 1, 2]
    guesses.heard(8, 1)
    guesses.heard(9, 2)  # a third group: the table starts over
    assert guesses.order(7, REPLICAS) == [3, 1, 2]
    assert guesses.order(9, REPLICAS) == [2, 3, 1]
