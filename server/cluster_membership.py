"""Stream-mode membership in a cluster: members reach their coordinator group's leader.

The state of a stream group lives in its coordinator group (docs/groups.md).
Two halves live here:

- **the leader's side**: one `StreamRuntime` (server/stream_runtime.py)
  per coordinator group this node leads, created once the node applied an
  entry of its own term and closed as soon as it stops leading (every link
  then ends with NOT_LEADER and its member rejoins at the new leader). Its
  proposals are entries of the coordinator group; `on_stream_applied` hands
  it every applied result in log order. Members on other nodes reach it
  over the peer port (`CoordinatorService.Membership`, a bidirectional
  stream per member; `serve_membership`);
- **the serving node's side**: `ClusterMembership.join` makes a Consume
  stream a member: through the runtime directly when this node leads the
  coordinator group (no gRPC to itself), else over a Membership call to the
  leader (`RemoteConnection`). The session (`LinkSession`, server/
  local_membership.py) leaves at once when the stream closes (a half-close
  of the call), but a broken link to the leader does not leave: it finds
  the new leader (within `ROUTE_TIMEOUT_S`, else UNAVAILABLE
  `NOT_COORDINATOR`) and rejoins under the same member id, so the member
  keeps its partitions.

Commits of a member go through the existing `CommitGroupOffsets` route
with its member id and generation; the coordinator checks them when they
are applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
import grpc.aio

from weir.cluster.coordinator import messages as m
from weir.cluster.coordinator.offsets import OffsetsError
from weir.cluster.coordinator.store import (
    MemberCommit,
    Result,
    StreamApplied,
    StreamCommand,
    encode_command,
)
from weir.cluster.host import HostError, NotLeaderError
from weir.cluster.v1 import coordinator_pb2 as pb
from weir.server.cluster_coordinator import (
    COORDINATOR_SERVICE,
    FORWARD_CALL_TIMEOUT_S,
    MAINTAIN_INTERVAL_S,
    ClusterCoordinators,
    ClusterOffsets,
    NotCoordinatorLeader,
)
from weir.server.cluster_meta import ClusterMetadata
from weir.server.consume_relay import RelayedLog
from weir.server.errors import BrokerError
from weir.server.local_membership import (
    Connection,
    ConnectionLost,
    LinkSession,
    LocalConnection,
    ended_error,
    join_refused_error,
)
from weir.server.membership import (
    AssignmentChange,
    JoinSpec,
    MemberEvent,
    MemberSession,
)
from weir.server.stream_runtime import (
    EndReason,
    JoinRefusedError,
    LinkEnded,
    LinkState,
    RuntimeClosedError,
    StreamRuntime,
)
from weir.server.topics import Topic
from weir.v1 import broker_pb2

log = logging.getLogger("weir.server.membership")

# A member's heartbeats to a remote leader are sent at most this often
# (everything the client sends counts as one); acks go at once.
HEARTBEAT_INTERVAL_MIN_S = 0.1
# How long a leave waits for an ack or heartbeat being written to go out.
WRITER_STOP_TIMEOUT_S = 1.0
# A runtime whose proposal failed while still leading retries after this.
RUNTIME_RETRY_S = 0.1


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _error_event(error: BrokerError) -> pb.MembershipResponse:
    return pb.MembershipResponse(
        error=pb.MembershipError(code=error.code.name, reason=error.reason, message=error.message)
    )


def _partitions_of(topic: str, state: LinkState) -> list[int]:
    return [p.partition for p in state.partitions if p.topic == topic]


class RemoteConnection:
    """A member's Membership call to a leader on another node.

    Only this object's own tasks touch the call: a reader puts each event
    in a one-slot queue that `next()` takes from, and a writer sends acks
    and heartbeats. grpc.aio cancels the whole call when a task awaiting
    `read()` is cancelled, and the consume path cancels its member task
    whenever a stream ends; if that task read the call itself, the
    half-close that makes the member leave at once could never be sent
    (and the ended call's `read()` raised CancelledError into the stream's
    handler, which then never sent its status).
    """

    def __init__(self, channel: grpc.aio.Channel, join: pb.MembershipJoin) -> None:
        self._join = join
        self._topic = join.topic
        self._call = channel.stream_stream(
            f"/{COORDINATOR_SERVICE}/Membership",
            request_serializer=pb.MembershipRequest.SerializeToString,
            response_deserializer=pb.MembershipResponse.FromString,
        )()
        self._seen = False
        self._ack = 0
        self._dirty = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        # One event at a time: the leader's link merges what waits meanwhile.
        self._events: asyncio.Queue[pb.MembershipResponse | ConnectionLost] = asyncio.Queue(1)
        self._leaving = False
        self._writer_stopping = False

    async def open(self) -> LinkState | LinkEnded:
        """Joins; the first answer. Raises NotCoordinatorLeader, BrokerError (refused), AioRpcError."""
        try:
            await self._call.write(pb.MembershipRequest(join=self._join))
            event = await self._call.read()
        except BaseException:
            self._call.cancel()
            raise
        if not isinstance(event, pb.MembershipResponse):
            raise NotCoordinatorLeader(0)  # the call ended at once
        kind = event.WhichOneof("event")
        if kind == "not_leader":
            self._call.cancel()
            raise NotCoordinatorLeader(event.not_leader.leader_id)
        if kind == "error":
            self._call.cancel()
            e = event.error
            raise BrokerError(grpc.StatusCode[e.code], e.reason, e.message)
        self._writer = asyncio.create_task(self._write_loop(), name="membership writer")
        self._reader = asyncio.create_task(self._read_loop(), name="membership reader")
        return self._state(event.assignment)

    async def _read_loop(self) -> None:
        """Reads the call until it ends; while leaving, events are dropped."""
        try:
            while True:
                event = await self._call.read()
                if not isinstance(event, pb.MembershipResponse):
                    lost = ConnectionLost("the leader ended the call")
                    break
                if not self._leaving:
                    await self._events.put(event)
        except grpc.aio.AioRpcError as exc:
            lost = ConnectionLost(str(exc.code()))
        if not self._leaving:
            await self._events.put(lost)

    def _state(self, a: pb.MembershipAssignment) -> LinkState:
        return LinkState(
            a.member_id, a.generation, tuple(m.TopicPartition(self._topic, p) for p in a.partitions)
        )

    async def next(self) -> LinkState | LinkEnded:
        event = await self._events.get()
        if isinstance(event, ConnectionLost):
            # Told once: the session reconnects or gives up.
            raise event
        match event.WhichOneof("event"):
            case "assignment":
                return self._state(event.assignment)
            case "error":
                return LinkEnded(event.error.reason)
        raise ConnectionLost("the leader stopped leading")

    def seen(self) -> None:
        self._seen = True
        self._dirty.set()

    def ack(self, generation: int) -> None:
        self._ack = max(self._ack, generation)
        self._dirty.set()

    async def _write_loop(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            while True:
                await self._dirty.wait()
                self._dirty.clear()
                if self._writer_stopping:
                    return
                if self._ack:
                    generation, self._ack = self._ack, 0
                    self._seen = False
                    await self._call.write(
                        pb.MembershipRequest(ack=pb.StreamAssignmentAck(generation=generation))
                    )
                elif self._seen:
                    self._seen = False
                    await self._call.write(pb.MembershipRequest(heartbeat=pb.MembershipHeartbeat()))
                    await asyncio.sleep(HEARTBEAT_INTERVAL_MIN_S)

    async def _stop_writer(self) -> None:
        """Stops the writer between writes: cancelling it inside `write()` would end the call."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        self._writer_stopping = True
        self._dirty.set()
        try:
            async with asyncio.timeout(WRITER_STOP_TIMEOUT_S):
                await asyncio.shield(writer)
        except TimeoutError:
            writer.cancel()  # a write the leader does not take: the call is lost anyway
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def leave(self) -> None:
        """Half-closes the call (the leader proposes the Leave) and waits for its end."""
        await self._stop_writer()
        self._leaving = True
        with contextlib.suppress(asyncio.QueueEmpty):
            self._events.get_nowait()  # frees a reader waiting to hand over an event
        if self._call.done():
            raise ConnectionLost("the call ended before the leave")
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self._call.done_writing()
        reader = self._reader
        if reader is not None:
            try:
                async with asyncio.timeout(FORWARD_CALL_TIMEOUT_S):
                    await asyncio.shield(reader)
            except TimeoutError:
                self._call.cancel()

    def detach(self) -> None:
        for task in (self._writer, self._reader):
            if task is not None:
                task.cancel()
        self._writer = self._reader = None
        self._call.cancel()


class ClusterMembership:
    """`Membership` of a clustered node, and the leader's runtimes; see the module docstring."""

    def __init__(
        self,
        coordinators: ClusterCoordinators,
        metadata: ClusterMetadata,
        offsets: ClusterOffsets,
        *,
        node_id: int,
        rng: random.Random,
        now_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self._coordinators = coordinators
        self._metadata = metadata
        self._offsets = offsets
        self._node_id = node_id
        self._rng = rng
        self._now_ms = now_ms
        self.runtimes: dict[int, StreamRuntime] = {}
        self._runtime_tasks: dict[int, asyncio.Task[None]] = {}
        self._tasks: asyncio.TaskGroup | None = None
        coordinators.on_stream_applied = self._applied
        coordinators.extra_handlers["Membership"] = grpc.stream_stream_rpc_method_handler(
            self.serve_membership,
            request_deserializer=pb.MembershipRequest.FromString,
            response_serializer=pb.MembershipResponse.SerializeToString,
        )

    # -- the leader's runtimes ---------------------------------------------------------

    def _applied(self, group_id: int, result: StreamApplied) -> None:
        runtime = self.runtimes.get(group_id)
        if runtime is not None:
            runtime.applied(result)

    def _partition_count(self, topic: str) -> int:
        found = self._metadata.state.topic(topic)
        return 0 if found is None else found.partition_count

    async def run(self) -> None:
        """Keeps a runtime for each coordinator group this node leads (a background task)."""
        host = self._coordinators.host
        remove = host.add_leader_listener(self._on_leader)
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                while True:
                    for group_id in list(self.runtimes):
                        if not self._leads(group_id):
                            self._close_runtime(group_id)
                    for group_id in list(self._coordinators.stores):
                        if group_id not in self.runtimes and self._leads(group_id):
                            with contextlib.suppress(NotCoordinatorLeader, HostError):
                                await self.runtime_for(group_id)
                    await asyncio.sleep(MAINTAIN_INTERVAL_S)
        finally:
            self._tasks = None
            remove()
            for group_id in list(self.runtimes):
                self._close_runtime(group_id)

    def _leads(self, group_id: int) -> bool:
        try:
            return self._coordinators.host.is_leader(group_id)
        except HostError:
            return False

    def _on_leader(self, group_id: int, leader_id: int) -> None:
        if group_id in self.runtimes and leader_id != self._node_id:
            self._close_runtime(group_id)

    def _close_runtime(self, group_id: int) -> None:
        runtime = self.runtimes.pop(group_id, None)
        if runtime is not None:
            runtime.close()
            log.info("coordinator group %d: stream groups no longer led here", group_id)
        task = self._runtime_tasks.pop(group_id, None)
        if task is not None:
            task.cancel()

    async def runtime_for(self, group_id: int) -> StreamRuntime:
        """The runtime of a coordinator group this node leads; raises NotCoordinatorLeader."""
        runtime = self.runtimes.get(group_id)
        if runtime is not None and not runtime.closed:
            return runtime
        store = await self._coordinators.leader_ready(group_id)
        runtime = self.runtimes.get(group_id)
        if runtime is not None and not runtime.closed:
            return runtime
        if self._tasks is None:
            raise NotCoordinatorLeader(0)
        host = self._coordinators.host

        async def propose(command: StreamCommand) -> Result:
            ticket = host.submit(group_id, encode_command(command))
            result = await ticket.committed
            assert not isinstance(result, OffsetsError), result
            return result  # type: ignore[return-value]

        runtime = StreamRuntime(
            propose,
            lambda: store.streams,
            self._now_ms,
            random.Random(self._rng.getrandbits(64)),
            member_id_prefix=f"n{self._node_id}",
        )
        self.runtimes[group_id] = runtime
        self._runtime_tasks[group_id] = self._tasks.create_task(
            self._run_runtime(group_id, runtime), name=f"stream groups of {group_id}"
        )
        log.info("coordinator group %d: leading its stream groups", group_id)
        return runtime

    async def _run_runtime(self, group_id: int, runtime: StreamRuntime) -> None:
        while not runtime.closed:
            try:
                await runtime.run(self._partition_count)
            except RuntimeClosedError:
                return
            except HostError as exc:
                if not self._leads(group_id):
                    self._close_runtime(group_id)
                    return
                log.info("coordinator group %d: stream proposal retried: %s", group_id, exc)
                await asyncio.sleep(RUNTIME_RETRY_S)

    # -- the leader's end of a Membership call ---------------------------------------

    async def serve_membership(
        self, requests: AsyncIterator[pb.MembershipRequest], context: Any
    ) -> AsyncIterator[pb.MembershipResponse]:
        try:
            first = await anext(aiter(requests))
        except StopAsyncIteration:
            return
        if first.WhichOneof("request") != "join":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message joins")
            return
        join = first.join
        await self._coordinators.check_cluster(join.cluster_id, context)
        group_id = join.coordinator_group_id
        try:
            runtime = await self.runtime_for(group_id)
            link = await runtime.join(
                join.consumer_group,
                join.member_id,
                (join.topic,),
                ((join.topic, join.partition_count),),
                join.session_timeout_ms,
                join.rebalance_timeout_ms,
            )
        except JoinRefusedError as exc:
            yield _error_event(join_refused_error(join.consumer_group, exc.refused))
            return
        except NotCoordinatorLeader as exc:
            yield pb.MembershipResponse(not_leader=pb.MembershipNotLeader(leader_id=exc.leader_id))
            return
        except NotLeaderError as exc:
            yield pb.MembershipResponse(not_leader=pb.MembershipNotLeader(leader_id=exc.leader_id))
            return
        except (HostError, RuntimeClosedError):
            leader = self._coordinators.leader_of(group_id)
            yield pb.MembershipResponse(not_leader=pb.MembershipNotLeader(leader_id=leader))
            return

        async def read() -> None:
            async for request in requests:
                match request.WhichOneof("request"):
                    case "heartbeat":
                        runtime.seen(link.consumer_group, link.member_id)
                    case "ack":
                        runtime.ack(link.consumer_group, link.member_id, request.ack.generation)
            # A half-close: the member's stream closed, it leaves at once.
            try:
                await runtime.leave(link)
            except (HostError, RuntimeClosedError) as exc:
                log.info("member %r: leave not applied: %s", link.member_id, exc)

        reader = asyncio.create_task(read(), name="membership reader")
        try:
            while True:
                change = await link.next()
                if isinstance(change, LinkState):
                    yield pb.MembershipResponse(
                        assignment=pb.MembershipAssignment(
                            member_id=change.member_id,
                            generation=change.generation,
                            partitions=_partitions_of(join.topic, change),
                        )
                    )
                    continue
                if change.reason == EndReason.NOT_LEADER:
                    leader = self._coordinators.leader_of(group_id)
                    yield pb.MembershipResponse(not_leader=pb.MembershipNotLeader(leader_id=leader))
                else:
                    yield _error_event(
                        ended_error(join.consumer_group, link.member_id, change.reason)
                    )
                return
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            runtime.detach(link)

    # -- the serving node's side ---------------------------------------------------------

    async def join(self, spec: JoinSpec, topic: Topic) -> MemberSession:
        connection, first = await self._connect(spec, topic, spec.member_id)
        if isinstance(first, LinkEnded):
            connection.detach()
            raise ended_error(spec.group, spec.member_id, first.reason)

        async def reconnect(member_id: str) -> tuple[Connection, LinkState | LinkEnded]:
            return await self._connect(spec, topic, member_id)

        async def commit_as(command: MemberCommit) -> Mapping[int, int]:
            return dict((await self._coordinators.commit(command)).offsets)

        session = LinkSession(
            spec,
            topic,
            first.member_id,
            connection,
            first,
            fetch=self._offsets.fetch,
            commit_as=commit_as,
            reconnect=reconnect,
        )
        return RelayingSession(session, topic, self._relay_addresses)

    def _relay_addresses(self, topic: str, partition: int) -> list[str]:
        """Where to read a partition placed on other nodes only (empty: it is placed here)."""
        found = self._metadata.state.topic(topic)
        if found is None or not 0 <= partition < found.partition_count:
            return []
        replicas = found.partitions[partition].replicas
        if self._node_id in replicas:
            return []
        addresses = [self._metadata.node_address(node) for node in replicas]
        return [a for a in addresses if a]

    async def _connect(
        self, spec: JoinSpec, topic: Topic, member_id: str
    ) -> tuple[Connection, LinkState | LinkEnded]:
        coordinators = self._coordinators
        coordinator = coordinators.coordinator_of(spec.group)
        group_id = coordinator.group_id

        async def here() -> tuple[Connection, LinkState | LinkEnded]:
            try:
                runtime = await self.runtime_for(group_id)
                link = await runtime.join(
                    spec.group,
                    member_id,
                    (topic.name,),
                    ((topic.name, topic.partition_count),),
                    spec.session_timeout_ms,
                    spec.rebalance_timeout_ms,
                )
            except RuntimeClosedError:
                raise NotCoordinatorLeader(0) from None
            except JoinRefusedError as exc:
                raise join_refused_error(spec.group, exc.refused) from None
            connection = LocalConnection(runtime, link)
            first = await link.next()
            if isinstance(first, LinkEnded) and first.reason == EndReason.NOT_LEADER:
                raise NotCoordinatorLeader(0)
            return connection, first

        async def there(node: int) -> tuple[Connection, LinkState | LinkEnded]:
            connection = RemoteConnection(
                coordinators.channel(node),
                pb.MembershipJoin(
                    cluster_id=coordinators.cluster_id,
                    coordinator_group_id=group_id,
                    consumer_group=spec.group,
                    member_id=member_id,
                    topic=topic.name,
                    partition_count=topic.partition_count,
                    session_timeout_ms=spec.session_timeout_ms,
                    rebalance_timeout_ms=spec.rebalance_timeout_ms,
                ),
            )
            first = await connection.open()
            return connection, first

        return await coordinators.route(spec.group, coordinator, here, there)


class RelayingSession:
    """A member's session that also opens relays for partitions placed on other nodes only.

    The coordinator assigns partitions without regard to where the
    member's stream is served (a Kafka consumer reads whatever it is
    assigned), and with more nodes than a topic's replication factor the
    serving node may hold no replica of some of them. Before the stream
    gets a change, each partition it starts that is placed elsewhere gets
    a `RelayedLog` (server/consume_relay.py) opened at the offset the member
    starts at; `Member.starts` (server/consume_group.py) takes it in place
    of a local log. Relays a change did not use are closed at the next
    change, all of them when the session closes.
    """

    def __init__(
        self,
        inner: MemberSession,
        topic: Topic,
        relay_addresses: Callable[[str, int], list[str]],
    ) -> None:
        self._inner = inner
        self._topic = topic
        self._relay_addresses = relay_addresses
        self.start = broker_pb2.StartPosition()
        self._prepared: dict[int, RelayedLog] = {}
        self._opened: list[RelayedLog] = []

    @property
    def member_id(self) -> str:
        return self._inner.member_id

    def use_start(self, start: broker_pb2.StartPosition) -> None:
        """The subscription's start policy, for partitions without a committed offset."""
        self.start = start

    def relayed(self, partition: int) -> RelayedLog | None:
        """The relay opened for `partition` by the last change (taken once)."""
        return self._prepared.pop(partition, None)

    async def next_event(self) -> MemberEvent:
        for log in self._prepared.values():
            log.close()
        self._prepared.clear()
        self._opened = [log for log in self._opened if not log.closed]
        event = await self._inner.next_event()
        if isinstance(event, AssignmentChange):
            topic = self._topic
            for number, committed in sorted(event.started.items()):
                addresses = self._relay_addresses(topic.name, number)
                if not addresses:
                    continue
                log = RelayedLog(topic.name, number, addresses, topic.config.record_bytes_max)
                self._opened.append(log)
                await log.open(self.start, committed)
                self._prepared[number] = log
        return event

    def seen(self) -> None:
        self._inner.seen()

    def ack(self, generation: int) -> None:
        self._inner.ack(generation)

    async def commit(self, generation: int, offsets: Mapping[int, int]) -> dict[int, int]:
        return await self._inner.commit(generation, offsets)

    async def close(self) -> None:
        for log in self._opened:
            log.close()
        self._opened.clear()
        self._prepared.clear()
        await self._inner.close()


__all__ = ["ClusterMembership", "RelayingSession", "RemoteConnection"]
