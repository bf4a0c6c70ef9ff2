"""Stream-mode membership on a single node, and the member session both modes share.

A single node runs the coordinator's stream-group runtime
(server/stream_runtime.py) over an in-memory `CoordinatorStore`: "propose" is
"apply now". Membership needs no durability here: a restart closes every
stream, so every member joins again. Committed offsets stay in the node's
own `GroupOffsets`; a member's commit is first checked against its group
(generation, partitions) by the same `validate_commit` the cluster applies.

`LinkSession` is the `MemberSession` of both modes. It turns the member's
latest assignment (what its link holds; changes merge there) into the
consume path's `AssignmentChange`s, keeping the sequence consistent:
`started` names only partitions not delivered on this session yet,
`stopped` only ones that were, and a rejoin that changes nothing produces
no event (a new generation alone is told, with nothing started or
stopped). It also acknowledges on the member's behalf what the link merged
away before the stream saw it (`MemberAcks`, cluster/coordinator/
member_acks.py): a client acks only an assignment that revokes something,
so a revocation of partitions it was never told about would otherwise wait
for the whole rebalance timeout. The cluster's session (server/
cluster_membership.py) plugs in a connection that can break and be
re-established at a new leader; the session then sends its latest ack
again there.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import grpc

from weir.cluster.coordinator import messages as m
from weir.cluster.coordinator.member_acks import MemberAcks
from weir.cluster.coordinator.offsets import Commit, OffsetsError
from weir.cluster.coordinator.store import (
    CoordinatorStore,
    MemberCommit,
    Result,
    StreamApplied,
    StreamCommand,
)
from weir.cluster.coordinator.stream import StreamGroup
from weir.server.errors import BrokerError, invalid
from weir.server.membership import (
    AssignmentChange,
    JoinSpec,
    MemberEvent,
    MemberSession,
    Removed,
)
from weir.server.stream_runtime import (
    EndReason,
    JoinRefusedError,
    LinkEnded,
    LinkState,
    MemberLink,
    StreamRuntime,
)
from weir.server.topics import Topic

log = logging.getLogger("weir.server.membership")


class _RetriableError(BrokerError):
    """An ABORTED the client may retry by joining again (metadata retriable=true)."""

    @property
    def retriable(self) -> bool:
        return True


def ended_error(group: str, member_id: str, reason: str) -> BrokerError:
    """The error that ends a member's stream after its link ended for `reason`."""
    if reason == EndReason.SESSION_EXPIRED:
        return _RetriableError(
            grpc.StatusCode.ABORTED,
            "SESSION_EXPIRED",
            f"member {member_id!r} of consumer group {group!r} sent nothing for its "
            "session timeout and was removed; subscribe again",
            {"member_id": member_id, "group": group},
        )
    if reason == EndReason.REPLACED:
        return BrokerError(
            grpc.StatusCode.ABORTED,
            "MEMBER_REPLACED",
            f"another stream joined consumer group {group!r} as member {member_id!r}",
            {"member_id": member_id, "group": group},
        )
    return _RetriableError(
        grpc.StatusCode.ABORTED,
        "MEMBER_REMOVED",
        f"member {member_id!r} is no longer in consumer group {group!r} ({reason})",
        {"member_id": member_id, "group": group},
    )


def join_refused_error(group: str, refused: m.JoinRefused) -> BrokerError:
    match refused.reason:
        case m.Reason.GROUP_FULL:
            code = grpc.StatusCode.RESOURCE_EXHAUSTED
        case m.Reason.TOO_MANY_CONSUMER_GROUPS:
            code = grpc.StatusCode.RESOURCE_EXHAUSTED
        case _:
            code = grpc.StatusCode.INVALID_ARGUMENT
    return BrokerError(code, refused.reason.value, refused.detail, {"group": group})


def offsets_error(error: OffsetsError) -> BrokerError:
    return BrokerError(grpc.StatusCode[error.code], error.reason, error.message)


class Connection(Protocol):
    """The session's way to the member's link (local, or over the Membership RPC)."""

    async def next(self) -> LinkState | LinkEnded:
        """The latest change; raises ConnectionLost when the way to the leader broke."""
        ...

    def seen(self) -> None: ...

    def ack(self, generation: int) -> None: ...

    async def leave(self) -> None: ...

    def detach(self) -> None: ...


class ConnectionLost(Exception):
    """The link to the coordinator's leader broke; the member was not removed."""


class LocalConnection:
    """A link of the runtime on this node."""

    def __init__(self, runtime: StreamRuntime, link: MemberLink) -> None:
        self._runtime = runtime
        self.link = link

    async def next(self) -> LinkState | LinkEnded:
        change = await self.link.next()
        if isinstance(change, LinkEnded) and change.reason == EndReason.NOT_LEADER:
            raise ConnectionLost(change.reason)
        return change

    def seen(self) -> None:
        self._runtime.seen(self.link.consumer_group, self.link.member_id)

    def ack(self, generation: int) -> None:
        self._runtime.ack(self.link.consumer_group, self.link.member_id, generation)

    async def leave(self) -> None:
        await self._runtime.leave(self.link)

    def detach(self) -> None:
        self._runtime.detach(self.link)


Reconnect = Callable[[str], Awaitable[tuple[Connection, LinkState | LinkEnded]]]
CommitAs = Callable[[MemberCommit], Awaitable[Mapping[int, int]]]
Fetch = Callable[[str, Topic, list[int]], Awaitable[dict[int, int]]]


class LinkSession:
    """A `MemberSession` over a `Connection`; see the module docstring."""

    def __init__(
        self,
        spec: JoinSpec,
        topic: Topic,
        member_id: str,
        connection: Connection,
        first: LinkState | LinkEnded,
        *,
        fetch: Fetch,
        commit_as: CommitAs,
        reconnect: Reconnect | None = None,
    ) -> None:
        self._spec = spec
        self._topic = topic
        self._member_id = member_id
        self._connection = connection
        self._pending: LinkState | LinkEnded | None = first
        self._fetch = fetch
        self._commit_as = commit_as
        self._reconnect = reconnect
        # What the consume path was told.
        self._generation = 0
        self._partitions: tuple[int, ...] = ()
        self._delivering: set[int] = set()
        # What the stream's client owes and what was acknowledged for it: a
        # member that joined as new is trusted with acks on its behalf.
        self._acks = MemberAcks(trusted=not spec.member_id)
        self._closed = False
        self._ended = False

    @property
    def member_id(self) -> str:
        return self._member_id

    @property
    def generation(self) -> int:
        return self._generation

    async def _next_change(self) -> LinkState | LinkEnded:
        if self._pending is not None:
            change, self._pending = self._pending, None
            return change
        while True:
            try:
                return await self._connection.next()
            except ConnectionLost:
                if self._reconnect is None or self._closed:
                    raise
            log.info("member %r: link to the coordinator lost, rejoining", self._member_id)
            self._connection.detach()
            self._connection, first = await self._reconnect(self._member_id)
            if self._acks.sent:
                # The old leader may have died before proposing it.
                self._connection.ack(self._acks.sent)
            return first

    async def next_event(self) -> MemberEvent:
        if self._ended:
            raise BrokerError(
                grpc.StatusCode.FAILED_PRECONDITION, "MEMBER_REMOVED", "the member was removed"
            )
        while True:
            change = await self._next_change()
            if isinstance(change, LinkEnded):
                self._ended = True
                return Removed(ended_error(self._spec.group, self._member_id, change.reason))
            partitions = tuple(
                sorted(p.partition for p in change.partitions if p.topic == self._topic.name)
            )
            now = set(partitions)
            started = sorted(now - self._delivering)
            stopped = tuple(sorted(self._delivering - now))
            if (
                not started
                and not stopped
                and (change.generation, partitions)
                == (
                    self._generation,
                    self._partitions,
                )
            ):
                continue  # a rejoin that changed nothing
            try:
                offsets = await self._fetch(self._spec.group, self._topic, started)
            except BaseException:
                # Not told: the same change is looked at again next time.
                self._pending = change
                raise
            self._generation, self._partitions, self._delivering = (
                change.generation,
                partitions,
                now,
            )
            on_behalf = self._acks.told(
                change.generation,
                stopped=bool(stopped),
                holds_all=partitions == tuple(range(self._topic.partition_count)),
            )
            if on_behalf is not None:
                # Partitions revoked in assignments merged away before this
                # stream saw them: the client has nothing of them to commit.
                self._connection.ack(on_behalf)
            return AssignmentChange(
                member_id=self._member_id,
                generation=change.generation,
                partitions=partitions,
                started={p: offsets.get(p) for p in started},
                stopped=stopped,
            )

    def seen(self) -> None:
        if not self._closed:
            self._connection.seen()

    def ack(self, generation: int) -> None:
        if not self._closed:
            send = self._acks.client_ack(generation)
            if send is not None:
                self._connection.ack(send)

    async def commit(self, generation: int, offsets: Mapping[int, int]) -> dict[int, int]:
        if not offsets:
            return {}
        topic = self._topic
        for partition in offsets:
            if not 0 <= partition < topic.partition_count:
                raise invalid(
                    "PARTITION_OUT_OF_RANGE",
                    f"topic {topic.name!r} has no partition {partition}",
                    topic=topic.name,
                    partition=partition,
                )
        by_group = {topic.group_ids[p]: o for p, o in offsets.items()}
        command = MemberCommit(
            Commit(self._spec.group, tuple(sorted(by_group.items()))),
            self._member_id,
            generation or self._generation,
            topic.name,
            tuple(sorted((topic.group_ids[p], p) for p in offsets)),
        )
        stored = await self._commit_as(command)
        return {p: stored[topic.group_ids[p]] for p in offsets}

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if not self._ended:
                await self._leave()
        except Exception as exc:
            # The member's session then runs out at the coordinator instead.
            log.info("member %r: leave not confirmed: %s", self._member_id, exc)
        finally:
            self._connection.detach()

    async def _leave(self) -> None:
        try:
            await self._connection.leave()
        except Exception:
            if self._reconnect is None:
                raise
            # The leader went away under us: leave at the new one (the
            # rejoin is a reconnect of a known member, so nothing moves first).
            self._connection.detach()
            self._connection, _ = await self._reconnect(self._member_id)
            await self._connection.leave()


# -- the single node ----------------------------------------------------------------------


class LocalMembership:
    """Stream groups of a single node, in memory; see the module docstring."""

    def __init__(
        self,
        offsets: _LocalOffsets,
        partition_count: Callable[[str], int],
        now_ms: Callable[[], int] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._offsets = offsets
        self._partition_count = partition_count
        self._now_ms = now_ms or (lambda: time.time_ns() // 1_000_000)
        # Group 0: nothing is replicated; the store is the state machine.
        self.store = CoordinatorStore(0)
        self.runtime = StreamRuntime(
            self._propose,
            lambda: self.store.streams,
            self._now_ms,
            rng or random.Random(),
        )
        # Member commits are checked, then stored, one at a time, so that no
        # rebalance is applied between the check and the write.
        self._commit_lock = asyncio.Lock()

    async def _propose(self, command: StreamCommand) -> Result:
        result = self.store.apply_command(command)
        assert isinstance(result, StreamApplied), result
        self.runtime.applied(result)
        return result

    async def run(self) -> None:
        """The runtime's timers (a background task of the node)."""
        await self.runtime.run(self._partition_count)

    async def join(self, spec: JoinSpec, topic: Topic) -> MemberSession:
        try:
            link = await self.runtime.join(
                spec.group,
                spec.member_id,
                (topic.name,),
                ((topic.name, topic.partition_count),),
                spec.session_timeout_ms,
                spec.rebalance_timeout_ms,
            )
        except JoinRefusedError as exc:
            raise join_refused_error(spec.group, exc.refused) from None
        first = await link.next()
        return LinkSession(
            spec,
            topic,
            link.member_id,
            LocalConnection(self.runtime, link),
            first,
            fetch=self._offsets.fetch,
            commit_as=lambda c: self._commit_as(c, topic),
        )

    async def _commit_as(self, command: MemberCommit, topic: Topic) -> Mapping[int, int]:
        async with self._commit_lock:
            group = self.store.streams.get(command.commit.consumer_group)
            partitions = [m.TopicPartition(command.topic, p) for _, p in command.partitions]
            reason = (
                m.Reason.UNKNOWN_MEMBER
                if group is None
                else group.validate_commit(command.member_id, command.generation, partitions)
            )
            if reason is not None:
                raise BrokerError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    reason.value,
                    f"member {command.member_id!r} may not commit at generation "
                    f"{command.generation} for partitions {sorted(p for _, p in command.partitions)}",
                )
            numbers = dict(command.partitions)
            stored = await self._offsets.commit(
                command.commit.consumer_group,
                topic,
                {numbers[g]: o for g, o in command.commit.offsets},
                as_member=True,
            )
            return {topic.group_ids[p]: o for p, o in stored.items()}

    def has_members(self, group: str) -> bool:
        return self.store.has_members(group)

    def stream_group(self, group: str) -> StreamGroup | None:
        """The group's stream state, while it has members (a single node keeps no more)."""
        return self.store.streams.get(group)

    def stream_groups(self) -> list[str]:
        """Groups with members online, ascending."""
        return sorted(self.store.streams)

    async def reset_offsets(self, group: str, offsets: Mapping[int, int]) -> dict[int, int]:
        """An operator's reset (group id -> offset): refused while the group has members.

        Taken under the member-commit lock, so a member commit checked just
        before its member left cannot land after the reset and undo it.
        """
        async with self._commit_lock:
            return await self._offsets.reset(group, offsets)


class _LocalOffsets(Protocol):
    async def fetch(self, group: str, topic: Topic, partitions: list[int]) -> dict[int, int]: ...

    async def commit(
        self, group: str, topic: Topic, offsets: Mapping[int, int], *, as_member: bool = False
    ) -> dict[int, int]: ...

    async def reset(self, group: str, offsets: Mapping[int, int]) -> dict[int, int]: ...


__all__ = [
    "ConnectionLost",
    "LinkSession",
    "LocalConnection",
    "LocalMembership",
    "ended_error",
    "join_refused_error",
    "offsets_error",
]
