"""`weir produce`: one record per input line, with a progress line on stderr."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import IO

import weir
from weir.errors import WeirError
from weir.server.cli_common import (
    EXIT_ERROR,
    EXIT_OK,
    add_command,
    bootstrap,
    emit_json,
    wants_json,
)

PROGRESS_INTERVAL_S = 0.25
# On a terminal, input that takes less than this gets no progress line.
PROGRESS_AFTER_S = 1.0


class _Progress:
    """Counts acknowledged records; draws a one-line progress display on stderr."""

    def __init__(self, enabled: bool, forced: bool, stream: IO[str]) -> None:
        self.enabled = enabled
        self.forced = forced
        self._stream = stream
        self._lock = threading.Lock()
        self.sent = 0
        self.acked = 0
        self.failed = 0
        self.first_error: WeirError | None = None
        self.started = time.monotonic()
        self._drawn_at = 0.0
        self._drew = False

    def done(self, fut: Future[weir.RecordMetadata]) -> None:
        exc = fut.exception()
        with self._lock:
            if exc is None:
                self.acked += 1
            else:
                self.failed += 1
                if self.first_error is None and isinstance(exc, WeirError):
                    self.first_error = exc

    def tick(self, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not self.forced and not self._drew and now - self.started < PROGRESS_AFTER_S:
            return  # short input on a terminal: no progress line at all
        if not final and now - self._drawn_at < PROGRESS_INTERVAL_S:
            return
        self._drawn_at = now
        elapsed = max(now - self.started, 1e-9)
        line = (
            f"\r{self.sent:>12,} sent  {self.acked:>12,} acked  "
            f"{self.acked / elapsed:>10,.0f} records/s"
        )
        if self.failed:
            line += f"  {self.failed:,} failed"
        self._stream.write(line + ("\n" if final else ""))
        self._stream.flush()
        self._drew = True


def _lines(source: IO[bytes]) -> Iterator[bytes]:
    for line in source:
        if line.endswith(b"\n"):
            line = line[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
        yield line


def _produce(args: argparse.Namespace) -> int:
    separator = args.key_separator.encode() if args.key_separator else None
    show_progress = args.progress or sys.stderr.isatty()
    progress = _Progress(show_progress, args.progress, sys.stderr)
    source: IO[bytes]
    source = open(args.file, "rb") if args.file else sys.stdin.buffer  # noqa: SIM115
    try:
        with weir.Producer(bootstrap(args), acks=args.acks, linger_ms=args.linger_ms) as producer:
            for line in _lines(source):
                key: bytes | None = None
                value = line
                if separator is not None and separator in line:
                    key, value = line.split(separator, 1)
                producer.send(args.topic, value, key=key).add_done_callback(progress.done)
                progress.sent += 1
                progress.tick()
            producer.flush()
    finally:
        if args.file:
            source.close()
    progress.tick(final=True)
    elapsed = time.monotonic() - progress.started
    if wants_json(args):
        emit_json(
            {
                "topic": args.topic,
                "records": progress.acked,
                "failed": progress.failed,
                "seconds": round(elapsed, 3),
            }
        )
    else:
        rate = progress.acked / elapsed if elapsed > 0 else 0.0
        print(
            f"produced {progress.acked} records to {args.topic} in {elapsed:.2f}s "
            f"({rate:,.0f} records/s)" + (f", {progress.failed} failed" if progress.failed else "")
        )
    if progress.first_error is not None:
        error = progress.first_error
        print(f"error: {error.reason or error.code.name}: {error.message}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def add_produce_command(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `produce`."""
    produce = add_command(subparsers, "produce", "send one record per input line", _produce)
    produce.add_argument("topic")
    produce.add_argument("--file", "-f", help="read lines from this file instead of stdin")
    produce.add_argument(
        "--key-separator", help="split each line into key and value at the first SEP"
    )
    produce.add_argument("--acks", choices=["all", "leader", "none"], default="all")
    produce.add_argument("--linger-ms", type=float, default=5.0, help=argparse.SUPPRESS)
    produce.add_argument(
        "--progress", action="store_true", help="show progress on stderr even if not a TTY"
    )
