"""A topic's queue settings in the controller: checks, refusals that change nothing, the codec.

The settings are max_deliveries, retry_backoff_ms_min/max and
dead_letter_topic (weir.v1.TopicConfig). Entries and snapshots written by a
release before them carry none of them and must read as the defaults.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from tests.unit.cluster.controller_gen import cluster
from weir.cluster.controller import (
    ConfigPatch,
    ControllerState,
    CreateTopic,
    DeleteTopic,
    InvalidConfig,
    Topic,
    TopicConfig,
    UpdateTopicConfig,
    decode_command,
    decode_state,
    encode_command,
    encode_state,
)
from weir.cluster.controller.model import (
    MAX_DELIVERIES_LIMIT,
    RETRY_BACKOFF_MS_LIMIT,
    check_queue_config,
)
from weir.cluster.v1 import controller_pb2 as pb

pytestmark = pytest.mark.timeout(60)

QUEUE_FIELDS = ("max_deliveries", "retry_backoff_ms_min", "retry_backoff_ms_max")

CUSTOM = TopicConfig(
    retention_ms=60_000,
    max_deliveries=0,
    retry_backoff_ms_min=0,
    retry_backoff_ms_max=RETRY_BACKOFF_MS_LIMIT,
    dead_letter_topic="orders-dead",
)

# (config fields, the field the refusal names)
BAD_CONFIGS = [
    ({"max_deliveries": -1}, "max_deliveries"),
    ({"max_deliveries": MAX_DELIVERIES_LIMIT + 1}, "max_deliveries"),
    ({"retry_backoff_ms_min": -1}, "retry_backoff_ms_min"),
    ({"retry_backoff_ms_min": RETRY_BACKOFF_MS_LIMIT + 1}, "retry_backoff_ms_min"),
    ({"retry_backoff_ms_max": -1}, "retry_backoff_ms_max"),
    ({"retry_backoff_ms_max": RETRY_BACKOFF_MS_LIMIT + 1}, "retry_backoff_ms_max"),
    ({"retry_backoff_ms_min": 2000, "retry_backoff_ms_max": 1000}, "retry_backoff_ms_max"),
    ({"dead_letter_topic": "bad name"}, "dead_letter_topic"),
    ({"dead_letter_topic": ".."}, "dead_letter_topic"),
    ({"dead_letter_topic": "x" * 250}, "dead_letter_topic"),
    ({"dead_letter_topic": "orders"}, "dead_letter_topic"),
]


def test_defaults() -> None:
    config = TopicConfig()
    assert (config.max_deliveries, config.retry_backoff_ms_min) == (5, 1000)
    assert (config.retry_backoff_ms_max, config.dead_letter_topic) == (60_000, "")


@pytest.mark.parametrize(
    "fields",
    [
        {"max_deliveries": 0},
        {"max_deliveries": MAX_DELIVERIES_LIMIT},
        {"retry_backoff_ms_min": 0, "retry_backoff_ms_max": 0},
        {
            "retry_backoff_ms_min": RETRY_BACKOFF_MS_LIMIT,
            "retry_backoff_ms_max": RETRY_BACKOFF_MS_LIMIT,
        },
        {"dead_letter_topic": "orders.dlq"},
        {"dead_letter_topic": "x" * 249},
    ],
)
def test_bounds_are_accepted(fields: dict[str, Any]) -> None:
    state = cluster(1)
    topic = state.apply(CreateTopic("orders", 1, 0, TopicConfig(**fields)))
    assert isinstance(topic, Topic), topic
    assert topic.config == TopicConfig(**fields)


@pytest.mark.parametrize(("fields", "field"), BAD_CONFIGS)
def test_a_bad_create_is_refused_and_changes_nothing(fields: dict[str, Any], field: str) -> None:
    state = cluster(1)
    before = encode_state(state)
    result = state.apply(CreateTopic("orders", 1, 0, TopicConfig(**fields)))
    assert isinstance(result, InvalidConfig), result
    assert result.reason == "INVALID_CONFIG"
    assert dict(result.metadata)["field"] == field
    assert encode_state(state) == before
    assert state.topic("orders") is None


@pytest.mark.parametrize(("fields", "field"), BAD_CONFIGS)
def test_a_bad_update_is_refused_and_changes_nothing(fields: dict[str, Any], field: str) -> None:
    state = cluster(1)
    assert isinstance(state.apply(CreateTopic("orders", 1, 0, CUSTOM)), Topic)
    before = encode_state(state)
    result = state.apply(UpdateTopicConfig("orders", ConfigPatch(**fields)))
    assert isinstance(result, InvalidConfig), result
    assert dict(result.metadata)["field"] == field
    assert encode_state(state) == before
    topic = state.topic("orders")
    assert topic is not None and topic.config == CUSTOM


def test_update_checks_the_merged_config() -> None:
    state = cluster(1)
    assert isinstance(state.apply(CreateTopic("orders", 1, 0, TopicConfig())), Topic)
    # A min above the current max (60000) alone is refused; with a new max it is taken.
    alone = state.apply(UpdateTopicConfig("orders", ConfigPatch(retry_backoff_ms_min=120_000)))
    assert isinstance(alone, InvalidConfig)
    both = state.apply(
        UpdateTopicConfig(
            "orders", ConfigPatch(retry_backoff_ms_min=120_000, retry_backoff_ms_max=240_000)
        )
    )
    assert isinstance(both, Topic)
    assert (both.config.retry_backoff_ms_min, both.config.retry_backoff_ms_max) == (
        120_000,
        240_000,
    )
    # Unset fields keep their value; "" puts the dead-letter topic back to the default.
    named = state.apply(UpdateTopicConfig("orders", ConfigPatch(dead_letter_topic="dead")))
    assert isinstance(named, Topic) and named.config.dead_letter_topic == "dead"
    assert named.config.max_deliveries == 5
    reset = state.apply(UpdateTopicConfig("orders", ConfigPatch(dead_letter_topic="")))
    assert isinstance(reset, Topic) and reset.config.dead_letter_topic == ""
    assert reset.config.retry_backoff_ms_max == 240_000


def test_the_dead_letter_topic_may_not_be_the_topic_itself_but_any_other() -> None:
    assert check_queue_config(
        "a", max_deliveries=5, retry_backoff_ms_min=0, retry_backoff_ms_max=0, dead_letter_topic="a"
    ) == InvalidConfig.of(
        "dead_letter_topic must not be the topic itself ('a')", field="dead_letter_topic"
    )
    state = cluster(1)
    # Another live topic's name, or one that does not exist (yet), is fine.
    assert isinstance(state.apply(CreateTopic("b", 1, 0, TopicConfig())), Topic)
    assert isinstance(
        state.apply(CreateTopic("a", 1, 0, TopicConfig(dead_letter_topic="b"))), Topic
    )
    assert isinstance(
        state.apply(UpdateTopicConfig("b", ConfigPatch(dead_letter_topic="c"))), Topic
    )


def test_commands_round_trip_through_the_codec() -> None:
    commands = [
        CreateTopic("orders", 3, 2, CUSTOM),
        CreateTopic("plain", 1, 0, TopicConfig()),
        UpdateTopicConfig("orders", ConfigPatch()),
        UpdateTopicConfig("orders", ConfigPatch(max_deliveries=0)),
        UpdateTopicConfig("orders", ConfigPatch(dead_letter_topic="")),
        UpdateTopicConfig(
            "orders",
            ConfigPatch(
                retention_bytes=10,
                max_deliveries=1000,
                retry_backoff_ms_min=0,
                retry_backoff_ms_max=5,
                dead_letter_topic="x",
            ),
        ),
    ]
    for command in commands:
        assert decode_command(encode_command(command)) == command


def test_a_snapshot_round_trips_with_the_settings() -> None:
    state = cluster(3)
    assert isinstance(state.apply(CreateTopic("orders", 2, 0, CUSTOM)), Topic)
    assert isinstance(state.apply(CreateTopic("plain", 1, 0, TopicConfig())), Topic)
    restored = decode_state(encode_state(state))
    assert encode_state(restored) == encode_state(state)
    orders = restored.topic("orders")
    assert orders is not None and orders.config == CUSTOM
    plain = restored.topic("plain")
    assert plain is not None and plain.config == TopicConfig()


def _old_config(msg: pb.TopicConfig) -> None:
    """Clear what a release before the queue settings did not write."""
    for name in (*QUEUE_FIELDS, "dead_letter_topic"):
        msg.ClearField(name)


def test_an_old_create_entry_reads_as_the_defaults() -> None:
    msg = pb.ControllerCommand.FromString(
        encode_command(CreateTopic("orders", 1, 0, TopicConfig(retention_ms=1000)))
    )
    _old_config(msg.create_topic.config)
    decoded = decode_command(msg.SerializeToString())
    assert decoded == CreateTopic("orders", 1, 0, TopicConfig(retention_ms=1000))


def test_an_old_update_entry_changes_only_what_it_named() -> None:
    old = pb.ControllerCommand(
        update_topic_config=pb.UpdateTopicConfig(
            name="orders", patch=pb.TopicConfigPatch(retention_bytes=10)
        )
    )
    decoded = decode_command(old.SerializeToString())
    assert decoded == UpdateTopicConfig("orders", ConfigPatch(retention_bytes=10))


def test_an_old_snapshot_reads_as_the_defaults() -> None:
    state = cluster(1)
    assert isinstance(state.apply(CreateTopic("orders", 1, 0, CUSTOM)), Topic)
    assert isinstance(state.apply(CreateTopic("gone", 1, 0, CUSTOM)), Topic)
    msg = pb.ControllerState.FromString(encode_state(state))
    for topic in msg.topics:
        _old_config(topic.config)
    restored = decode_state(msg.SerializeToString())
    expected = dataclasses.replace(
        CUSTOM,
        max_deliveries=5,
        retry_backoff_ms_min=1000,
        retry_backoff_ms_max=60_000,
        dead_letter_topic="",
    )
    for name in ("orders", "gone"):
        topic = restored.topic(name)
        assert topic is not None and topic.config == expected
    # A node of this release writes every field back.
    again = pb.ControllerState.FromString(encode_state(restored))
    assert all(t.config.HasField("max_deliveries") for t in again.topics)


def test_a_deleting_topic_of_an_old_snapshot_decodes() -> None:
    state: ControllerState = cluster(1)
    assert isinstance(state.apply(CreateTopic("orders", 1, 0, CUSTOM)), Topic)
    assert isinstance(state.apply(DeleteTopic("orders")), Topic)
    msg = pb.ControllerState.FromString(encode_state(state))
    assert len(msg.deleting_topics) == 1
    _old_config(msg.deleting_topics[0].topic.config)
    restored = decode_state(msg.SerializeToString())
    (deleting,) = restored.deleting()
    assert deleting.topic.config.max_deliveries == 5
