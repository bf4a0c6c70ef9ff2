"""AnswerOrder: which produce answers a stream may write next (server/produce_answers.py).

In order within a partition, not across partitions; a request spanning
partitions waits for all its parts and holds back the later requests of
each; the window of unanswered requests blocks the reader until the writer
catches up; the writer ends once the reader ended and every answer is out.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from weir.server.produce_answers import AnswerOrder

pytestmark = pytest.mark.timeout(10)


@dataclasses.dataclass(eq=False)
class Item:
    name: str
    futures: list[asyncio.Future[Any]]
    waiting: int = 0
    followers: list[Any] | None = None
    queued: bool = False

    def parts(self) -> list[asyncio.Future[Any]]:
        return self.futures


def ready_names(order: AnswerOrder) -> list[str]:
    taken: list[Any] = []
    order.take_ready(taken, 1000)
    for item in taken:
        order.written(item)
    return [item.name for item in taken]


def run(body: Any) -> None:
    asyncio.run(asyncio.wait_for(body(), 5))


def test_answers_keep_order_within_a_partition_not_across() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        order = AnswerOrder(100)
        a1, a2, b1 = (loop.create_future() for _ in range(3))
        order.add(Item("a1", [a1]), [("t", 0)])
        order.add(Item("a2", [a2]), [("t", 0)])
        order.add(Item("b1", [b1]), [("t", 1)])
        b1.set_result(0)
        a2.set_result(0)  # done before a1: still waits for it
        await asyncio.sleep(0)
        assert ready_names(order) == ["b1"]
        a1.set_result(0)
        await asyncio.sleep(0)
        assert ready_names(order) == ["a1", "a2"]
        assert order.unanswered == 0

    run(body)


def test_a_request_spanning_partitions_waits_for_all_and_holds_back_each() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        order = AnswerOrder(100)
        span_a, span_b, after_a, after_b = (loop.create_future() for _ in range(4))
        order.add(Item("span", [span_a, span_b]), [("t", 0), ("t", 1)])
        order.add(Item("after_a", [after_a]), [("t", 0)])
        order.add(Item("after_b", [after_b]), [("t", 1)])
        # Refused before it was placed, naming no partition: answered at once.
        order.add(Item("refused", []), [])
        after_a.set_result(0)
        after_b.set_result(0)
        span_a.set_result(0)
        await asyncio.sleep(0)
        assert ready_names(order) == ["refused"]
        span_b.set_exception(RuntimeError("failed part"))
        await asyncio.sleep(0)
        assert ready_names(order) == ["span", "after_a", "after_b"]

    run(body)


def test_the_window_blocks_the_reader_and_the_writer_ends_after_every_answer() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        order = AnswerOrder(2)
        futures = [loop.create_future() for _ in range(2)]
        for i, future in enumerate(futures):
            order.add(Item(f"r{i}", [future]), [("t", 0)])
        room = asyncio.ensure_future(order.room())
        await asyncio.sleep(0.01)
        assert not room.done()
        written: list[str] = []

        async def writer() -> None:
            while (item := await order.next()) is not None:
                written.append(item.name)  # type: ignore[attr-defined]
                order.written(item)

        writing = asyncio.ensure_future(writer())
        futures[0].set_result(0)
        await room
        order.end()
        await asyncio.sleep(0.01)
        assert not writing.done(), "one answer is still owed"
        futures[1].set_result(0)
        await writing
        assert written == ["r0", "r1"]

    run(body)
