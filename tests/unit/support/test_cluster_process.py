"""The cluster harness's flags and ports, without starting a process."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cluster_process import ClusterProcess, free_ports

pytestmark = [pytest.mark.timeout(10)]


def parsed(args: list[str]) -> dict[str, str]:
    return dict(zip(args[::2], args[1::2], strict=True))


def test_free_ports_are_distinct() -> None:
    ports = free_ports(8)
    assert len(set(ports)) == 8
    assert all(0 < p < 65536 for p in ports)


def test_every_node_gets_its_own_addresses_and_the_same_founding_members(
    tmp_path: Path,
) -> None:
    cluster = ClusterProcess(tmp_path, nodes=3, extra_args=["--durability", "async"])
    cluster._pick_ports()
    assert len(set(cluster.client_ports.values()) | set(cluster.peer_ports.values())) == 6
    peers = {cluster.peers_arg(n) for n in cluster.node_ids}
    assert len(peers) == 1, "without proxies every node has the same --peers"
    (peers_value,) = peers
    assert peers_value == ",".join(f"{n}={cluster.peer_address(n)}" for n in (1, 2, 3))
    for node in cluster.node_ids:
        args = parsed(cluster.args(node))
        assert args["--listen"] == cluster.address(node)
        assert args["--node-id"] == str(node)
        assert args["--peer-listen"] == cluster.peer_address(node)
        assert args["--cluster-id"] == cluster.cluster_id
        assert args["--durability"] == "async"
    assert cluster.addresses == [cluster.address(n) for n in (1, 2, 3)]


def test_faults_need_proxies(tmp_path: Path) -> None:
    cluster = ClusterProcess(tmp_path, nodes=3)
    with pytest.raises(AssertionError, match="proxies=True"):
        cluster.isolate(1)
