"""The consumer groups for AdminService in a cluster: asked of the coordinator groups' leaders.

Every consumer group lives in one coordinator group (docs/groups.md), so:

- **describe** asks the group's coordinator leader (this node's store if it
  leads, else `CoordinatorService.DescribeConsumerGroup` on the peer port).
  The leader answers only once it applied a command of its own term
  (`ClusterCoordinators.leader_ready`, as offset reads), so a describe sees
  every commit and membership change acknowledged before it;
  `coordinator_id` is the node that answered;
- **list** asks the leader of every coordinator group the same way
  (`ListConsumerGroups`) and merges the answers. A coordinator group holds
  up to 100,000 consumer groups, so one answer is a page: groups by name
  after a cursor, until the next group would take the page over
  `LIST_PAGE_BYTES_MAX` (at least one group per page). One group's view is
  bounded by its members (at most 1,000) and its partitions, so a page
  stays around 1 MiB, far under gRPC's 4 MiB message limit, and a
  coordinator's groups cost at most a few dozen calls;
- **reset** proposes a `Reset` to the group's coordinator leader
  (`ResetGroupOffsets`, routed like a commit), which refuses it when
  applied while the group has members (GROUP_HAS_MEMBERS): the replicated
  `StreamGroup` decides, so every replica agrees however a join raced it.

Routing, retries and NOT_COORDINATOR after `ROUTE_TIMEOUT_S` are those of
commits (`ClusterCoordinators.route`).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from typing import Any

import grpc

from weir.cluster.controller import Partition
from weir.cluster.coordinator.offsets import Reset
from weir.cluster.coordinator.store import CoordinatorStore, reset_of, reset_proto
from weir.cluster.host import HostError, NotLeaderError
from weir.cluster.v1 import coordinator_pb2 as pb
from weir.server.cluster_coordinator import ClusterCoordinators, NotCoordinatorLeader
from weir.server.errors import BrokerError
from weir.server.group_admin import GroupView
from weir.server.group_directory import group_view, view_of_proto, view_proto

# One ListConsumerGroups answer stops before the next group's view would
# take it over this (serialized bytes); it holds at least one group.
LIST_PAGE_BYTES_MAX = 1 << 20


def _store_view(store: CoordinatorStore, name: str, coordinator_id: int) -> GroupView | None:
    return group_view(name, store.streams.get(name), store.offsets.group(name), coordinator_id)


def list_page(
    store: CoordinatorStore, after: str, page_bytes_max: int = LIST_PAGE_BYTES_MAX
) -> tuple[list[pb.ConsumerGroupView], bool]:
    """The groups named after `after`, ascending, within the page bound; and whether more exist."""
    names = store.consumer_group_names()
    page: list[pb.ConsumerGroupView] = []
    size = 0
    for i in range(bisect.bisect_right(names, after), len(names)):
        view = _store_view(store, names[i], 0)
        if view is None:
            continue  # a stream group without members or offsets is dropped when applied
        msg = view_proto(view)
        # Each repeated field entry costs its bytes plus a tag and a length.
        cost = msg.ByteSize() + 6
        if page and size + cost > page_bytes_max:
            return page, True
        page.append(msg)
        size += cost
    return page, False


class ClusterGroupDirectory:
    """The cluster's `GroupDirectory`, and the peer calls it answers; see the module docstring."""

    def __init__(
        self, coordinators: ClusterCoordinators, page_bytes_max: int = LIST_PAGE_BYTES_MAX
    ) -> None:
        assert page_bytes_max >= 1
        self._coordinators = coordinators
        self._page_bytes_max = page_bytes_max
        handlers = coordinators.extra_handlers
        handlers["ListConsumerGroups"] = grpc.unary_unary_rpc_method_handler(
            self.serve_list,
            request_deserializer=pb.ListConsumerGroupsRequest.FromString,
            response_serializer=pb.ListConsumerGroupsResponse.SerializeToString,
        )
        handlers["DescribeConsumerGroup"] = grpc.unary_unary_rpc_method_handler(
            self.serve_describe,
            request_deserializer=pb.DescribeConsumerGroupRequest.FromString,
            response_serializer=pb.DescribeConsumerGroupResponse.SerializeToString,
        )
        handlers["ResetGroupOffsets"] = grpc.unary_unary_rpc_method_handler(
            self.serve_reset,
            request_deserializer=pb.ResetGroupOffsetsRequest.FromString,
            response_serializer=pb.ResetGroupOffsetsResponse.SerializeToString,
        )

    @property
    def _node_id(self) -> int:
        return self._coordinators.host.node_id

    # -- GroupDirectory ----------------------------------------------------------------

    async def list_groups(self, after: str, limit: int) -> list[GroupView]:
        """The first `limit` groups by name after `after`, over every coordinator group.

        Each coordinator group is read up to `limit` groups (its pages are
        sorted by name), so this holds at most `limit` views per
        coordinator group before the merge keeps the first `limit`.
        """
        views: list[GroupView] = []
        for coordinator in self._coordinators.coordinator_groups():
            cursor, taken = after, 0
            while taken < limit:
                page, more = await self._page(coordinator, cursor)
                page = page[: limit - taken]
                views.extend(page)
                taken += len(page)
                if not more or not page:
                    break
                cursor = page[-1].name
        views.sort(key=lambda v: v.name)
        return views[:limit]

    async def _page(self, coordinator: Partition, after: str) -> tuple[list[GroupView], bool]:
        group_id = coordinator.group_id
        request = pb.ListConsumerGroupsRequest(
            cluster_id=self._coordinators.cluster_id, coordinator_group_id=group_id, after=after
        )

        async def here() -> tuple[list[GroupView], bool]:
            store = await self._coordinators.leader_ready(group_id)
            msgs, more = list_page(store, after, self._page_bytes_max)
            return [view_of_proto(msg, self._node_id) for msg in msgs], more

        async def there(node: int) -> tuple[list[GroupView], bool]:
            response = await self._coordinators.call(
                node, "ListConsumerGroups", request, pb.ListConsumerGroupsResponse
            )
            if response.not_leader:
                raise NotCoordinatorLeader(response.leader_id)
            return [view_of_proto(msg, node) for msg in response.groups], response.more

        try:
            return await self._coordinators.route("", coordinator, here, there)
        except BrokerError as exc:
            if exc.reason != "NOT_COORDINATOR":
                raise
            # Named for the coordinator group: no one consumer group is asked about.
            raise BrokerError(
                exc.code,
                exc.reason,
                f"coordinator group {group_id} has no leader now, so its consumer groups "
                "cannot be listed; retry",
                exc.metadata,
            ) from None

    async def describe(self, name: str) -> GroupView | None:
        coordinator = self._coordinators.coordinator_of(name)
        group_id = coordinator.group_id
        request = pb.DescribeConsumerGroupRequest(
            cluster_id=self._coordinators.cluster_id,
            coordinator_group_id=group_id,
            consumer_group=name,
        )

        async def here() -> GroupView | None:
            store = await self._coordinators.leader_ready(group_id)
            return _store_view(store, name, self._node_id)

        async def there(node: int) -> GroupView | None:
            response = await self._coordinators.call(
                node, "DescribeConsumerGroup", request, pb.DescribeConsumerGroupResponse
            )
            if response.not_leader:
                raise NotCoordinatorLeader(response.leader_id)
            return view_of_proto(response.group, node) if response.found else None

        return await self._coordinators.route(name, coordinator, here, there)

    async def reset_offsets(self, name: str, offsets: Mapping[int, int]) -> dict[int, int]:
        coordinator = self._coordinators.coordinator_of(name)
        group_id = coordinator.group_id
        command = Reset(name, tuple(sorted(offsets.items())))
        request = pb.ResetGroupOffsetsRequest(
            cluster_id=self._coordinators.cluster_id,
            coordinator_group_id=group_id,
            reset=reset_proto(command),
        )

        async def here() -> dict[int, int]:
            return dict((await self._coordinators.propose_offsets(group_id, command)).offsets)

        async def there(node: int) -> dict[int, int]:
            response = await self._coordinators.call(
                node, "ResetGroupOffsets", request, pb.ResetGroupOffsetsResponse
            )
            if response.not_leader:
                raise NotCoordinatorLeader(response.leader_id)
            if response.error_reason:
                raise BrokerError(
                    grpc.StatusCode[response.error_code],
                    response.error_reason,
                    response.error_message,
                )
            return {o.group_id: o.offset for o in response.offsets}

        return await self._coordinators.route(name, coordinator, here, there)

    # -- the receiving side (peer port) -------------------------------------------------

    async def serve_list(
        self, request: pb.ListConsumerGroupsRequest, context: Any
    ) -> pb.ListConsumerGroupsResponse:
        await self._coordinators.check_cluster(request.cluster_id, context)
        try:
            store = await self._coordinators.leader_ready(request.coordinator_group_id)
        except (NotCoordinatorLeader, NotLeaderError) as exc:
            return pb.ListConsumerGroupsResponse(not_leader=True, leader_id=exc.leader_id)
        except HostError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        groups, more = list_page(store, request.after, self._page_bytes_max)
        return pb.ListConsumerGroupsResponse(groups=groups, more=more)

    async def serve_describe(
        self, request: pb.DescribeConsumerGroupRequest, context: Any
    ) -> pb.DescribeConsumerGroupResponse:
        await self._coordinators.check_cluster(request.cluster_id, context)
        try:
            store = await self._coordinators.leader_ready(request.coordinator_group_id)
        except (NotCoordinatorLeader, NotLeaderError) as exc:
            return pb.DescribeConsumerGroupResponse(not_leader=True, leader_id=exc.leader_id)
        except HostError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        view = _store_view(store, request.consumer_group, 0)
        if view is None:
            return pb.DescribeConsumerGroupResponse()
        return pb.DescribeConsumerGroupResponse(found=True, group=view_proto(view))

    async def serve_reset(
        self, request: pb.ResetGroupOffsetsRequest, context: Any
    ) -> pb.ResetGroupOffsetsResponse:
        await self._coordinators.check_cluster(request.cluster_id, context)
        try:
            stored = await self._coordinators.propose_offsets(
                request.coordinator_group_id, reset_of(request.reset)
            )
        except (NotCoordinatorLeader, NotLeaderError) as exc:
            return pb.ResetGroupOffsetsResponse(not_leader=True, leader_id=exc.leader_id)
        except BrokerError as exc:
            return pb.ResetGroupOffsetsResponse(
                error_reason=exc.reason, error_code=exc.code.name, error_message=exc.message
            )
        except HostError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return pb.ResetGroupOffsetsResponse(
            offsets=[pb.GroupPartitionOffset(group_id=g, offset=o) for g, o in stored.offsets]
        )


__all__ = ["LIST_PAGE_BYTES_MAX", "ClusterGroupDirectory", "list_page"]
