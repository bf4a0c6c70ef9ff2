"""`weir queue stats`: a topic's queue groups, ready, in flight, delayed and dead-lettered."""

from __future__ import annotations

import argparse
import dataclasses

import weir
from weir.server.cli_common import EXIT_OK, add_command, bootstrap, emit_json, table, wants_json

HEADERS = ("GROUP", "PARTITION", "READY", "IN_FLIGHT", "DELAYED", "DEAD_LETTERED")


def _queue_stats(args: argparse.Namespace) -> int:
    with weir.Admin(bootstrap(args)) as admin:
        stats = admin.queue_stats(args.topic, args.group)
    if wants_json(args):
        emit_json(
            {
                "topic": args.topic,
                "partitions": [dataclasses.asdict(p) for p in stats.partitions],
                "totals": [dataclasses.asdict(t) for t in stats.totals],
            }
        )
        return EXIT_OK
    if not stats.partitions:
        print(f"no queue group has state on {args.topic}")
        return EXIT_OK
    rows = [
        (p.group, p.partition, p.ready, p.in_flight, p.delayed, p.dead_lettered)
        for p in stats.partitions
    ]
    print(table(HEADERS, rows))
    print()
    totals = [(t.group, t.ready, t.in_flight, t.delayed, t.dead_lettered) for t in stats.totals]
    print(table(("TOTAL", *HEADERS[2:]), totals))
    replicas = sorted({p.partition for p in stats.partitions if not p.from_leader})
    if replicas:
        print(
            f"\npartitions {replicas}: a replica's state, as last replicated (no leader answered)"
        )
    if any(p.approximate for p in stats.partitions):
        print("\nready and delayed are estimates where the delayed-record index is large")
    return EXIT_OK


def add_queue_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `queue` and its subcommands."""
    queue = subparsers.add_parser("queue", help="queue groups (competing consumers)")
    commands = queue.add_subparsers(dest="queue_command", required=True)
    stats = add_command(
        commands,
        "stats",
        "per queue group and partition: ready, in flight, delayed, dead-lettered",
        _queue_stats,
    )
    stats.add_argument("topic", help="the topic")
    stats.add_argument("--group", help="one queue group (default: every one with state)")
