"""The controller on a node: group 0's state machine and the way to propose to it.

`ClusterMetadata` is what group 0 applies into on this node: it holds the
`ControllerState`, remembers the answers of recently applied commands by
index, and lets callers wait until this node has applied a given index
(read-your-writes on the node a client talks to) or until the state changed.

`ControlProposer` turns one controller command into its answer. On the
leader of group 0 it submits the command and awaits the apply; elsewhere it
forwards the command to the leader's `ClusterService.ProposeControl` (on
the leader's peer address), retrying with backoff while the leader is
unknown or has moved, within a deadline, and then waits until this node
has applied the command's index and reads the answer from its own copy:
every copy applies the same commands in the same order, so it answers the
same. A `ControllerError` becomes a `BrokerError` with its code and reason.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import grpc.aio

from weir.cluster.controller import (
    CONTROLLER_GROUP,
    Command,
    ControllerError,
    ControllerState,
    Result,
    decode_command,
    decode_state,
    encode_command,
)
from weir.cluster.host import HostError, NotLeaderError, RaftHost
from weir.cluster.raft.types import Entry
from weir.cluster.v1 import control_pb2
from weir.server.errors import BrokerError

log = logging.getLogger("weir.server.cluster")

CLUSTER_SERVICE = "weir.cluster.v1.ClusterService"
# Answers of applied commands kept for forwarders that apply the index after
# the leader answered; far more than the commands in flight at once.
RESULTS_KEPT_MAX = 4096
PROPOSE_TIMEOUT_MS = 15_000
RETRY_INITIAL_MS = 50
RETRY_MAX_MS = 1_000
FORWARD_CALL_TIMEOUT_S = 12.0


def controller_error(error: ControllerError) -> BrokerError:
    return BrokerError(
        grpc.StatusCode[error.code], error.reason, error.message, dict(error.metadata)
    )


def no_controller(what: str) -> BrokerError:
    return BrokerError(
        grpc.StatusCode.UNAVAILABLE,
        "NO_CONTROLLER",
        f"the cluster's controller did not answer in time ({what}); retry",
    )


class ClusterMetadata:
    """Group 0's state machine on this node and the ways to wait for it."""

    def __init__(self) -> None:
        self.state = ControllerState()
        self.applied_index = 0
        self._results: collections.OrderedDict[int, Result] = collections.OrderedDict()
        # Set (and replaced) at every apply: waiters take the current one.
        self._applied_event = asyncio.Event()
        self._version_event = asyncio.Event()

    # -- group 0's callbacks (called by the host's driver, on the loop) ---------

    def on_apply(self, entry: Entry) -> object:
        self.applied_index = max(self.applied_index, entry.index)
        if not entry.data:
            return None
        before = self.state.version
        result = self.state.apply(decode_command(entry.data))
        self._results[entry.index] = result
        while len(self._results) > RESULTS_KEPT_MAX:
            self._results.popitem(last=False)
        if self.state.version != before:
            self._version_event.set()
        self._notify()
        return result

    def on_snapshot(self, data: bytes) -> None:
        # Nobody compacts group 0 yet; a snapshot's index is then the host's
        # applied index, which `wait_applied` callers also accept.
        self.state = decode_state(data)
        self._version_event.set()
        self._notify()

    def _notify(self) -> None:
        event, self._applied_event = self._applied_event, asyncio.Event()
        event.set()

    # -- waiting ---------------------------------------------------------------------

    async def wait_applied(self, index: int) -> None:
        """Returns once this node applied `index` of group 0 (callers bound it in time)."""
        while self.applied_index < index:
            await self._applied_event.wait()

    async def wait_for(self, predicate: Callable[[ControllerState], bool]) -> None:
        """Returns once `predicate(state)` holds (callers bound it in time)."""
        while not predicate(self.state):
            await self._applied_event.wait()

    def result(self, index: int) -> Result | None:
        return self._results.get(index)

    async def wait_version_change(self) -> None:
        """Returns once the state changed since the last call (for reconcile)."""
        await self._version_event.wait()
        self._version_event.clear()

    def request_reconcile(self) -> None:
        """Makes `wait_version_change` return even though nothing changed (a retry)."""
        self._version_event.set()

    def node_address(self, node_id: int) -> str | None:
        """The client address node `node_id` registered, if it did."""
        node = self.state.node(node_id)
        return None if node is None else node.address


class ControlProposer:
    """Proposes controller commands from any node and answers with their result."""

    def __init__(
        self,
        host: RaftHost,
        metadata: ClusterMetadata,
        cluster_id: str,
        peers: Mapping[int, str],
        rng: random.Random,
    ) -> None:
        self._host = host
        self._metadata = metadata
        self._cluster_id = cluster_id
        self._peers = dict(peers)
        self._rng = rng
        self._channels: dict[int, grpc.aio.Channel] = {}

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    async def propose(self, command: Command, timeout_ms: int = PROPOSE_TIMEOUT_MS) -> Result:
        """The command's result once applied on this node; a ControllerError is raised."""
        try:
            async with asyncio.timeout(timeout_ms / 1000):
                index, result, uncertain = await self._propose_somewhere(encode_command(command))
                await self._metadata.wait_applied(index)
        except TimeoutError:
            raise no_controller(type(command).__name__) from None
        if result is None:
            result = self._metadata.result(index)
        if result is None:
            # Applied so long ago that its answer was forgotten (a very slow
            # caller): the outcome is certain, its details are not.
            raise no_controller(f"{type(command).__name__} answer lost")
        if isinstance(result, ControllerError):
            error = controller_error(result)
            if uncertain:
                # An earlier attempt may have been applied: its effect can be
                # what this one was refused for (TOPIC_EXISTS after our own
                # create), as the SDK marks its own retries.
                error.metadata["after_unknown_outcome"] = "true"
            raise error
        return result

    async def _propose_somewhere(self, data: bytes) -> tuple[int, Result | None, bool]:
        """Where the command was applied, its result if known here, and whether an
        earlier attempt's outcome is unknown (it may have been applied too)."""
        delay_ms = RETRY_INITIAL_MS
        uncertain = False
        while True:
            leader = self._host.leader(CONTROLLER_GROUP)
            try:
                if leader == self._host.node_id:
                    index, result = await self._propose_here(data)
                    return index, result, uncertain
                if leader:
                    index = await self._forward(leader, data)
                    if index:
                        return index, None, uncertain
            except NotLeaderError:
                pass
            except HostError as exc:
                if not exc.retriable:
                    raise
                uncertain = True
                log.info("controller proposal retried: %s", exc)
            except grpc.aio.AioRpcError as exc:
                uncertain = True
                log.info("forwarding to controller leader %d failed: %s", leader, exc.code())
            await asyncio.sleep(delay_ms * (0.5 + self._rng.random() / 2) / 1000)
            delay_ms = min(RETRY_MAX_MS, delay_ms * 2)

    async def _propose_here(self, data: bytes) -> tuple[int, Result]:
        ticket = self._host.submit(CONTROLLER_GROUP, data)
        result = await ticket.committed
        return ticket.index, result  # type: ignore[return-value]

    async def _forward(self, leader: int, data: bytes) -> int:
        """The index the leader applied the command at; 0 if it does not lead."""
        channel = self._channels.get(leader)
        if channel is None:
            channel = grpc.aio.insecure_channel(self._peers[leader])
            self._channels[leader] = channel
        call = channel.unary_unary(
            f"/{CLUSTER_SERVICE}/ProposeControl",
            request_serializer=control_pb2.ProposeControlRequest.SerializeToString,
            response_deserializer=control_pb2.ProposeControlResponse.FromString,
        )
        response: control_pb2.ProposeControlResponse = await call(
            control_pb2.ProposeControlRequest(command=data, cluster_id=self._cluster_id),
            timeout=FORWARD_CALL_TIMEOUT_S,
        )
        return 0 if response.not_leader else response.index

    # -- the receiving side -------------------------------------------------------------

    async def serve_propose(
        self, request: control_pb2.ProposeControlRequest, context: Any
    ) -> control_pb2.ProposeControlResponse:
        if request.cluster_id != self._cluster_id:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this node belongs to cluster {self._cluster_id!r}",
            )
        if not self._host.is_leader(CONTROLLER_GROUP):
            return control_pb2.ProposeControlResponse(
                not_leader=True, leader_id=self._host.leader(CONTROLLER_GROUP)
            )
        try:
            index, _ = await self._propose_here(bytes(request.command))
        except NotLeaderError as exc:
            return control_pb2.ProposeControlResponse(not_leader=True, leader_id=exc.leader_id)
        except HostError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return control_pb2.ProposeControlResponse(index=index)

    def handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            CLUSTER_SERVICE,
            {
                "ProposeControl": grpc.unary_unary_rpc_method_handler(
                    self.serve_propose,
                    request_deserializer=control_pb2.ProposeControlRequest.FromString,
                    response_serializer=control_pb2.ProposeControlResponse.SerializeToString,
                )
            },
        )


def describe_leader(host: RaftHost, group_id: int) -> int:
    """The leader of a group as this node knows it; 0 when unknown or not running here."""
    try:
        return host.leader(group_id)
    except HostError:
        return 0


__all__ = [
    "ClusterMetadata",
    "ControlProposer",
    "controller_error",
    "describe_leader",
]
