"""The `weir` client commands: topics, produce, consume, cluster status.

`server/cli.py` owns the top-level parser (global `--bootstrap/-b` and
`--json`) and `serve`; `add_client_commands()` adds the rest. Every command
uses the blocking SDK, prints aligned columns for people or JSON for scripts,
and turns a `WeirError` into one line on stderr, `error: REASON: message`,
with exit code 2 for bad input (INVALID_ARGUMENT) and 1 for anything else.
"""

from __future__ import annotations

import argparse

from weir.server.cli_cluster import add_cluster_commands
from weir.server.cli_consume import add_consume_command
from weir.server.cli_dlq import add_dlq_commands
from weir.server.cli_group import add_group_commands
from weir.server.cli_produce import add_produce_command
from weir.server.cli_queue import add_queue_commands
from weir.server.cli_topic import add_topic_commands

__all__ = ["add_client_commands"]


def add_client_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `topic`, `produce`, `consume` and `cluster` to the `weir` command line."""
    add_topic_commands(subparsers)
    add_produce_command(subparsers)
    add_consume_command(subparsers)
    add_cluster_commands(subparsers)
    add_group_commands(subparsers)
    add_dlq_commands(subparsers)
    add_queue_commands(subparsers)
