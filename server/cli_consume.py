"""`weir consume`: print records as they arrive, committing a group's progress."""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from typing import Any

import weir
from weir.server.cli_common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    add_command,
    bootstrap,
    wants_json,
)

# How often `consume --group` commits while it runs, besides at exit.
COMMIT_INTERVAL_S = 1.0


def _text_or_b64(data: bytes) -> tuple[str, bool]:
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), True


def _record_json(record: weir.ConsumedRecord) -> str:
    value, value_b64 = _text_or_b64(record.value)
    out: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "key": None,
        "value": value,
        "timestamp_ms": record.timestamp_ms,
    }
    if record.key is not None:
        key, key_b64 = _text_or_b64(record.key)
        out["key"] = key
        if key_b64:
            out["key_encoding"] = "base64"
    if value_b64:
        out["value_encoding"] = "base64"
    if record.headers:
        out["headers"] = {k: base64.b64encode(v).decode("ascii") for k, v in record.headers.items()}
    return json.dumps(out, sort_keys=True)


def _consume(args: argparse.Namespace) -> int:
    if args.max is not None and args.max < 0:
        raise ValueError("--max must not be negative")
    as_json = wants_json(args)
    out = sys.stdout.buffer
    count = 0
    interrupted = False
    with weir.Consumer(
        bootstrap(args),
        args.topic,
        group=args.group,
        partitions=args.partition,
        start="earliest" if args.from_beginning else "latest",
    ) as consumer:
        last_commit = time.monotonic()
        try:
            while args.max is None or count < args.max:
                record = consumer.poll(args.timeout_s)
                if record is None:
                    break  # idle for --timeout-s, or the broker ended the stream
                count += 1
                if as_json:
                    out.write(_record_json(record).encode() + b"\n")
                else:
                    out.write(record.value + b"\n")
                if args.group and time.monotonic() - last_commit >= COMMIT_INTERVAL_S:
                    out.flush()
                    consumer.commit()
                    last_commit = time.monotonic()
        except KeyboardInterrupt:
            interrupted = True
        out.flush()
        if args.group:
            consumer.commit()
    if not as_json:
        print(f"consumed {count} records", file=sys.stderr)
    return EXIT_INTERRUPTED if interrupted else EXIT_OK


def add_consume_command(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `consume`."""
    consume = add_command(subparsers, "consume", "print records as they arrive", _consume)
    consume.add_argument("topic")
    consume.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest retained record"
    )
    consume.add_argument("--group", "-g", help="consumer group: resume and commit its offsets")
    consume.add_argument("--max", type=int, help="stop after this many records")
    consume.add_argument(
        "--partition", "-p", type=int, action="append", help="read only this partition (repeat)"
    )
    consume.add_argument(
        "--timeout-s", type=float, help="stop when no record arrives for this many seconds"
    )
