"""RelayLeaders: where a queue stream relays a partition its node has no replica of (issue 8).

With four nodes and replication factor 3, the node without a replica knew
no leader of the partition (its Raft host hosts no such group), so its
queue streams were refused NOT_LEADER naming no leader, for ever. It now
guesses from the placement as produce forwarding does and follows the
answers.
"""

from __future__ import annotations

import grpc
import pytest

from weir.cluster import controller as ctl
from weir.server.errors import BrokerError, not_leader
from weir.server.queue_relay import RelayLeaders
from weir.server.replicator import NotHostedError
from weir.server.topics import Topic, TopicConfig

pytestmark = pytest.mark.timeout(10)

HOSTED = 11  # partition 0: a replica here, leader 2 known
ELSEWHERE = 12  # partition 1: replicas 2, 3, 4, none here


class Host:
    clustered = True

    def __init__(self) -> None:
        self.addresses = {2: "n2:1", 3: "n3:1", 4: "n4:1"}

    def leader(self, group_id: int) -> tuple[bool, int]:
        return (False, 2) if group_id == HOSTED else (False, 0)

    def log(self, group_id: int) -> object:
        if group_id != HOSTED:
            raise NotHostedError(group_id)
        return object()

    def node_address(self, node_id: int) -> str:
        return self.addresses.get(node_id, "")


def placement(name: str) -> ctl.Topic:
    return ctl.Topic(
        name=name,
        config=ctl.TopicConfig(),
        replication_factor=3,
        partitions=(ctl.Partition(HOSTED, (2, 1, 3)), ctl.Partition(ELSEWHERE, (2, 3, 4))),
    )


def leaders(host: Host | None = None) -> RelayLeaders:
    topic = Topic("t", (HOSTED, ELSEWHERE), 3, TopicConfig())
    return RelayLeaders(topic, host or Host(), placement)  # type: ignore[arg-type]


def test_a_partition_with_no_replica_here_is_relayed_to_its_preferred_leader() -> None:
    assert leaders().of(1) == (False, 2)


def test_a_hosted_partition_keeps_what_its_raft_group_says() -> None:
    known = leaders()
    assert known.of(0) == (False, 2)
    assert not known.learn([0], 2, not_leader("t", 0, 3, "n3:1"))
    assert known.of(0) == (False, 2)


def test_a_refusal_naming_another_leader_is_followed_and_an_opened_relay_kept() -> None:
    known = leaders()
    assert known.learn([1], 2, not_leader("t", 1, 4, "n4:1"))
    assert known.of(1) == (False, 4)
    known.opened([1], 4)
    assert known.of(1) == (False, 4)
    # No leader named (an election at that replica): nothing to follow.
    assert not known.learn([1], 4, not_leader("t", 1, 0, ""))
    assert known.of(1) == (False, 4)


def test_a_guess_that_cannot_be_reached_moves_on_to_the_next_replica() -> None:
    known = leaders()
    down = BrokerError(grpc.StatusCode.UNAVAILABLE, "RELAY_FAILED", "connection refused")
    assert known.learn([1], 2, down)
    assert known.of(1) == (False, 3)


def test_replicas_without_an_address_are_skipped_and_none_known_is_no_leader() -> None:
    host = Host()
    del host.addresses[2]
    assert leaders(host).of(1) == (False, 3)
    host.addresses.clear()
    assert leaders(host).of(1) == (False, 0)


def test_no_placement_no_guess() -> None:
    topic = Topic("t", (HOSTED, ELSEWHERE), 3, TopicConfig())
    assert RelayLeaders(topic, Host(), None).of(1) == (False, 0)  # type: ignore[arg-type]
