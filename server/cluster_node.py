"""A node in cluster mode: the Raft host, the peer server, the controller, reconcile.

`ClusterRuntime` is what `Node.run` adds when the node was given peers. As
an async context it starts, in order: a second gRPC server on
`config.peer_listen` carrying the peer transport (`PeerService`) and
`ClusterService` (controller proposals forwarded by other nodes), then the
`RaftHost`, then group 0 (the controller) with every founding member as a
voter, fed into `ClusterMetadata`. It stops them in the reverse order.

Its background tasks, owned by the node's TaskGroup:

- *registration*: proposes `RegisterNode(node_id, client address)` until
  the controller holds it, so every node knows every node's client address
  (NOT_LEADER errors and DescribeCluster carry it);
- *reconcile*: after every change of the controller state (coalesced: one
  round covers every change applied before it starts), `reconcile(...)`
  and carry out its actions on the host: start hosted partition groups
  and coordinator groups (`ClusterCoordinators`, server/cluster_coordinator.py),
  stop and wipe groups this node no longer hosts (handing their leadership
  off first), confirm drops;
- *leader balancing* (`LeaderBalancer`, server/cluster_leaders.py): moves
  leaderships of the groups this node leads so live nodes lead evenly;
- *retention*: every replica trims its own copy of each partition by its
  topic's retention (`host.compact_partition`), as a single node does;
- *coordinator groups*: creates them once (the controller's leader),
  compacts their logs, forgets offsets of deleted topics;
- *stream groups*: the leader's runtime of each coordinator group this
  node leads (`ClusterMembership`, server/cluster_membership.py).

On the way out the runtime hands the leadership of every group it leads to
a caught-up voter (bounded), so the others do not wait for an election
timeout, then stops the host.

`ClusterView` answers the admin questions about the cluster as this node
sees it (nodes and liveness, the controller, leaders, replicas and lag).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from weir.cluster import controller as ctl
from weir.cluster.host import HostConfig, HostError, RaftHost
from weir.cluster.storage import NodeStorage, StorageError
from weir.cluster.transport.service import server_options
from weir.server.cluster_coordinator import ClusterCoordinators, ClusterOffsets
from weir.server.cluster_leaders import LeaderBalancer, LeaderWatch
from weir.server.cluster_membership import ClusterMembership
from weir.server.cluster_meta import ClusterMetadata, ControlProposer, describe_leader
from weir.server.cluster_replicator import RaftReplicator
from weir.server.cluster_topics import ClusterTopics
from weir.server.config import NodeConfig
from weir.server.errors import BrokerError
from weir.server.group_directory_cluster import ClusterGroupDirectory
from weir.server.retention import SkipPartition, Target, retention_limits, retention_loop
from weir.server.services import BROKER_SERVICE, produce_method

log = logging.getLogger("weir.server.cluster")

REGISTER_RETRY_INITIAL_S = 0.1
REGISTER_RETRY_MAX_S = 2.0
# A reconcile round that could not finish (no controller to confirm a drop,
# a storage error) is tried again after this long.
RECONCILE_RETRY_S = 1.0
# The peer server stops after the host, so nothing it serves is still
# useful: inbound Raft streams belong to the stopped transport, and a
# forwarded controller proposal cannot be answered any more. A peer that is
# paused or cut off never ends its inbound stream, and a grace period would
# only be waited out in full (1 s per stop before), so there is none.
PEER_SERVER_GRACE_S = 0.0


@dataclass(frozen=True, slots=True)
class NodeView:
    node_id: int
    address: str
    alive: bool
    leader_count: int


@dataclass(frozen=True, slots=True)
class ReplicaView:
    node_id: int
    address: str
    alive: bool
    # Entries behind the leader; -1 when this node does not lead the group.
    lag_entries: int


@dataclass(frozen=True, slots=True)
class PartitionView:
    leader_id: int
    leader_address: str
    replicas: tuple[ReplicaView, ...]


class ClusterRuntime:
    """The cluster half of a node; see the module docstring."""

    def __init__(
        self,
        config: NodeConfig,
        storage: NodeStorage,
        address: Callable[[], str],
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.node_id = config.node_id
        self._storage = storage
        self._address = address
        self._rng = rng or random.Random()
        founders = dict(config.peers)
        self._voters = sorted(founders)
        peers = {n: a for n, a in founders.items() if n != config.node_id}
        self._peer_addresses = peers
        self.host = RaftHost(
            HostConfig(node_id=config.node_id, cluster_id=config.cluster_id, peers=peers),
            storage,
            random.Random(self._rng.getrandbits(64)),
        )
        self.metadata = ClusterMetadata()
        self.proposer = ControlProposer(
            self.host,
            self.metadata,
            config.cluster_id,
            peers,
            random.Random(self._rng.getrandbits(64)),
        )
        self.watch = LeaderWatch(self.host)
        self.balancer = LeaderBalancer(self.host, self.metadata, self.watch)
        self.topics = ClusterTopics(self.metadata, self.proposer, config, self.watch.wait_led)
        self.coordinators = ClusterCoordinators(
            self.host,
            self.metadata,
            self.proposer,
            cluster_id=config.cluster_id,
            peers=peers,
            founders=len(founders),
            count=config.coordinator_groups,
            rng=random.Random(self._rng.getrandbits(64)),
        )
        self.offsets = ClusterOffsets(self.coordinators, self.metadata)
        self.membership = ClusterMembership(
            self.coordinators,
            self.metadata,
            self.offsets,
            node_id=config.node_id,
            rng=random.Random(self._rng.getrandbits(64)),
        )
        # Consumer groups for AdminService; adds its peer calls to the coordinators'.
        self.groups = ClusterGroupDirectory(self.coordinators)
        self.replicator = RaftReplicator(self.host, self.metadata.node_address)
        self.view = ClusterView(self)
        self._server: grpc.aio.Server | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        # The node's produce handler, served on the peer port too, so that
        # work forwarded between nodes travels the peer network; bound once
        # the node has built its produce path (`serve_forwarded_produce`).
        self._produce: Callable[[Any], Awaitable[None]] | None = None
        # Groups whose data this process dropped (reconcile's `stored` is
        # what is pending on us minus these; a restart drops them again,
        # which is idempotent, then confirms).
        self._dropped: set[int] = set()
        self.peer_port = 0

    async def __aenter__(self) -> ClusterRuntime:
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            server = grpc.aio.server(
                options=[
                    *server_options(self.host.config.transport_config()),
                    ("grpc.so_reuseport", 0),
                ]
            )
            self.host.add_peer_service(server)
            server.add_generic_rpc_handlers((self.proposer.handlers(),))
            server.add_generic_rpc_handlers((self.coordinators.handlers(),))
            server.add_generic_rpc_handlers((self._forwarded_produce_handlers(),))
            try:
                self.peer_port = server.add_insecure_port(self.config.peer_listen)
            except RuntimeError as exc:
                from weir.server.node import StartError

                raise StartError(f"cannot listen on {self.config.peer_listen}: {exc}") from None
            await server.start()
            self._server = server
            stack.push_async_callback(server.stop, PEER_SERVER_GRACE_S)
            await stack.enter_async_context(self.host)
            stack.callback(self.host.add_leader_listener(self.watch.on_leader))
            stack.push_async_callback(self.proposer.close)
            stack.push_async_callback(self.coordinators.close)
            self.host.start_group(
                ctl.CONTROLLER_GROUP,
                self._voters,
                partition=False,
                on_apply=self.metadata.on_apply,
                on_snapshot=self.metadata.on_snapshot,
            )
        except BaseException as exc:
            await stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._stack = stack
        log.info(
            "node %d joins cluster %r: peers on %s, voters %s",
            self.node_id,
            self.config.cluster_id,
            self.config.peer_listen,
            self._voters,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._stack is not None
        if exc_type is None:
            # A clean stop: the followers of our groups take over at once
            # instead of after an election timeout.
            await self.balancer.hand_off(self.balancer.led_groups())
        await self._stack.__aexit__(exc_type, exc, tb)

    def client_address(self) -> str:
        return self._address()

    def serve_forwarded_produce(self, handler: Callable[[Any], Awaitable[None]]) -> None:
        """Serves `handler` (the node's Produce handler) on the peer port."""
        self._produce = handler

    def forward_address(self, node_id: int) -> str:
        """Where this node forwards produce work for `node_id`: its peer address."""
        return self._peer_addresses.get(node_id, "")

    def _forwarded_produce_handlers(self) -> grpc.GenericRpcHandler:
        async def produce(context: Any) -> None:
            if self._produce is None:
                # The node has not finished starting; the forwarder answers
                # its client NOT_LEADER and the client retries.
                await context.abort(grpc.StatusCode.UNAVAILABLE, "this node is starting")
                return
            await self._produce(context)

        return grpc.method_handlers_generic_handler(
            BROKER_SERVICE,
            {"Produce": produce_method(produce, self.config.produce_request_records_max)},
        )

    def background(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        return [
            ("cluster registration", self._register()),
            ("cluster reconcile", self._reconcile_loop()),
            ("cluster leader balancing", self.balancer.run()),
            ("cluster retention", self._retention_loop()),
            ("cluster coordinator groups", self.coordinators.run()),
            ("cluster stream groups", self.membership.run()),
        ]

    # -- registration ---------------------------------------------------------------

    async def _register(self) -> None:
        delay_s = REGISTER_RETRY_INITIAL_S
        while True:
            me = ctl.NodeInfo(self.node_id, self._address())
            if self.metadata.state.node(self.node_id) == me:
                log.info("node %d is registered at %s", self.node_id, me.address)
                return
            try:
                await self.proposer.propose(ctl.RegisterNode(me))
                continue
            except BrokerError as exc:
                log.info("registering node %d waits for the controller: %s", self.node_id, exc)
            await asyncio.sleep(delay_s)
            delay_s = min(REGISTER_RETRY_MAX_S, delay_s * 2)

    # -- reconcile ----------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        self.metadata.request_reconcile()
        while True:
            await self.metadata.wait_version_change()
            if not await self._reconcile_once():
                await asyncio.sleep(RECONCILE_RETRY_S)
                self.metadata.request_reconcile()

    async def _reconcile_once(self) -> bool:
        """One round; False when something must be tried again later."""
        state = self.metadata.state
        running = set(self.host.groups()) - {ctl.CONTROLLER_GROUP}
        pending = {
            group_id
            for deleting in state.deleting()
            for group_id, nodes in deleting.pending
            if self.node_id in nodes
        }
        stored = pending - running - self._dropped
        done = True
        for action in ctl.reconcile(state, self.node_id, running, stored):
            try:
                await self._carry_out(action)
            except (BrokerError, HostError, StorageError) as exc:
                log.warning("reconcile: %s failed, retrying: %s", action, exc)
                done = False
            if isinstance(action, ctl.DeleteGroupData):
                # The next round confirms the drop, though the state has not changed.
                self.metadata.request_reconcile()
        return done

    async def _carry_out(self, action: ctl.Action) -> None:
        match action:
            case ctl.StopGroup(group_id):
                if group_id not in self._deleted_groups():
                    # Moved off this node: its other replicas go on serving.
                    # (A deleted topic's groups stop on every replica alike,
                    # so a transfer would only land on a replica being dropped.)
                    await self.balancer.hand_off([group_id])
                self.host.stop_group(group_id)
                self.coordinators.stopped(group_id)
                log.info("stopped group %d", group_id)
            case ctl.DeleteGroupData(group_id):
                await self.host.delete_group(group_id)
                self.coordinators.stopped(group_id)
                self._dropped.add(group_id)
                log.info("dropped the data of group %d", group_id)
            case ctl.StartGroup(group_id, voters, partition):
                # A new group's preferred leader campaigns at once, so it
                # leads from the start (and the creation answers sooner).
                campaign = self.balancer.preferred_leader(group_id) == self.node_id
                if partition:
                    self.host.start_group(
                        group_id, sorted(voters), partition=True, campaign=campaign
                    )
                else:
                    self.coordinators.start(group_id, voters, campaign)
                log.info("started group %d with voters %s", group_id, sorted(voters))
            case ctl.ConfirmDropped(group_ids):
                await self.proposer.propose(ctl.ConfirmDrops(self.node_id, group_ids))
                log.info("confirmed the drop of groups %s", list(group_ids))

    def _deleted_groups(self) -> set[int]:
        return {p.group_id for d in self.metadata.state.deleting() for p in d.topic.partitions}

    # -- retention ----------------------------------------------------------------------

    async def _retention_loop(self) -> None:
        """Trims this node's replica of every partition whose topic has a retention limit."""
        await retention_loop(
            self._storage,
            self._retention_targets,
            self._trim,
            self.config.retention_check_interval_ms / 1000,
        )

    def _retention_targets(self) -> Iterator[Target]:
        running = set(self.host.groups())
        for topic in self.metadata.state.topics():
            bounds = retention_limits(topic.config.retention_bytes, topic.config.retention_ms)
            if bounds is not None:
                for number, group_id in enumerate(topic.group_ids):
                    if group_id in running:
                        yield (topic.name, number, group_id, *bounds)

    async def _trim(
        self, group_id: int, retention_bytes: int | None, retention_ms: int | None
    ) -> None:
        try:
            self.host.compact_partition(group_id, retention_bytes, retention_ms)
        except HostError as exc:
            raise SkipPartition(str(exc)) from exc


class ClusterView:
    """The cluster as this node sees it, for the admin service."""

    def __init__(self, runtime: ClusterRuntime) -> None:
        self._runtime = runtime

    def _alive(self, node_id: int) -> bool:
        runtime = self._runtime
        return node_id == runtime.node_id or runtime.host.peer_alive(node_id)

    def address(self, node_id: int) -> str:
        """A node's client address; this node knows its own before it registered."""
        runtime = self._runtime
        if node_id == runtime.node_id:
            return runtime.client_address()
        return runtime.metadata.node_address(node_id) or ""

    def controller_id(self) -> int:
        return describe_leader(self._runtime.host, ctl.CONTROLLER_GROUP)

    def nodes(self) -> list[NodeView]:
        """Founding members and registered nodes; an unregistered one has no address yet."""
        runtime = self._runtime
        state = runtime.metadata.state
        ids = sorted({n for n, _ in runtime.config.peers} | {n.node_id for n in state.nodes()})
        leaders: dict[int, int] = dict.fromkeys(ids, 0)
        for partition in state.partitions():
            leader = describe_leader(runtime.host, partition.group_id)
            if leader in leaders:
                leaders[leader] += 1
        return [NodeView(n, self.address(n), self._alive(n), leaders[n]) for n in ids]

    def partitions(self, name: str) -> list[PartitionView]:
        runtime = self._runtime
        host = runtime.host
        address = self.address
        views = []
        for partition in runtime.topics.controller_topic(name).partitions:
            group_id = partition.group_id
            leader = describe_leader(host, group_id)
            lag: dict[int, int] = {}
            try:
                progress = host.progress(group_id)
                if progress:
                    last = host.last_index(group_id)
                    lag = {n: max(0, last - match) for n, match in progress.items()}
            except HostError:
                pass
            replicas = tuple(
                ReplicaView(n, address(n), self._alive(n), lag.get(n, -1))
                for n in partition.replicas
            )
            views.append(PartitionView(leader, address(leader) if leader else "", replicas))
        return views
