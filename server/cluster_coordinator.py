"""The coordinator groups on a clustered node, and committed offsets through them.

A consumer group's state lives in one of the cluster's coordinator groups
(docs/groups.md, "Coordinator groups"): `coordinator_index(name, count)` is
Kafka's murmur2 of the group name (the SDK's partitioner), made positive,
modulo the number of coordinator groups. Those are opaque Raft groups that
reconcile starts on their replicas like partitions; this module holds
their state machines on this node (`CoordinatorStore`, one per group it
hosts) and does three things with them:

- **create** them: the controller's leader proposes `CreateCoordinatorGroups`
  once the founding members registered (or, after `CREATE_WAIT_S`, once
  three did), also on the first start of a cluster created before they
  existed; the command is idempotent, so proposing it twice is harmless;
- **keep** them: every `MAINTAIN_INTERVAL_S`, each group's log is compacted
  into a snapshot once it applied `COMPACT_ENTRIES_MIN` entries since the
  last one, and the leader of each proposes `Forget` for offsets of
  partitions the controller no longer has (topics deleted). Reads never
  show such offsets meanwhile: offsets are keyed by partition group ids,
  never reused, and a reader asks only for the live topic's ids. Pruning
  from the coordinator side, rather than having the node that applies a
  topic deletion tell every coordinator, also removes offsets that a
  commit racing with the deletion stored after it, and needs no delivery
  guarantee: the next round retries what a leader change lost;
- **serve** commits and reads (`ClusterOffsets`, the `Offsets` of the
  consume path): on this node if it leads the consumer group's coordinator
  group, else forwarded to the leader over the peer port
  (`weir.cluster.v1.CoordinatorService`). Reads are served by the leader
  only, once it applied a command of its own term (an empty one if need
  be), so a member's next subscribe sees what it just committed. Without a leader within
  `ROUTE_TIMEOUT_S` the answer is UNAVAILABLE `NOT_COORDINATOR`, with the
  leader this node knows of (if any) in the metadata.

A commit never moves an offset backwards, so retrying one whose outcome is
unknown (a leader lost mid-way) is safe. An operator's `Reset` takes the
same way to the leader (`propose_offsets`; its peer call is served by
server/group_directory_cluster.py) and sets offsets exactly, so a retry
stores the same. A stream-mode member's commit
(`MemberCommit`, with its member id and generation) takes the same route
and is checked against the group's membership when applied.

The stores also hold stream groups; `ClusterMembership`
(server/cluster_membership.py) hears every applied stream command through
`on_stream_applied` and adds its `Membership` call to this service
(`extra_handlers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import grpc
import grpc.aio

from weir.cluster import controller as ctl
from weir.cluster.controller.model import REPLICATION_FACTOR_DEFAULT
from weir.cluster.coordinator.offsets import Commit, Forget, OffsetsError, Reset, Stored
from weir.cluster.coordinator.store import (
    CoordinatorStore,
    MemberCommit,
    StreamApplied,
    command_proto,
    commit_of,
    encode_command,
)
from weir.cluster.host import HostError, NotLeaderError, RaftHost
from weir.cluster.raft.types import Entry
from weir.cluster.v1 import coordinator_pb2 as pb
from weir.partitioner import murmur2
from weir.server.cluster_meta import ClusterMetadata, ControlProposer
from weir.server.errors import BrokerError, invalid, topic_not_found
from weir.server.topics import Topic

log = logging.getLogger("weir.server.cluster")
T = TypeVar("T")

COORDINATOR_SERVICE = "weir.cluster.v1.CoordinatorService"
# How long the controller's leader waits for every founding member to
# register before it creates the coordinator groups with those that did
# (at least three, or all founders if fewer), so a founder that is down at
# bootstrap does not hold them back for good.
CREATE_WAIT_S = 5.0
MAINTAIN_INTERVAL_S = 0.5
# How long a commit or a read looks for its coordinator's leader (an
# election takes one to two election timeouts) before NOT_COORDINATOR.
ROUTE_TIMEOUT_S = 5.0
FORWARD_CALL_TIMEOUT_S = 5.0
RETRY_INITIAL_S = 0.02
RETRY_MAX_S = 0.5


def coordinator_index(consumer_group: str, count: int) -> int:
    """The coordinator of a consumer group: positive murmur2 of its name, modulo `count`."""
    assert count >= 1
    return (murmur2(consumer_group.encode()) & 0x7FFFFFFF) % count


def not_coordinator(
    consumer_group: str, group_id: int, leader_id: int, address: str
) -> BrokerError:
    return BrokerError(
        grpc.StatusCode.UNAVAILABLE,
        "NOT_COORDINATOR",
        f"the coordinator of consumer group {consumer_group!r} has no leader now; retry",
        {"coordinator_group": group_id, "leader_id": leader_id, "leader_address": address},
    )


def _offsets_error(error: OffsetsError) -> BrokerError:
    return BrokerError(grpc.StatusCode[error.code], error.reason, error.message)


class _NotLeader(Exception):
    """This node does not lead the coordinator group; `leader_id` is its hint (0: none)."""

    def __init__(self, leader_id: int) -> None:
        super().__init__(leader_id)
        self.leader_id = leader_id


class ClusterCoordinators:
    """This node's coordinator groups: their stores, creation, upkeep and routing."""

    def __init__(
        self,
        host: RaftHost,
        metadata: ClusterMetadata,
        proposer: ControlProposer,
        *,
        cluster_id: str,
        peers: Mapping[int, str],
        founders: int,
        count: int,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._host = host
        self._metadata = metadata
        self._proposer = proposer
        self._cluster_id = cluster_id
        self._peers = dict(peers)
        self._founders = founders
        self._count = count
        self._rng = rng
        self._clock = clock
        self.stores: dict[int, CoordinatorStore] = {}
        self._channels: dict[int, grpc.aio.Channel] = {}
        self._create_wanted_at: float | None = None
        self.compactions = 0
        # Stream groups (server/cluster_membership.py): told every applied
        # stream command's result on this node, and more peer-port methods.
        self.on_stream_applied: Callable[[int, StreamApplied], None] | None = None
        self.extra_handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    @property
    def host(self) -> RaftHost:
        return self._host

    @property
    def cluster_id(self) -> str:
        return self._cluster_id

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    # -- the groups on this node -------------------------------------------------

    def start(self, group_id: int, voters: Iterable[int], campaign: bool) -> None:
        store = CoordinatorStore(group_id)
        self.stores[group_id] = store

        def on_apply(entry: Entry) -> object:
            result = store.apply(entry.index, entry.term, entry.data)
            if isinstance(result, StreamApplied) and self.on_stream_applied is not None:
                self.on_stream_applied(group_id, result)
            return result

        self._host.start_group(
            group_id,
            sorted(voters),
            partition=False,
            on_apply=on_apply,
            on_snapshot=store.restore,
            campaign=campaign,
        )

    def stopped(self, group_id: int) -> None:
        self.stores.pop(group_id, None)

    # -- creation and upkeep (a background task) ----------------------------------

    async def run(self, interval_s: float = MAINTAIN_INTERVAL_S) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self._create_if_needed()
                self._compact()
                await self._prune()
            except (BrokerError, HostError) as exc:
                log.info("coordinator groups: upkeep retried: %s", exc)

    async def _create_if_needed(self) -> None:
        state = self._metadata.state
        if state.coordinator_groups() or not self._leads(ctl.CONTROLLER_GROUP):
            self._create_wanted_at = None
            return
        now = self._clock()
        if self._create_wanted_at is None:
            self._create_wanted_at = now
        registered = len(state.nodes())
        enough = min(REPLICATION_FACTOR_DEFAULT, self._founders)
        waited = now - self._create_wanted_at >= CREATE_WAIT_S
        if registered >= self._founders or (waited and registered >= enough):
            result = await self._proposer.propose(ctl.CreateCoordinatorGroups(self._count))
            assert isinstance(result, ctl.CoordinatorGroups), result
            log.info(
                "created %d coordinator groups: %s",
                len(result.groups),
                [p.group_id for p in result.groups],
            )

    def _leads(self, group_id: int) -> bool:
        try:
            return self._host.is_leader(group_id)
        except HostError:
            return False

    def _compact(self) -> None:
        host = self._host
        for group_id, store in list(self.stores.items()):
            if not store.should_compact():
                continue
            try:
                # The store's state is that of its applied index; the host
                # compacts only up to what it applied itself.
                if host.applied_index(group_id) < store.applied_index:
                    continue
                host.compact(group_id, store.applied_index, store.snapshot())
            except HostError:
                continue
            store.compacted()
            self.compactions += 1
            log.info("compacted coordinator group %d at %d", group_id, store.applied_index)

    async def _prune(self) -> None:
        state = self._metadata.state
        live = state.live_partition_ids()
        known = state.next_group_id
        for group_id, store in list(self.stores.items()):
            if not self._leads(group_id):
                continue
            gone = [g for g in store.offsets.partitions() if g < known and g not in live]
            if not gone:
                continue
            # Only a leader proposes, and the command names its ids: a Forget
            # that raced with a commit is proposed again next round.
            with contextlib.suppress(HostError):
                ticket = self._host.submit(group_id, encode_command(Forget(tuple(gone))))
                await ticket.committed
                log.info("coordinator group %d forgot offsets of groups %s", group_id, gone)

    def _ready(self, group_id: int, store: CoordinatorStore) -> bool:
        """This node leads the group and applied an entry of its own term."""
        try:
            host = self._host
            return host.is_leader(group_id) and store.applied_term == host.term(group_id)
        except HostError:
            return False

    # -- routing -------------------------------------------------------------------

    def coordinator_groups(self) -> list[ctl.Partition]:
        """The cluster's coordinator groups (none before the controller created them)."""
        return list(self._metadata.state.coordinator_groups())

    def coordinator_of(self, consumer_group: str) -> ctl.Partition:
        groups = self._metadata.state.coordinator_groups()
        if not groups:
            raise not_coordinator(consumer_group, 0, 0, "")
        return groups[coordinator_index(consumer_group, len(groups))]

    async def commit(self, command: Commit | MemberCommit) -> Stored:
        """Stores a commit at the consumer group's coordinator (a member's is checked there)."""
        consumer_group = (
            command.commit.consumer_group
            if isinstance(command, MemberCommit)
            else command.consumer_group
        )
        coordinator = self.coordinator_of(consumer_group)
        msg = pb.CommitGroupOffsetsRequest(
            cluster_id=self._cluster_id,
            coordinator_group_id=coordinator.group_id,
            commit=command_proto(command).commit_offsets,
        )

        async def here() -> Stored:
            return await self._commit_here(coordinator.group_id, command)

        async def there(node: int) -> Stored:
            response = await self._call(
                node, "CommitGroupOffsets", msg, pb.CommitGroupOffsetsResponse
            )
            if response.not_leader:
                raise _NotLeader(response.leader_id)
            if response.error_reason:
                raise BrokerError(
                    grpc.StatusCode[response.error_code],
                    response.error_reason,
                    response.error_message,
                )
            return Stored(tuple((o.group_id, o.offset) for o in response.offsets))

        return await self._route(consumer_group, coordinator, here, there)

    async def fetch(self, consumer_group: str, group_ids: Iterable[int]) -> dict[int, int]:
        coordinator = self.coordinator_of(consumer_group)
        wanted = sorted(set(group_ids))
        msg = pb.FetchGroupOffsetsRequest(
            cluster_id=self._cluster_id,
            coordinator_group_id=coordinator.group_id,
            consumer_group=consumer_group,
            group_ids=wanted,
        )

        async def here() -> dict[int, int]:
            return await self._fetch_here(coordinator.group_id, consumer_group, wanted)

        async def there(node: int) -> dict[int, int]:
            response = await self._call(
                node, "FetchGroupOffsets", msg, pb.FetchGroupOffsetsResponse
            )
            if response.not_leader:
                raise _NotLeader(response.leader_id)
            return {o.group_id: o.offset for o in response.offsets}

        return await self._route(consumer_group, coordinator, here, there)

    async def route(
        self,
        consumer_group: str,
        coordinator: ctl.Partition,
        here: Callable[[], Awaitable[T]],
        there: Callable[[int], Awaitable[T]],
    ) -> T:
        """Runs `here` if this node leads the coordinator group, else `there(leader)`.

        Retries (with backoff) on not-leader answers, dropped proposals and
        unreachable nodes; raises NOT_COORDINATOR after `ROUTE_TIMEOUT_S`.
        `here` and `there` raise `NotCoordinatorLeader(leader hint)` to move on.
        """
        return await self._route(consumer_group, coordinator, here, there)

    async def _route(
        self,
        consumer_group: str,
        coordinator: ctl.Partition,
        here: Callable[[], Awaitable[T]],
        there: Callable[[int], Awaitable[T]],
    ) -> T:
        group_id = coordinator.group_id
        delay_s = RETRY_INITIAL_S
        hint = 0
        try:
            async with asyncio.timeout(ROUTE_TIMEOUT_S):
                while True:
                    leader = hint or self._leader(group_id)
                    hint = 0
                    if not leader and group_id not in self.stores:
                        # Not a replica here: its preferred leader knows the leader.
                        leader = coordinator.preferred_leader
                    try:
                        if leader == self._host.node_id:
                            result: T = await here()
                            return result
                        if leader:
                            result = await there(leader)
                            return result
                    except _NotLeader as exc:
                        if exc.leader_id != leader:
                            hint = exc.leader_id
                    except NotLeaderError as exc:
                        hint = exc.leader_id
                    except HostError as exc:
                        # Dropped or unknown outcome: a commit is safe to retry.
                        log.info("coordinator group %d: retried: %s", group_id, exc)
                    except grpc.aio.AioRpcError as exc:
                        log.info(
                            "coordinator group %d: node %d did not answer: %s",
                            group_id,
                            leader,
                            exc.code(),
                        )
                    await asyncio.sleep(delay_s * (0.5 + self._rng.random() / 2))
                    delay_s = min(RETRY_MAX_S, delay_s * 2)
        except TimeoutError:
            leader = self._leader(group_id)
            address = (self._metadata.node_address(leader) or "") if leader else ""
            raise not_coordinator(consumer_group, group_id, leader, address) from None

    def _leader(self, group_id: int) -> int:
        try:
            return self._host.leader(group_id)
        except HostError:
            return 0

    async def propose_offsets(
        self, group_id: int, command: Commit | MemberCommit | Reset
    ) -> Stored:
        """Proposes an offsets command to a group this node leads; the stored offsets.

        Raises NotCoordinatorLeader (not leading), NotLeaderError/HostError
        (the proposal was dropped or its outcome is unknown) or the refusal
        as a BrokerError.
        """
        return await self._commit_here(group_id, command)

    async def _commit_here(self, group_id: int, command: Commit | MemberCommit | Reset) -> Stored:
        store = self.stores.get(group_id)
        if store is None or not self._host.is_leader(group_id):
            raise _NotLeader(self._leader(group_id))
        ticket = self._host.submit(group_id, encode_command(command))
        result = await ticket.committed
        if isinstance(result, OffsetsError):
            raise _offsets_error(result)
        assert isinstance(result, Stored), result
        return result

    async def leader_ready(self, group_id: int) -> CoordinatorStore:
        """See `_leader_ready`; raises NotCoordinatorLeader if this node does not lead."""
        return await self._leader_ready(group_id)

    def leader_of(self, group_id: int) -> int:
        return self._leader(group_id)

    async def call(self, node: int, method: str, request: Any, response_type: Any) -> Any:
        """A unary CoordinatorService call to `node`'s peer port."""
        return await self._call(node, method, request, response_type)

    def channel(self, node: int) -> grpc.aio.Channel:
        """The peer channel to `node`; raises NotCoordinatorLeader(0) for an unknown node."""
        channel = self._channels.get(node)
        if channel is None:
            address = self._peers.get(node)
            if address is None:
                raise _NotLeader(0)
            channel = grpc.aio.insecure_channel(address)
            self._channels[node] = channel
        return channel

    async def check_cluster(self, cluster_id: str, context: Any) -> None:
        await self._check_cluster(cluster_id, context)

    async def _leader_ready(self, group_id: int) -> CoordinatorStore:
        """The store of a group this node leads, once it applied an entry of its own term.

        The leader's own first entry (a NOOP) is not handed to the state
        machine, so a leader that has applied no command of its term yet
        commits an empty `Forget` first: once that is applied, so is every
        commit of the earlier leaders (Raft §8, like a read barrier).
        """
        store = self.stores.get(group_id)
        if store is None or not self._host.is_leader(group_id):
            raise _NotLeader(self._leader(group_id))
        if not self._ready(group_id, store):
            ticket = self._host.submit(group_id, encode_command(Forget(())))
            await ticket.committed
            if not self._ready(group_id, store):
                raise _NotLeader(self._leader(group_id))
        return store

    async def _fetch_here(
        self, group_id: int, consumer_group: str, group_ids: list[int]
    ) -> dict[int, int]:
        store = await self._leader_ready(group_id)
        offsets = store.offsets.group(consumer_group)
        return {g: offsets[g] for g in group_ids if g in offsets}

    async def _call(self, node: int, method: str, request: Any, response_type: Any) -> Any:
        channel = self.channel(node)
        call = channel.unary_unary(
            f"/{COORDINATOR_SERVICE}/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        return await call(request, timeout=FORWARD_CALL_TIMEOUT_S)

    # -- the receiving side ----------------------------------------------------------

    async def _check_cluster(self, cluster_id: str, context: Any) -> None:
        if cluster_id != self._cluster_id:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this node belongs to cluster {self._cluster_id!r}",
            )

    async def serve_commit(
        self, request: pb.CommitGroupOffsetsRequest, context: Any
    ) -> pb.CommitGroupOffsetsResponse:
        await self._check_cluster(request.cluster_id, context)
        try:
            stored = await self._commit_here(
                request.coordinator_group_id, commit_of(request.commit)
            )
        except _NotLeader as exc:
            return pb.CommitGroupOffsetsResponse(not_leader=True, leader_id=exc.leader_id)
        except NotLeaderError as exc:
            return pb.CommitGroupOffsetsResponse(not_leader=True, leader_id=exc.leader_id)
        except BrokerError as exc:
            return pb.CommitGroupOffsetsResponse(
                error_reason=exc.reason, error_code=exc.code.name, error_message=exc.message
            )
        except HostError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return pb.CommitGroupOffsetsResponse(
            offsets=[pb.GroupPartitionOffset(group_id=g, offset=o) for g, o in stored.offsets]
        )

    async def serve_fetch(
        self, request: pb.FetchGroupOffsetsRequest, context: Any
    ) -> pb.FetchGroupOffsetsResponse:
        await self._check_cluster(request.cluster_id, context)
        try:
            offsets = await self._fetch_here(
                request.coordinator_group_id, request.consumer_group, list(request.group_ids)
            )
        except _NotLeader as exc:
            return pb.FetchGroupOffsetsResponse(not_leader=True, leader_id=exc.leader_id)
        except NotLeaderError as exc:
            return pb.FetchGroupOffsetsResponse(not_leader=True, leader_id=exc.leader_id)
        except HostError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return pb.FetchGroupOffsetsResponse(
            offsets=[
                pb.GroupPartitionOffset(group_id=g, offset=o) for g, o in sorted(offsets.items())
            ]
        )

    def handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            COORDINATOR_SERVICE,
            {
                "CommitGroupOffsets": grpc.unary_unary_rpc_method_handler(
                    self.serve_commit,
                    request_deserializer=pb.CommitGroupOffsetsRequest.FromString,
                    response_serializer=pb.CommitGroupOffsetsResponse.SerializeToString,
                ),
                "FetchGroupOffsets": grpc.unary_unary_rpc_method_handler(
                    self.serve_fetch,
                    request_deserializer=pb.FetchGroupOffsetsRequest.FromString,
                    response_serializer=pb.FetchGroupOffsetsResponse.SerializeToString,
                ),
                **self.extra_handlers,
            },
        )


NotCoordinatorLeader = _NotLeader


class ClusterOffsets:
    """Consumer groups' committed offsets in a cluster: kept by their coordinator groups."""

    def __init__(self, coordinators: ClusterCoordinators, metadata: ClusterMetadata) -> None:
        self._coordinators = coordinators
        self._metadata = metadata

    async def fetch(self, group: str, topic: Topic, partitions: Iterable[int]) -> dict[int, int]:
        """The committed offsets of those partitions that have one."""
        numbers = list(partitions)
        if not numbers:
            return {}
        by_id = {topic.group_ids[p]: p for p in numbers}
        offsets = await self._coordinators.fetch(group, by_id)
        return {by_id[g]: o for g, o in offsets.items()}

    async def commit(self, group: str, topic: Topic, offsets: Mapping[int, int]) -> dict[int, int]:
        """Stores offsets that move forward; returns the stored offset of each partition."""
        if not offsets:
            return {}
        for partition in offsets:
            if not 0 <= partition < topic.partition_count:
                raise invalid(
                    "PARTITION_OUT_OF_RANGE",
                    f"topic {topic.name!r} has no partition {partition}",
                    topic=topic.name,
                    partition=partition,
                )
        live = self._metadata.state.live_partition_ids()
        if topic.group_ids[0] not in live:
            raise topic_not_found(topic.name)
        by_group = {topic.group_ids[p]: o for p, o in offsets.items()}
        stored = dict(
            (
                await self._coordinators.commit(Commit(group, tuple(sorted(by_group.items()))))
            ).offsets
        )
        return {p: stored[topic.group_ids[p]] for p in offsets}

    async def forget_log(self, group_id: int) -> None:
        """Nothing to do: the coordinator groups forget deleted partitions themselves."""
