"""`weir serve`: its settings (flags and WEIR_* variables) and the running node.

Only this module of the command line needs the broker's dependencies (the
`server` extra: LMDB, gRPC health checking and reflection); `server/cli.py`
imports it only when they are installed, so the client commands work with
the SDK alone.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

from weir.cluster.storage import Durability
from weir.server.cli_common import DEFAULT_BOOTSTRAP
from weir.server.config import DEFAULT_CLUSTER_ID, NodeConfig, parse_peers

SWITCH_INTERVAL_S = 0.0005
# The cyclic garbage collector, tuned for a long-running node (docs/operations.md
# "Garbage collection"): with CPython's default (700, 10, 10) a node under load
# ran a full collection every few seconds, 50-180 ms each with its heap, and
# spent ~11 % of its CPU in collections. The first generation is collected
# after this many more tracked objects were made than freed, and what the node
# built while starting is frozen out of every collection once it serves.
GC_GEN0_THRESHOLD = 50_000

ENV_PREFIX = "WEIR_"


class SettingError(ValueError):
    """A `weir serve` setting from a flag or the environment that cannot be used."""


@dataclasses.dataclass(frozen=True, slots=True)
class ServeSetting:
    """One setting of `weir serve`: a flag, and the environment variable of the same name.

    The flag `--peer-listen` is also `WEIR_PEER_LISTEN`; a flag given on the
    command line wins over the environment, which wins over the default. An
    empty environment variable counts as unset.
    """

    name: str
    default: str | int
    help: str
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def parse(self, raw: str, source: str) -> str | int:
        if isinstance(self.default, int):
            try:
                return int(raw.strip())
            except ValueError:
                raise SettingError(f"{source} must be an integer, not {raw!r}") from None
        if self.choices and raw not in self.choices:
            raise SettingError(f"{source} must be one of {', '.join(self.choices)}, not {raw!r}")
        return raw


def serve_settings() -> list[ServeSetting]:
    """Every setting of `weir serve`, in the order `--help` lists them."""
    defaults = NodeConfig(data_dir=Path("."))
    settings = [
        ServeSetting("data_dir", "./data", "where this node's LMDB files live"),
        ServeSetting(
            "listen", DEFAULT_BOOTSTRAP, "HOST:PORT where clients connect (port 0: any free)"
        ),
        ServeSetting(
            "advertised_address", "", "HOST:PORT clients are told to use (default: --listen)"
        ),
        ServeSetting("node_id", 1, "this node's id (>= 1), one of --peers"),
        ServeSetting(
            "peers",
            "",
            "founding members' peer addresses, this node's own included: "
            "'1=HOST:PORT,2=HOST:PORT,3=HOST:PORT', the same on every node "
            "(empty: run alone)",
        ),
        ServeSetting(
            "peer_listen",
            "",
            "HOST:PORT where this node accepts other nodes (default: its own entry in --peers)",
        ),
        ServeSetting("cluster_id", DEFAULT_CLUSTER_ID, "cluster name; the same on every node"),
        ServeSetting(
            "durability",
            Durability.SYNC.value,
            "sync: fsync before acknowledging; async: fsync every few ms",
            tuple(d.value for d in Durability),
        ),
    ]
    settings += [ServeSetting(name, getattr(defaults, name), "") for name in _limit_fields()]
    return settings


def serve_config(args: argparse.Namespace, environ: Mapping[str, str]) -> NodeConfig:
    """The node's configuration: flags first, then WEIR_* variables, then defaults.

    Raises SettingError (a ValueError) naming the flag or variable at fault,
    or ValueError from NodeConfig's own checks.
    """
    values: dict[str, str | int] = {}
    sources: dict[str, str] = {}
    for setting in serve_settings():
        value = getattr(args, setting.name)
        source = setting.flag
        if value is None:
            raw = environ.get(setting.env, "")
            source = setting.env
            value = setting.parse(raw, source) if raw != "" else setting.default
        values[setting.name] = value
        sources[setting.name] = source
    try:
        peers = parse_peers(str(values.pop("peers")))
    except ValueError as exc:
        raise SettingError(f"{sources['peers']}: {exc}") from None
    return NodeConfig(
        data_dir=Path(str(values.pop("data_dir"))),
        durability=Durability(str(values.pop("durability"))),
        peers=peers,
        **values,  # type: ignore[arg-type]
    )


def tune_gc() -> None:
    """The collector's first threshold for a node (GC_GEN0_THRESHOLD); the others kept."""
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def _serve(args: argparse.Namespace) -> int:
    from weir.cluster.storage import StorageError
    from weir.server.node import Node, NodeFailedError, StartError

    try:
        config = serve_config(args, os.environ)
    except ValueError as exc:
        print(f"error: invalid setting: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=os.environ.get("WEIR_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    def ready(node: Node) -> None:
        gc.freeze()  # what startup built lives as long as the node: never scanned again
        host = config.listen.rsplit(":", 1)[0]
        # The first stdout line is machine-readable: tests and scripts wait for it.
        peers = f", peers on {config.peer_listen}" if config.clustered else ""
        print(
            f"weir serve: listening on {host}:{node.port} "
            f"(node {config.node_id}, data {config.data_dir}, durability {config.durability}"
            f"{peers})",
            flush=True,
        )

    # The storage writer thread hands each commit back to the event loop; with
    # the default 5 ms switch interval a busy loop can make it wait that long
    # for the GIL, which would be added to every acknowledgement (DESIGN §8).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    tune_gc()

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


_METAVARS = {
    "data_dir": "DIR",
    "listen": "HOST:PORT",
    "advertised_address": "HOST:PORT",
    "peers": "ID=HOST:PORT,...",
    "peer_listen": "HOST:PORT",
    "cluster_id": "NAME",
}


def add_serve_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `serve` with one flag per setting to the `weir` command line."""
    serve = commands.add_parser(
        "serve",
        help="run a broker node",
        description="Run a broker node. Every flag can also be set by the environment "
        "variable WEIR_<FLAG> (e.g. --peer-listen: WEIR_PEER_LISTEN); a flag on the "
        "command line wins over the environment.",
    )
    for setting in serve_settings():
        # No argparse default: None means "not on the command line", so that
        # serve_config can fall back to the environment, then the default.
        parts = [setting.help] if setting.help else []
        parts.append(f"env {setting.env}")
        if setting.default != "":
            parts.append(f"default {setting.default}")
        is_int = isinstance(setting.default, int)
        serve.add_argument(
            setting.flag,
            type=int if is_int else str,
            choices=setting.choices or None,
            default=None,
            metavar="N" if is_int else _METAVARS.get(setting.name),
            help="; ".join(parts).replace("%", "%%"),
        )
    serve.set_defaults(func=_serve)
