"""`weir cluster status` and `weir topic describe` against three real nodes (issue 6).

Status shows nodes (id, address, alive), the controller, leaders per node
and under-replicated partitions; describe shows each partition's leader
address and its replicas with their lag, asked of each partition's leader
(docs/cli.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest

import weir
from tests.support.cluster_process import ClusterProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PARTITIONS = 6


def weir_cli(cluster: ClusterProcess, node: int, *args: str) -> str:
    cmd = [sys.executable, "-m", "weir.server.cli", "--bootstrap", cluster.address(node), *args]
    result = subprocess.run(cmd, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def status(cluster: ClusterProcess, node: int) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(weir_cli(cluster, node, "--json", "cluster", "status"))
    return value


def describe(cluster: ClusterProcess, node: int, name: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(weir_cli(cluster, node, "--json", "topic", "describe", name))
    return value


def balanced_status(cluster: ClusterProcess, node: int) -> bool:
    current = status(cluster, node)
    # Leaders of the topic's partitions and of the six coordinator groups.
    counts = [n["leader_count"] for n in current["nodes"]]
    return counts == [4, 4, 4] and not current["under_replicated"]


def test_cluster_status_and_topic_describe_show_leaders_lag_and_under_replication(
    cluster: ClusterProcess,
) -> None:
    cluster.wait_converged()
    weir_cli(cluster, 1, "topic", "create", "orders", "--partitions", str(PARTITIONS))
    with weir.Producer(cluster.address(1)) as producer:
        for p in range(PARTITIONS):
            producer.send("orders", b"x", partition=p)
        producer.flush()
    cluster.wait_until(lambda: balanced_status(cluster, 2), 20, "balanced leaders in status")

    current = status(cluster, 2)
    assert current["node_id"] == 2
    assert current["controller_id"] in cluster.node_ids
    assert [(n["node_id"], n["address"], n["alive"]) for n in current["nodes"]] == [
        (n, cluster.address(n), True) for n in cluster.node_ids
    ]
    table = weir_cli(cluster, 2, "cluster", "status")
    assert "controller: node" in table
    assert table.splitlines()[4].split() == ["NODE", "ADDRESS", "ALIVE", "LEADERS", "CONTROLLER"]
    assert "under-replicated partitions: none" in table

    described = describe(cluster, 3, "orders")
    for p in described["partition_states"]:
        assert p["leader_address"] == cluster.address(p["leader_id"])
        # Asked of the leader: every replica's lag is known, none is behind
        # by more than the entries in flight.
        assert [r["node_id"] for r in p["replicas"]] == p["replica_ids"]
        assert all(r["alive"] and 0 <= r["lag_entries"] <= 2 for r in p["replicas"]), p
        assert p["under_replicated"] is False
    text = weir_cli(cluster, 3, "topic", "describe", "orders")
    assert "LEADER_ADDRESS" in text and cluster.address(1) in text

    # A dead node: its replicas are under-replicated, seen from the leaders.
    cluster.kill(3)
    time.sleep(0.5)

    def three_dead() -> bool:
        current = status(cluster, 1)
        alive = {n["node_id"]: n["alive"] for n in current["nodes"]}
        under = current["under_replicated"]
        # New leaders elected: each partition is listed by its leader.
        return not alive[3] and len(under) == PARTITIONS and all(u["leader_id"] for u in under)

    cluster.wait_until(three_dead, 30, "node 3 dead and every partition under-replicated")
    current = status(cluster, 1)
    for entry in current["under_replicated"]:
        dead = [r for r in entry["replicas"] if not r["alive"]]
        assert [r["node_id"] for r in dead] == [3], entry
    table = weir_cli(cluster, 1, "cluster", "status")
    assert f"under-replicated partitions: {PARTITIONS}" in table
    assert "3:dead" in table
