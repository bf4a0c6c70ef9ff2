"""Plumbing shared by the `weir` client commands: bootstrap, output, exit codes.

Every command turns a `WeirError` into one line on stderr, `error: REASON:
message`, with exit code 2 for bad input (INVALID_ARGUMENT) and 1 for
anything else (`guarded`), and prints aligned columns for people (`table`)
or JSON for scripts (`emit_json`).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
from collections.abc import Callable, Sequence

from weir.errors import InvalidArgumentError, WeirError

DEFAULT_BOOTSTRAP = "127.0.0.1:7070"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Handler = Callable[[argparse.Namespace], int]
DISTRIBUTION = "weir"


def package_version() -> str:
    """The installed `weir` distribution's version, from its package metadata."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        # Run from a source tree that was never installed (no metadata to read).
        return "unknown (not installed)"


def bootstrap(args: argparse.Namespace) -> str:
    """One "host:port" or a comma-separated list of them; the SDK splits the list."""
    value = getattr(args, "bootstrap", None)
    return str(value or os.environ.get("WEIR_BOOTSTRAP", DEFAULT_BOOTSTRAP))


def wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def guarded(handler: Handler) -> Handler:
    """Run a handler, turning WeirErrors into one stderr line and an exit code."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except WeirError as exc:
            reason = exc.reason or exc.code.name
            print(f"error: {reason}: {exc.message}", file=sys.stderr)
            return EXIT_USAGE if isinstance(exc, InvalidArgumentError) else EXIT_ERROR
        except ValueError as exc:
            print(f"error: INVALID_ARGUMENT: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            # The reader went away (`weir consume t | head`): not an error.
            _silence_stdout()
            return EXIT_OK

    return run


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Simple aligned columns, numbers right-aligned."""
    cells = [[str(c) for c in headers]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        all(isinstance(row[i], int) and not isinstance(row[i], bool) for row in rows) and rows
        for i in range(len(headers))
    ]
    lines = []
    for row in cells:
        parts = [
            cell.rjust(width) if numeric[i] else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return str(value)


def emit_json(value: object) -> None:
    print(json.dumps(value, sort_keys=True))


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Accept the global options after the subcommand too, without overriding them."""
    parser.add_argument(
        "--bootstrap",
        "-b",
        default=argparse.SUPPRESS,
        help="host:port of any node, or several separated by commas",
    )
    parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )


def add_command(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    help: str,
    handler: Handler,
) -> argparse.ArgumentParser:
    """A subcommand that accepts the global options too and runs `handler` guarded."""
    parser: argparse.ArgumentParser = commands.add_parser(name, help=help)
    add_common_options(parser)
    parser.set_defaults(func=guarded(handler))
    return parser
