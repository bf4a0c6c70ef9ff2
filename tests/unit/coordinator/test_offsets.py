"""The coordinator groups' offsets state machine: pure, never backwards, snapshots."""

from __future__ import annotations

import random

import pytest

from weir.cluster.coordinator.offsets import (
    Commit,
    Forget,
    Forgotten,
    InvalidGroupName,
    InvalidOffset,
    InvalidPartition,
    OffsetsState,
    Stored,
    TooManyConsumerGroups,
)
from weir.cluster.coordinator.store import (
    COMPACT_ENTRIES_MIN,
    CoordinatorStore,
    decode_command,
    decode_offsets,
    encode_command,
    encode_offsets,
)

pytestmark = pytest.mark.timeout(30)


def test_commit_stores_and_answers_every_partition() -> None:
    state = OffsetsState()
    assert state.apply(Commit("g", ((7, 10), (3, 4)))) == Stored(((3, 4), (7, 10)))
    assert state.get("g", 7) == 10 and state.get("g", 3) == 4
    assert state.get("h", 7) is None and state.get("g", 8) is None
    state.check_invariants()


def test_committed_offsets_never_move_backwards() -> None:
    state = OffsetsState()
    state.apply(Commit("g", ((1, 10),)))
    assert state.apply(Commit("g", ((1, 4), (2, 1)))) == Stored(((1, 10), (2, 1)))
    assert state.get("g", 1) == 10
    assert state.apply(Commit("g", ((1, 11),))) == Stored(((1, 11),))
    assert state.apply(Commit("g", ((1, 11),))) == Stored(((1, 11),))


@pytest.mark.parametrize(
    ("command", "error"),
    [
        (Commit("", ((1, 1),)), InvalidGroupName),
        (Commit("a\0b", ((1, 1),)), InvalidGroupName),
        (Commit("x" * 256, ((1, 1),)), InvalidGroupName),
        (Commit("g", ((1, -1),)), InvalidOffset),
        (Commit("g", ((1, 1 << 63),)), InvalidOffset),
        (Commit("g", ((0, 1),)), InvalidPartition),
        (Commit("g", ((1 << 32, 1),)), InvalidPartition),
        (Commit("g", ((1, 1), (1, 2))), InvalidPartition),
        # Valid first, refused later: nothing of it is stored.
        (Commit("g", ((1, 5), (2, -3))), InvalidOffset),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(command: Commit, error: type) -> None:
    state = OffsetsState()
    state.apply(Commit("g", ((1, 3),)))
    before = state.items()
    assert isinstance(state.apply(command), error)
    assert state.items() == before
    state.check_invariants()


def test_consumer_groups_are_bounded() -> None:
    state = OffsetsState(consumer_groups_max=2)
    state.apply(Commit("a", ((1, 1),)))
    state.apply(Commit("b", ((1, 1),)))
    assert isinstance(state.apply(Commit("c", ((1, 1),))), TooManyConsumerGroups)
    # A known group may still commit, and an empty commit creates nothing.
    assert state.apply(Commit("a", ((2, 1),))) == Stored(((2, 1),))
    assert state.apply(Commit("c", ())) == Stored(())
    assert state.consumer_groups() == ["a", "b"]


def test_forget_drops_a_deleted_topics_offsets_of_every_group() -> None:
    state = OffsetsState()
    state.apply(Commit("a", ((1, 5), (2, 6))))
    state.apply(Commit("b", ((2, 7),)))
    assert state.apply(Forget((2, 99))) == Forgotten(2)
    assert state.items() == [("a", [(1, 5)])]
    assert state.apply(Forget((1,))) == Forgotten(1)
    assert state.items() == [] and state.partitions() == []
    # Forgetting again is harmless; new partitions (new group ids) start empty.
    assert state.apply(Forget((1, 2))) == Forgotten(0)
    state.apply(Commit("a", ((3, 1),)))
    assert state.get("a", 1) is None and state.get("a", 3) == 1
    state.check_invariants()


def _random_command(rng: random.Random) -> Commit | Forget:
    if rng.random() < 0.15:
        return Forget(tuple(rng.sample(range(1, 12), rng.randrange(1, 4))))
    group = rng.choice(["a", "b", "c", "d", ""])
    partitions = rng.sample(range(1, 12), rng.randrange(0, 4))
    return Commit(group, tuple((p, rng.randrange(-2, 100)) for p in partitions))


def test_random_logs_replay_from_a_snapshot_alike() -> None:
    for seed in range(200):
        rng = random.Random(seed)
        commands = [_random_command(rng) for _ in range(60)]
        cut = rng.randrange(len(commands) + 1)
        whole = OffsetsState()
        answers = []
        highest: dict[tuple[str, int], int] = {}
        for command in commands:
            answers.append(whole.apply(command))
            whole.check_invariants()
            if isinstance(command, Forget):
                highest = {k: v for k, v in highest.items() if k[1] not in command.group_ids}
            for name in whole.consumer_groups():
                for group_id, offset in whole.group(name).items():
                    # Never lower than the highest offset stored since the last forget.
                    assert offset >= highest.get((name, group_id), 0), seed
                    highest[name, group_id] = offset
        part = OffsetsState()
        for command in commands[:cut]:
            part.apply(command)
        restored = decode_offsets(encode_offsets(part))
        assert restored == part
        replayed = [restored.apply(c) for c in commands[cut:]]
        assert replayed == answers[cut:], seed
        assert restored == whole, seed
        assert encode_offsets(restored) == encode_offsets(whole)


def test_commands_round_trip_through_their_encoding() -> None:
    for command in (Commit("g", ((1, 2), (3, 4))), Commit("g", ()), Forget((5, 2))):
        decoded = decode_command(encode_command(command))
        assert encode_command(decoded) == encode_command(command)
    assert decode_command(encode_command(Forget((5, 2)))) == Forget((2, 5))


def test_store_applies_entries_tracks_terms_and_asks_to_compact() -> None:
    store = CoordinatorStore(group_id=9)
    assert store.apply(1, 1, b"") is None
    assert store.applied_term == 1
    result = store.apply(2, 2, encode_command(Commit("g", ((4, 8),))))
    assert result == Stored(((4, 8),))
    assert (store.applied_index, store.applied_term) == (2, 2)
    other = CoordinatorStore(group_id=9)
    other.restore(store.snapshot())
    assert other.offsets == store.offsets
    for index in range(3, COMPACT_ENTRIES_MIN + 3):
        store.apply(index, 2, b"")
    assert store.should_compact()
    store.compacted()
    assert not store.should_compact()
