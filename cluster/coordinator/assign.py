"""The target assignment of a stream group: sticky, balanced per topic, deterministic.

`target_assignment` is a pure function of the members' subscriptions, the
topics' partition counts and the previous target. It runs on every replica
of the coordinator group, so it never depends on dict or set iteration
order or on hashing: members and topics are walked in sorted order and
every tie is broken by member id.

Balance is per topic: the members subscribed to a topic hold
`count // members` or one more of its partitions. Across topics the extra
partitions go first to the members holding the fewest partitions of the
group so far, which keeps whole-group counts close, but only the per-topic
bound is promised (two single-partition topics and two members with
different subscriptions cannot always be balanced across the group).

Stickiness: the members that already hold more than the fair share get the
`count % members` larger shares first, every member keeps as many of the
partitions it held as its share allows (the lowest-numbered ones when it
must give some up), and only the rest move. For one topic this moves the
fewest partitions any balanced assignment can.
"""

from __future__ import annotations

from collections.abc import Mapping

from weir.cluster.coordinator.messages import TopicPartition


def target_assignment(
    subscriptions: Mapping[str, frozenset[str]],
    partition_counts: Mapping[str, int],
    previous: Mapping[str, frozenset[TopicPartition]],
) -> dict[str, frozenset[TopicPartition]]:
    """Each member's target partitions; a member with no partitions maps to an empty set."""
    member_ids = sorted(subscriptions)
    chosen: dict[str, set[TopicPartition]] = {m: set() for m in member_ids}
    topics = sorted({topic for m in member_ids for topic in subscriptions[m]})
    for topic in topics:
        count = partition_counts.get(topic, 0)
        if count <= 0:
            continue
        subscribers = [m for m in member_ids if topic in subscriptions[m]]
        for member_id, partitions in _spread_topic(
            count, subscribers, previous, topic, chosen
        ).items():
            chosen[member_id].update(TopicPartition(topic, p) for p in partitions)
    return {m: frozenset(chosen[m]) for m in member_ids}


def _spread_topic(
    count: int,
    subscribers: list[str],
    previous: Mapping[str, frozenset[TopicPartition]],
    topic: str,
    chosen: Mapping[str, set[TopicPartition]],
) -> dict[str, list[int]]:
    # What each subscriber held of this topic and may keep; a partition
    # claimed twice in `previous` (never, from the state machine) goes to
    # the first member in id order.
    held: dict[str, list[int]] = {}
    claimed: set[int] = set()
    for member_id in subscribers:
        mine = sorted(
            tp.partition
            for tp in previous.get(member_id, frozenset())
            if tp.topic == topic and tp.partition < count and tp.partition not in claimed
        )
        claimed.update(mine)
        held[member_id] = mine
    base, extra = divmod(count, len(subscribers))
    # Larger shares go to those that would lose a partition without one,
    # then to the members with the fewest partitions of the group so far.
    ranked = sorted(
        subscribers,
        key=lambda m: (-min(len(held[m]), base + 1), len(chosen[m]), m),
    )
    share = {m: base + (1 if rank < extra else 0) for rank, m in enumerate(ranked)}
    result = {m: held[m][: share[m]] for m in subscribers}
    kept = {p for partitions in result.values() for p in partitions}
    free = iter(p for p in range(count) if p not in kept)
    for member_id in subscribers:
        missing = share[member_id] - len(result[member_id])
        result[member_id].extend(next(free) for _ in range(missing))
    return result
