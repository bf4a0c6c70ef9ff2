"""The `weir` command line: the top-level parser, `--version`, and where each command lives.

`serve` (server/cli_serve.py) runs a node and needs the broker's
dependencies, installed by the `server` extra; the client commands
(server/cli_client.py) need only the SDK. Without the extra, `weir serve`
says which extra to install in one line instead of failing on an import.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from weir.server.cli_client import add_client_commands
from weir.server.cli_common import DEFAULT_BOOTSTRAP, EXIT_ERROR, package_version

# The extra of the `weir` distribution that installs the broker, and the
# top-level modules its packages provide (pyproject.toml lists the packages).
SERVER_EXTRA = "server"
SERVER_EXTRA_MODULES = ("lmdb", "grpc_health", "grpc_reflection")


def missing_server_modules() -> list[str]:
    """The modules of the `server` extra that cannot be imported here."""
    return [name for name in SERVER_EXTRA_MODULES if importlib.util.find_spec(name) is None]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weir", description="Weir message broker")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument(
        "--bootstrap",
        "-b",
        default=os.environ.get("WEIR_BOOTSTRAP", DEFAULT_BOOTSTRAP),
        help="host:port of any node (env WEIR_BOOTSTRAP; default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    commands = parser.add_subparsers(dest="command", required=True)
    missing = missing_server_modules()
    if missing:
        _add_serve_without_server(commands, missing)
    else:
        from weir.server.cli_serve import add_serve_command

        add_serve_command(commands)
    add_client_commands(commands)
    return parser


def _add_serve_without_server(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    missing: list[str],
) -> None:
    """`serve` that only says which extra to install; it takes any arguments (and no --help)."""
    serve = commands.add_parser(
        "serve",
        help=f"run a broker node (needs the '{SERVER_EXTRA}' extra)",
        add_help=False,
    )

    def refuse(args: argparse.Namespace) -> int:
        print(
            f"error: weir serve needs the broker's dependencies, which are not installed "
            f"(no module {', '.join(missing)}): install weir with the '{SERVER_EXTRA}' "
            f"extra, e.g. pip install './weir[{SERVER_EXTRA}]' from a clone of the repository",
            file=sys.stderr,
        )
        return EXIT_ERROR

    serve.set_defaults(func=refuse, takes_any_arguments=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "takes_any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
