"""A scripted `Membership` for unit tests of the consume path's stream mode.

The test plays the coordinator: it queues each `MemberEvent` (or a
`BrokerError` for `next_event()` to raise) and reads back everything the
stream told the session: `seen()` calls, acks, commits with their
generation, and how many times it was closed. Only for unit tests: the
integration tests run the real coordinator.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from tests.unit.server.test_consume_costs import STEP_TIMEOUT_S, ScriptedContext
from weir.server.errors import STATUS_DETAILS_KEY, BrokerError
from weir.server.membership import AssignmentChange, JoinSpec, MemberEvent, Removed
from weir.server.topics import Topic

EVENTS_MAX = 100


class FakeSession:
    def __init__(self, member_id: str) -> None:
        self._member_id = member_id
        self.events: asyncio.Queue[MemberEvent | BrokerError] = asyncio.Queue(maxsize=EVENTS_MAX)
        self.seen_calls = 0
        # Events the stream has taken with next_event().
        self.taken = 0
        self.acks: list[int] = []
        self.commits: list[tuple[int, dict[int, int]]] = []
        self.stored: dict[int, int] = {}
        # Commits wait for this gate; a set refusal answers them instead.
        self.commit_gate = asyncio.Event()
        self.commit_gate.set()
        self.commit_refusal: BrokerError | None = None
        self.close_calls = 0
        self.closed = asyncio.Event()
        self.changed = asyncio.Event()

    @property
    def member_id(self) -> str:
        return self._member_id

    def change(
        self,
        generation: int,
        partitions: tuple[int, ...],
        started: Mapping[int, int | None] | None = None,
        stopped: tuple[int, ...] = (),
    ) -> None:
        """Queue an AssignmentChange for the stream."""
        self.events.put_nowait(
            AssignmentChange(self._member_id, generation, partitions, started or {}, stopped)
        )

    def remove(self, error: BrokerError) -> None:
        self.events.put_nowait(Removed(error))

    def fail(self, error: BrokerError) -> None:
        self.events.put_nowait(error)

    async def until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(STEP_TIMEOUT_S):
            while not condition():
                self.changed.clear()
                await self.changed.wait()

    async def next_event(self) -> MemberEvent:
        event = await self.events.get()
        self.taken += 1
        self.changed.set()
        if isinstance(event, BrokerError):
            raise event
        return event

    def seen(self) -> None:
        self.seen_calls += 1
        self.changed.set()

    def ack(self, generation: int) -> None:
        self.acks.append(generation)
        self.changed.set()

    async def commit(self, generation: int, offsets: Mapping[int, int]) -> dict[int, int]:
        self.commits.append((generation, dict(offsets)))
        self.changed.set()
        await self.commit_gate.wait()
        if self.commit_refusal is not None:
            raise self.commit_refusal
        for partition, offset in offsets.items():
            self.stored[partition] = max(offset, self.stored.get(partition, 0))
        return {p: self.stored[p] for p in offsets}

    async def close(self) -> None:
        self.close_calls += 1
        self.closed.set()
        self.changed.set()


class FakeMembership:
    def __init__(self) -> None:
        self.joins: list[tuple[JoinSpec, str]] = []
        self.sessions: list[FakeSession] = []
        self.refusal: BrokerError | None = None

    async def join(self, spec: JoinSpec, topic: Topic) -> FakeSession:
        self.joins.append((spec, topic.name))
        if self.refusal is not None:
            raise self.refusal
        session = FakeSession(spec.member_id or f"member-{len(self.sessions) + 1}")
        self.sessions.append(session)
        return session


class StatusContext(ScriptedContext):
    """A ScriptedContext that keeps the ErrorInfo reason of the status that ended the call,
    and whose writes can be held at a gate (a client that stopped reading)."""

    def __init__(self) -> None:
        super().__init__()
        self.reason: str | None = None
        self.metadata: dict[str, str] = {}
        self.ended = asyncio.Event()
        self.write_gate = asyncio.Event()
        self.write_gate.set()
        self.writes_waiting = 0
        # Requests the stream has read (the Subscribe included).
        self.reads = 0

    async def read(self) -> object:
        request = await super().read()
        self.reads += 1
        self.changed.set()
        return request

    async def write(self, raw: bytes) -> None:
        if not self.write_gate.is_set():
            self.writes_waiting += 1
            self.changed.set()
            await self.write_gate.wait()
            self.writes_waiting -= 1
        await super().write(raw)

    async def abort(self, code: grpc.StatusCode, message: str, **kwargs: Any) -> None:
        for key, value in kwargs.get("trailing_metadata", ()):
            if key == STATUS_DETAILS_KEY:
                status = status_pb2.Status.FromString(value)
                info = error_details_pb2.ErrorInfo()
                assert status.details[0].Unpack(info)
                self.reason = info.reason
                self.metadata = dict(info.metadata)
        await super().abort(code, message)
