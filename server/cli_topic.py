"""`weir topic create | update | list | describe | delete`, and how topics and replicas print.

`describe` asks each partition's leader for its replicas' lag (only a
leader knows it); `cluster status` uses the same replica cells.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

import weir
from weir.errors import WeirError
from weir.server.cli_common import (
    EXIT_OK,
    add_command,
    bootstrap,
    emit_json,
    table,
    wants_json,
)
from weir.types import TOPIC_NAME_CHARS_MAX

# A topic's default dead-letter topic is its name with this suffix.
DEAD_LETTER_SUFFIX = ".dlq"


def limit(value: int) -> str:
    return "unlimited" if value < 0 else str(value)


def replica_dict(replica: weir.ReplicaInfo) -> dict[str, Any]:
    return {
        "node_id": replica.node_id,
        "address": replica.address,
        "alive": replica.alive,
        "lag_entries": replica.lag_entries,
    }


def replicas_cell(partition: weir.PartitionInfo) -> str:
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


def under_replicated(partition: weir.PartitionInfo) -> bool:
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
        "max_deliveries": topic.config.max_deliveries,
        "retry_backoff_ms_min": topic.config.retry_backoff_ms_min,
        "retry_backoff_ms_max": topic.config.retry_backoff_ms_max,
        "dead_letter_topic": topic.config.dead_letter_topic,
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
                "replicas": [replica_dict(r) for r in p.replicas],
                "under_replicated": under_replicated(p) if p.replicas else False,
            }
            for p in topic.partitions
        ]
    return out


def _config_options(args: argparse.Namespace) -> dict[str, Any]:
    """The config flags given (None for those not given: default or unchanged)."""
    return {
        "retention_bytes": args.retention_bytes,
        "retention_ms": args.retention_ms,
        "record_bytes_max": args.record_bytes_max,
        "max_deliveries": args.max_deliveries,
        "retry_backoff_ms_min": args.retry_backoff_ms_min,
        "retry_backoff_ms_max": args.retry_backoff_ms_max,
        "dead_letter_topic": args.dead_letter_topic,
    }


def _topic_create(args: argparse.Namespace) -> int:
    with weir.Admin(bootstrap(args)) as admin:
        topic = admin.create_topic(
            args.name, args.partitions, args.replication_factor, **_config_options(args)
        )
    if wants_json(args):
        emit_json(_topic_dict(topic))
    else:
        print(
            f"created topic {topic.name} ({topic.partition_count} partitions, "
            f"replication factor {topic.replication_factor})"
        )
    _warn_without_dead_letters(topic)
    return EXIT_OK


def _topic_update(args: argparse.Namespace) -> int:
    with weir.Admin(bootstrap(args)) as admin:
        topic = admin.update_topic_config(args.name, **_config_options(args))
    if wants_json(args):
        emit_json(_topic_dict(topic))
    else:
        print(f"updated topic {topic.name}")
        _print_config(topic)
    _warn_without_dead_letters(topic)
    return EXIT_OK


def default_dead_letter_topic(name: str) -> str | None:
    """`<name>.dlq`, or None when that is too long to be a topic name (246+ characters)."""
    default = name + DEAD_LETTER_SUFFIX
    return default if len(default) <= TOPIC_NAME_CHARS_MAX else None


def dead_letter_cell(topic: weir.TopicInfo) -> str:
    """The dead-letter topic, with `(default)` when it is the implicit `<topic>.dlq`."""
    if topic.config.dead_letter_topic:
        return topic.config.dead_letter_topic
    default = default_dead_letter_topic(topic.name)
    if default is None:
        return (
            f"none (the name is too long for NAME{DEAD_LETTER_SUFFIX}: queue mode needs"
            " --dead-letter-topic, or --max-deliveries 0)"
        )
    return f"{default} (default)"


def _warn_without_dead_letters(topic: weir.TopicInfo) -> None:
    """Say at once what a queue-mode consumer would be refused for (DEAD_LETTER_TOPIC_REQUIRED)."""
    config = topic.config
    needed = config.max_deliveries and not config.dead_letter_topic
    if needed and default_dead_letter_topic(topic.name) is None:
        print(
            f"warning: DEAD_LETTER_TOPIC_REQUIRED: the name has {len(topic.name)} characters,"
            f" too many for the default dead-letter topic NAME{DEAD_LETTER_SUFFIX} (at most"
            f" {TOPIC_NAME_CHARS_MAX}); queue-mode consumers are refused until"
            " --dead-letter-topic or --max-deliveries 0 is set",
            file=sys.stderr,
        )


def _print_config(topic: weir.TopicInfo) -> None:
    config = topic.config
    deliveries = config.max_deliveries or "0 (never dead-letter)"
    print(f"retention bytes:    {limit(config.retention_bytes)}")
    print(f"retention ms:       {limit(config.retention_ms)}")
    print(f"record bytes max:   {config.record_bytes_max}")
    print(f"max deliveries:     {deliveries}")
    print(f"retry backoff ms:   {config.retry_backoff_ms_min}..{config.retry_backoff_ms_max}")
    print(f"dead-letter topic:  {dead_letter_cell(topic)}")


def _topic_list(args: argparse.Namespace) -> int:
    with weir.Admin(bootstrap(args)) as admin:
        topics = admin.list_topics()
    if wants_json(args):
        emit_json([_topic_dict(t) for t in topics])
        return EXIT_OK
    rows = [
        (
            t.name,
            t.partition_count,
            t.replication_factor,
            limit(t.config.retention_bytes),
            limit(t.config.retention_ms),
            t.config.record_bytes_max,
        )
        for t in topics
    ]
    headers = ("TOPIC", "PARTITIONS", "RF", "RETENTION_BYTES", "RETENTION_MS", "RECORD_BYTES_MAX")
    print(table(headers, rows))
    return EXIT_OK


def _topic_describe(args: argparse.Namespace) -> int:
    with weir.Admin(bootstrap(args)) as admin:
        topic = admin.describe_topic(args.name)
    topic = _from_leaders(topic)
    if wants_json(args):
        emit_json(_topic_dict(topic, with_partitions=True))
        return EXIT_OK
    print(f"topic:              {topic.name}")
    print(f"partitions:         {topic.partition_count}")
    print(f"replication factor: {topic.replication_factor}")
    _print_config(topic)
    print()
    rows = [
        (
            p.partition,
            p.start_offset,
            p.end_offset,
            p.size_bytes,
            p.leader_id or "-",
            p.leader_address or "-",
            replicas_cell(p),
        )
        for p in topic.partitions
    ]
    headers = ("PARTITION", "START", "END", "SIZE_BYTES", "LEADER", "LEADER_ADDRESS", "REPLICAS")
    print(table(headers, rows))
    if any(p.replicas for p in topic.partitions):
        print()
        print("REPLICAS: node:lag in Raft entries behind the leader (? unknown, dead: not alive)")
    return EXIT_OK


def _topic_delete(args: argparse.Namespace) -> int:
    with weir.Admin(bootstrap(args)) as admin:
        admin.delete_topic(args.name)
    if wants_json(args):
        emit_json({"deleted": args.name})
    else:
        print(f"deleted topic {args.name}")
    return EXIT_OK


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """The topic config flags of `create` (default when not given) and `update` (unchanged)."""
    parser.add_argument("--retention-bytes", type=int, help="per partition; -1: unlimited")
    parser.add_argument("--retention-ms", type=int, help="-1: unlimited")
    parser.add_argument("--record-bytes-max", type=int, help="largest record accepted")
    queue = parser.add_argument_group("queue mode")
    queue.add_argument(
        "--max-deliveries",
        type=int,
        help="deliveries before a record is dead-lettered, 0..1000; 0: never (default 5)",
    )
    queue.add_argument(
        "--retry-backoff-ms-min", type=int, help="first redelivery backoff (default 1000)"
    )
    queue.add_argument(
        "--retry-backoff-ms-max",
        type=int,
        help="largest redelivery backoff, at most 86400000 (default 60000)",
    )
    queue.add_argument(
        "--dead-letter-topic",
        help="where dead letters go; '' means TOPIC.dlq (the default; a TOPIC of over 245"
        " characters has none and needs this for queue mode)",
    )


def add_topic_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `topic` and its subcommands."""
    topic = subparsers.add_parser("topic", help="create, update, list, describe and delete topics")
    topic_commands = topic.add_subparsers(dest="topic_command", required=True)

    create = add_command(topic_commands, "create", "create a topic", _topic_create)
    create.add_argument("name")
    create.add_argument("--partitions", type=int, default=1, help="default %(default)s")
    create.add_argument(
        "--replication-factor", type=_non_negative, default=0, help="0: the cluster's default"
    )
    _add_config_flags(create)

    update = add_command(
        topic_commands,
        "update",
        "change a topic's config (flags not given keep their value)",
        _topic_update,
    )
    update.add_argument("name")
    _add_config_flags(update)

    add_command(topic_commands, "list", "list topics", _topic_list)

    describe = add_command(
        topic_commands, "describe", "a topic and its partitions", _topic_describe
    )
    describe.add_argument("name")

    delete = add_command(topic_commands, "delete", "delete a topic and its records", _topic_delete)
    delete.add_argument("name")
