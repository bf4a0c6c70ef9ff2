"""The `weir` client commands: topics, produce, consume, cluster status.

`server/cli.py` owns the top-level parser (global `--bootstrap/-b` and
`--json`) and `serve`; `add_client_commands()` adds the rest. Every command
uses the blocking SDK, prints aligned columns for people or JSON for scripts,
and turns a `WeirError` into one line on stderr, `error: REASON: message`,
with exit code 2 for bad input (INVALID_ARGUMENT) and 1 for anything else.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import IO, Any

import weir
from weir.errors import InvalidArgumentError, WeirError

__all__ = ["add_client_commands"]

DEFAULT_BOOTSTRAP = "127.0.0.1:7070"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# How often `consume --group` commits while it runs, besides at exit.
COMMIT_INTERVAL_S = 1.0
PROGRESS_INTERVAL_S = 0.25
# On a terminal, input that takes less than this gets no progress line.
PROGRESS_AFTER_S = 1.0

Handler = Callable[[argparse.Namespace], int]


# -- plumbing ----------------------------------------------------------------


def _bootstrap(args: argparse.Namespace) -> str:
    """One "host:port" or a comma-separated list of them; the SDK splits the list."""
    value = getattr(args, "bootstrap", None)
    return str(value or os.environ.get("WEIR_BOOTSTRAP", DEFAULT_BOOTSTRAP))


def _json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def _guarded(handler: Handler) -> Handler:
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


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
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


def _emit_json(value: object) -> None:
    print(json.dumps(value, sort_keys=True))


def _limit(value: int) -> str:
    return "unlimited" if value < 0 else str(value)


def _replica_dict(replica: weir.ReplicaInfo) -> dict[str, Any]:
    return {
        "node_id": replica.node_id,
        "address": replica.address,
        "alive": replica.alive,
        "lag_entries": replica.lag_entries,
    }


def _replicas_cell(partition: weir.PartitionInfo) -> str:
    """`1:0,2:3,3:dead`: each replica with its lag in entries (`?` unknown, `dead`)."""
    if not partition.replicas:
        return ",".join(str(n) for n in partition.replica_ids)
    cells = []
    for replica in partition.replicas:
        if not replica.alive:
            state = "dead"
        elif replica.lag_entries < 0:
            state = "?"
        else:
            state = str(replica.lag_entries)
        cells.append(f"{replica.node_id}:{state}")
    return ",".join(cells)


# A replica further behind its leader than this counts as under-replicated
# (the caught-up bound leader balancing uses, docs/cluster.md).
LAG_ENTRIES_UNDER_REPLICATED = 64


def _under_replicated(partition: weir.PartitionInfo) -> bool:
    """Seen from its leader: a replica not alive, or lagging; no leader counts too."""
    if partition.leader_id == 0:
        return True
    return any(
        not r.alive or r.lag_entries > LAG_ENTRIES_UNDER_REPLICATED for r in partition.replicas
    )


def _from_leaders(topic: weir.TopicInfo) -> weir.TopicInfo:
    """The topic with each partition's replicas as its leader sees them (lag known).

    Only a partition's leader knows how far behind each replica is, so the
    partitions the answering node does not lead are asked of their leaders;
    a leader that cannot be reached leaves what the first node said.
    """
    by_leader: dict[str, list[int]] = {}
    for p in topic.partitions:
        if p.leader_address and any(r.lag_entries < 0 and r.alive for r in p.replicas):
            by_leader.setdefault(p.leader_address, []).append(p.partition)
    partitions = list(topic.partitions)
    for address, numbers in by_leader.items():
        try:
            with weir.Admin(address) as admin:
                seen = admin.describe_topic(topic.name)
        except WeirError:
            continue
        for number in numbers:
            theirs = seen.partitions[number] if number < len(seen.partitions) else None
            mine = partitions[number]
            if theirs is not None and theirs.leader_id == mine.leader_id:
                partitions[number] = dataclasses.replace(mine, replicas=theirs.replicas)
    return dataclasses.replace(topic, partitions=tuple(partitions))


def _topic_dict(topic: weir.TopicInfo, with_partitions: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": topic.name,
        "partitions": topic.partition_count,
        "replication_factor": topic.replication_factor,
        "retention_bytes": topic.config.retention_bytes,
        "retention_ms": topic.config.retention_ms,
        "record_bytes_max": topic.config.record_bytes_max,
    }
    if with_partitions:
        out["partition_states"] = [
            {
                "partition": p.partition,
                "start_offset": p.start_offset,
                "end_offset": p.end_offset,
                "size_bytes": p.size_bytes,
                "leader_id": p.leader_id,
                "leader_address": p.leader_address,
                "replica_ids": list(p.replica_ids),
                "replicas": [_replica_dict(r) for r in p.replicas],
                "under_replicated": _under_replicated(p) if p.replicas else False,
            }
            for p in topic.partitions
        ]
    return out


# -- topic -------------------------------------------------------------------


def _topic_create(args: argparse.Namespace) -> int:
    with weir.Admin(_bootstrap(args)) as admin:
        topic = admin.create_topic(
            args.name,
            args.partitions,
            args.replication_factor,
            retention_bytes=args.retention_bytes,
            retention_ms=args.retention_ms,
            record_bytes_max=args.record_bytes_max,
        )
    if _json(args):
        _emit_json(_topic_dict(topic))
    else:
        print(
            f"created topic {topic.name} ({topic.partition_count} partitions, "
            f"replication factor {topic.replication_factor})"
        )
    return EXIT_OK


def _topic_list(args: argparse.Namespace) -> int:
    with weir.Admin(_bootstrap(args)) as admin:
        topics = admin.list_topics()
    if _json(args):
        _emit_json([_topic_dict(t) for t in topics])
        return EXIT_OK
    rows = [
        (
            t.name,
            t.partition_count,
            t.replication_factor,
            _limit(t.config.retention_bytes),
            _limit(t.config.retention_ms),
            t.config.record_bytes_max,
        )
        for t in topics
    ]
    headers = ("TOPIC", "PARTITIONS", "RF", "RETENTION_BYTES", "RETENTION_MS", "RECORD_BYTES_MAX")
    print(_table(headers, rows))
    return EXIT_OK


def _topic_describe(args: argparse.Namespace) -> int:
    with weir.Admin(_bootstrap(args)) as admin:
        topic = admin.describe_topic(args.name)
    topic = _from_leaders(topic)
    if _json(args):
        _emit_json(_topic_dict(topic, with_partitions=True))
        return EXIT_OK
    config = topic.config
    print(f"topic:              {topic.name}")
    print(f"partitions:         {topic.partition_count}")
    print(f"replication factor: {topic.replication_factor}")
    print(f"retention bytes:    {_limit(config.retention_bytes)}")
    print(f"retention ms:       {_limit(config.retention_ms)}")
    print(f"record bytes max:   {config.record_bytes_max}")
    print()
    rows = [
        (
            p.partition,
            p.start_offset,
            p.end_offset,
            p.size_bytes,
            p.leader_id or "-",
            p.leader_address or "-",
            _replicas_cell(p),
        )
        for p in topic.partitions
    ]
    headers = ("PARTITION", "START", "END", "SIZE_BYTES", "LEADER", "LEADER_ADDRESS", "REPLICAS")
    print(_table(headers, rows))
    if any(p.replicas for p in topic.partitions):
        print()
        print("REPLICAS: node:lag in Raft entries behind the leader (? unknown, dead: not alive)")
    return EXIT_OK


def _topic_delete(args: argparse.Namespace) -> int:
    with weir.Admin(_bootstrap(args)) as admin:
        admin.delete_topic(args.name)
    if _json(args):
        _emit_json({"deleted": args.name})
    else:
        print(f"deleted topic {args.name}")
    return EXIT_OK


# -- cluster -----------------------------------------------------------------


def _under_replicated_partitions(
    cluster: weir.ClusterInfo, topics: Sequence[weir.TopicInfo]
) -> list[tuple[str, weir.PartitionInfo]]:
    """Every partition whose leader sees a replica dead or lagging, or with no leader.

    Each live node is asked about the partitions it leads (only a leader
    knows its replicas' lag); a partition no reachable node leads is listed
    with leader 0.
    """
    led: dict[tuple[str, int], weir.PartitionInfo] = {}
    for node in cluster.nodes:
        if not node.alive or not node.address:
            continue
        try:
            with weir.Admin(node.address) as admin:
                for topic in topics:
                    for p in admin.describe_topic(topic.name).partitions:
                        if p.leader_id == node.node_id:
                            led[(topic.name, p.partition)] = p
        except WeirError:
            continue
    found = []
    for topic in topics:
        for number in range(topic.partition_count):
            partition = led.get((topic.name, number))
            if partition is None:
                partition = weir.PartitionInfo(number, 0, 0, 0, 0, ())
            if _under_replicated(partition):
                found.append((topic.name, partition))
    return found


def _cluster_status(args: argparse.Namespace) -> int:
    with weir.Admin(_bootstrap(args)) as admin:
        cluster = admin.describe_cluster()
        topics = admin.list_topics()
    clustered = len(cluster.nodes) > 1
    under = _under_replicated_partitions(cluster, topics) if clustered else []
    if _json(args):
        _emit_json(
            {
                "cluster_id": cluster.cluster_id,
                "node_id": cluster.node_id,
                "version": cluster.version,
                "durability": cluster.durability,
                "request_bytes_max": cluster.request_bytes_max,
                "record_bytes_max_limit": cluster.record_bytes_max_limit,
                "controller_id": cluster.controller_id,
                "nodes": [
                    {
                        "node_id": n.node_id,
                        "address": n.address,
                        "alive": n.alive,
                        "leader_count": n.leader_count,
                    }
                    for n in cluster.nodes
                ],
                "under_replicated": [
                    {
                        "topic": name,
                        "partition": p.partition,
                        "leader_id": p.leader_id,
                        "replicas": [_replica_dict(r) for r in p.replicas],
                    }
                    for name, p in under
                ],
            }
        )
        return EXIT_OK
    controller = cluster.controller_id or "none known"
    print(f"cluster:    {cluster.cluster_id}")
    print(f"answered:   node {cluster.node_id} (weir {cluster.version}, {cluster.durability})")
    print(f"controller: node {controller}")
    print()
    rows = [
        (n.node_id, n.address or "-", n.alive, n.leader_count, n.node_id == cluster.controller_id)
        for n in cluster.nodes
    ]
    print(_table(("NODE", "ADDRESS", "ALIVE", "LEADERS", "CONTROLLER"), rows))
    if clustered:
        print()
        if not under:
            print("under-replicated partitions: none")
        else:
            print(f"under-replicated partitions: {len(under)}")
            under_rows = [
                (name, p.partition, p.leader_id or "-", _replicas_cell(p)) for name, p in under
            ]
            print(_table(("TOPIC", "PARTITION", "LEADER", "REPLICAS"), under_rows))
    return EXIT_OK


# -- produce -----------------------------------------------------------------


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
        with weir.Producer(_bootstrap(args), acks=args.acks, linger_ms=args.linger_ms) as producer:
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
    if _json(args):
        _emit_json(
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


# -- consume -----------------------------------------------------------------


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
    as_json = _json(args)
    out = sys.stdout.buffer
    count = 0
    interrupted = False
    with weir.Consumer(
        _bootstrap(args),
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


# -- parser --------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser) -> None:
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


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def add_client_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `topic`, `produce`, `consume` and `cluster` to the `weir` command line."""
    topic = subparsers.add_parser("topic", help="create, list, describe and delete topics")
    topic_commands = topic.add_subparsers(dest="topic_command", required=True)

    create = topic_commands.add_parser("create", help="create a topic")
    _common(create)
    create.add_argument("name")
    create.add_argument("--partitions", type=int, default=1, help="default %(default)s")
    create.add_argument(
        "--replication-factor", type=_non_negative, default=0, help="0: the cluster's default"
    )
    create.add_argument("--retention-bytes", type=int, help="per partition; -1: unlimited")
    create.add_argument("--retention-ms", type=int, help="-1: unlimited")
    create.add_argument("--record-bytes-max", type=int, help="largest record accepted")
    create.set_defaults(func=_guarded(_topic_create))

    listing = topic_commands.add_parser("list", help="list topics")
    _common(listing)
    listing.set_defaults(func=_guarded(_topic_list))

    describe = topic_commands.add_parser("describe", help="a topic and its partitions")
    _common(describe)
    describe.add_argument("name")
    describe.set_defaults(func=_guarded(_topic_describe))

    delete = topic_commands.add_parser("delete", help="delete a topic and its records")
    _common(delete)
    delete.add_argument("name")
    delete.set_defaults(func=_guarded(_topic_delete))

    produce = subparsers.add_parser("produce", help="send one record per input line")
    _common(produce)
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
    produce.set_defaults(func=_guarded(_produce))

    consume = subparsers.add_parser("consume", help="print records as they arrive")
    _common(consume)
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
    consume.set_defaults(func=_guarded(_consume))

    cluster = subparsers.add_parser("cluster", help="inspect the cluster")
    cluster_commands = cluster.add_subparsers(dest="cluster_command", required=True)
    status = cluster_commands.add_parser("status", help="nodes and their state")
    _common(status)
    status.set_defaults(func=_guarded(_cluster_status))
