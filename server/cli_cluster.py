"""`weir cluster status`: the nodes, the controller and the under-replicated partitions."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import weir
from weir.errors import WeirError
from weir.server.cli_common import (
    EXIT_OK,
    add_command,
    bootstrap,
    emit_json,
    table,
    wants_json,
)
from weir.server.cli_topic import replica_dict, replicas_cell, under_replicated


def _under_replicated_partitions(
    cluster: weir.ClusterInfo, topics: Sequence[weir.TopicInfo]
) -> list[tuple[str, weir.PartitionInfo]]:
    """Every partition whose leader sees a replica dead or lagging, or with no leader.

    Each live node is asked about the partitions it leads (only a leader
    knows its replicas' lag); a partition no reachable node leads is listed
    with leader 0.
    """
    led: dict[tuple[str, int], weir.PartitionInfo] = {}
    for node in cluster.nodes:
        if not node.alive or not node.address:
            continue
        try:
            with weir.Admin(node.address) as admin:
                for topic in topics:
                    for p in admin.describe_topic(topic.name).partitions:
                        if p.leader_id == node.node_id:
                            led[(topic.name, p.partition)] = p
        except WeirError:
            continue
    found = []
    for topic in topics:
        for number in range(topic.partition_count):
            partition = led.get((topic.name, number))
            if partition is None:
                partition = weir.PartitionInfo(number, 0, 0, 0, 0, ())
            if under_replicated(partition):
                found.append((topic.name, partition))
    return found


def _status_dict(
    cluster: weir.ClusterInfo, under: Sequence[tuple[str, weir.PartitionInfo]]
) -> dict[str, Any]:
    return {
        "cluster_id": cluster.cluster_id,
        "node_id": cluster.node_id,
        "version": cluster.version,
        "durability": cluster.durability,
        "request_bytes_max": cluster.request_bytes_max,
        "record_bytes_max_limit": cluster.record_bytes_max_limit,
        "controller_id": cluster.controller_id,
        "nodes": [
            {
                "node_id": n.node_id,
                "address": n.address,
                "alive": n.alive,
                "leader_count": n.leader_count,
            }
            for n in cluster.nodes
        ],
        "under_replicated": [
            {
                "topic": name,
                "partition": p.partition,
                "leader_id": p.leader_id,
                "replicas": [replica_dict(r) for r in p.replicas],
            }
            for name, p in under
        ],
    }


def _cluster_status(args: argparse.Namespace) -> int:
    with weir.Admin(bootstrap(args)) as admin:
        cluster = admin.describe_cluster()
        topics = admin.list_topics()
    clustered = len(cluster.nodes) > 1
    under = _under_replicated_partitions(cluster, topics) if clustered else []
    if wants_json(args):
        emit_json(_status_dict(cluster, under))
        return EXIT_OK
    controller = cluster.controller_id or "none known"
    print(f"cluster:    {cluster.cluster_id}")
    print(f"answered:   node {cluster.node_id} (weir {cluster.version}, {cluster.durability})")
    print(f"controller: node {controller}")
    print()
    rows = [
        (n.node_id, n.address or "-", n.alive, n.leader_count, n.node_id == cluster.controller_id)
        for n in cluster.nodes
    ]
    print(table(("NODE", "ADDRESS", "ALIVE", "LEADERS", "CONTROLLER"), rows))
    if clustered:
        print()
        if not under:
            print("under-replicated partitions: none")
        else:
            print(f"under-replicated partitions: {len(under)}")
            under_rows = [
                (name, p.partition, p.leader_id or "-", replicas_cell(p)) for name, p in under
            ]
            print(table(("TOPIC", "PARTITION", "LEADER", "REPLICAS"), under_rows))
    return EXIT_OK


def add_cluster_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `cluster` and its subcommands."""
    cluster = subparsers.add_parser("cluster", help="inspect the cluster")
    cluster_commands = cluster.add_subparsers(dest="cluster_command", required=True)
    add_command(cluster_commands, "status", "nodes and their state", _cluster_status)
