"""The `weir` command line: `serve` runs a node; the client commands live in cli_client."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path

from weir.cluster.storage import Durability
from weir.server.cli_client import add_client_commands
from weir.server.config import NodeConfig

DEFAULT_BOOTSTRAP = "127.0.0.1:7070"
SWITCH_INTERVAL_S = 0.0005


def _serve(args: argparse.Namespace) -> int:
    from weir.cluster.storage import StorageError
    from weir.server.node import Node, NodeFailedError, StartError

    limits = {name: getattr(args, name) for name in _limit_fields()}
    try:
        config = NodeConfig(
            data_dir=Path(args.data_dir),
            listen=args.listen,
            advertised_address=args.advertised_address or "",
            node_id=args.node_id,
            durability=Durability(args.durability),
            **limits,
        )
    except ValueError as exc:
        print(f"error: invalid setting: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=os.environ.get("WEIR_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    def ready(node: Node) -> None:
        host = config.listen.rsplit(":", 1)[0]
        # The first stdout line is machine-readable: tests and scripts wait for it.
        print(
            f"weir serve: listening on {host}:{node.port} "
            f"(node {config.node_id}, data {config.data_dir}, durability {config.durability})",
            flush=True,
        )

    # The storage writer thread hands each commit back to the event loop; with
    # the default 5 ms switch interval a busy loop can make it wait that long
    # for the GIL, which would be added to every acknowledgement (DESIGN §8).
    sys.setswitchinterval(SWITCH_INTERVAL_S)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await Node(config).run(stop, ready)

    try:
        asyncio.run(main())
    except NodeFailedError as exc:
        # It served, then stopped on its own: say so rather than "cannot serve".
        print(f"error: stopped: {exc}", file=sys.stderr)
        return 1
    except (OSError, StartError, StorageError) as exc:
        print(f"error: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _limit_fields() -> list[str]:
    """Every integer setting of NodeConfig except the node id gets its own flag."""
    return [
        f.name
        for f in dataclasses.fields(NodeConfig)
        if f.type in (int, "int") and f.name != "node_id"
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weir", description="Weir message broker")
    parser.add_argument(
        "--bootstrap",
        "-b",
        default=os.environ.get("WEIR_BOOTSTRAP", DEFAULT_BOOTSTRAP),
        help="host:port of any node (env WEIR_BOOTSTRAP; default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run a broker node")
    serve.add_argument("--data-dir", default="./data", help="where LMDB files live")
    serve.add_argument("--listen", default=DEFAULT_BOOTSTRAP, help="host:port (port 0: any free)")
    serve.add_argument("--advertised-address", help="address clients use (default: --listen)")
    serve.add_argument("--node-id", type=int, default=1)
    serve.add_argument(
        "--durability",
        choices=[d.value for d in Durability],
        default=Durability.SYNC.value,
        help="sync: fsync before acknowledging (default); async: fsync every few ms",
    )
    defaults = NodeConfig(data_dir=Path("."))
    for name in _limit_fields():
        serve.add_argument(
            "--" + name.replace("_", "-"),
            type=int,
            default=getattr(defaults, name),
            metavar="N",
            help="default %(default)s",
        )
    serve.set_defaults(func=_serve)
    add_client_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
