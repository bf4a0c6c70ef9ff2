"""`weir dlq list | replay`: a topic's dead letters, and sending them back to be processed again.

Dead letters are ordinary records of the topic's dead-letter topic (its
`dead_letter_topic` setting, else `<topic>.dlq`; a topic whose name is too
long for that has none, and no dead letters: both commands say so), each with the headers
queue dispatch wrote (docs/groups.md "Queue mode"): `weir-dlq-topic`,
`weir-dlq-partition`, `weir-dlq-offset`, `weir-dlq-deliveries`,
`weir-dlq-error`. Both commands are clients of the public API only.

`replay` reads the dead-letter topic as consumer group
`weir-dlq-replay` (resuming where an earlier replay stopped), appends each
record to the topic named in its `weir-dlq-topic` header with its key,
value and original headers (the `weir-dlq-*` ones dropped, a
`weir-replayed-from` header naming where it came from added), and commits
the group's offsets only after the broker acknowledged those appends: a
replay interrupted at any point replays some records again, never skips one
(at least once). It stops once it reached the end offsets the dead-letter
topic had when it started, so records dead-lettered meanwhile wait for the
next replay. A progress bar goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import weir
from weir.server.cli_common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    add_command,
    bootstrap,
    emit_json,
    table,
    wants_json,
)
from weir.server.cli_topic import DEAD_LETTER_SUFFIX, default_dead_letter_topic

DLQ_HEADER_PREFIX = "weir-dlq-"
REPLAY_GROUP = "weir-dlq-replay"
REPLAYED_FROM = "weir-replayed-from"
# How long `replay` and `list` wait for a record before deciding none is coming.
IDLE_TIMEOUT_S = 5.0
COMMIT_EVERY_RECORDS = 500


def dead_letter_topic(admin: weir.Admin, topic: str) -> str | None:
    """The topic's dead-letter topic, from its settings (TopicNotFoundError if no topic).

    None when it has none: no setting, and a name too long for `<topic>.dlq`
    (queue mode refuses such a topic, so it has no dead letters).
    """
    info = admin.describe_topic(topic)
    return info.config.dead_letter_topic or default_dead_letter_topic(topic)


def _no_dead_letter_topic(topic: str) -> str:
    return (
        f"{topic} has no dead-letter topic: its name is too long for the default"
        f" <topic>{DEAD_LETTER_SUFFIX}; set one with weir topic update --dead-letter-topic"
    )


def _header(record: weir.ConsumedRecord, name: str) -> str:
    value = record.headers.get(DLQ_HEADER_PREFIX + name, b"")
    return value.decode("utf-8", "replace")


def _dlq_dict(record: weir.ConsumedRecord) -> dict[str, Any]:
    return {
        "dlq_partition": record.partition,
        "dlq_offset": record.offset,
        "topic": _header(record, "topic"),
        "partition": _header(record, "partition"),
        "offset": _header(record, "offset"),
        "deliveries": _header(record, "deliveries"),
        "error": _header(record, "error"),
        "key": None if record.key is None else record.key.decode("utf-8", "replace"),
        "value": record.value.decode("utf-8", "replace"),
    }


def _ends(admin: weir.Admin, topic: str) -> dict[int, int]:
    return {p.partition: p.end_offset for p in admin.describe_topic(topic).partitions}


def _dlq_list(args: argparse.Namespace) -> int:
    with weir.Admin(bootstrap(args)) as admin:
        dlq = dead_letter_topic(admin, args.topic)
        try:
            ends = _ends(admin, dlq) if dlq is not None else {}
        except weir.errors.TopicNotFoundError:
            ends = {}  # nothing was ever dead-lettered
    rows: list[dict[str, Any]] = []
    if dlq is not None and any(ends.values()):
        with weir.Consumer(bootstrap(args), dlq, start="earliest") as consumer:
            seen: dict[int, int] = {}
            while len(rows) < args.max and any(seen.get(p, 0) < e for p, e in ends.items()):
                record = consumer.poll(IDLE_TIMEOUT_S)
                if record is None:
                    break
                seen[record.partition] = record.offset + 1
                if record.offset < ends.get(record.partition, 0):
                    rows.append(_dlq_dict(record))
    if wants_json(args):
        emit_json({"dead_letter_topic": dlq, "records": rows})
        return EXIT_OK
    if dlq is None:
        print(f"dead letters of {args.topic}: 0 ({_no_dead_letter_topic(args.topic)})")
        return EXIT_OK
    print(f"dead letters of {args.topic} (in {dlq}): {sum(ends.values())}")
    if rows:
        print(
            table(
                ("TOPIC", "PARTITION", "OFFSET", "DELIVERIES", "ERROR", "VALUE"),
                [
                    (
                        r["topic"],
                        r["partition"],
                        r["offset"],
                        r["deliveries"],
                        r["error"][:40],
                        r["value"][:40],
                    )
                    for r in rows
                ],
            )
        )
    return EXIT_OK


class _Progress:
    """`replayed N/M` on stderr, redrawn at most ten times a second."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total = total
        self.quiet = quiet
        self.done = 0
        self._drawn = 0.0

    def step(self, force: bool = False) -> None:
        if self.quiet or (not force and time.monotonic() - self._drawn < 0.1):
            return
        self._drawn = time.monotonic()
        width = 30
        filled = width * self.done // max(1, self.total)
        bar = "#" * filled + "." * (width - filled)
        print(f"\rreplaying [{bar}] {self.done}/{self.total}", end="", file=sys.stderr)


def _replay(args: argparse.Namespace) -> int:
    with weir.Admin(bootstrap(args)) as admin:
        dlq = dead_letter_topic(admin, args.topic)
        if dlq is None:
            if wants_json(args):
                emit_json({"dead_letter_topic": None, "replayed": 0, "total": 0})
            else:
                print(f"replayed 0 of 0 dead letters ({_no_dead_letter_topic(args.topic)})")
            return EXIT_OK
        try:
            ends = _ends(admin, dlq)
        except weir.errors.TopicNotFoundError:
            ends = {}
        try:
            group = admin.describe_group(REPLAY_GROUP)
            committed = {
                p.partition: p.committed_offset or 0 for p in group.partitions if p.topic == dlq
            }
        except weir.errors.GroupNotFoundError:
            committed = {}
    total = sum(max(0, e - committed.get(p, 0)) for p, e in ends.items())
    progress = _Progress(total, wants_json(args))
    replayed = 0
    interrupted = False
    if total:
        with (
            weir.Consumer(bootstrap(args), dlq, group=REPLAY_GROUP, start="earliest") as consumer,
            weir.Producer(bootstrap(args)) as producer,
        ):
            positions = dict(committed)
            try:
                while any(positions.get(p, 0) < e for p, e in ends.items()):
                    record = consumer.poll(IDLE_TIMEOUT_S)
                    if record is None:
                        break
                    if record.offset >= ends.get(record.partition, 0):
                        continue  # dead-lettered after the replay started
                    target = _header(record, "topic") or args.topic
                    headers = {
                        k: v
                        for k, v in record.headers.items()
                        if not k.startswith(DLQ_HEADER_PREFIX)
                    }
                    headers[REPLAYED_FROM] = f"{dlq}/{record.partition}/{record.offset}".encode()
                    producer.send(target, record.value, key=record.key, headers=headers)
                    positions[record.partition] = record.offset + 1
                    replayed += 1
                    progress.done = replayed
                    progress.step()
                    if replayed % COMMIT_EVERY_RECORDS == 0:
                        producer.flush()  # acknowledged before the offsets move past them
                        consumer.commit(positions)
            except KeyboardInterrupt:
                interrupted = True
            producer.flush()
            if positions:
                consumer.commit(positions)
    progress.step(force=True)
    if wants_json(args):
        emit_json({"dead_letter_topic": dlq, "replayed": replayed, "total": total})
    else:
        if total:
            print(file=sys.stderr)
        print(f"replayed {replayed} of {total} dead letters from {dlq}")
    return EXIT_INTERRUPTED if interrupted else EXIT_OK


def add_dlq_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `dlq` and its subcommands."""
    dlq = subparsers.add_parser("dlq", help="dead letters of queue-mode topics")
    commands = dlq.add_subparsers(dest="dlq_command", required=True)
    show = add_command(commands, "list", "the dead letters of a topic, oldest first", _dlq_list)
    show.add_argument("topic", help="the topic whose dead letters to show")
    show.add_argument("--max", type=int, default=100, help="show at most this many (default 100)")
    replay = add_command(
        commands, "replay", "append a topic's dead letters to it again, then commit", _replay
    )
    replay.add_argument("topic", help="the topic whose dead letters to replay")


__all__ = ["add_dlq_commands"]
