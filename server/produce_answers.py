"""Which produce answers a stream may write next: in order within a partition, not across.

A produce stream carries requests for many partitions, and a partition in
an election (or led by a stalled node) must not hold back the answers for
the others (DESIGN §4 "Answers per partition"). Each request is answered as
soon as every part of it is done (appended and durable or committed as its
acks ask, forwarded and answered, or failed) and every earlier request on
the stream that touched one of its partitions has been answered. A routed
request that spans several partitions therefore waits for all of them, and
the requests after it on each of those partitions wait for it.

A request's partitions are those its parts went to; one refused before it
was placed counts under the partition it named (if any), so an idempotent
producer's refused batch is not answered before the batches it followed.

Readiness is tracked with counters moved by done-callbacks on the parts'
futures, not with a task per request: `ready` answers queue up in the order
they became writable and the stream's one writer takes them from there.
"""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import Iterable
from typing import Protocol

# (topic, partition): the unit whose answers keep their order.
Key = tuple[str, int]


class Answer(Protocol):
    """What the order tracks: a request's pending answer (produce.py `_Pending`)."""

    waiting: int
    followers: list[Answer] | None
    queued: bool

    def parts(self) -> Iterable[asyncio.Future[object]]: ...


class AnswerOrder:
    """One stream's unanswered requests, and which of them may be written now."""

    def __init__(self, unanswered_max: int) -> None:
        assert unanswered_max > 0
        self._unanswered_max = unanswered_max
        self.unanswered = 0
        self._last: dict[Key, Answer] = {}
        self._ready: collections.deque[Answer] = collections.deque()
        self._ready_event = asyncio.Event()
        self._room = asyncio.Event()
        self._ended = False

    def add(self, answer: Answer, keys: Iterable[Key]) -> None:
        """A request was accepted (in arrival order); `keys`: the partitions it touched."""
        self.unanswered += 1
        waiting = 0
        for key in keys:
            before = self._last.get(key)
            if before is not None and not before.queued:
                if before.followers is None:
                    before.followers = []
                before.followers.append(answer)
                waiting += 1
            self._last[key] = answer
        for future in answer.parts():
            if future.done():
                continue
            waiting += 1
            future.add_done_callback(functools.partial(self._part_done, answer))
        answer.waiting = waiting
        if not waiting:
            self._queue(answer)

    def _part_done(self, answer: Answer, _: asyncio.Future[object]) -> None:
        self._release(answer)

    def _release(self, answer: Answer) -> None:
        answer.waiting -= 1
        if not answer.waiting:
            self._queue(answer)

    def _queue(self, answer: Answer) -> None:
        answer.queued = True
        self._ready.append(answer)
        self._ready_event.set()
        followers = answer.followers
        if followers is not None:
            answer.followers = None
            for follower in followers:
                self._release(follower)

    async def room(self) -> None:
        """Returns once fewer than the limit of requests wait for their answers."""
        while self.unanswered >= self._unanswered_max:
            self._room.clear()
            await self._room.wait()

    def end(self) -> None:
        """The reader accepts nothing more."""
        self._ended = True
        self._ready_event.set()

    async def next(self) -> Answer | None:
        """The next answer to write; None once the reader ended and every answer is out."""
        while not self._ready:
            if self._ended and not self.unanswered:
                return None
            self._ready_event.clear()
            await self._ready_event.wait()
        return self._ready.popleft()

    def take_ready(self, into: list[Answer], count_max: int) -> None:
        """Moves up to `count_max` more writable answers into `into`, without waiting."""
        ready = self._ready
        while ready and count_max > 0:
            into.append(ready.popleft())
            count_max -= 1

    def written(self, answer: Answer) -> None:
        """`answer` (from `next`) was written or needed no write."""
        del answer
        self.unanswered -= 1
        if self.unanswered < self._unanswered_max:
            self._room.set()
        if not self.unanswered:
            # Nothing is owed: forget the partitions' last answers.
            self._last.clear()


__all__ = ["Answer", "AnswerOrder", "Key"]
