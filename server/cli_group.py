"""`weir group list | describe | reset-offsets`: consumer groups and their lag."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import Any

import weir
from weir.group_types import GroupInfo
from weir.server.cli_common import (
    EXIT_OK,
    EXIT_USAGE,
    add_command,
    bootstrap,
    emit_json,
    table,
    wants_json,
)
from weir.types import StartSpec


def _group_dict(group: GroupInfo) -> dict[str, Any]:
    return {
        "name": group.name,
        "generation": group.generation,
        "coordinator_id": group.coordinator_id,
        "lag": group.lag,
        "members": [
            {"member_id": m.member_id, "generation": m.generation, "topics": list(m.topics)}
            for m in group.members
        ],
        "partitions": [
            {
                "topic": p.topic,
                "partition": p.partition,
                "committed_offset": p.committed_offset,
                "end_offset": p.end_offset,
                "lag": p.lag,
                "member_id": p.member_id,
            }
            for p in group.partitions
        ],
    }


def _group_list(args: argparse.Namespace) -> int:
    with weir.Admin(bootstrap(args)) as admin:
        groups = admin.list_groups()
    if wants_json(args):
        emit_json(
            [
                {
                    "name": g.name,
                    "member_count": g.member_count,
                    "generation": g.generation,
                    "topics": list(g.topics),
                }
                for g in groups
            ]
        )
        return EXIT_OK
    rows = [(g.name, g.member_count, g.generation, ",".join(g.topics)) for g in groups]
    print(table(("GROUP", "MEMBERS", "GENERATION", "TOPICS"), rows))
    return EXIT_OK


def _group_describe(args: argparse.Namespace) -> int:
    with weir.Admin(bootstrap(args)) as admin:
        group = admin.describe_group(args.name)
    if wants_json(args):
        emit_json(_group_dict(group))
        return EXIT_OK
    print(f"group:      {group.name}")
    print(f"generation: {group.generation}")
    print(f"coordinator: node {group.coordinator_id or 'none known'}")
    print(f"members:    {len(group.members)}")
    print(f"lag:        {group.lag}")
    print()
    rows = [
        (
            p.topic,
            p.partition,
            "-" if p.committed_offset is None else p.committed_offset,
            p.end_offset,
            p.lag,
            p.member_id or "-",
        )
        for p in group.partitions
    ]
    print(table(("TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "MEMBER"), rows))
    return EXIT_OK


class _Usage(Exception):
    pass


def _reset_target(args: argparse.Namespace) -> StartSpec:
    chosen = [
        name
        for name in ("to_earliest", "to_latest", "to_offset", "to_datetime")
        if getattr(args, name) not in (None, False)
    ]
    if len(chosen) != 1:
        raise _Usage("give exactly one of --to-earliest, --to-latest, --to-offset, --to-datetime")
    if args.to_earliest:
        return "earliest"
    if args.to_latest:
        return "latest"
    if args.to_offset is not None:
        return int(args.to_offset)
    try:
        when = datetime.fromisoformat(args.to_datetime)
    except ValueError:
        raise _Usage(f"--to-datetime {args.to_datetime!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise _Usage("--to-datetime needs a time zone, e.g. 2026-12-01T08:00:00+00:00")
    return when


def _group_reset(args: argparse.Namespace) -> int:
    try:
        target = _reset_target(args)
        partitions = [int(p) for p in args.partitions.split(",")] if args.partitions else None
    except (_Usage, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with weir.Admin(bootstrap(args)) as admin:
        stored = admin.reset_group_offsets(args.name, args.topic, target, partitions)
    if wants_json(args):
        emit_json({str(p): o for p, o in sorted(stored.items())})
        return EXIT_OK
    print(table(("PARTITION", "COMMITTED"), sorted(stored.items())))
    return EXIT_OK


def add_group_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `group` and its subcommands."""
    group = subparsers.add_parser("group", help="consumer groups: members, offsets, lag")
    commands = group.add_subparsers(dest="group_command", required=True)
    add_command(commands, "list", "every consumer group", _group_list)
    describe = add_command(
        commands, "describe", "members, owners, committed offsets and lag", _group_describe
    )
    describe.add_argument("name", help="the consumer group")
    reset = add_command(
        commands,
        "reset-offsets",
        "set a group's committed offsets (only with no member online)",
        _group_reset,
    )
    reset.add_argument("name", help="the consumer group")
    reset.add_argument("--topic", required=True, help="the topic whose offsets to reset")
    reset.add_argument("--partitions", help="comma-separated partition numbers (default: all)")
    reset.add_argument("--to-earliest", action="store_true", help="the oldest retained record")
    reset.add_argument("--to-latest", action="store_true", help="the end: skip everything")
    reset.add_argument("--to-offset", type=int, help="this offset on every partition named")
    reset.add_argument(
        "--to-datetime", help="the first record at or after this ISO time (with a time zone)"
    )
