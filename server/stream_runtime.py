"""The leader's side of stream groups: member links, liveness, acks and timers.

It lives in `server/`, not next to the state machines in `cluster/coordinator/`,
because it is the asyncio shell around them (that package does no I/O).

One `StreamRuntime` runs for each coordinator group this node leads (and one
on a single node). The state machines (`StreamGroup`s in the store) change
only through commands the runtime *proposes*; it learns what they did when
the owner hands it each applied `StreamApplied` (`applied`), in log order,
and passes the instructions to the members' links. Followers have no
runtime: they drop the instructions.

- **Links.** A `MemberLink` is the stream serving one member (on this node
  or, through the Membership RPC, on another). It holds only the member's
  latest assignment and, once it is over, why: a slow link merges every
  change into that, so what waits for it is O(partitions), never a list.
- **Liveness.** `Sessions` per consumer group, fed with `seen`; members
  silent for their session timeout are expired (`Expire` proposed). A new
  runtime starts every member's session afresh (docs/groups.md), so a
  failover never evicts anyone by itself.
- **Timers.** `Tick` is proposed once a group's `next_deadline_ms()` passed.
- **Acks** (`ack`) are merged per member (the highest generation) and
  proposed by the runtime's own task, so a caller never waits on Raft.
- **Partition counts.** `check_partition_counts` proposes `PartitionCount`
  when the metadata's count of a subscribed topic differs (0: deleted).

Time (`now_ms`) and randomness (new member ids) are injected; tests drive
`step()` with a fake clock instead of running `run()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from weir.cluster.coordinator import messages as m
from weir.cluster.coordinator.sessions import Sessions
from weir.cluster.coordinator.store import Result, StreamApplied, StreamCommand
from weir.cluster.coordinator.stream import StreamGroup

log = logging.getLogger("weir.coordinator")

MEMBER_ID_RANDOM_BITS = 48
# How often `run` compares partition counts with the metadata.
PARTITION_POLL_INTERVAL_S = 0.5


@dataclass(frozen=True, slots=True)
class LinkState:
    """The member's assignment as of `generation`: everything it owns, sorted."""

    member_id: str
    generation: int
    partitions: tuple[m.TopicPartition, ...]


class EndReason:
    """Why a link ended; the first two are removals from the group."""

    LEFT = m.RemovedBecause.LEFT.value
    SESSION_EXPIRED = m.RemovedBecause.SESSION_EXPIRED.value
    # Another stream joined with this member id: this one is over.
    REPLACED = "MEMBER_REPLACED"
    # This node no longer leads the coordinator group: rejoin at the new leader.
    NOT_LEADER = "NOT_LEADER"


@dataclass(frozen=True, slots=True)
class LinkEnded:
    reason: str


class JoinRefusedError(Exception):
    def __init__(self, refused: m.JoinRefused) -> None:
        super().__init__(refused.detail)
        self.refused = refused


class RuntimeClosedError(Exception):
    """The runtime stopped (leadership lost): nothing was proposed."""


class MemberLink:
    """One member's stream as the runtime sees it; see the module docstring."""

    def __init__(self, consumer_group: str, member_id: str) -> None:
        self.consumer_group = consumer_group
        self.member_id = member_id
        self._state: LinkState | None = None
        self._ended: LinkEnded | None = None
        self._version = 0
        self._taken = 0
        self._changed = asyncio.Event()

    @property
    def ended(self) -> LinkEnded | None:
        return self._ended

    def pending(self) -> int:
        """Changes not taken yet, counted as what is held: at most one state and one end."""
        return int(self._version != self._taken and self._state is not None) + int(
            self._ended is not None
        )

    def assign(self, state: LinkState) -> None:
        if self._ended is None:
            self._state = state
            self._version += 1
            self._changed.set()

    def end(self, ended: LinkEnded) -> None:
        if self._ended is None:
            self._ended = ended
            self._changed.set()

    def take(self) -> LinkState | LinkEnded | None:
        """The latest change not taken yet, without waiting."""
        if self._ended is not None:
            return self._ended
        if self._version != self._taken:
            self._taken = self._version
            return self._state
        return None

    async def next(self) -> LinkState | LinkEnded:
        while True:
            change = self.take()
            if change is not None:
                return change
            self._changed.clear()
            await self._changed.wait()


Propose = Callable[[StreamCommand], Awaitable[Result]]


class StreamRuntime:
    def __init__(
        self,
        propose: Propose,
        groups: Callable[[], Mapping[str, StreamGroup]],
        now_ms: Callable[[], int],
        rng: random.Random,
        *,
        member_id_prefix: str = "member",
    ) -> None:
        self._propose_fn = propose
        self._groups = groups
        self._now_ms = now_ms
        self._rng = rng
        self._prefix = member_id_prefix
        self._links: dict[tuple[str, str], MemberLink] = {}
        # A new leader starts every known member's session afresh.
        self._sessions: dict[str, Sessions] = {}
        now = now_ms()
        for name, group in groups().items():
            if group.members():
                self._sessions[name] = Sessions()
                self._sessions[name].sync(group, now)
        # Merged acks: (consumer group, member) -> highest generation.
        self._acks: dict[tuple[str, str], int] = {}
        self._wake = asyncio.Event()
        self._closed = False

    # -- reading -------------------------------------------------------------------

    def link(self, consumer_group: str, member_id: str) -> MemberLink | None:
        return self._links.get((consumer_group, member_id))

    def link_count(self) -> int:
        return len(self._links)

    def pending_acks(self) -> int:
        return len(self._acks)

    def next_deadline_ms(self) -> int | None:
        deadlines = [s.next_deadline_ms() for s in self._sessions.values()]
        deadlines += [g.next_deadline_ms() for g in self._groups().values()]
        return min((d for d in deadlines if d is not None), default=None)

    # -- what the log did ----------------------------------------------------------------

    def applied(self, result: StreamApplied) -> None:
        """Called with every applied stream command's result, in log order."""
        name = result.consumer_group
        for instruction in result.instructions:
            match instruction:
                case m.Assignment(member_id, generation, partitions):
                    link = self._links.get((name, member_id))
                    if link is not None:
                        link.assign(LinkState(member_id, generation, partitions))
                case m.MemberRemoved(member_id, because):
                    self._unlink(name, member_id, LinkEnded(because.value))
                    self._acks.pop((name, member_id), None)
                case m.JoinRefused(member_id, reason, _):
                    self._unlink(name, member_id, LinkEnded(reason.value))
                case m.StopDelivery() | m.StartDelivery():
                    # The next Assignment (or removal) carries the same news.
                    pass
        group = self._groups().get(name)
        if group is None or not group.members():
            self._sessions.pop(name, None)
        else:
            self._sessions.setdefault(name, Sessions()).sync(group, self._now_ms())
        self._wake.set()

    def _unlink(self, consumer_group: str, member_id: str, ended: LinkEnded) -> None:
        link = self._links.pop((consumer_group, member_id), None)
        if link is not None:
            link.end(ended)

    # -- members ------------------------------------------------------------------------

    def new_member_id(self) -> str:
        return f"{self._prefix}-{self._rng.getrandbits(MEMBER_ID_RANDOM_BITS):012x}"

    async def join(
        self,
        consumer_group: str,
        member_id: str,
        topics: Iterable[str],
        partition_counts: Iterable[tuple[str, int]],
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
    ) -> MemberLink:
        """Joins (or rejoins) and returns the member's link, whose first change is its assignment.

        Raises JoinRefusedError (nothing changed), RuntimeClosedError or the
        proposer's errors (not leader, outcome unknown).
        """
        if self._closed:
            raise RuntimeClosedError()
        member_id = member_id or self.new_member_id()
        key = (consumer_group, member_id)
        replaced = self._links.pop(key, None)
        if replaced is not None:
            replaced.end(LinkEnded(EndReason.REPLACED))
        link = self._links[key] = MemberLink(consumer_group, member_id)
        command = m.Join(
            self._now_ms(),
            member_id,
            tuple(sorted(set(topics))),
            tuple(sorted(partition_counts)),
            session_timeout_ms,
            rebalance_timeout_ms,
        )
        try:
            result = await self._propose(StreamCommand(consumer_group, command))
        except BaseException:
            if self._links.get(key) is link:
                del self._links[key]
            raise
        assert isinstance(result, StreamApplied), result
        for instruction in result.instructions:
            if isinstance(instruction, m.JoinRefused) and instruction.member_id == member_id:
                if self._links.get(key) is link:
                    del self._links[key]
                raise JoinRefusedError(instruction)
        # A reconnect keeps its old deadline in `sync`: it is alive now.
        self.seen(consumer_group, member_id)
        return link

    def seen(self, consumer_group: str, member_id: str) -> None:
        sessions = self._sessions.get(consumer_group)
        if sessions is not None:
            sessions.seen(member_id, self._now_ms())

    def ack(self, consumer_group: str, member_id: str, generation: int) -> None:
        """Records an ack (merged per member); the runtime's task proposes it."""
        self.seen(consumer_group, member_id)
        key = (consumer_group, member_id)
        if key in self._links and generation > self._acks.get(key, 0):
            self._acks[key] = generation
            self._wake.set()

    async def leave(self, link: MemberLink) -> None:
        """The member's stream closed: it leaves at once."""
        if self._closed:
            raise RuntimeClosedError()
        key = (link.consumer_group, link.member_id)
        if self._links.get(key) is not link:
            return  # already removed, or replaced by a newer stream of the member
        await self._propose(
            StreamCommand(link.consumer_group, m.Leave(self._now_ms(), link.member_id))
        )

    def detach(self, link: MemberLink) -> None:
        """The member's stream broke without leaving: its session runs out unless it rejoins."""
        key = (link.consumer_group, link.member_id)
        if self._links.get(key) is link:
            del self._links[key]
            self._acks.pop(key, None)

    # -- timers ---------------------------------------------------------------------------

    async def step(self) -> None:
        """Proposes what is due now: merged acks, expiries, ticks."""
        acks, self._acks = self._acks, {}
        items = sorted(acks.items())
        for done, ((name, member_id), generation) in enumerate(items):
            try:
                await self._propose(
                    StreamCommand(name, m.AssignmentAck(self._now_ms(), member_id, generation))
                )
            except BaseException:
                # Not applied (a fresh leader's dropped proposal, say): kept for
                # the next step, else the revocation would wait for its whole
                # rebalance timeout (the stream tests saw 30 s stalls).
                for key, pending in items[done:]:
                    self._acks[key] = max(pending, self._acks.get(key, 0))
                raise
        now = self._now_ms()
        for name, sessions in sorted(self._sessions.items()):
            for member_id in sessions.expired(now):
                log.info("consumer group %r: member %r expired", name, member_id)
                await self._propose(StreamCommand(name, m.Expire(self._now_ms(), member_id)))
        for name, group in sorted(self._groups().items()):
            deadline = group.next_deadline_ms()
            if deadline is not None and deadline <= now:
                await self._propose(StreamCommand(name, m.Tick(self._now_ms())))

    async def check_partition_counts(self, partition_count: Callable[[str], int]) -> None:
        """Proposes `PartitionCount` for each subscribed topic whose count changed (0: gone)."""
        for name, group in sorted(self._groups().items()):
            for topic, count in group.partition_counts():
                current = partition_count(topic)
                if current != count:
                    await self._propose(
                        StreamCommand(name, m.PartitionCount(self._now_ms(), topic, current))
                    )

    async def run(self, partition_count: Callable[[str], int] | None = None) -> None:
        """Proposes acks, expiries and ticks when due; polls partition counts. Until cancelled."""
        loop = asyncio.get_running_loop()
        next_poll = loop.time()
        while True:
            deadline_ms = self.next_deadline_ms()
            wait_s = PARTITION_POLL_INTERVAL_S
            if deadline_ms is not None:
                wait_s = min(wait_s, max(0.0, (deadline_ms - self._now_ms()) / 1000))
            if not self._acks:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await self._wake.wait()
            self._wake.clear()
            await self.step()
            if partition_count is not None and loop.time() >= next_poll:
                next_poll = loop.time() + PARTITION_POLL_INTERVAL_S
                await self.check_partition_counts(partition_count)

    async def _propose(self, command: StreamCommand) -> Result:
        if self._closed:
            raise RuntimeClosedError()
        return await self._propose_fn(command)

    def close(self) -> None:
        """Leadership is gone: every link ends with NOT_LEADER (its member rejoins elsewhere)."""
        self._closed = True
        for key in list(self._links):
            self._unlink(*key, LinkEnded(EndReason.NOT_LEADER))
        self._acks.clear()

    @property
    def closed(self) -> bool:
        return self._closed
