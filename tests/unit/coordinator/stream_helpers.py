"""Helpers for driving a `StreamGroup` in tests."""

from __future__ import annotations

from collections import Counter

from weir.cluster.coordinator import (
    Assignment,
    Instruction,
    Join,
    StreamGroup,
    TopicPartition,
)

REBALANCE_MS = 5_000
SESSION_MS = 10_000


def join(
    now_ms: int, member_id: str, topics: dict[str, int], *, rebalance_ms: int = REBALANCE_MS
) -> Join:
    return Join(
        now_ms=now_ms,
        member_id=member_id,
        topics=tuple(sorted(topics)),
        partition_counts=tuple(sorted(topics.items())),
        session_timeout_ms=SESSION_MS,
        rebalance_timeout_ms=rebalance_ms,
    )


def owned(group: StreamGroup) -> dict[str, frozenset[TopicPartition]]:
    return {m.member_id: m.owned for m in group.members()}


def responsible(group: StreamGroup) -> dict[str, frozenset[TopicPartition]]:
    """Owned or being revoked: what nobody else may have."""
    return {m.member_id: m.owned | frozenset(m.revoking) for m in group.members()}


def assignments(instructions: tuple[Instruction, ...]) -> dict[str, Assignment]:
    return {i.member_id: i for i in instructions if isinstance(i, Assignment)}


def parts(topic: str, *numbers: int) -> frozenset[TopicPartition]:
    return frozenset(TopicPartition(topic, n) for n in numbers)


def no_partition_twice(group: StreamGroup) -> None:
    counts = Counter(p for ps in responsible(group).values() for p in ps)
    twice = [p for p, n in counts.items() if n > 1]
    assert not twice, f"owned by two members: {twice}"
